"""Reference samples: the most activating dataset samples of every channel of a layer.

PURE describes a neuron by the ``n_ref`` samples on which it responds most strongly, measured
by the spatial maximum of its activation map ("max-pooling", as in the reference pipeline).
The layer's output is read through its layout (:mod:`pure_utils.layers`): the channels of a CNN
map, maximised over its positions, or the embedding dimensions of a ViT's tokens, maximised over
the patch tokens; references record the layout they were mined with.
:func:`mine_references` finds them for all channels of a layer in one pass over the data:

- the forward pass stops right after the layer (a forward hook raises a private exception),
  so nothing above the layer is computed; this works for any ``nn.Module`` model;
- a running top-``n_ref`` per channel is merged with each batch, so memory does not depend
  on the dataset size;
- ties are broken by the lower dataset index (a stable sort of candidates kept in index order);
- a sample whose activations are not finite (NaN or inf) is never ranked: mining stops naming
  it, or, with ``on_nonfinite="skip"``, leaves it out and lists it in ``References.skipped``.
  An image file that cannot be read (any error while reading it) is treated alike
  (``on_unreadable``); with a cache, the work done before any stop - these, or a fault in the
  model's forward pass - is kept, and the next run continues from there
  (:mod:`pure_utils.checkpoints`, also after the damaged file was deleted);
- a model in half precision gets inputs in its precision; one without weights (``meta``) is refused.

References remember the model and dataset they were mined on (their fingerprints) and the input
size; :func:`check_references` is how every stage that takes references refuses other ones.
Under torch.distributed the ranks first check that they were given the same dataset and model.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ._progress import tqdm
from .cache import (TensorSpec, cache_entry, dataset_fingerprint, model_description,
                    model_difference, model_fingerprint, model_identity)
from .checkpoints import Stopped, resumable
from .data import UnreadableImageError, check_dataset, iter_samples
from .distributed import (all_gather_objects, check_same_on_every_rank, is_distributed, is_main,
                          portable_error, shard_range)
from .layers import Layout, eval_mode, forward_until, layer_layout, layout_key
from .models import input_dtype, resolve_device
from .stash import ActivationStash, identity

__all__ = ["References", "mine_references", "check_references", "neuron_ids", "index_tensor",
           "ON_BAD_SAMPLE"]

#: Accepted values of ``on_nonfinite`` and ``on_unreadable``.
ON_BAD_SAMPLE = ("raise", "skip")
_SKIPPED = ("nonfinite", "unreadable")


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
        ``(row, col)`` of that maximum in the layer's map (first in row-major order on ties);
        for tokens, on the patch grid (see :meth:`pure_utils.layers.Layout.positions_grid`).
    map_size : tuple[int, int]
        ``(h, w)`` of the layer's feature map (tokens: of the patch grid).
    input_size : tuple[int, int]
        ``(H, W)`` of the model input.
    layer : str
        The layer's module name.
    channels : LongTensor[C]
        The channel of each row (``arange(C)`` unless made by :meth:`subset`).
    model_fingerprint, dataset_fingerprint : str or None
        What the references were mined on (:func:`pure_utils.cache.model_fingerprint`, the
        dataset's ``fingerprint``); stages given another model or dataset refuse them
        (:func:`check_references`). ``None`` (references built by hand): not checked.
    skipped : dict[str, LongTensor[m]]
        Dataset indices left out of the ranking: ``"nonfinite"`` (NaN or inf activations) and
        ``"unreadable"`` (image files that could not be read); empty unless mined with
        ``on_nonfinite="skip"`` / ``on_unreadable="skip"``.
    layout : Layout or None
        How the layer's output was read (:mod:`pure_utils.layers`); ``None`` (built by hand):
        stages detect it from the model.
    model_description : str or None
        The model they were mined on in words (:func:`pure_utils.cache.model_description`),
        for the message that refuses another model.
    """

    indices: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    map_size: tuple
    input_size: tuple
    layer: str
    channels: torch.Tensor = field(default=None)
    model_fingerprint: str | None = None
    dataset_fingerprint: str | None = None
    skipped: dict = field(default_factory=dict)
    layout: Layout | None = None
    model_description: str | None = None

    def __post_init__(self):
        if self.channels is None:
            self.channels = torch.arange(self.indices.shape[0])
        self.map_size = tuple(int(s) for s in self.map_size)
        self.input_size = tuple(int(s) for s in self.input_size)
        self.skipped = {k: torch.as_tensor(self.skipped.get(k, []), dtype=torch.long)
                        for k in _SKIPPED}

    @property
    def n_ref(self) -> int:
        """Number of reference samples per channel."""
        return int(self.indices.shape[1])

    @property
    def n_channels(self) -> int:
        """Number of rows (channels) held."""
        return int(self.indices.shape[0])

    dead = property(lambda self: self.channels[self.values[:, 0] <= 0] if self.n_ref else self.channels[:0],
                    doc="LongTensor[m]: channels whose maximum activation over the data is <= 0.")

    def __repr__(self) -> str:
        skipped = "".join(f", skipped_{k}={len(v)}" for k, v in self.skipped.items() if len(v))
        plain = self.layout is None or self.layout.kind == "map"
        layout = "" if plain else f", layout='{self.layout}'"
        return (f"References(layer={self.layer!r}, channels={self.n_channels}, n_ref={self.n_ref}, "
                f"map_size={self.map_size}, input_size={self.input_size}{layout}{skipped})")

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
        """Tensors for storage (see :meth:`from_tensors`; the fingerprints are strings, kept apart)."""
        return {"indices": self.indices, "values": self.values, "positions": self.positions,
                "channels": self.channels,
                "map_size": torch.tensor(self.map_size), "input_size": torch.tensor(self.input_size),
                **{f"skipped_{k}": v for k, v in self.skipped.items()}}

    @classmethod
    def from_tensors(cls, tensors: dict, layer: str, *, model_fingerprint: str | None = None,
                     dataset_fingerprint: str | None = None, layout: Layout | None = None,
                     model_description: str | None = None) -> "References":
        """Inverse of :meth:`to_tensors` (the layout is not stored: it comes from the model)."""
        return cls(indices=tensors["indices"].long(), values=tensors["values"],
                   positions=tensors["positions"].long(), channels=tensors["channels"].long(),
                   map_size=tuple(tensors["map_size"].tolist()),
                   input_size=tuple(tensors["input_size"].tolist()), layer=layer,
                   model_fingerprint=model_fingerprint, dataset_fingerprint=dataset_fingerprint,
                   skipped={k: tensors.get(f"skipped_{k}", []) for k in _SKIPPED}, layout=layout,
                   model_description=model_description)


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


