"""Grafted units: a positive and a negative control for PURE, built into a trained network.

On the controlled benchmark we know what every image holds, but not what a trained unit reads.
A grafted unit is a unit whose circuit is known by construction. :func:`graft_unit` appends ONE
unit to a layer of a trained CNN (the layer's output ``[B, C, h, w]`` becomes ``[B, C + 1, h, w]``,
the new unit at index ``C``) that reads two concepts A and B through chosen channels of the layer
below:

    unit = ReLU( pool( sum_{c in S_A} w_c A_c + sum_{c in S_B} w_c A_c ) + b )

with ``A_c`` the lower layer's channel ``c`` and ``pool`` an adaptive average pooling to the
layer's positions (the identity when they match). The channels come from data
(:func:`selectivity`): ``S_A`` holds channels selective for A (the d' of their spatial maximum on
A-images against images holding neither concept is at least ``min_d``) and unselective for B
(``|d'_B| < max_other``), ``S_B`` the reverse, so the two sets are disjoint. Both concepts drive
the unit equally (its mean activation on A-images equals that on B-images, both 1) and the bias
keeps it silent on most images holding neither.

Since the unit reads the lower layer only through ``S_A`` and ``S_B``, its Gradient x Activation
circuit (Eq. 3) is zero on every other channel: on an A-image it lies on A's channels, on a
B-image on B's. A polysemantic unit whose two features have separate circuits: what PURE should
split, the positive control.

``shared=True`` builds the negative control: the unit reads the SAME lower channels for both
concepts, channels selective for A and for B alike (``min(d'_A, d'_B) >= min_d``, the most even
first: alone they would drive the unit about equally on A- and B-images), through one weight
vector. By default it reads ONE such channel: every circuit vector then has a single positive
entry, the same for every image after normalisation, so no clustering of circuits can split A
from B. With more channels the two features still share their channels, but the channels'
proportions can differ between A- and B-images and circuits may separate them again; so can
reading the union of ``S_A`` and ``S_B`` through one weight vector (on an A-image only A's
channels are active, and its circuit lies on ``S_A``).

The grafted model is a copy; the original is untouched. Its own output (the logits) is the
original's: the new channel is removed before any module that receives the layer's output.
"""
from __future__ import annotations

import copy
import math
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import (eval_mode, forward_until, get_layer, layer_layout, layer_order, run_model,
                      stop_after)
from ..models import resolve_device
from .generator import COLOURS, SyntheticConfig

__all__ = ["Graft", "GraftedUnit", "graft_unit", "graft_units", "design_units", "install_units",
           "concept_split", "parse_concept", "selectivity", "unseen_colours_config", "pair_truth",
           "PAIR_CUT"]


# --------------------------------------------------------------------------------------------
# concepts of the benchmark's annotations
# --------------------------------------------------------------------------------------------
def parse_concept(config: SyntheticConfig, concept: str) -> tuple:
    """``(colour, shape)`` of a concept name; ``None`` for the part it leaves open.

    Parameters
    ----------
    config : SyntheticConfig
        Its :attr:`~SyntheticConfig.colours` (extra colours included) and shapes are accepted.
    concept : str
        A colour (``"red"``), a shape (``"circle"``) or both (``"red circle"``).
    """
    parts = concept.split() if isinstance(concept, str) else []
    colours, shapes = list(config.colours), list(config.shapes)
    if len(parts) == 1 and parts[0] in colours:
        return parts[0], None
    if len(parts) == 1 and parts[0] in shapes:
        return None, parts[0]
    if len(parts) == 2 and parts[0] in colours and parts[1] in shapes:
        return parts[0], parts[1]
    raise ValueError(f"concept {concept!r} not known; use a colour ({', '.join(colours)}), a shape "
                     f"({', '.join(shapes)}) or '<colour> <shape>'")


def _is(obj: dict, colour, shape) -> bool:
    """Whether an object has the concept ``(colour, shape)`` (``None``: any)."""
    return (colour is None or obj["colour"] == colour) and (shape is None or obj["shape"] == shape)


def _holds(objects: list, colour, shape, min_pixels: int) -> bool:
    return any(_is(o, colour, shape) and int(o["mask"].sum()) >= min_pixels for o in objects)


