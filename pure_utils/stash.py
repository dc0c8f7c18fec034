"""The stash: lower-layer activations of the reference candidates, kept while mining.

Mining runs every image through the model up to ``layer`` and computes the output of
``lower_layer`` on the way. Circuit attribution needs exactly that output for the reference
images - it is the leaf of its backward pass - and without it has to run every reference image
through the model a second time. An :class:`ActivationStash` given to
:func:`~pure_utils.references.mine_references` keeps it for the *candidates*: the images that
are among the current top ``n_ref`` of at least one channel. An image enters when it joins a
channel's top list and leaves when it has dropped out of all of them (it never comes back: a top
list only gets harder to enter). At the end of mining the stash holds the reference images, and
:func:`~pure_utils.circuits.circuit_attributions` and
:func:`~pure_utils.circuits.activation_vectors` given the stash run only ``layer`` from it.

Room is bounded, whatever the number of images:

1. a memory tier on the device the model runs on (``memory_bytes``; the GPU on a GPU),
2. a disk tier (``disk_bytes``) in an unlinked file under ``folder`` (default: the cache folder),
3. beyond both, nothing: such an image is run through the model again by the stage that needs it.

Results are the same either way: the stage computes ``layer`` on the stored tensor exactly as
the full forward pass does. That holds when ``layer`` receives the output of ``lower_layer`` as
its only argument (``x = layer3(x); x = layer4(x)`` in a ResNet), which mining checks on every
batch; for any other pair of layers the stash keeps nothing and says why in :attr:`problem`.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .cache import dataset_fingerprint, default_cache_dir, model_fingerprint
from .data import iter_images
from .distributed import all_gather_objects, first_found, rank_and_size, sum_across_ranks
from .layers import forward_until, get_layer

__all__ = ["ActivationStash", "stash_serves", "feed_batches", "identity"]

_CHUNK = 64  # records per allocation of the memory tier: it grows only as far as it is used


class ActivationStash:
    """Lower-layer activations of the reference candidates, in memory, on disk or not at all.

    Parameters
    ----------
    lower_layer : str
        The module whose output is kept (the attribution's lower layer, e.g. ``"layer3"``).
    memory_bytes : int
        Room on the compute device (RAM on a CPU, GPU memory on a GPU). Default 1 GiB.
    disk_bytes : int
        Room in the spill file on disk. Default 0 (no disk tier).
    folder : str or Path, optional
        Where the spill file lives (default: ``<cache folder>/stash``).

    Attributes
    ----------
    layer : str or None
        The layer mined with this stash.
    problem : str or None
        Why nothing is kept (the layer's input is not the lower layer's output), else ``None``.
    stats : dict
        ``memory`` and ``disk`` (records held), ``dropped`` (candidates without room),
        ``evicted`` (candidates that left the top lists), ``record_bytes``.
    update_s : float
        Seconds mining spent keeping and dropping records (the stash's cost).

    Examples
    --------
    >>> with ActivationStash("layer3", memory_bytes=8 << 30) as stash:
    ...     refs = mine_references(model, data, "layer4", 100, stash=stash)
    ...     R = circuit_attributions(model, data, refs, "layer4", "layer3", stash=stash)
    """

    def __init__(self, lower_layer: str, *, memory_bytes: int = 1 << 30, disk_bytes: int = 0,
                 folder=None):
        if not isinstance(lower_layer, str) or not lower_layer:
            raise ValueError(f"lower_layer={lower_layer!r}: give the name of one module")
        for name, value in (("memory_bytes", memory_bytes), ("disk_bytes", disk_bytes)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name}={value!r} must be a number of bytes >= 0")
        self.lower_layer = lower_layer
        self.memory_bytes, self.disk_bytes = int(memory_bytes), int(disk_bytes)
        self.folder = Path(folder) if folder is not None else default_cache_dir() / "stash"
        self.layer = self.problem = self.identity = None
        self._batch: dict = {}
        self._fd = None
        self.clear()

    # -- bookkeeping --------------------------------------------------------------------------
    def clear(self) -> None:
        """Forget everything held (the spill file is closed and its space freed)."""
        self._where: dict[int, tuple[str, int]] = {}   # dataset index -> (tier, slot)
        self._chunks: list[torch.Tensor] = []
        self._free = {"memory": [], "disk": []}
        self._disk_slots = 0
        self.shape = self.dtype = self.device = None
        self.stats = {"memory": 0, "disk": 0, "dropped": 0, "evicted": 0, "record_bytes": 0}
        self.update_s = 0.0  # time spent keeping and dropping, part of the mining time
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    close = clear

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.clear()

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __contains__(self, index) -> bool:
        return int(index) in self._where

    def __len__(self) -> int:
        return len(self._where)

    def __repr__(self) -> str:
        return (f"ActivationStash(lower_layer={self.lower_layer!r}, layer={self.layer!r}, "
                f"held={len(self)} (memory {self.stats['memory']}, disk {self.stats['disk']}), "
                f"dropped={self.stats['dropped']}, memory_bytes={self.memory_bytes}, "
                f"disk_bytes={self.disk_bytes})")

    # -- mining -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def recording(self, model, layer: str):
        """While mining ``layer``: see each batch's input of ``layer`` and check where it comes
        from (under torch.distributed each rank keeps the candidates of the images it mines)."""
        lower, top = get_layer(model, self.lower_layer), get_layer(model, layer)
        self.clear()
        self.layer, self.problem = layer, None
        seen = self._batch

        def remember(_module, _inputs, output):
            seen["out"] = output

        def check(_module, args, kwargs):
            x = seen.pop("out", None)
            if len(args) != 1 or kwargs or args[0] is not x:
                if self.problem is None:
                    self.problem = (f"the input of layer {layer!r} is not the output of "
                                    f"{self.lower_layer!r}, so {layer!r} cannot be run from it")
                return
            # a copy taken now: what the layer receives, whatever happens to the tensor later
            seen["x"] = x.detach().clone()

        handles = [lower.register_forward_hook(remember),
                   top.register_forward_pre_hook(check, with_kwargs=True)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            seen.clear()
            if self.problem is not None:
                self.clear()

    def update(self, indices, live: torch.Tensor) -> None:
        """After a mining batch: keep the new candidates of the batch, drop the former ones.

        Parameters
        ----------
        indices : list of int
            Dataset index of each row of the batch the recording saw.
        live : LongTensor[C, m]
            The merged top lists (dataset indices) after the batch.
        """
        x = self._batch.pop("x", None)
        if self.problem is not None or x is None:
            return
        start = time.perf_counter()
        self.retain(live)
        batch = torch.as_tensor(list(indices), device=live.device)
        rows = torch.isin(batch, live.reshape(-1)).nonzero().flatten().tolist()
        if rows:
            self._store([int(indices[r]) for r in rows], x[rows])
        self.update_s += time.perf_counter() - start

    def retain(self, live: torch.Tensor) -> None:
        """Drop every held image that is not in ``live`` (LongTensor of dataset indices)."""
        if not self._where:
            return
        held = torch.tensor(list(self._where), device=live.device)
        for i in held[~torch.isin(held, live.reshape(-1))].tolist():
            tier, slot = self._where.pop(i)
            self._free[tier].append(slot)
            self.stats[tier] -= 1
            self.stats["evicted"] += 1

    def _slot(self) -> tuple[str, int] | None:
        """A free slot, the memory tier first; ``None`` when both tiers are full."""
        if self._free["memory"]:
            return "memory", self._free["memory"].pop()
        base = len(self._chunks) * _CHUNK  # every chunk but the last holds _CHUNK records
        room = min(_CHUNK, self.memory_bytes // self.stats["record_bytes"] - base)
        if room > 0:
            with torch.inference_mode(False):  # an ordinary tensor, readable by autograd later
                self._chunks.append(torch.empty(room, *self.shape, dtype=self.dtype,
                                                device=self.device))
            self._free["memory"] = list(range(base + room - 1, base, -1))
            return "memory", base
        if self._free["disk"]:
            return "disk", self._free["disk"].pop()
        if (self._disk_slots + 1) * self.stats["record_bytes"] <= self.disk_bytes:
            if self._fd is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd, path = tempfile.mkstemp(prefix="stash-", suffix=".bin", dir=self.folder)
                os.unlink(path)  # the space is freed when the file is closed, even after a crash
                self._fd = fd
            self._disk_slots += 1
            return "disk", self._disk_slots - 1
        return None

    def _store(self, indices: list, rows: torch.Tensor) -> None:
        if self.shape is None:
            self.shape, self.dtype, self.device = tuple(rows.shape[1:]), rows.dtype, rows.device
            self.stats["record_bytes"] = rows[0].numel() * rows.element_size()
        on_disk = []
        for j, i in enumerate(indices):
            place = self._slot()
            if place is None:
                self.stats["dropped"] += 1
                continue
            tier, slot = place
            self._where[i] = place
            self.stats[tier] += 1
            if tier == "memory":
                self._chunks[slot // _CHUNK][slot % _CHUNK].copy_(rows[j])
            else:
                on_disk.append((j, slot))
        if on_disk:
            host = rows[[j for j, _ in on_disk]].cpu().contiguous()
            raw = host.view(torch.uint8).reshape(len(on_disk), -1).numpy()
            size = self.stats["record_bytes"]
            for (_, slot), record in zip(on_disk, raw):
                os.pwrite(self._fd, record.tobytes(), slot * size)

    # -- attribution --------------------------------------------------------------------------
    def fetch(self, indices, device=None) -> torch.Tensor:
        """The kept activations of ``indices`` (all held), ``Tensor[len(indices), *shape]``.

        Parameters
        ----------
        indices : list of int
            Dataset indices, each one held (``i in stash``).
        device : torch.device, optional
            Where the result goes (default: where the memory tier lives).
        """
        missing = [int(i) for i in indices if int(i) not in self._where]
        if missing:
            raise KeyError(f"dataset indices {missing[:10]} are not held by the stash (it holds "
                           f"{len(self)} images; check with `i in stash`)")
        device = torch.device(device) if device is not None else self.device
        out = torch.empty(len(indices), *self.shape, dtype=self.dtype, device=device)
        size = self.stats["record_bytes"]
        disk = []
        for j, i in enumerate(indices):
            tier, slot = self._where[int(i)]
            if tier == "memory":
                out[j].copy_(self._chunks[slot // _CHUNK][slot % _CHUNK], non_blocking=True)
            else:
                disk.append((j, slot))
        if disk:
            raw = np.empty((len(disk), size), dtype=np.uint8)
            for row, (_, slot) in zip(raw, disk):
                got = os.preadv(self._fd, [row], slot * size)
                if got != size:
                    raise OSError(f"stash spill file: read {got} of {size} bytes")
            host = torch.from_numpy(raw).view(self.dtype).reshape(len(disk), *self.shape)
            out[[j for j, _ in disk]] = host.to(device)
        return out

    def status(self, model, dataset, layer: str, lower_layers) -> str:
        """``"ok"``: the attribution of ``layer`` from ``lower_layers`` can start from this stash;
        ``"empty"``: it holds nothing (a rank whose share of images kept nothing);
        ``"unfit"``: it cannot serve (nothing can be kept for these layers, other layers, or
        records of a lower precision than the model's outside autocast).

        Raises ``ValueError`` when ``model`` or ``dataset`` is not the one it was filled on.
        """
        lowers = [lower_layers] if isinstance(lower_layers, str) else list(lower_layers)
        if self.problem is not None or lowers != [self.lower_layer] or layer != self.layer:
            return "unfit"
        weight = next(model.parameters(), None)
        if weight is not None and self.dtype not in (None, weight.dtype) \
                and not torch.is_autocast_enabled(weight.device.type):
            return "unfit"  # kept under autocast (bf16), asked for in full precision
        given = identity(model, dataset)
        if given != self.identity:
            raise ValueError(f"the stash was filled while mining model and dataset "
                             f"{self.identity}, but the ones given are {given}; pass the stash "
                             "of the mining run of this model and dataset, or none")
        return "ok" if self._where else "empty"

    def held(self) -> list[int]:
        """The dataset indices held, ascending."""
        return sorted(self._where)


def stash_serves(stash, model, dataset, layer: str, lower_layers) -> bool:
    """Whether a stage of ``layer`` from ``lower_layers`` starts from ``stash`` (every rank
    agrees under torch.distributed: the ranks then take the same path)."""
    local = "none" if stash is None else stash.status(model, dataset, layer, lower_layers)
    states = all_gather_objects(local)
    return "ok" in states and not {"none", "unfit"} & set(states)


def feed_batches(model, dataset, plan, *, stash=None, num_workers: int = 0, device=None):
    """This process's batches of a stage, with what the stage runs on.

    Parameters
    ----------
    model : nn.Module
    dataset : Dataset
    plan : list of list of int
        The batches (dataset indices) a single process computes, in order.
    stash : ActivationStash, optional
        Serves the lower layer's output (see :func:`stash_serves`).
    num_workers : int
        DataLoader worker processes that read the images ahead.
    device : torch.device

    Yields
    ------
    batch : list of int
        A batch of ``plan``. Under torch.distributed rank ``r`` of ``W`` gets batches ``r``,
        ``r + W``, ... - each the very batch a single process forms, so that the results are
        the single-process ones.
    x : Tensor[len(batch), 3, H, W] or None
        The model inputs (without a stash).
    lower : Tensor[len(batch), *shape] or None
        With a stash: the lower layer's output - kept by this rank or another one (sent over in
        rounds of one batch per rank), or computed from the inputs for images nobody kept.
    """
    rank, size = rank_and_size()
    rounds = [[plan[t + w] if t + w < len(plan) else [] for w in range(size)]
              for t in range(0, len(plan), size)]
    pin = torch.device(device).type == "cuda"
    if stash is None:
        inputs = iter_images(dataset, [r[rank] for r in rounds if r[rank]], num_workers,
                             pin_memory=pin)
        for r in rounds:
            if r[rank]:
                yield r[rank], next(inputs).to(device, non_blocking=True), None
        return
    kept = set().union(*map(set, all_gather_objects(stash.held())))
    shape, dtype = first_found((stash.shape, stash.dtype) if len(stash) else None)
    missing = [[i for i in r[rank] if i not in kept] for r in rounds]
    inputs = iter_images(dataset, [m for m in missing if m], num_workers, pin_memory=pin)
    for r, miss in zip(rounds, missing):
        # every rank puts in what it holds of the round's batches; the sum hands each rank its own
        width = max(map(len, r))
        low = torch.zeros(size, width, *shape, dtype=dtype, device=device)
        for w, batch in enumerate(r):
            rows = [j for j, i in enumerate(batch) if i in stash]
            if rows:
                low[w, rows] = stash.fetch([batch[j] for j in rows], device)
        low = sum_across_ranks(low)[rank, :len(r[rank])]
        if not r[rank]:
            continue
        if miss:
            x = next(inputs).to(device, non_blocking=True)
            with torch.no_grad():
                rows = [j for j, i in enumerate(r[rank]) if i not in kept]
                low[rows] = forward_until(model, x, stash.lower_layer).to(dtype)
        yield r[rank], None, low


def identity(model, dataset) -> tuple:
    """What a stash is valid for: the model's weights and the dataset (its fingerprint, or the
    object itself for a dataset without one)."""
    return model_fingerprint(model), dataset_fingerprint(dataset) or f"object {id(dataset)}"