def index_tensor(indices, what: str = "reference indices") -> torch.Tensor:
    """Dataset indices as a LongTensor; floating point or boolean values are refused.

    A float tensor would otherwise be truncated (1.7 -> 1) into other samples without a word.
    """
    t = torch.as_tensor(indices)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{what} have dtype {t.dtype}; give integer dataset indices "
                         "(a LongTensor or a list of ints)")
    return t.long()


def check_references(references, *, model=None, dataset=None) -> None:
    """Refuse references mined on another model, dataset or input size.

    Parameters
    ----------
    references : References
        With ``model_fingerprint`` / ``dataset_fingerprint`` set by :func:`mine_references`.
        References without them (built by hand) pass unchecked.
    model : nn.Module, optional
        Compared by its fingerprint (structure and weights).
    dataset : Dataset, optional
        Compared by its ``fingerprint``, and by the size of its images against
        ``references.input_size``.

    Raises
    ------
    ValueError
        Naming what the references were mined on and what was given.
    """
    want_model = getattr(references, "model_fingerprint", None)
    want_data = getattr(references, "dataset_fingerprint", None)
    if model is not None and want_model is not None:
        have = model_fingerprint(model)
        if have != want_model:
            mined = getattr(references, "model_description", None)
            given = model_description(model)
            raise ValueError(
                f"references were mined on model {mined or f'[{want_model}]'}, but the model given "
                f"is {given}{model_difference(mined, given)}; mine references with this model "
                "(mine_references) or pass the model they were mined on")
    if dataset is None or (want_model is None and want_data is None):
        return
    if want_data is not None:
        have = dataset_fingerprint(dataset)
        if have != want_data:
            raise ValueError(
                f"references were mined on dataset {want_data!r}, but the dataset given is "
                f"{have!r}; mine references on this dataset (mine_references) or pass the "
                "dataset they were mined on")
        return  # the same fingerprint: the same tensors, so the same input size
    size = tuple(references.input_size or ())
    if size and references.indices.numel():
        first = int(references.indices.flatten()[0])
        if first < len(dataset):
            got = tuple(torch.as_tensor(dataset[first][0]).shape[-2:])
            if got != size:
                raise ValueError(f"references were mined on inputs of size {size}, but the "
                                 f"dataset given has inputs of size {got}")


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


