"""Content-addressed storage of computed artefacts (reference samples, attributions, features).

Every artefact is stored as a pair of files under the cache folder:
``<key>.safetensors`` (the tensors) and ``<key>.json`` (metadata). The key is the SHA-256 of
a canonical JSON description of *what* was computed - the kind of artefact, the model's
fingerprint (its structure and weights), the dataset's fingerprint, the layer, the parameters,
the library version and a hash of the library's code (:func:`source_hash`) - so a change in any
of them selects a different file and triggers a recomputation.

The code hash covers the contents of every ``pure_utils/**/*.py`` file, read once per process.
It is deliberately coarse: any change of the package's code, even a comment, invalidates every
entry. That is safe - an entry is never served by other code than the one that computed it,
without anyone having to remember a version bump - at the price of recomputing after each edit.

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

import functools
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
           "cache_entry", "model_fingerprint", "model_description", "model_identity",
           "model_difference", "dataset_fingerprint", "source_hash"]

_KIND_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]+")


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
            tensors and arrays are converted to lists). ``pure_utils.__version__`` and the
            hash of the package's code (:func:`source_hash`) are added.

        Returns
        -------
        str
            The kind, a dash and the SHA-256 hex digest of the canonical JSON of
            ``{"kind", "version", "code", "params"}``; usable as a file name.
        """
        if not _KIND_RE.match(kind):
            raise ValueError(f"cache kind {kind!r} is not valid; use letters, digits, '_', '.', '-'")
        payload = _canonical_json({"kind": kind, "version": pure_utils.__version__,
                                   "code": source_hash(), "params": params})
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
@functools.lru_cache(maxsize=8)
def source_hash(package=None) -> str:
    """SHA-256 of the code of a package: every ``**/*.py`` file's relative path and bytes.

    Parameters
    ----------
    package : str or Path, optional
        The package folder (default: ``pure_utils`` itself).

    Returns
    -------
    str
        64 hex digits. Computed once per process and folder (``source_hash.cache_clear()``
        forgets it); it enters every cache key, so that changed code never reads entries the
        old code computed.
    """
    root = Path(package if package is not None else pure_utils.__file__).resolve()
    root = root if root.is_dir() else root.parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        if "__pycache__" in path.parts:
            continue
        data = path.read_bytes()
        h.update(f"{path.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _structure_digest(model: torch.nn.Module) -> tuple[str, int]:
    """SHA-256 of every module's name, class and settings (``extra_repr``), in module order.

    Memory addresses in a setting (``<function f at 0x7f...>``) are left out: they differ
    between processes for the same model."""
    h = hashlib.sha256()
    n = 0
    for name, module in model.named_modules():
        kind = type(module)
        settings = _ADDRESS_RE.sub("0x", module.extra_repr())
        h.update(f"{name}\0{kind.__module__}.{kind.__qualname__}\0{settings}\n".encode())
        n += 1
    return h.hexdigest(), n


def _weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the ``state_dict``: every name, dtype and the raw bytes (buffers included)."""
    h = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        if tensor.is_meta:
            raise ValueError(
                f"the model's {key!r} is on the 'meta' device: it has a shape but no values "
                "(a model built under torch.device('meta') or with empty weights). Give it "
                "weights first: model.to_empty(device='cpu') then model.load_state_dict(...), "
                "or build it on a real device")
        h.update(key.encode())
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _model_digests(model: torch.nn.Module) -> tuple[str, str, str, int]:
    """``(fingerprint, structure digest, weights digest, number of modules)``."""
    structure, n = _structure_digest(model)
    weights = _weights_digest(model)
    h = hashlib.sha256()
    for part in (type(model).__name__, str(getattr(model, "pure_name", "")), structure, weights):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16], structure, weights, n


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the model: its class, name, structure and weights, for cache keys.

    The structure is every module's name, class and settings (its ``extra_repr()``: a
    convolution's channels, kernel, stride, dilation and padding, an activation's type...), in
    module order; the weights are the ``state_dict`` (parameters and buffers). So the same
    weights in a dilated network, or with another activation function, are another model. Code
    in a ``forward`` method (a functional call such as ``F.relu``) is not seen.

    Returns
    -------
    str
        16 hex digits.
    """
    return _model_digests(model)[0]


def model_identity(model: torch.nn.Module) -> tuple[str, str]:
    """``(model_fingerprint(model), model_description(model))``, the weights hashed once.

    ``ValueError`` for a model without weights (on the ``meta`` device), naming what to do.
    """
    fp, structure, weights, n = _model_digests(model)
    name = getattr(model, "pure_name", None)
    head = f"{name}: {type(model).__name__}" if name else type(model).__name__
    return fp, (f"{head} (fingerprint {fp}: {n} modules, structure {structure[:8]}, "
                f"weights {weights[:8]})")


def model_description(model: torch.nn.Module) -> str:
    """The model in words for messages: name, class, fingerprint, and what it is made of.

    ``"ResNet (fingerprint 0123456789abcdef: 62 modules, structure 1a2b3c4d, weights
    5e6f7a8b)"``; two models that differ show whether their structure or their weights do.
    """
    return model_identity(model)[1]


def model_difference(mined: str | None, given: str) -> str:
    """Which parts of two :func:`model_description` differ, in words (``""`` if unknown)."""
    def part(text, word):
        found = re.search(rf"{word} (\w+)", text or "")
        return found[1] if found else None

    differ = [w for w in ("structure", "weights") if part(mined, w) not in (None, part(given, w))]
    words = {"structure": "structure (module types or settings)", "weights": "weights"}
    return f" (they differ in {' and '.join(words[w] for w in differ)})" if differ else ""


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
    if model is not None:  # a model, or its fingerprint computed already
        params["model"] = model if isinstance(model, str) else model_fingerprint(model)
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
    model : nn.Module or str, optional
        Its fingerprint (structure and weights; or the fingerprint itself) enters the key;
        leave it out for results that do not depend on the model (crop embeddings).
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
