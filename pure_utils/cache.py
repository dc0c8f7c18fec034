"""Content-addressed storage of computed artefacts (reference samples, attributions, features).

Every artefact is stored as a pair of files under the cache folder:
``<key>.safetensors`` (the tensors) and ``<key>.json`` (metadata). The key is the SHA-256 of
a canonical JSON description of *what* was computed - the kind of artefact, the model weights'
fingerprint, the dataset's fingerprint, the layer, the parameters and the library version - so
a change in any of them selects a different file and triggers a recomputation.

Both files are written atomically (a temporary file in the same folder, then ``os.replace``),
and the JSON file is written last: a run interrupted at any point leaves either no entry or a
complete one, never half a file.

An entry is verified before it is used: the JSON file records the SHA-256 of the tensor file's
bytes and every tensor's shape and dtype, and the caller may say which tensors it expects, with
their shapes, dtypes and value ranges (:class:`TensorSpec`). An entry that fails any check is a
miss: it is computed again and overwritten, with one :class:`CacheWarning` naming its path. A
cache folder that cannot be written warns too, and the computed result is still returned.

Under ``torch.distributed`` (:mod:`pure_utils.distributed`) rank 0 alone reads and writes the
cache: it tells the other ranks whether an entry is there and sends them its tensors, and on a
miss every rank computes (the stages share their work across ranks) and rank 0 stores the result
once. The other ranks need no access to the cache folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load, save

import pure_utils  # the version is read at call time: it enters every key
from ._files import atomic_write
from .distributed import broadcast_object, is_distributed, is_main
from .paths import ROOT

__all__ = ["Cache", "CacheWarning", "TensorSpec", "resolve_cache", "default_cache_dir", "cached",
           "cache_entry", "model_fingerprint", "dataset_fingerprint"]

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


#: Key of the entry's integrity record in its JSON file.
_RECORD = "integrity"


class CacheWarning(UserWarning):
    """A cache entry was not used (damaged, or not what the caller expects) or not written."""


@dataclass(frozen=True)
class TensorSpec:
    """What a stored tensor must be for its cache entry to be used.

    Parameters
    ----------
    shape : tuple of (int or None), optional
        The shape; ``None`` on an axis accepts any size there. Default: any shape.
    dtype : torch.dtype, optional
        Default: any dtype.
    low, high : float, optional
        Every value must satisfy ``low <= v < high`` (e.g. dataset indices: ``0`` and the
        dataset's length).
    finite : bool
        Every value must be finite (no NaN, no inf).
    """

    shape: tuple | None = None
    dtype: torch.dtype | None = None
    low: float | None = None
    high: float | None = None
    finite: bool = False

    def problem(self, name: str, t) -> str | None:
        """Why ``t`` does not match (``None`` if it does)."""
        if t is None:
            return f"no tensor {name!r}"
        if self.shape is not None and (len(t.shape) != len(self.shape) or any(
                s is not None and s != d for s, d in zip(self.shape, t.shape))):
            want = tuple("*" if s is None else s for s in self.shape)
            return f"tensor {name!r} has shape {tuple(t.shape)}, expected {want}"
        if self.dtype is not None and t.dtype != self.dtype:
            return f"tensor {name!r} has dtype {t.dtype}, expected {self.dtype}"
        if t.numel() == 0:
            return None
        if self.finite and not bool(torch.isfinite(t).all()):
            return f"tensor {name!r} holds NaN or inf"
        if self.low is not None and bool((t < self.low).any()):
            return f"tensor {name!r} holds {t.min().item()}, below {self.low}"
        if self.high is not None and bool((t >= self.high).any()):
            return f"tensor {name!r} holds {t.max().item()}, not below {self.high}"
        return None


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

    def load(self, key: str, expect: dict | None = None):
        """Load an entry, verified.

        Parameters
        ----------
        key : str
            From :meth:`key`.
        expect : dict[str, TensorSpec], optional
            Tensors the caller needs, with the shape, dtype and value range each must have.

        Returns
        -------
        (dict[str, Tensor], dict) or None
            The tensors (on CPU) and the metadata; ``None`` if the entry is missing, or if it
            fails a check (checksum, names, shapes, dtypes, ``expect``), which also warns once
            with a :class:`CacheWarning` naming the entry's path.
        """
        hit, problem = self._read(key, expect)
        if problem is not None:
            warnings.warn(f"cache entry {self._paths(key)[0]} is not used ({problem}); it counts "
                          "as missing (a cached stage computes it again and overwrites it)",
                          CacheWarning, stacklevel=3)
        return hit

    def _read(self, key: str, expect: dict | None):
        """``(hit, None)``, ``(None, None)`` for a missing entry, ``(None, reason)`` for a bad one."""
        tensors_path, meta_path = self._paths(key)
        if not (tensors_path.exists() and meta_path.exists()):
            return None, None  # absent, or interrupted before its JSON file (the completion mark)
        try:
            meta = json.loads(meta_path.read_text())
            data = tensors_path.read_bytes()
        except (OSError, ValueError) as err:
            return None, f"unreadable: {err}"
        record = meta.get(_RECORD) if isinstance(meta, dict) else None
        if not isinstance(record, dict) or "sha256" not in record:
            return None, "no checksum recorded (written by an older version)"
        if record.get("key") != key:
            return None, f"recorded for key {record.get('key')!r}"
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            return None, "checksum mismatch: the stored bytes changed"
        try:
            tensors = load(data)
        except Exception as err:  # safetensors raises its own error types
            return None, f"unreadable tensors: {err}"
        stored = {n: {"shape": list(t.shape), "dtype": str(t.dtype)} for n, t in tensors.items()}
        if stored != record.get("tensors"):
            return None, "tensors differ from those recorded"
        for name, spec in (expect or {}).items():
            problem = spec.problem(name, tensors.get(name))
            if problem is not None:
                return None, problem
        return (tensors, meta), None

    def save(self, key: str, tensors: dict, meta: dict | None = None) -> None:
        """Store ``tensors`` (dict of name -> Tensor) and JSON metadata under ``key``, atomically.

        The metadata gets the entry's record (key, SHA-256 of the tensor file, shapes, dtypes)
        under ``"integrity"``, which :meth:`load` verifies.
        """
        tensors_path, meta_path = self._paths(key)
        clean = {}
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"cache entry {name!r} is a {type(t).__name__}, expected a Tensor")
            clean[name] = t.detach().cpu().contiguous()
        data = save(clean)  # serialise first: a failure here touches no file
        record = {"key": key, "sha256": hashlib.sha256(data).hexdigest(),
                  "tensors": {n: {"shape": list(t.shape), "dtype": str(t.dtype)}
                              for n, t in clean.items()}}
        meta_text = json.dumps({**(meta or {}), _RECORD: record}, sort_keys=True, indent=1,
                               default=_json_default)
        atomic_write(tensors_path, lambda f: f.write(data))
        # the JSON file marks the entry as complete, so it is written last
        atomic_write(meta_path, lambda f: f.write(meta_text.encode()))

    def discard(self, key: str) -> None:
        """Remove an entry (its JSON file first: never a complete-looking half entry)."""
        for path in reversed(self._paths(key)):
            try:
                path.unlink()
            except OSError:  # absent, or a folder that cannot be written: nothing to remove
                pass

    def get_or_compute(self, kind: str, params: dict, fn: Callable[[], dict], *,
                       meta: dict | None = None, expect: dict | None = None) -> dict:
        """Load the artefact ``(kind, params)`` or compute it with ``fn()`` and store it.

        Parameters
        ----------
        kind : str
            Artefact type.
        params : dict
            Everything the result depends on (see :meth:`key`).
        fn : callable
            ``fn() -> dict[str, Tensor]``, called on a miss (absent or failing a check).
        meta : dict, optional
            Extra metadata stored beside the tensors (e.g. map sizes).
        expect : dict[str, TensorSpec], optional
            What a stored entry must hold to be used (see :meth:`load`).

        Returns
        -------
        dict[str, Tensor]
            A result that cannot be stored (read-only folder, full disk) is returned all the
            same, with a :class:`CacheWarning`.
        """
        key = self.key(kind, **params)
        # under torch.distributed rank 0 alone reads the entry and hands it to the other ranks
        hit = self.load(key, expect) if is_main() else None
        if is_distributed():
            found = broadcast_object(hit[0] if hit is not None else None)
            hit = None if found is None else (found, None)
        if hit is not None:
            return hit[0]
        tensors = fn()  # a collective computation when distributed: every rank takes part
        if not is_main():
            return tensors
        try:
            self.save(key, tensors, {"kind": kind, "params": params, **(meta or {})})
        except OSError as err:
            warnings.warn(f"cache entry {self._paths(key)[0]} could not be written ({err}); the "
                          "result is returned without being stored", CacheWarning, stacklevel=2)
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


def cache_entry(kind: str, cache, dataset, *, model=None, **params):
    """The store and key :func:`cached` uses for these arguments, or ``None`` without a store.

    Returns
    -------
    (Cache, str, dict) or None
        The cache, the entry's key and the full parameters (with the fingerprints).
    """
    store = resolve_cache(cache)
    fp = dataset_fingerprint(dataset)
    if store is not None and fp is None:
        warnings.warn("dataset has no 'fingerprint' attribute; results are not cached")
        store = None
    if store is None:
        return None
    params = {"dataset": fp, **params}
    if model is not None:
        params["model"] = model_fingerprint(model)
    return store, store.key(kind, **params), params


def cached(kind: str, cache, dataset, compute: Callable[[], dict], *, model=None,
           meta: dict | None = None, expect: dict | None = None, **params) -> dict:
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
    meta : dict, optional
        Extra metadata stored in the entry's JSON file.
    expect : dict[str, TensorSpec], optional
        The tensors a stored entry must hold, with shapes, dtypes and value ranges; an entry
        that does not is computed again (see :meth:`Cache.load`).
    **params
        Everything else the result depends on.

    Returns
    -------
    dict[str, Tensor]
    """
    entry = cache_entry(kind, cache, dataset, model=model, **params)
    if entry is None:
        return compute()
    store, _, params = entry
    return store.get_or_compute(kind, params, compute, meta=meta, expect=expect)