def _describe(indices: list, dataset=None, limit: int = 20) -> str:
    """``"3, 17 (a.jpg), ..."``: indices, with their files where the dataset has them."""
    if not indices:
        return "none"
    samples = getattr(dataset, "samples", None)
    items = [f"{i} ({samples[i][0]})" if samples is not None else str(i) for i in indices[:limit]]
    return ", ".join(items) + (f", ... ({len(indices)} in all)" if len(indices) > limit else "")


def _merge_ranks(payload: tuple, n_ref: int):
    """Merge the top lists mined by all ranks: ``(best, n_valid, skipped, map_size, input_size)``.

    ``payload`` is ``("mined", best, n_valid, skipped, map_size, input_size)``, or
    ``("stopped", error)`` from a rank that stopped at a bad sample (see :func:`_mine_shared`):
    then every rank raises the error of the first rank that stopped. Shares hold ascending
    ranges of indices in rank order, so merging them in that order with the stable merge keeps
    ties by the lower index: the result is the single-process one.
    """
    parts = all_gather_objects(payload if payload[0] == "stopped" else
                               (payload[0], *[_cpu(p) for p in payload[1:]]))
    stopped = [p[1] for p in parts if p[0] == "stopped"]
    if stopped:
        stop = Stopped(stopped[0], None)
        stop.shared = True  # every rank knows: nothing left to tell the others
        raise stop
    best, n_valid, map_size, input_size = None, 0, None, None
    skipped = {k: [] for k in _SKIPPED}
    for _, part, valid, bad, msize, isize in parts:
        n_valid += valid
        for k in _SKIPPED:
            skipped[k] += bad[k]
        if part is not None:
            best = part if best is None else _merge_topk(best, part, n_ref)
            map_size, input_size = msize, isize
    return best, n_valid, skipped, map_size, input_size


def _cpu(value):
    """Tensors (in a dict) on the CPU, for sending to other ranks."""
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    return value.cpu() if isinstance(value, torch.Tensor) else value


def _mine_shared(*args, **kwargs) -> dict:
    """:func:`_mine`; under torch.distributed a rank that stops at a bad sample tells the others
    (which wait in :func:`_merge_ranks`), and all of them raise the same error."""
    try:
        return _mine(*args, **kwargs)
    except Stopped as stop:
        if not is_distributed() or getattr(stop, "shared", False):
            raise
        _merge_ranks(("stopped", portable_error(stop.error)), 0)
        raise  # not reached: _merge_ranks raises for every rank


def _rank_batch(model, x, rows, best, n_ref, *, layer, layout, on_nonfinite, dataset, stash):
    """One batch merged into the top lists ``best`` (left as they are): ``(new top lists, rows
    ranked, rows left out as non-finite, map size, input size)``."""
    act = layout.check(forward_until(model, x, layer), layer)
    flat = layout.channels(act).float()  # [B, C, positions]; a vector: one position
    c = flat.shape[1]
    map_size, input_size = layout.positions_grid(act, x.shape[2:]), tuple(x.shape[2:])
    finite = torch.isfinite(flat).flatten(1).all(1).cpu()
    kept, bad = rows, []
    if not finite.all():
        bad = [i for i, ok in zip(rows, finite.tolist()) if not ok]
        if on_nonfinite == "raise":
            raise ValueError(
                f"activations of layer {layer!r} are not finite (NaN or inf) on dataset "
                f"indices {_describe(bad, dataset)}; such samples would rank first. Check "
                "these inputs, or pass on_nonfinite='skip' to leave them out (they are "
                "listed in References.skipped)")
        kept = [i for i, ok in zip(rows, finite.tolist()) if ok]
        flat = flat[finite.to(flat.device)]
        if not kept:
            return best, kept, bad, map_size, input_size
    # argmax returns the first maximum: row-major order on ties
    pos = flat.argmax(dim=2)
    vals = torch.gather(flat, 2, pos[..., None])[..., 0]
    idx = torch.tensor(kept, device=flat.device).expand(c, len(kept))
    best = _merge_topk(best, {"values": vals.T, "indices": idx, "flat": pos.T}, n_ref)
    if stash is not None:  # keep the lower layer's output of the new candidates
        stash.update(rows, best["indices"])
    return best, kept, bad, map_size, input_size


