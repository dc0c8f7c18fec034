"""zennit canonizers for timm ResNets, and zennit composites by name.

LRP rules are defined for linear layers followed by an activation. Two things in a timm
ResNet break that picture:

- BatchNorm after a convolution: merged into the convolution (zennit's
  ``SequentialMergeBatchNorm``), so the convolution's rule sees the whole affine map.
- The residual addition ``x += shortcut``: autograd would hand the full relevance to both
  summands, doubling it at every block. The canonizer replaces the blocks' ``forward`` with
  an equivalent one whose addition goes through ``zennit.layer.Sum``, to which the composites
  assign a rule that splits the relevance in proportion to the two summands.

zennit's own ``ResNetCanonizer`` matches torchvision's blocks (``relu``, ``conv``/``bn`` only);
timm's blocks have ``act1``/``act2``/``act3``, ``drop_block``, ``aa`` (anti-aliasing), ``se``
(attention) and ``drop_path``, which the forward below keeps in timm's order.

:func:`composite_for` turns a composite name (as registered in ``zennit.composites.COMPOSITES``,
e.g. ``"epsilon_plus_flat"``) into a composite with the canonizers of a model; circuit
attributions and relevance heatmaps both get their composites there.

LRP is only as correct as the canonization: a residual addition, a gating product or a layer
normalisation that no canonizer rewrites silently creates or destroys relevance. So
:func:`lrp_support` lists the parts of a model that the canonizers here do not cover (timm and
torchvision ResNets and plain CNNs of convolutions, BatchNorm after them, elementwise
activations, pooling and linear layers are covered; MobileNetV3, ConvNeXt, squeeze-excitation
and any module with its own ``forward`` are not), and :func:`composite_for` refuses such a
model unless asked for an approximation (``approximate=True``), which it then announces.
"""
from __future__ import annotations

import warnings

import torch
from timm.layers import Linear as TimmLinear, SelectAdaptivePool2d
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn
from zennit import types as ztypes
from zennit.canonizers import AttributeCanonizer, MergeBatchNorm, SequentialMergeBatchNorm
from zennit.composites import COMPOSITES, Composite
from zennit.core import collect_leaves
from zennit.layer import Sum

try:  # torchvision ResNets are matched by zennit's own canonizers
    from torchvision.models.resnet import (BasicBlock as TvBasicBlock, Bottleneck as TvBottleneck,
                                           ResNet as TvResNet)
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
except ImportError:  # torchvision missing: nothing to match
    TvBasicBlock = TvBottleneck = TvResNet = ResNetBasicBlockCanonizer = ResNetBottleneckCanonizer = None

__all__ = ["canonizers_for", "composite_for", "lrp_support", "TimmResNetCanonizer",
           "ExactMergeBatchNorm", "LRPApproximationWarning", "SUPPORTED_ARCHITECTURES"]

#: What LRP here is correct on (the canonizers of :func:`canonizers_for` cover it).
SUPPORTED_ARCHITECTURES = ("timm ResNets (BasicBlock, Bottleneck)",
                           "torchvision ResNets (BasicBlock, Bottleneck)",
                           "plain CNNs (nn.Sequential of Conv, BatchNorm after a Conv or Linear, "
                           "elementwise activations, pooling, Flatten, Dropout, Linear)")


class LRPApproximationWarning(UserWarning):
    """LRP computed with ``approximate=True`` on a model the canonizers do not fully cover."""