def concept_split(dataset, concept_a: str, concept_b: str, *, indices=None,
                  min_pixels: int = 1) -> dict:
    """Which images hold concept A, concept B, both or neither (from the annotations).

    An image holds a concept when one of its objects (labelled, second or distractor) has the
    concept's colour and/or shape and at least ``min_pixels`` visible pixels.

    Parameters
    ----------
    dataset : SyntheticShapes
    concept_a, concept_b : str
        See :func:`parse_concept`; they must differ.
    indices : sequence of int, optional
        The images to split (default: all).
    min_pixels : int
        Visible pixels an object needs to count (default 1).

    Returns
    -------
    dict
        ``"a"`` (A without B), ``"b"`` (B without A), ``"neither"``, ``"both"``: LongTensor
        of dataset indices each, ascending.
    """
    if not hasattr(dataset, "annotations") or not hasattr(dataset, "config"):
        raise ValueError(f"dataset {dataset!r} has no annotations; use a SyntheticShapes dataset")
    if concept_a == concept_b:
        raise ValueError(f"concept_a and concept_b are both {concept_a!r}; give two concepts")
    a, b = parse_concept(dataset.config, concept_a), parse_concept(dataset.config, concept_b)
    groups = {"a": [], "b": [], "neither": [], "both": []}
    for i in (range(len(dataset)) if indices is None else indices):
        objects = dataset.annotations(int(i))["objects"]
        in_a, in_b = _holds(objects, *a, min_pixels), _holds(objects, *b, min_pixels)
        key = "both" if in_a and in_b else "a" if in_a else "b" if in_b else "neither"
        groups[key].append(int(i))
    return {k: torch.tensor(sorted(v), dtype=torch.long) for k, v in groups.items()}


def unseen_colours_config(config: SyntheticConfig | None = None, colours=None, **knobs) -> SyntheticConfig:
    """A two-object scene whose second object may wear colours no concept of ``config`` uses.

    The regime "colours the network never saw": a network trained on ``config`` (default
    ``SyntheticConfig()``: red, green, blue, yellow) never met magenta or cyan objects.

    Parameters
    ----------
    config : SyntheticConfig, optional
        The training configuration (default ``SyntheticConfig()``).
    colours : sequence of str, optional
        The unseen colours (default: every colour of :data:`~pure_utils.shapes.generator.COLOURS` the
        concepts do not use).
    **knobs
        Other generator knobs to change (e.g. ``second_scale``).
    """
    config = config or SyntheticConfig()
    used = set(config.colours)
    colours = [c for c in COLOURS if c not in used] if colours is None else list(colours)
    if not colours:
        raise ValueError(f"the {config.n_concepts} concepts use every colour; there is none left unseen")
    spec = dict(config.to_dict(), scene="two_objects", extra_colours=tuple(colours))
    spec.update(knobs)
    return SyntheticConfig(**spec)


# --------------------------------------------------------------------------------------------
# the unit and its hooks
# --------------------------------------------------------------------------------------------
class GraftedUnit(nn.Module):
    """The new units: a 1 x 1 convolution of the lower layer, pooled to the layer's positions, ReLU.

    It reads the lower layer as the *input* of the layer (so that whatever replaced the lower
    layer's output, e.g. the detached leaf of the attribution engine, is what it reads), appends
    its maps to the layer's output, and removes them again from the input of every other module.

    Parameters
    ----------
    weights : Tensor[C_lower] or Tensor[U, C_lower]
        One weight per lower channel (0 off the unit's channels), one row per unit.
    bias : float or sequence of U floats
    n_channels : int
        ``C``, the layer's own channels (the first new unit's index).
    size : (int, int)
        The layer's positions ``(h, w)``.
    """

    def __init__(self, weights: torch.Tensor, bias, n_channels: int, size):
        super().__init__()
        weights = torch.as_tensor(weights, dtype=torch.float32)
        weights = weights[None] if weights.dim() == 1 else weights
        bias = torch.as_tensor(bias, dtype=torch.float32).reshape(-1)
        if len(bias) != len(weights):
            raise ValueError(f"{len(weights)} units but {len(bias)} biases")
        self.conv = nn.Conv2d(weights.shape[1], len(weights), 1)
        with torch.no_grad():
            self.conv.weight.copy_(weights[:, :, None, None])
            self.conv.bias.copy_(bias)
        self.conv.requires_grad_(False)
        self.n_channels, self.size = int(n_channels), tuple(int(s) for s in size)
        self._lower = None
        self._out = None  # a weak reference to the last appended output

    def forward(self, lower: torch.Tensor) -> torch.Tensor:
        """``Tensor[B, C_lower, H', W']`` -> the units' maps ``Tensor[B, U, h, w]``."""
        z = self.conv(lower)
        if tuple(z.shape[-2:]) != self.size:
            z = F.adaptive_avg_pool2d(z, self.size)
        return torch.relu(z)

    def read_input(self, _module, args):  # forward pre-hook on the layer
        self._lower = args[0]

    def append(self, _module, _args, out):  # forward hook on the layer
        lower, self._lower = self._lower, None
        if lower is None:
            raise RuntimeError("the grafted unit found no input of its layer")
        new = torch.cat([out, self(lower).to(out.dtype)], 1)
        self._out = weakref.ref(new)
        return new

    def strip(self, _module, args):  # forward pre-hook on every other module
        out = self._out() if self._out is not None else None
        if out is not None and any(a is out for a in args):
            return tuple(a[:, :self.n_channels] if a is out else a for a in args)
        return None