def _mine(model, dataset, layer, n_ref, *, layout, batch_size, num_workers, device, progress,
          on_nonfinite, on_unreadable, resume=None, stash=None, final=None) -> dict:
    """The streaming top-``n_ref`` pass (see :func:`mine_references`), from ``resume`` if given.

    Any error stops it as :class:`Stopped`, with the state after the last batch merged (a
    batch counts whole or not at all); ``final`` (a dict) receives the state at the end.
    Under torch.distributed this process mines its share of the images (whole batches, see
    :func:`pure_utils.distributed.shard_range`) and the shares are merged (:func:`_merge_ranks`).
    """
    n = len(dataset)
    start, stop = shard_range(n, block=batch_size)
    best, n_valid = None, 0
    skipped = {k: [] for k in _SKIPPED}
    map_size = input_size = None
    if resume is not None:  # the state saved when a previous run stopped
        best = {k: resume[k].to(device) for k in ("values", "indices", "flat")}
        start, n_valid = int(resume["next"]), int(resume["n_valid"])
        skipped = {k: resume[f"skipped_{k}"].tolist() for k in _SKIPPED}
        map_size, input_size = tuple(resume["map_size"].tolist()), tuple(resume["input_size"].tolist())

    def state(next_index):
        if best is None:
            return None
        return {**{k: v.cpu().clone() for k, v in best.items()}, "next": torch.tensor(next_index),
                "n_valid": torch.tensor(n_valid), "map_size": torch.tensor(map_size),
                "input_size": torch.tensor(input_size),
                **{f"skipped_{k}": torch.tensor(v, dtype=torch.long) for k, v in skipped.items()}}

    bar = tqdm(total=stop, initial=start, desc=f"mining {layer}", unit="img",
               disable=not progress or not is_main())
    batches = iter_samples(dataset, batch_size, num_workers, start=start, stop=stop,
                           skip_unreadable=on_unreadable == "skip",
                           pin_memory=torch.device(device).type == "cuda")
    recording = (stash.recording(model, layer) if stash is not None
                 else contextlib.nullcontext())
    dtype, step = input_dtype(model), dict(layer=layer, layout=layout, on_nonfinite=on_nonfinite,
                                            dataset=dataset, stash=stash)
    with torch.inference_mode(), eval_mode(model), recording:
        while True:
            first = start
            try:
                rows, x, unreadable = next(batches)  # rows: the dataset index of each image
                if x is not None:
                    best, kept, bad, map_size, input_size = _rank_batch(
                        model, x.to(device, dtype, non_blocking=True), rows, best, n_ref, **step)
                    n_valid += len(kept)
                    skipped["nonfinite"] += bad
            except StopIteration:
                break
            except UnreadableImageError as err:
                raise Stopped(UnreadableImageError(
                    f"{err}. Mining stopped there; pass on_unreadable='skip' to leave such files "
                    "out (they are listed in References.skipped)"), state(first)) from None
            except Exception as err:  # a fault in the forward pass, non-finite values...
                raise Stopped(err, state(first)) from None
            skipped["unreadable"] += [i for i, _ in unreadable]
            start = max(rows + [i for i, _ in unreadable]) + 1
            bar.update(start - first)
    bar.close()
    if final is not None and not is_distributed():
        final.update(state(stop) or {})
    if is_distributed():
        best, n_valid, skipped, map_size, input_size = _merge_ranks(
            ("mined", best, n_valid, skipped, map_size, input_size), n_ref)
        if stash is not None and best is not None:
            stash.retain(best["indices"])  # candidates of this share that lost to another's
    return _result(best, n_valid, skipped, map_size, input_size, n, n_ref, dataset)