class ExactMergeBatchNorm(SequentialMergeBatchNorm):
    """``SequentialMergeBatchNorm`` whose emptied BatchNorm is exactly the identity.

    zennit leaves the merged BatchNorm computing ``x / sqrt(1 + eps)``, a factor
    ``1 - eps/2`` per BatchNorm (about 2.5e-4 over ResNet-50), so the canonized model and its
    relevance would differ from the original model. Here ``eps`` is set to 0 while merged (and
    restored on removal), and the identity statistics are set explicitly, whatever zennit
    version did the merge.
    """

    def register(self, linears, batch_norm):
        self._eps = batch_norm.eps
        # own copies: restored on removal whether or not zennit's merge works in place
        self._saved = {k: getattr(batch_norm, k).detach().clone()
                       for k in ("weight", "bias", "running_mean", "running_var")
                       if getattr(batch_norm, k) is not None}
        super().register(linears, batch_norm)
        with torch.no_grad():
            batch_norm.running_mean.zero_()
            batch_norm.running_var.fill_(1.0)
            if batch_norm.weight is not None:
                batch_norm.weight.fill_(1.0)
                batch_norm.bias.zero_()
        batch_norm.eps = 0.0
        self._bn = batch_norm
        # the bias zennit creates for a bias-free convolution must not ask for gradients
        for linear in linears:
            if linear.bias is not None:
                linear.bias.requires_grad_(linear.weight.requires_grad)

    def remove(self):
        super().remove()
        for key, value in self._saved.items():
            getattr(self._bn, key).data = value
        self._bn.eps = self._eps

    def copy(self):
        return self.__class__()


def _apply(module, x):
    # timm stores absent optional parts as None in some versions and nn.Identity in others
    return x if module is None else module(x)


def _residual_sum(self, x, shortcut):
    return self.canonizer_sum(torch.stack([x, shortcut], dim=-1))


def _basic_block_forward(self, x):
    """timm ``BasicBlock.forward`` with the residual sum through ``zennit.layer.Sum``."""
    shortcut = x
    x = self.conv1(x)
    x = self.bn1(x)
    x = _apply(getattr(self, "drop_block", None), x)
    x = self.act1(x)
    x = _apply(getattr(self, "aa", None), x)
    x = self.conv2(x)
    x = self.bn2(x)
    x = _apply(getattr(self, "se", None), x)
    x = _apply(getattr(self, "drop_path", None), x)
    if getattr(self, "downsample", None) is not None:
        shortcut = self.downsample(shortcut)
    x = _residual_sum(self, x, shortcut)
    return self.act2(x)


def _bottleneck_forward(self, x):
    """timm ``Bottleneck.forward`` with the residual sum through ``zennit.layer.Sum``."""
    shortcut = x
    x = self.conv1(x)
    x = self.bn1(x)
    x = self.act1(x)
    x = self.conv2(x)
    x = self.bn2(x)
    x = _apply(getattr(self, "drop_block", None), x)
    x = self.act2(x)
    x = _apply(getattr(self, "aa", None), x)
    x = self.conv3(x)
    x = self.bn3(x)
    x = _apply(getattr(self, "se", None), x)
    x = _apply(getattr(self, "drop_path", None), x)
    if getattr(self, "downsample", None) is not None:
        shortcut = self.downsample(shortcut)
    x = _residual_sum(self, x, shortcut)
    return self.act3(x)


class TimmResNetCanonizer(AttributeCanonizer):
    """Route the residual sum of timm ``BasicBlock`` / ``Bottleneck`` through ``zennit.layer.Sum``.

    Applies to every module that is an instance of timm's block classes; the replaced
    ``forward`` computes exactly what timm's does (tested), only the addition is a module.
    """

    def __init__(self):
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name, module):
        # exact types: a subclass may change forward in ways this copy does not know
        if type(module) is BasicBlock:
            forward = _basic_block_forward
        elif type(module) is Bottleneck:
            forward = _bottleneck_forward
        else:
            return None
        return {"forward": forward.__get__(module), "canonizer_sum": Sum()}

    def copy(self):
        return self.__class__()