def _install(model: nn.Module, layer: str, unit: GraftedUnit) -> nn.Module:
    """``unit`` as ``model.graft``, its hooks on ``layer`` and on every other module."""
    model.graft = unit
    target = get_layer(model, layer)
    own = set(unit.modules())
    for m in model.modules():
        if m not in own and m is not target:
            m.register_forward_pre_hook(unit.strip)
    target.register_forward_pre_hook(unit.read_input)
    target.register_forward_hook(unit.append)
    return model


# --------------------------------------------------------------------------------------------
# choosing the channels, the weights and the bias
# --------------------------------------------------------------------------------------------
def selectivity(values: torch.Tensor, positive, negative) -> torch.Tensor:
    """d' of every channel: ``(mean_pos - mean_neg) / sqrt((var_pos + var_neg) / 2)``.

    Parameters
    ----------
    values : Tensor[N, C]
        One value per image and channel (e.g. the spatial maximum).
    positive, negative : LongTensor
        Rows of ``values`` (at least 2 each).

    Returns
    -------
    Tensor[C]
        0 for a channel constant on both groups.
    """
    pos, neg = values[torch.as_tensor(positive)].double(), values[torch.as_tensor(negative)].double()
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError(f"d' needs at least 2 images per group, got {len(pos)} and {len(neg)}")
    spread = ((pos.var(0) + neg.var(0)) / 2).sqrt()
    diff = pos.mean(0) - neg.mean(0)
    return torch.where(spread > 1e-12, diff / spread.clamp_min(1e-12), torch.zeros_like(diff)).float()


def _lower_maps(model, dataset, indices, layer, lower_layer, batch_size, device):
    """The lower layer's output on ``indices`` (``Tensor[N, C_lower, H', W']``) and the layer's
    ``(C, h, w)``; checks that the lower layer's output is the layer's input."""
    seen, maps = {}, []
    grab = get_layer(model, lower_layer).register_forward_hook(lambda m, i, o: seen.update(low=o))
    feed = get_layer(model, layer).register_forward_pre_hook(lambda m, a: seen.update(inp=a[0]))
    try:
        with torch.no_grad(), eval_mode(model), stop_after(get_layer(model, layer)) as top:
            for s in range(0, len(indices), batch_size):
                x = torch.stack([dataset[int(i)][0] for i in indices[s:s + batch_size]]).to(device)
                run_model(model, x)
                if s == 0 and not (seen["inp"].shape == seen["low"].shape
                                   and torch.equal(seen["inp"], seen["low"])):
                    raise ValueError(f"the input of layer {layer!r} is not the output of lower_layer "
                                     f"{lower_layer!r}; a grafted unit reads the layer's input, so "
                                     "give the layer right below (e.g. 'layer3' for 'layer4')")
                maps.append(seen["low"].float().cpu())
    finally:
        grab.remove()
        feed.remove()
    out = top["out"]
    return torch.cat(maps), (out.shape[1], *out.shape[2:])


def _choose(d_a, d_b, *, n_channels, min_d, max_other, balance=None):
    """Channels of A and of B (LongTensors), the best first.

    ``balance`` (``Tensor[C_lower]``, shared only): how evenly each channel alone would drive
    the unit on A- and B-images; the shared channels are the most even first.
    """
    if balance is not None:
        keep = torch.nonzero(torch.minimum(d_a, d_b) >= min_d).flatten()
        both = keep[balance[keep].argsort(descending=True, stable=True)][:n_channels]
        return both, both
    picks = []
    for own, other in ((d_a, d_b), (d_b, d_a)):
        keep = torch.nonzero((own >= min_d) & (other.abs() < max_other)).flatten()
        picks.append(keep[own[keep].argsort(descending=True, stable=True)][:n_channels])
    return picks[0], picks[1]


