"""Where a mining pass stopped, kept in the cache, and continued by the next run.

A mining run with a cache that stops at an error - an unreadable image, non-finite activations,
a fault in the model's forward pass, any exception - keeps its running top lists, the samples it
left out and the index it stopped at as a *checkpoint* (a cache entry of kind
``references-partial``); the next run with the same model, layer, ``n_ref`` and layout continues
from there and gives the result of an uninterrupted run
(:func:`pure_utils.references.mine_references`).

The natural answer to "image X cannot be read" is to delete X - which changes the dataset, its
fingerprint and every index after X. So for a dataset whose class defines ``lineage()`` and
``sample_ids()`` (:class:`pure_utils.data.ImageFolderDataset`) the checkpoint's key holds the
lineage (the folder and how it is read, not its list of files) and the checkpoint holds an id of
every file; the next run maps the checkpoint onto the folder as it is now. The work is kept when
every file that took part is still there, in the same order, with no file added among them;
files that were left out (unreadable or non-finite) may be gone, and the indices after them
shift. A run that completes with files left out keeps its final state the same way, so that
deleting those files afterwards costs no new pass. Any other change starts from the beginning.
Other datasets keep their checkpoint under their full fingerprint, as before.
"""
from __future__ import annotations

import hashlib

import torch

from .cache import Cache, TensorSpec
from .data import UnreadableImageError
from .distributed import is_distributed, is_main

__all__ = ["Stopped", "resumable", "checkpoint_key", "save_checkpoint", "load_checkpoint",
           "keep_final"]

_KIND = "references-partial"
_LEFT_OUT = ("skipped_nonfinite", "skipped_unreadable")


class Stopped(Exception):
    """Mining stopped at an error: ``error`` for the user, ``state`` to continue from (``None``:
    nothing ranked yet, or a distributed run, which starts again from the beginning)."""

    def __init__(self, error: Exception, state: dict | None):
        super().__init__(str(error))
        self.error, self.state = error, state


def resumable(store: Cache, params: dict, dataset, mine):
    """``compute()`` for the cache: ``mine(resume, final)`` continued from its checkpoint.

    Parameters
    ----------
    store, params
        The cache and the parameters of the result's key.
    dataset : Dataset
    mine : callable
        ``mine(resume, final) -> dict``: the pass from the state ``resume`` (or the beginning),
        filling the dict ``final`` with its state at the end; it raises :class:`Stopped`.

    Returns
    -------
    callable
        ``compute() -> dict``. When the pass stops, its state is kept and the error is raised
        with a sentence saying so; when it completes, :func:`keep_final`.
    """
    key = checkpoint_key(store, params, dataset)

    def compute():
        # a distributed run has no single state to continue from: it starts from the beginning
        resume = None if is_distributed() else load_checkpoint(store, key, dataset, len(dataset))
        final = {}
        try:
            out = mine(resume, final)
        except Stopped as stop:
            kept = stop.state is not None and save_checkpoint(store, key, params, dataset,
                                                              stop.state)
            raise _noted(stop.error, int(stop.state["next"]) if kept else None) from None
        if is_main():
            keep_final(store, key, params, dataset, final)
        return out

    return compute


def _noted(err: Exception, kept: int | None) -> Exception:
    """``err``, telling that the ``kept`` samples before it are kept in the cache."""
    if kept is None:
        return err
    text = f"the {kept} samples before it are kept in the cache: the next run continues from there"
    if type(err) in (ValueError, UnreadableImageError) and len(err.args) == 1:
        err.args = (f"{err} ({text})",)  # the library's own messages: one sentence more
    else:
        err.add_note(f"Mining stopped here; {text}.")  # the error as raised, traceback and all
    return err


def _method(dataset, name: str):
    """``dataset.name`` when the dataset's own class defines it (a wrapper such as
    :class:`~pure_utils.data.DatasetPart` forwards attributes of the dataset it wraps, whose
    files are not its samples), else ``None``."""
    return getattr(dataset, name) if callable(getattr(type(dataset), name, None)) else None


def checkpoint_key(store: Cache, params: dict, dataset) -> str:
    """The key of the checkpoint of a mining pass with ``params`` (those of its result's key)."""
    lineage = _method(dataset, "lineage")
    return store.key(_KIND, **{**params, "dataset": lineage() if lineage else params["dataset"]})


def _ids(dataset) -> torch.Tensor:
    """``Tensor[n, 8]`` (uint8): the first 8 bytes of the SHA-256 of every sample's id."""
    ids = [hashlib.sha256(s.encode()).digest()[:8] for s in _method(dataset, "sample_ids")()]
    return torch.tensor([list(d) for d in ids], dtype=torch.uint8).reshape(-1, 8)


def save_checkpoint(store: Cache, key: str, params: dict, dataset, state: dict) -> bool:
    """Store ``state`` (the running top lists, ``next``...) with the ids of the dataset's samples.

    Returns
    -------
    bool
        Whether it was stored (a cache folder that cannot be written keeps nothing).
    """
    tensors = dict(state)
    if _method(dataset, "sample_ids") is not None:
        tensors["ids"] = _ids(dataset)
    try:
        store.save(key, tensors, {"kind": _KIND, "params": params})
    except OSError:
        return False
    return True


def load_checkpoint(store: Cache, key: str, dataset, n: int) -> dict | None:
    """The checkpoint under ``key`` carried over to ``dataset`` as it is now, or ``None``.

    Parameters
    ----------
    store, key
        From :func:`checkpoint_key`.
    dataset : Dataset
        Of ``n`` samples.

    Returns
    -------
    dict or None
        The state to continue from (dataset indices of ``dataset``), or ``None``: no checkpoint,
        or one that cannot be carried over (mining starts from the beginning).
    """
    hit = store.load(key, {"next": TensorSpec((), low=0)})
    if hit is None:
        return None
    state = dict(hit[0])
    old = state.pop("ids", None)
    if old is None or _method(dataset, "sample_ids") is None:
        return state if int(state["next"]) <= n else None
    return _carry(state, old, _ids(dataset))


def _carry(state: dict, old: torch.Tensor, new: torch.Tensor) -> dict | None:
    """``state`` with its indices mapped from the samples ``old`` to the samples ``new``."""
    stop = int(state["next"])
    if stop > len(old):
        return None
    where = {bytes(row): j for j, row in enumerate(new.numpy())}
    left_out = {i for k in _LEFT_OUT for i in state[k].tolist()}
    table = torch.full((len(old),), -1, dtype=torch.long)
    kept = 0
    for i, row in enumerate(old[:stop].numpy()):
        j = where.get(bytes(row))
        if j is None:
            if i not in left_out:
                return None  # a sample that took part is gone
            continue
        if j != kept:
            return None  # a sample added among them, or another order
        table[i] = j
        kept += 1
    out = dict(state, next=torch.tensor(kept))
    out["indices"] = table[state["indices"]]
    if bool((out["indices"] < 0).any()):
        return None
    for k in _LEFT_OUT:
        moved = table[state[k]]
        out[k] = moved[moved >= 0]
    return out


def keep_final(store: Cache, key: str, params: dict, dataset, final: dict) -> None:
    """After a complete pass: forget the checkpoint; but where samples were left out of a
    dataset with sample ids, keep the final state, so that deleting them costs no new pass."""
    left_out = sum(int(final[k].numel()) for k in _LEFT_OUT if k in final)
    if left_out and final and _method(dataset, "sample_ids") is not None:
        if save_checkpoint(store, key, params, dataset, final):
            return
    store.discard(key)