def canonizers_for(model: nn.Module) -> list:
    """The zennit canonizers that make LRP on ``model`` correct.

    Parameters
    ----------
    model : nn.Module
        A timm ResNet (``BasicBlock`` or ``Bottleneck``), a torchvision ResNet, or a plain CNN
        (:data:`SUPPORTED_ARCHITECTURES`). For other models the list is incomplete: see
        :func:`lrp_support` for what it leaves uncovered.

    Returns
    -------
    list of zennit.canonizers.Canonizer
        :class:`ExactMergeBatchNorm` (BatchNorm merged into the preceding convolution) and,
        if the model has residual blocks, the matching residual canonizer
        (:class:`TimmResNetCanonizer` for timm, zennit's ``ResNetCanonizer`` parts for
        torchvision). Pass them as ``canonizers=`` to a zennit composite.
    """
    canonizers = [ExactMergeBatchNorm()]
    modules = list(model.modules())
    if any(type(m) in (BasicBlock, Bottleneck) for m in modules):
        canonizers.append(TimmResNetCanonizer())
    if TvBasicBlock is not None and any(isinstance(m, (TvBasicBlock, TvBottleneck)) for m in modules):
        canonizers += [ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()]
    return canonizers


#: Modules whose ``forward`` only chains their children (or computes nothing LRP must know).
_CONTAINERS = tuple(t for t in (nn.Sequential, nn.ModuleList, nn.ModuleDict, ResNet, TvResNet,
                                SelectAdaptivePool2d) if t is not None)
#: Leaves that LRP handles as they are (a rule of the composites, or relevance passed through).
_LEAVES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
           nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.AvgPool1d,
           nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
           nn.AdaptiveAvgPool3d, nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout3d, Sum,
           TimmLinear)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _elementwise_activation(module) -> bool:
    # the composites pass relevance through activations unchanged; exact torch classes only
    return (isinstance(module, ztypes.Activation) and type(module).__module__.startswith("torch.nn")
            and not isinstance(module, nn.MultiheadAttention))


def _scope(model: nn.Module, layer, lower_layer) -> list:
    """``(name, module)`` pairs the relevance passes through: after the lower layer (if any),
    up to the end of ``layer`` (if any), and every module that contains ``layer``."""
    mods = list(model.named_modules())
    names = [n for n, _ in mods]

    def end(name):
        i = names.index(name) + 1
        while i < len(names) and names[i].startswith(name + "."):
            i += 1
        return i

    lowers = [lower_layer] if isinstance(lower_layer, str) else list(lower_layer or [])
    lo = min((end(n) for n in lowers if n in names), default=0)
    hi = end(layer) if layer in names else len(mods)
    inside = (lambda n: n == "" or layer.startswith(n + ".")) if layer else (lambda n: False)
    return [(n, m) for i, (n, m) in enumerate(mods) if lo <= i < hi or inside(n)]


def lrp_support(model: nn.Module, canonizers=None, *, layer: str | None = None,
                lower_layer=None) -> list[str]:
    """The parts of ``model`` on which LRP with ``canonizers`` would not be correct.

    Parameters
    ----------
    model : nn.Module
    canonizers : list, optional
        Default :func:`canonizers_for` of ``model``. A canonizer of a type not defined here or
        in zennit's ResNet and BatchNorm canonizers cannot be judged: the list is then empty.
    layer : str, optional
        Only the modules up to the end of this layer matter (the relevance starts there).
    lower_layer : str or list of str, optional
        Only the modules after this layer matter (circuits stop there).

    Returns
    -------
    list of str
        One line per kind of problem, naming the module class, where it sits and what is
        missing; empty when LRP is correct on the part that matters.
    """
    canonizers = canonizers_for(model) if canonizers is None else list(canonizers)
    known = (MergeBatchNorm, TimmResNetCanonizer) + tuple(
        t for t in (ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer) if t is not None)
    if not all(isinstance(c, known) for c in canonizers):
        return []
    merges = any(isinstance(c, MergeBatchNorm) for c in canonizers)
    timm_blocks = any(isinstance(c, TimmResNetCanonizer) for c in canonizers)
    tv_blocks = ResNetBasicBlockCanonizer is not None and any(
        isinstance(c, (ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer)) for c in canonizers)
    # a BatchNorm is merged when it comes right after a linear layer in the order of the leaves
    leaves = list(collect_leaves(model))
    merged = {id(b) for a, b in zip(leaves, leaves[1:])
              if merges and isinstance(a, ztypes.Linear) and isinstance(b, ztypes.BatchNorm)}
    problems: dict = {}
    for name, module in _scope(model, layer, lower_layer):
        kind = type(module)
        leaf = next(module.children(), None) is None
        if kind in (BasicBlock, Bottleneck):
            why = None if timm_blocks else "residual addition not canonized (no TimmResNetCanonizer)"
        elif TvBasicBlock is not None and kind in (TvBasicBlock, TvBottleneck):
            why = None if tv_blocks else "residual addition not canonized (no ResNet canonizer)"
        elif not leaf:
            why = None if kind in _CONTAINERS else "own forward, not covered by any canonizer"
        elif kind in _BATCH_NORMS:
            why = None if id(module) in merged else "BatchNorm not merged into a preceding linear layer"
        else:
            why = None if kind in _LEAVES or _elementwise_activation(module) else "no LRP rule"
        if why is not None:
            problems.setdefault((kind.__name__, why), []).append(name or "<model>")
    lines = []
    for (kind, why), names in problems.items():
        where = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        lines.append(f"{kind} ({where}): {why}")
    return lines