def _evenness(lower, rows, size, quantile) -> torch.Tensor:
    """For a unit reading one lower channel alone: ``min(m_A, m_B) / max(m_A, m_B)`` of its mean
    activations on A- and B-images (bias at ``quantile`` of neither-images): ``Tensor[C_lower]``."""
    pooled = lower if tuple(lower.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(lower, size)
    top = pooled.flatten(2).amax(2)                                   # [N, C_lower]
    bias = -torch.quantile(top[rows["neither"]].double(), quantile, dim=0).float()
    act = (top + bias).clamp_min(0)
    m_a, m_b = act[rows["a"]].mean(0), act[rows["b"]].mean(0)
    return torch.where(torch.maximum(m_a, m_b) > 0,
                       torch.minimum(m_a, m_b) / torch.maximum(m_a, m_b).clamp_min(1e-12), 0.0)


def _no_channels(which, d_a, d_b, min_d, max_other, shared, concepts) -> ValueError:
    score = torch.minimum(d_a, d_b) if shared else (d_a if which == "a" else d_b)
    best = score.argsort(descending=True)[:5].tolist()
    rows = ", ".join(f"{c}: d'_A {d_a[c]:.2f}, d'_B {d_b[c]:.2f}" for c in best)
    need = (f"d' >= {min_d} for both" if shared else
            f"d' >= {min_d} for {concepts[which]!r} and |d'| < {max_other} for the other")
    name = f"{concepts['a']!r} and {concepts['b']!r} alike" if shared else repr(concepts[which])
    return ValueError(f"no lower channel qualifies for {name} ({need}); the best: "
                      f"{rows}. Lower min_d, raise max_other, or choose other concepts")


def _unit_max(maps: torch.Tensor, bias: float) -> torch.Tensor:
    """Spatial maximum of ReLU(map + bias): ``Tensor[N]``."""
    return (maps.flatten(1).amax(1) + bias).clamp_min(0)


def _bias(maps, neither, quantile) -> float:
    return -float(torch.quantile(maps[neither].flatten(1).amax(1).double(), quantile))


def _balance(map_a, map_b, groups, quantile, tail: float | None = None) -> float | None:
    """The factor ``r`` of the second part that balances A and B, by bisection over ``log r``;
    ``None`` when no factor in ``[e^-12, e^12]`` does (the bias follows ``r`` at its quantile).

    ``tail=None``: equal mean activations on A- and B-images. ``tail`` a share: as many A- as
    B-images among the ``tail`` most activating of the A-, B- and neither-images, the part of
    the distribution that mining selects as references.
    """
    pool = torch.cat([groups["a"], groups["b"], groups["neither"]])
    n_top = max(2, math.ceil(float(tail or 0) * len(pool)))

    def gap(log_r):
        maps = map_a + float(torch.exp(log_r)) * map_b
        act = _unit_max(maps, _bias(maps, groups["neither"], quantile))
        if tail is None:
            return float(act[groups["a"]].mean() - act[groups["b"]].mean())
        top = pool[act[pool].argsort(descending=True, stable=True)[:n_top]]
        return float(torch.isin(top, groups["a"]).sum() - torch.isin(top, groups["b"]).sum())

    lo, hi = torch.tensor(-12.0), torch.tensor(12.0)
    if gap(lo) < 0 or gap(hi) > 0:
        return None
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gap(mid) > 0 else (lo, mid)
    return float(torch.exp((lo + hi) / 2))


# --------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------
@dataclass
class Graft:
    """What :func:`graft_unit` built.

    Attributes
    ----------
    layer, lower_layer : str
    unit : int
        Index of the new channel of ``layer`` (= ``C``, its former number of channels).
    concept_a, concept_b : str
    shared : bool
        ``True``: the negative control (one set of channels, one weight vector).
    channels_a, channels_b : LongTensor[n_a], LongTensor[n_b]
        The lower channels that carry A and B (the same ones when ``shared``).
    d_a, d_b : Tensor[C_lower]
        d' of every lower channel's spatial maximum, A-images (B-images) against neither-images.
    weights : Tensor[C_lower]
        The unit's weights, 0 off ``channels_a`` and ``channels_b``.
    bias : float
    mean_a, mean_b : float
        Mean activation (spatial maximum) of the unit on the A-images and the B-images used.
    silent : float
        Share of the neither-images on which the unit is 0.
    n_images : dict
        Images per group (``a``, ``b``, ``neither``, ``both``) that chose and scaled the unit.
    size : (int, int)
        The layer's positions ``(h, w)``.
    """

    layer: str
    lower_layer: str
    unit: int
    concept_a: str
    concept_b: str
    shared: bool
    channels_a: torch.Tensor
    channels_b: torch.Tensor
    d_a: torch.Tensor
    d_b: torch.Tensor
    weights: torch.Tensor
    bias: float
    mean_a: float
    mean_b: float
    silent: float
    n_images: dict = field(default_factory=dict)
    size: tuple = ()


def graft_unit(model: nn.Module, layer: str, lower_layer: str, concept_a: str, concept_b: str,
               dataset, *, n_channels: int | None = None, min_d: float = 1.0, max_other: float = 0.5,
               quantile: float = 0.95, shared: bool = False, balance: str = "mean", tail: float = 0.05,
               indices=None, batch_size: int = 64, device=None) -> tuple[nn.Module, Graft]:
    """Append one unit reading concepts A and B to ``layer`` of a copy of ``model``.

    See the module docstring for the construction. Channel c joins A's set when
    ``d'_A(c) >= min_d`` and ``|d'_B(c)| < max_other`` (the ``n_channels`` highest ``d'_A``),
    B's set the reverse; with ``shared=True`` one set, ``min(d'_A, d'_B) >= min_d``, the most
    even first. Each chosen channel is weighted by ``1 / std`` of its spatial maximum; the second
    part (B's set; shared: the channels leaning to B, when some lean to A) is then scaled so that
    the mean activation on A-images equals that on B-images (``balance="tail"``: so that A- and
    B-images are as many among the most activating images), the bias put at ``-quantile`` of the
    pre-activation maxima on neither-images, and everything scaled so that the mean activation
    over the A- and B-images is 1. Images holding both concepts take no part.

    Parameters
    ----------
    model : nn.Module
        A trained CNN whose ``layer`` and ``lower_layer`` give maps ``[B, C, h, w]`` and whose
        ``layer`` takes ``lower_layer``'s output as its input (``"layer4"``, ``"layer3"``).
    layer, lower_layer : str
    concept_a, concept_b : str
        Colours, shapes or ``"<colour> <shape>"`` (:func:`parse_concept`).
    dataset : SyntheticShapes
        The images that choose and scale the unit (:func:`concept_split`); a few hundred do.
        Their lower-layer maps are held in memory (``N x C_lower x h' x w'`` floats).
    n_channels : int, optional
        Most lower channels per concept (default 8; ``shared``: 1, see the module docstring).
    min_d, max_other : float
        Selectivity thresholds, ``min_d > max_other >= 0``.
    quantile : float
        Share of neither-images on which the unit stays silent, in (0, 1].
    shared : bool
        Build the negative control.
    balance : {"mean", "tail"}
        What the second part's scale equalises: the mean activations on A- and B-images
        (``"mean"``), or the numbers of A- and B-images among the ``tail`` share of the most
        activating A-, B- and neither-images (``"tail"``: what mining selects as references).
    tail : float
        That share, in (0, 1) (e.g. ``n_ref`` over the number of images mined).
    indices : sequence of int, optional
        Images of ``dataset`` to use (default: all).
    batch_size : int
    device : str or torch.device, optional
        Default: the model's device.

    Returns
    -------
    (nn.Module, Graft)
        The grafted copy (``layer`` outputs ``[B, C + 1, h, w]``; its logits are the original's)
        and the record.
    """
    grafted, (record,) = graft_units(model, layer, lower_layer, [(concept_a, concept_b)], dataset,
                                     n_channels=n_channels, min_d=min_d, max_other=max_other,
                                     quantile=quantile, shared=shared, balance=balance, tail=tail,
                                     indices=indices, batch_size=batch_size, device=device)
    return grafted, record


def graft_units(model: nn.Module, layer: str, lower_layer: str, pairs, dataset, *,
                n_channels: int | None = None, min_d: float = 1.0, max_other: float = 0.5,
                quantile: float = 0.95, shared=False, balance: str = "mean", tail: float = 0.05,
                indices=None, batch_size: int = 64, device=None) -> tuple[nn.Module, list]:
    """:func:`graft_unit` for several pairs of concepts at once, into ONE copy of ``model``.

    Unit ``j`` (index ``C + j`` of ``layer``) reads ``pairs[j]``, designed exactly as
    :func:`graft_unit` would design it alone on the same images; the lower layer's maps are
    computed once. One grafted model serves every pair: one mining pass finds the references of
    all units.

    Parameters
    ----------
    pairs : sequence of (str, str)
        ``(concept_a, concept_b)`` of each unit.
    shared : bool or sequence of bool
        The negative control for every unit, or per unit.
    Others
        As in :func:`graft_unit`.

    Returns
    -------
    (nn.Module, list of Graft)
        The grafted copy (``layer`` outputs ``[B, C + U, h, w]``) and one record per unit.
    """
    records = design_units(model, layer, lower_layer, pairs, dataset, n_channels=n_channels,
                           min_d=min_d, max_other=max_other, quantile=quantile, shared=shared,
                           balance=balance, tail=tail, indices=indices, batch_size=batch_size,
                           device=device)
    return install_units(model, layer, records, device=device), records


def design_units(model: nn.Module, layer: str, lower_layer: str, pairs, dataset, *,
                 n_channels: int | None = None, min_d: float = 1.0, max_other: float = 0.5,
                 quantile: float = 0.95, shared=False, balance: str = "mean", tail: float = 0.05,
                 indices=None, batch_size: int = 64, device=None, skip: bool = False) -> list:
    """The records of :func:`graft_units` without building the model (:func:`install_units`).

    ``skip=True``: a pair that cannot be built (no qualifying channel, too few images, no
    balance) gives its ``ValueError`` in its place in the list instead of raising it, so that a
    fixed design can report which of its pairs the model does not support.
    """
    pairs = [tuple(p) for p in pairs]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"pairs={pairs!r}: give one or more (concept_a, concept_b) pairs")
    kinds = [bool(shared)] * len(pairs) if isinstance(shared, bool) else [bool(k) for k in shared]
    if len(kinds) != len(pairs):
        raise ValueError(f"{len(pairs)} pairs but {len(kinds)} values of shared")
    counts = [(1 if k else 8) if n_channels is None else int(n_channels) for k in kinds]
    for n in set(counts):
        _check_arguments(model, layer, lower_layer, n, min_d, max_other, quantile)
    if balance not in ("mean", "tail") or not 0 < tail < 1:
        raise ValueError(f"balance={balance!r}, tail={tail}: use balance 'mean' or 'tail' and "
                         "0 < tail < 1")
    splits = [concept_split(dataset, a, b, indices=indices) for a, b in pairs]
    used = sorted({int(i) for g in splits for k in ("a", "b", "neither") for i in g[k].tolist()})
    position = {i: r for r, i in enumerate(used)}
    device = resolve_device(model, device)
    lower, (n_ch, *size) = _lower_maps(model, dataset, torch.tensor(used), layer, lower_layer,
                                       batch_size, device)
    peak = lower.flatten(2).amax(2)                                   # [N, C_lower]
    records = []
    for (a, b), groups, kind, n in zip(pairs, splits, kinds, counts):
        rows = {k: torch.tensor([position[int(i)] for i in groups[k].tolist()], dtype=torch.long)
                for k in ("a", "b", "neither")}
        names = dict(layer=layer, lower_layer=lower_layer, unit=n_ch + sum(
            isinstance(r, Graft) for r in records), concept_a=a, concept_b=b, shared=kind)
        try:
            few = [k for k in ("a", "b", "neither") if len(rows[k]) < 2]
            if few:
                raise ValueError(f"only {len(rows[few[0]])} images of group {few[0]!r} for {a!r} | "
                                 f"{b!r} among the dataset's images "
                                 f"({ {k: len(v) for k, v in groups.items()} }); use more images")
            records.append(_design(lower, peak, rows, names, {k: len(v) for k, v in groups.items()},
                                   size, n_channels=n, min_d=min_d, max_other=max_other,
                                   quantile=quantile, tail=tail if balance == "tail" else None))
        except ValueError as err:
            if not skip:
                raise
            records.append(err)
    return records


