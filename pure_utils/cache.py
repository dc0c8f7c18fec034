"""Content-addressed storage of computed artefacts (reference samples, attributions, features).

Every artefact is stored as a pair of files under the cache folder:
``<key>.safetensors`` (the tensors) and ``<key>.json`` (metadata). The key is the SHA-256 of
a canonical JSON description of *what* was computed - the kind of artefact, the model weights'
fingerprint, the dataset's fingerprint, the layer, the parameters and the library version - so
a change in any of them selects a different file and triggers a recomputation.

Both files are written atomically (a temporary file in the same folder, then ``os.replace``),
and the JSON file is written last: a run interrupted at any point leaves either no entry or a
complete one, never half a file.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save

import pure_utils  # the version is read at call time: it enters every key
from .paths import ROOT

__all__ = ["Cache", "resolve_cache", "default_cache_dir", "cached", "model_fingerprint",
           "dataset_fingerprint"]

_KIND_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def default_cache_dir() -> Path:
    """``$PURE_CACHE_DIR`` if set, else ``<repository>/.cache/pure``."""
    env = os.environ.get("PURE_CACHE_DIR")
    return Path(env).expanduser() if env else ROOT / ".cache" / "pure"


def _canonical_json(obj) -> str:
    # sort_keys + fixed separators: the same parameters always give the same bytes
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    raise TypeError(f"cache key parameter of type {type(obj).__name__} is not JSON-serialisable: {obj!r}")


def _atomic_write(path: Path, write: Callable[[object], None], mode: str = "wb") -> None:
    """Write ``path`` through a temporary file in the same folder, then rename it into place.

    ``write(f)`` fills the open temporary file. If it raises, the temporary file is removed
    and ``path`` is left as it was (absent or the previous complete version).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class Cache:
    """A folder of cached artefacts, addressed by content keys.

    Parameters
    ----------
    root : str or Path, optional
        The cache folder (created on first write). Default: ``$PURE_CACHE_DIR`` if set,
        else ``<repository>/.cache/pure``.

    Examples
    --------
    >>> cache = Cache("/tmp/pure-cache")
    >>> out = cache.get_or_compute("demo", {"n": 3}, lambda: {"x": torch.arange(3)})
    """

    def __init__(self, root=None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def __repr__(self) -> str:
        return f"Cache(root={str(self.root)!r})"

    # -- keys ---------------------------------------------------------------------------------
    def key(self, kind: str, **params) -> str:
        """The key of an artefact: ``"<kind>-<sha256 hex>"``.

        Parameters
        ----------
        kind : str
            Artefact type (``"references"``, ``"circuits"``, ...); letters, digits, ``_.-``.
        **params
            Everything the result depends on (JSON-serialisable: str, numbers, lists, dicts,
            tensors and arrays are converted to lists). ``pure_utils.__version__`` is added.

        Returns
        -------
        str
            The kind, a dash and the SHA-256 hex digest of the canonical JSON of
            ``{"kind", "version", "params"}``; usable as a file name.
        """
        if not _KIND_RE.match(kind):
            raise ValueError(f"cache kind {kind!r} is not valid; use letters, digits, '_', '.', '-'")
        payload = _canonical_json({"kind": kind, "version": pure_utils.__version__,
                                   "params": params})
        return f"{kind}-{_sha256(payload)}"

    def _paths(self, key: str) -> tuple[Path, Path]:
        if not _KIND_RE.match(key):
            raise ValueError(f"cache key {key!r} is not valid; keys come from Cache.key()")
        return self.root / f"{key}.safetensors", self.root / f"{key}.json"

    # -- storage ------------------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        tensors, meta = self._paths(key)
        return tensors.exists() and meta.exists()

    def load(self, key: str):
        """Load an entry.

        Returns
        -------
        (dict[str, Tensor], dict) or None
            The tensors (on CPU) and the metadata, or ``None`` if the entry is missing or
            unreadable.
        """
        tensors_path, meta_path = self._paths(key)
        if not (tensors_path.exists() and meta_path.exists()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_file(str(tensors_path))
        except Exception:  # a damaged entry counts as missing and is recomputed
            return None
        return tensors, meta

    def save(self, key: str, tensors: dict, meta: dict | None = None) -> None:
        """Store ``tensors`` (dict of name -> Tensor) and JSON metadata under ``key``, atomically."""
        tensors_path, meta_path = self._paths(key)
        clean = {}
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"cache entry {name!r} is a {type(t).__name__}, expected a Tensor")
            clean[name] = t.detach().cpu().contiguous()
        data = save(clean)  # serialise first: a failure here touches no file
        meta_text = json.dumps(meta or {}, sort_keys=True, indent=1, default=_json_default)
        _atomic_write(tensors_path, lambda f: f.write(data))
        # the JSON file marks the entry as complete, so it is written last
        _atomic_write(meta_path, lambda f: f.write(meta_text.encode()))

    def get_or_compute(self, kind: str, params: dict, fn: Callable[[], dict], *,
                       meta: dict | None = None) -> dict:
        """Load the artefact ``(kind, params)`` or compute it with ``fn()`` and store it.

        Parameters
        ----------
        kind : str
            Artefact type.
        params : dict
            Everything the result depends on (see :meth:`key`).
        fn : callable
            ``fn() -> dict[str, Tensor]``, called only on a cache miss.
        meta : dict, optional
            Extra metadata stored beside the tensors (e.g. map sizes).

        Returns
        -------
        dict[str, Tensor]
        """
        key = self.key(kind, **params)
        hit = self.load(key)
        if hit is not None:
            return hit[0]
        tensors = fn()
        self.save(key, tensors, {"kind": kind, "params": params, **(meta or {})})
        return tensors

    def clear(self) -> int:
        """Delete all entries; returns the number of files removed."""
        n = 0
        if self.root.exists():
            for p in self.root.iterdir():
                if p.suffix in (".safetensors", ".json", ".tmp") and p.is_file():
                    p.unlink()
                    n += 1
        return n


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def resolve_cache(cache) -> Cache | None:
    """Turn a user's ``cache`` argument into a :class:`Cache` or ``None``.

    ``None``/``False``: no caching; ``True``: the default ``Cache()``; a ``Cache``: itself;
    a str or Path: ``Cache(path)``.
    """
    if cache is None or cache is False:
        return None
    if cache is True:
        return Cache()
    if isinstance(cache, Cache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return Cache(cache)
    raise ValueError(f"cache={cache!r} not understood; use None, True, a Cache or a folder path")


# --------------------------------------------------------------------------------------------
# fingerprints and the one helper every stage caches through
# --------------------------------------------------------------------------------------------
def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the model's class, name and weights, for cache keys."""
    h = hashlib.sha256()
    h.update(type(model).__name__.encode())
    h.update(str(getattr(model, "pure_name", "")).encode())
    for key, tensor in model.state_dict().items():
        h.update(key.encode())
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def dataset_fingerprint(dataset) -> str | None:
    """The dataset's ``fingerprint`` attribute (``None`` when it has none)."""
    return getattr(dataset, "fingerprint", None)


def cached(kind: str, cache, dataset, compute: Callable[[], dict], *, model=None, **params) -> dict:
    """``compute()`` through the cache (if any), keyed by the dataset, the model and ``params``.

    Parameters
    ----------
    kind : str
        Artefact type (``"references"``, ``"circuits"``, ...).
    cache : None, True, Cache or path
        As accepted by :func:`resolve_cache`; ``None`` computes without caching.
    dataset : Dataset
        Its ``fingerprint`` enters the key. A dataset without one is computed without caching,
        with a warning.
    compute : callable
        ``compute() -> dict[str, Tensor]``, called on a miss.
    model : nn.Module, optional
        Its weights' fingerprint enters the key; leave it out for results that do not depend
        on the model (crop embeddings).
    **params
        Everything else the result depends on.

    Returns
    -------
    dict[str, Tensor]
    """
    store = resolve_cache(cache)
    fp = dataset_fingerprint(dataset)
    if store is not None and fp is None:
        warnings.warn("dataset has no 'fingerprint' attribute; results are not cached")
        store = None
    if store is None:
        return compute()
    params = {"dataset": fp, **params}
    if model is not None:
        params["model"] = model_fingerprint(model)
    return store.get_or_compute(kind, params, compute)