def _result(best, n_valid, skipped, map_size, input_size, n, n_ref, dataset) -> dict:
    """The references' tensors from the final top lists (see :meth:`References.to_tensors`)."""
    if n_valid < n_ref:
        raise ValueError(
            f"only {n_valid} of {n} samples could be ranked (left out: non-finite "
            f"{_describe(skipped['nonfinite'], dataset)}; unreadable "
            f"{_describe(skipped['unreadable'], dataset)}); n_ref={n_ref} needs at least {n_ref}")
    w = map_size[-1] if len(map_size) else 1
    positions = torch.stack([best["flat"] // w, best["flat"] % w], dim=-1)
    # clones: ordinary tensors, not inference-mode ones, for the caller
    return {"indices": best["indices"].cpu().clone(), "values": best["values"].cpu().clone(),
            "positions": positions.cpu().clone(), "channels": torch.arange(best["values"].shape[0]),
            "map_size": torch.tensor(map_size[-2:] if len(map_size) >= 2 else (1, 1)),
            "input_size": torch.tensor(input_size[-2:]),
            **{f"skipped_{k}": torch.tensor(sorted(v), dtype=torch.long) for k, v in skipped.items()}}


def _check_mined(refs: References, dataset, policies: dict) -> None:
    """Raise for stored left-out samples a policy refuses; warn naming skipped and dead ones."""
    for kind, policy in policies.items():
        bad = refs.skipped[kind].tolist()
        if bad and policy == "raise":
            what = "have non-finite activations" if kind == "nonfinite" else "cannot be read"
            raise ValueError(f"dataset indices {_describe(bad, dataset)} {what} (left out of the "
                             f"stored references); pass on_{kind}='skip' to accept that")
        if bad:
            warnings.warn(f"mining {refs.layer!r}: {len(bad)} sample(s) left out ({kind}): "
                          f"{_describe(bad, dataset)}; see References.skipped", stacklevel=3)
    if len(dead := refs.dead):
        warnings.warn(f"mining {refs.layer!r}: {len(dead)} of {refs.n_channels} channels never activate "
                      f"(max <= 0 on all {len(dataset)} samples): {_describe(dead.tolist(), limit=10)}; "
                      "their references are arbitrary (References.dead)", stacklevel=3)


def mine_references(model: nn.Module, dataset, layer: str, n_ref: int = 100, *,
                    batch_size: int = 64, device=None, cache=None, progress: bool = True,
                    num_workers: int = 0, on_nonfinite: str = "raise",
                    on_unreadable: str = "raise", stash: ActivationStash | None = None,
                    layout=None, tokens: str | None = None) -> References:
    """Find the ``n_ref`` most activating samples of every channel of ``layer``.

    A sample's value for channel ``c`` is the spatial maximum of ``c``'s activation map (for
    a ViT's tokens: the maximum of embedding dimension ``c`` over the patch tokens).
    One forward pass over the data, stopped right after ``layer``, without gradients.

    Parameters
    ----------
    model : nn.Module
        Any CNN or vision transformer (put into ``eval()`` mode for the pass).
    dataset : Dataset
        ``len(dataset)`` and ``dataset[i] -> (Tensor[3, H, W], label)``; ``dataset.fingerprint``
        is needed for caching.
    layer : str
        Module name, e.g. ``"layer4"``.
    n_ref : int
        Reference samples per channel, ``1 <= n_ref <= len(dataset)``.
    batch_size, device, cache, progress, num_workers
        The run options (see :mod:`pure_utils`).
    on_nonfinite : {"raise", "skip"}
        A sample with a NaN or infinite activation anywhere in ``layer``: ``"raise"`` stops with
        a ``ValueError`` naming the dataset indices; ``"skip"`` leaves it out of every ranking
        and lists it in ``References.skipped["nonfinite"]`` (with a warning).
    on_unreadable : {"raise", "skip"}
        An image that cannot be read (a damaged file): ``"raise"`` stops with an
        :class:`~pure_utils.data.UnreadableImageError` naming the file; ``"skip"`` leaves it
        out and lists it in ``References.skipped["unreadable"]``.
    stash : ActivationStash, optional
        Keeps the output of ``stash.lower_layer`` for the reference images, so that circuit
        attribution (given the same stash) need not run them through the model again
        (:mod:`pure_utils.stash`). Emptied first; filled only when mining runs (not on a cache
        hit).
    layout : None, str or Layout
        How to read the layer's output (default: detected from the model,
        :func:`pure_utils.layers.layer_layout`); e.g. ``"tokens"``.
    tokens : {"patches", "all"}, optional
        Token layers: maximise over the patch tokens (default) or over all tokens (class and
        register tokens included; positions are then token indices on a ``1 x N`` grid).

    Returns
    -------
    References
        ``indices`` LongTensor[C, n_ref], ``values`` Tensor[C, n_ref], ``positions``
        LongTensor[C, n_ref, 2], ``map_size``, ``input_size``, ``layer``, the fingerprints of
        ``model`` and ``dataset``, ``skipped`` and ``layout``.

    Notes
    -----
    With a cache, a run stopped by a bad sample or any other error (a fault in the model's
    forward pass) keeps what it ranked before it: the next run with the same model, dataset,
    layer and ``n_ref`` (e.g. with ``"skip"``) continues from there and gives the result of an
    uninterrupted run; for an image folder also after the files it left out were deleted
    (:mod:`pure_utils.checkpoints`).

    A model in half precision gets its inputs in that precision; one in train mode is mined in
    eval mode (and left in train mode).

    Under torch.distributed (``torchrun``) every rank mines its share of the images and the
    shares are merged into the single-process result, ties included; every rank returns it,
    and rank 0 alone uses the cache (:mod:`pure_utils.distributed`). A run stopped by a bad
    sample then starts again from the beginning.
    """
    lay = layer_layout(model, layer, layout, tokens)  # ValueError listing the layers
    if stash is not None and not isinstance(stash, ActivationStash):
        raise ValueError(f"stash={stash!r}: give an ActivationStash or None")
    n = check_dataset(dataset)
    if isinstance(n_ref, bool) or not isinstance(n_ref, int) or not 1 <= n_ref <= n:
        raise ValueError(f"n_ref={n_ref!r} must be an integer in 1..len(dataset)={n}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    for name, value in (("on_nonfinite", on_nonfinite), ("on_unreadable", on_unreadable)):
        if value not in ON_BAD_SAMPLE:
            raise ValueError(f"{name}={value!r} not known; use one of "
                             f"{', '.join(map(repr, ON_BAD_SAMPLE))}")
    fingerprint, description = model_identity(model)  # refuses a model without weights (meta)
    if is_distributed():  # ranks given other data or weights would merge other computations
        check_same_on_every_rank({"dataset length": n, "model fingerprint": fingerprint,
                                  "dataset fingerprint": dataset_fingerprint(dataset),
                                  "layer": layer, "n_ref": n_ref, "batch size": batch_size},
                                 "the inputs of mining")
    device = resolve_device(model, device, half=True)
    run = dict(layout=lay, batch_size=batch_size, num_workers=num_workers, device=device,
               progress=progress, on_nonfinite=on_nonfinite, on_unreadable=on_unreadable,
               stash=stash)
    if stash is not None:
        stash.clear()  # whatever it held belongs to another run
    expect = {"indices": TensorSpec((None, n_ref), torch.int64, low=0, high=n),
              "values": TensorSpec((None, n_ref), torch.float32, finite=True),
              "positions": TensorSpec((None, n_ref, 2), torch.int64, low=0),
              "channels": TensorSpec((None,), torch.int64, low=0),
              "map_size": TensorSpec((2,), low=1), "input_size": TensorSpec((2,), low=1),
              **{f"skipped_{k}": TensorSpec((None,), torch.int64, low=0, high=n) for k in _SKIPPED}}
    # the bad-sample policy is not part of the key: the ranking of the usable samples is the
    # same, and a stored "skip" result still raises below when asked to raise
    entry = cache_entry("references", cache, dataset, model=fingerprint, layer=layer, n_ref=n_ref,
                        **layout_key(lay))
    if entry is None:
        try:
            tensors = _mine_shared(model, dataset, layer, n_ref, **run)
        except Stopped as stop:
            raise stop.error from None
    else:
        store, _, params = entry
        compute = resumable(store, params, dataset, lambda resume, final: _mine_shared(
            model, dataset, layer, n_ref, resume=resume, final=final, **run))
        # the identity travels in the entry too (the key is a one-way hash of it)
        tensors = store.get_or_compute("references", params, compute, expect=expect,
                                       meta={"model_fingerprint": params["model"],
                                             "dataset_fingerprint": params["dataset"]})
    fingerprints = ((params["model"], params["dataset"]) if entry is not None
                    else (fingerprint, dataset_fingerprint(dataset)))
    refs = References.from_tensors(tensors, layer, model_fingerprint=fingerprints[0],
                                   dataset_fingerprint=fingerprints[1], layout=lay,
                                   model_description=description)
    if stash is not None:
        stash.identity = identity(model, dataset)
        if stash.problem is not None:
            warnings.warn(f"the stash keeps nothing: {stash.problem}; attribution runs the "
                          "reference images through the model again", stacklevel=2)
    _check_mined(refs, dataset, {"nonfinite": on_nonfinite, "unreadable": on_unreadable})
    return refs