def install_units(model: nn.Module, layer: str, records, *, device=None) -> nn.Module:
    """A copy of ``model`` with the units of ``records`` (:class:`Graft`, in the order of their
    ``unit`` indices; anything else, e.g. a skipped pair's error, is left out) appended to
    ``layer``."""
    records = [r for r in records if isinstance(r, Graft)]
    if not records:
        raise ValueError("no unit to graft: every pair was refused")
    n_ch = records[0].unit
    if [r.unit for r in records] != list(range(n_ch, n_ch + len(records))):
        raise ValueError(f"units {[r.unit for r in records]} are not consecutive from {n_ch}")
    unit = GraftedUnit(torch.stack([r.weights for r in records]), [r.bias for r in records],
                       n_ch, records[0].size)
    grafted = _install(copy.deepcopy(model), layer, unit.to(resolve_device(model, device)))
    base = getattr(model, "pure_name", type(model).__name__)
    if len(records) == 1:
        r = records[0]
        kind = "shared" if r.shared else "separate"
        grafted.pure_name = f"{base}+graft({layer}, {r.concept_a} | {r.concept_b}, {kind})"
    else:
        grafted.pure_name = f"{base}+graft({layer}, {len(records)} units)"
    return grafted


def _design(lower, peak, rows, names: dict, n_images: dict, size, *, n_channels, min_d,
            max_other, quantile, tail=None) -> Graft:
    """One unit's channels, weights and bias from the lower maps of its images (``rows``: the
    positions of its A-, B- and neither-images in ``lower``)."""
    d_a = selectivity(peak, rows["a"], rows["neither"])
    d_b = selectivity(peak, rows["b"], rows["neither"])
    shared = names["shared"]
    even = _evenness(lower, rows, size, quantile) if shared else None
    set_a, set_b = _choose(d_a, d_b, n_channels=n_channels, min_d=min_d,
                           max_other=max_other, balance=even)
    for which, chosen in (("a", set_a), ("b", set_b)):
        if not len(chosen):
            raise _no_channels(which, d_a, d_b, min_d, max_other, shared,
                               {"a": names["concept_a"], "b": names["concept_b"]})
    weights, bias = _calibrate(lower, peak, rows, set_a, set_b, size, quantile, shared, tail)
    act = _unit_max(_pooled(lower, weights, size), bias)
    return Graft(**names, channels_a=set_a, channels_b=set_b, d_a=d_a, d_b=d_b, weights=weights,
                 bias=bias, mean_a=float(act[rows["a"]].mean()), mean_b=float(act[rows["b"]].mean()),
                 silent=float((act[rows["neither"]] == 0).float().mean()), n_images=n_images,
                 size=tuple(int(v) for v in size))