def composite_for(composite, model: nn.Module, *, canonizers=None, dataset=None,
                  layer: str | None = None, lower_layer=None, approximate: bool = False) -> Composite:
    """A zennit composite by name, with the canonizers that make LRP on ``model`` correct.

    Parameters
    ----------
    composite : str or zennit Composite
        A name registered in ``zennit.composites.COMPOSITES`` (``"epsilon_plus_flat"``, ...),
        or a ready composite, returned as it is (its canonizers are then its own).
    model : nn.Module
        The model the composite will be applied to.
    canonizers : list, optional
        zennit canonizers (default :func:`canonizers_for` of ``model``; ``[]`` for none).
    dataset : Dataset, optional
        With ``mean`` and ``std``, the bounds of the box rule of ``"epsilon_gamma_box"`` are the
        normalised values of pixels 0 and 1 (default: mean 0, std 1).
    layer, lower_layer : optional
        The part of the model the relevance passes through (see :func:`lrp_support`).
    approximate : bool
        Compute LRP even where the canonizers do not cover the model (see :func:`lrp_support`),
        with a :class:`LRPApproximationWarning` naming what is missing.

    Returns
    -------
    zennit.core.Composite

    Raises
    ------
    ValueError
        For an unknown composite name, and (unless ``approximate``) for a model on which LRP
        with these canonizers would not be correct, naming the modules not covered.
    """
    if isinstance(composite, Composite):
        ready, canonizers = composite, list(getattr(composite, "canonizers", []) or [])
    elif composite not in COMPOSITES:
        raise ValueError(f"composite {composite!r} not known; composites: {', '.join(COMPOSITES)}")
    else:
        ready = None
        canonizers = canonizers_for(model) if canonizers is None else list(canonizers)
    problems = lrp_support(model, canonizers, layer=layer, lower_layer=lower_layer)
    if problems:
        what = "; ".join(problems)
        if not approximate:
            raise ValueError(
                f"LRP would not be correct on this {type(model).__name__} (residual sums, products "
                f"or normalisations that no canonizer covers create or lose relevance): {what}. "
                "Supported: "
                f"{'; '.join(SUPPORTED_ARCHITECTURES)}. Use attribution='gxa', or pass "
                "approximate=True to compute LRP anyway (its relevance conservation is reported; "
                "see pure_utils.circuits.lrp_conservation)")
        warnings.warn(f"approximate LRP on this {type(model).__name__}: {what}",
                      LRPApproximationWarning, stacklevel=3)
    if ready is not None:
        return ready
    kwargs = {"canonizers": canonizers}
    if composite == "epsilon_gamma_box":
        # the box rule needs the bounds of the normalised input: pixels 0 and 1 after mean/std
        mean = torch.tensor(getattr(dataset, "mean", (0.0, 0.0, 0.0))).view(1, 3, 1, 1)
        std = torch.tensor(getattr(dataset, "std", (1.0, 1.0, 1.0))).view(1, 3, 1, 1)
        kwargs.update(low=(0 - mean) / std, high=(1 - mean) / std)
    return COMPOSITES[composite](**kwargs)
