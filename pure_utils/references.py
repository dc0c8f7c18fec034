"""Reference samples: the most activating dataset samples of every channel of a layer.

PURE describes a neuron by the ``n_ref`` samples on which it responds most strongly, measured
by the spatial maximum of its activation map ("max-pooling", as in the reference pipeline).
:func:`mine_references` finds them for all channels of a layer in one pass over the data:

- the forward pass stops right after the layer (a forward hook raises a private exception),
  so nothing above the layer is computed; this works for any ``nn.Module`` model;
- a running top-``n_ref`` per channel is merged with each batch, so memory does not depend
  on the dataset size;
- ties are broken by the lower dataset index (a stable sort of candidates kept in index order).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ._progress import tqdm
from .cache import cached
from .data import check_dataset, iter_batches
from .models import eval_mode, forward_until, get_layer, resolve_device

__all__ = ["References", "mine_references", "neuron_ids"]


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------
@dataclass
class References:
    """The most activating samples of each channel of a layer.

    Attributes
    ----------
    indices : LongTensor[C, n_ref]
        Dataset indices, by descending value; equal values in ascending index order.
    values : Tensor[C, n_ref]
        Spatial maximum of the channel's activation map on each sample.
    positions : LongTensor[C, n_ref, 2]
        ``(row, col)`` of that maximum in the layer's map (first in row-major order on ties).
    map_size : tuple[int, int]
        ``(h, w)`` of the layer's feature map.
    input_size : tuple[int, int]
        ``(H, W)`` of the model input.
    layer : str
        The layer's module name.
    channels : LongTensor[C]
        The channel of each row (``arange(C)`` unless made by :meth:`subset`).
    """

    indices: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    map_size: tuple
    input_size: tuple
    layer: str
    channels: torch.Tensor = field(default=None)

    def __post_init__(self):
        if self.channels is None:
            self.channels = torch.arange(self.indices.shape[0])
        self.map_size = tuple(int(s) for s in self.map_size)
        self.input_size = tuple(int(s) for s in self.input_size)

    @property
    def n_ref(self) -> int:
        """Number of reference samples per channel."""
        return int(self.indices.shape[1])

    @property
    def n_channels(self) -> int:
        """Number of rows (channels) held."""
        return int(self.indices.shape[0])

    def __repr__(self) -> str:
        return (f"References(layer={self.layer!r}, channels={self.n_channels}, n_ref={self.n_ref}, "
                f"map_size={self.map_size}, input_size={self.input_size})")

    def rows(self, neurons) -> torch.Tensor:
        """Row positions of the channels ``neurons`` (ValueError if one is not held).

        Parameters
        ----------
        neurons : int or sequence of int or None
            Channel indices; ``None`` means all rows.

        Returns
        -------
        LongTensor[len(neurons)]
        """
        if neurons is None:
            return torch.arange(self.n_channels)
        neurons = neuron_ids(neurons)
        lookup = {int(c): i for i, c in enumerate(self.channels.tolist())}
        bad = [k for k in neurons if k not in lookup]
        if bad:
            if torch.equal(self.channels, torch.arange(self.n_channels)):
                accepted = f"0..{self.n_channels - 1}"
            else:
                accepted = ", ".join(map(str, self.channels.tolist()[:20])) + (
                    ", ..." if self.n_channels > 20 else "")
            raise ValueError(f"neuron index {bad[0]} out of range for layer {self.layer!r}; "
                             f"channels: {accepted}")
        return torch.tensor([lookup[k] for k in neurons], dtype=torch.long)

    def subset(self, neurons) -> "References":
        """The references of the channels ``neurons`` only (``channels`` records which)."""
        r = self.rows(neurons)
        return replace(self, indices=self.indices[r], values=self.values[r],
                       positions=self.positions[r], channels=self.channels[r])

    def head(self, n: int) -> "References":
        """The first ``n`` (most activating) reference samples of every channel."""
        if not 1 <= n <= self.n_ref:
            raise ValueError(f"n={n} not in 1..{self.n_ref}")
        return replace(self, indices=self.indices[:, :n], values=self.values[:, :n],
                       positions=self.positions[:, :n])

    def to_tensors(self) -> dict:
        """Tensors for storage (see :meth:`from_tensors`)."""
        return {"indices": self.indices, "values": self.values, "positions": self.positions,
                "channels": self.channels,
                "map_size": torch.tensor(self.map_size), "input_size": torch.tensor(self.input_size)}

    @classmethod
    def from_tensors(cls, tensors: dict, layer: str) -> "References":
        """Inverse of :meth:`to_tensors`."""
        return cls(indices=tensors["indices"].long(), values=tensors["values"],
                   positions=tensors["positions"].long(), channels=tensors["channels"].long(),
                   map_size=tuple(tensors["map_size"].tolist()),
                   input_size=tuple(tensors["input_size"].tolist()), layer=layer)


def neuron_ids(neurons) -> list[int]:
    """Channel ids as a list of ``int`` (one id or a sequence; non-integers are refused)."""
    if isinstance(neurons, (int,)) or (isinstance(neurons, torch.Tensor) and neurons.ndim == 0):
        return [int(neurons)]
    out = []
    for k in neurons:
        if isinstance(k, bool) or not float(k).is_integer():
            raise ValueError(f"neuron index {k!r} is not an integer")
        out.append(int(k))
    return out


# --------------------------------------------------------------------------------------------
# mining
# --------------------------------------------------------------------------------------------
def _merge_topk(best, new, n_ref):
    """Merge running top-k ``best`` with the candidates ``new`` (both dicts of [C, m] tensors).

    ``best`` holds lower dataset indices than ``new``, and both are in ascending index order for
    equal values, so a *stable* descending sort keeps ties in ascending index order.
    """
    if best is None:
        merged = new
    else:
        merged = {k: torch.cat([best[k], new[k]], dim=1) for k in best}
    order = torch.sort(merged["values"], dim=1, descending=True, stable=True).indices[:, :n_ref]
    return {k: torch.gather(v, 1, order) for k, v in merged.items()}


def mine_references(model: nn.Module, dataset, layer: str, n_ref: int = 100, *,
                    batch_size: int = 64, device=None, cache=None, progress: bool = True,
                    num_workers: int = 0) -> References:
    """Find the ``n_ref`` most activating samples of every channel of ``layer``.

    A sample's value for channel ``c`` is the spatial maximum of ``c``'s activation map.
    One forward pass over the data, stopped right after ``layer``, without gradients.

    Parameters
    ----------
    model : nn.Module
        Any CNN (put into ``eval()`` mode for the pass).
    dataset : Dataset
        ``len(dataset)`` and ``dataset[i] -> (Tensor[3, H, W], label)``; ``dataset.fingerprint``
        is needed for caching.
    layer : str
        Module name, e.g. ``"layer4"``.
    n_ref : int
        Reference samples per channel, ``1 <= n_ref <= len(dataset)``.
    batch_size : int
        Images per forward pass.
    device : str or torch.device, optional
        Where to compute (the model is moved there); default: the model's device.
    cache : None, True, Cache or path
        ``None``: no caching; ``True``: the default :class:`~pure_utils.cache.Cache`.
    progress : bool
        Show a progress bar.
    num_workers : int
        DataLoader workers (0: load in the main process).

    Returns
    -------
    References
        ``indices`` LongTensor[C, n_ref], ``values`` Tensor[C, n_ref], ``positions``
        LongTensor[C, n_ref, 2], ``map_size``, ``input_size``, ``layer``.
    """
    get_layer(model, layer)  # ValueError listing the layers
    n = check_dataset(dataset)
    if isinstance(n_ref, bool) or not isinstance(n_ref, int) or not 1 <= n_ref <= n:
        raise ValueError(f"n_ref={n_ref!r} must be an integer in 1..len(dataset)={n}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    device = resolve_device(model, device)

    def compute():
        best = None
        map_size = input_size = None
        bar = tqdm(total=n, desc=f"mining {layer}", disable=not progress, unit="img")
        with torch.inference_mode(), eval_mode(model):
            for start, x in iter_batches(dataset, batch_size, num_workers):
                x = x.to(device)
                act = forward_until(model, x, layer)
                if act.ndim == 2:  # a vector layer: a 1x1 map
                    act = act[:, :, None, None]
                b, c = act.shape[:2]
                map_size = tuple(act.shape[2:])
                input_size = tuple(x.shape[2:])
                flat = act.reshape(b, c, -1).float()
                # argmax returns the first maximum: row-major order on ties
                pos = flat.argmax(dim=2)
                vals = torch.gather(flat, 2, pos[..., None])[..., 0]
                idx = torch.arange(start, start + b, device=device).expand(c, b)
                best = _merge_topk(best, {"values": vals.T, "indices": idx, "flat": pos.T}, n_ref)
                bar.update(b)
        bar.close()
        w = map_size[-1] if len(map_size) else 1
        positions = torch.stack([best["flat"] // w, best["flat"] % w], dim=-1)
        # clones: ordinary tensors, not inference-mode ones, for the caller
        return {"indices": best["indices"].cpu().clone(), "values": best["values"].cpu().clone(),
                "positions": positions.cpu().clone(), "channels": torch.arange(best["values"].shape[0]),
                "map_size": torch.tensor(map_size[-2:] if len(map_size) >= 2 else (1, 1)),
                "input_size": torch.tensor(input_size[-2:])}

    tensors = cached("references", cache, dataset, compute, model=model, layer=layer, n_ref=n_ref)
    return References.from_tensors(tensors, layer)