def _check_arguments(model, layer, lower_layer, n_channels, min_d, max_other, quantile):
    if hasattr(model, "graft"):
        raise ValueError("the model already has an attribute 'graft' (a grafted unit?); graft "
                         "onto the original model")
    if not min_d > max_other >= 0 or not 0 < quantile <= 1 or n_channels < 1:
        raise ValueError(f"min_d={min_d}, max_other={max_other}, quantile={quantile}, n_channels="
                         f"{n_channels} not accepted; use min_d > max_other >= 0, 0 < quantile <= 1 "
                         "and n_channels >= 1")
    for name in (layer, lower_layer):
        kind = layer_layout(model, name).kind
        if kind != "map":
            raise ValueError(f"layer {name!r} has layout {kind!r}; a grafted unit needs maps "
                             "[B, C, h, w] (a CNN)")
    below, above = layer_order(model, [lower_layer, layer])
    if below >= above:
        raise ValueError(f"lower_layer {lower_layer!r} does not come before layer {layer!r}")


def _pooled(lower: torch.Tensor, weights: torch.Tensor, size) -> torch.Tensor:
    """``pool(sum_c w_c lower_c)``: ``Tensor[N, h, w]`` (no bias)."""
    z = torch.einsum("nchw,c->nhw", lower, weights.float())
    if tuple(z.shape[-2:]) == tuple(size):
        return z
    return F.adaptive_avg_pool2d(z[:, None], tuple(size))[:, 0]


def _calibrate(lower, peak, rows, set_a, set_b, size, quantile, shared, tail=None):
    """The unit's weights ``Tensor[C_lower]`` and bias (see :func:`graft_unit`).

    Two parts are balanced: A's and B's channels, or, shared, the shared channels leaning to A
    (their mean peak rises more on A-images than on B-images) and those leaning to B (when both
    exist and a balance is found; otherwise one weight per channel, 1 / std).
    """
    scale = 1 / peak.std(0).clamp_min(1e-6)                          # [C_lower]
    if shared:
        # leaning to A: the peak rises more above neither-images on A-images than on B-images
        rise = [peak[rows[k]].mean(0) - peak[rows["neither"]].mean(0) for k in ("a", "b")]
        lean = rise[0][set_a] >= rise[1][set_a]
        parts = [set_a[lean], set_a[~lean]]
    else:
        parts = [set_a, set_b]
    bases = []
    for part in parts:
        base = torch.zeros(lower.shape[1])
        base[part] = scale[part]
        bases.append(base)
    r = None
    if all(len(p) for p in parts):
        map_a, map_b = _pooled(lower, bases[0], size), _pooled(lower, bases[1], size)
        # each part scaled to a mean peak of 1 on its own concept's images: r near 1
        norm_a = float(map_a[rows["a"]].flatten(1).amax(1).mean()) or 1.0
        norm_b = float(map_b[rows["b"]].flatten(1).amax(1).mean()) or 1.0
        r = _balance(map_a / norm_a, map_b / norm_b, rows, quantile, tail)
    if r is None and not shared:
        raise ValueError("no weighting of the two channel sets gives A- and B-images the same mean "
                         "activation; the sets do not separate their concept from neither-images")
    weights = bases[0] + bases[1] if r is None else bases[0] / norm_a + r * bases[1] / norm_b
    maps = _pooled(lower, weights, size)
    bias = _bias(maps, rows["neither"], quantile)
    mean = float(_unit_max(maps, bias)[torch.cat([rows["a"], rows["b"]])].mean())
    if mean <= 0:
        raise ValueError(f"the unit would be silent on the concepts' images (bias at the {quantile} "
                         "quantile of neither-images); lower quantile or choose other concepts")
    return weights / mean, bias / mean


# --------------------------------------------------------------------------------------------
# the truth of a grafted unit: which of its two concepts drives each reference
# --------------------------------------------------------------------------------------------
#: A reference's activation must fall by at least this share when every object holding a
#: concept is removed for that concept to drive it (the "necessary" cut of the book's rule,
#: :data:`pure_utils.shapes.ground_truth.RULE`).
PAIR_CUT = 0.5


def _without(scene, config, concept) -> list:
    """The scene's objects with every object holding ``concept`` removed (``None``)."""
    concept = parse_concept(config, concept)
    return [None if _is(o, *concept) else o for o in scene.objects]


def pair_truth(model: nn.Module, dataset, references, records, *, batch_size: int = 64,
               device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of its two concepts drives each reference of each grafted unit, by intervention.

    Each reference image is rendered again without every object holding A, and without every
    object holding B; ``drop_X = (a - a_without_X) / a`` with ``a`` the unit's spatial maximum
    on the image as it is. The label is A (0) when ``drop_A >= PAIR_CUT`` and ``drop_A >
    drop_B``, B (1) the reverse, and 2 ("neither": the unit is driven by something else, or by
    both alike, or is silent) otherwise. Unlike the book's rule it names no other feature: it
    asks only which of the two concepts the unit was built to read carries the reference.

    Parameters
    ----------
    model : nn.Module
        The grafted model (:func:`install_units`).
    dataset : SyntheticShapes
    references : References
        Of the grafted units, one row per record, in the order of ``records``.
    records : sequence of Graft
    batch_size : int
    device : str or torch.device, optional

    Returns
    -------
    (LongTensor[U, n_ref], Tensor[U, n_ref, 2])
        The labels and ``(drop_A, drop_B)``.
    """
    device = resolve_device(model, device)
    units = [int(r.unit) for r in records]
    if references.channels.tolist() != units:
        raise ValueError(f"references of units {references.channels.tolist()} but records of "
                         f"units {units}; give the references' subset of the records' units")
    jobs = []
    for r, row in zip(records, references.indices.tolist()):
        for i in row:
            scene = dataset.scene(int(i))
            jobs += [(scene, None), (scene, _without(scene, dataset.config, r.concept_a)),
                     (scene, _without(scene, dataset.config, r.concept_b))]
    acts = []
    with torch.no_grad(), eval_mode(model):
        for s in range(0, len(jobs), batch_size):
            x = torch.stack([dataset.render(sc, objs) for sc, objs in jobs[s:s + batch_size]])
            out = forward_until(model, x.to(device), records[0].layer)
            acts.append(out[:, units].flatten(2).amax(2).float().cpu())
    n_ref = references.indices.shape[1]
    acts = torch.cat(acts).reshape(len(units), n_ref, 3, len(units))
    own = acts[torch.arange(len(units)), :, :, torch.arange(len(units))]   # [U, n_ref, 3]
    full = own[..., 0]
    drops = torch.where(full[..., None] > 0, (full[..., None] - own[..., 1:])
                        / full[..., None].clamp_min(1e-12), torch.zeros_like(own[..., 1:]))
    labels = torch.full(full.shape, 2, dtype=torch.long)
    labels[(drops[..., 0] >= PAIR_CUT) & (drops[..., 0] > drops[..., 1])] = 0
    labels[(drops[..., 1] >= PAIR_CUT) & (drops[..., 1] > drops[..., 0])] = 1
    return labels, drops
