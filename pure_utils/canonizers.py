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
"""
from __future__ import annotations

import torch
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn
from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm
from zennit.composites import COMPOSITES, Composite
from zennit.layer import Sum

try:  # torchvision ResNets are matched by zennit's own canonizers
    from torchvision.models.resnet import BasicBlock as TvBasicBlock, Bottleneck as TvBottleneck
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
except ImportError:  # torchvision missing: nothing to match
    TvBasicBlock = TvBottleneck = None

__all__ = ["canonizers_for", "composite_for", "TimmResNetCanonizer", "ExactMergeBatchNorm"]


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
        A timm ResNet (``BasicBlock`` or ``Bottleneck``), a torchvision ResNet, or a plain CNN.

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


def composite_for(composite, model: nn.Module, *, canonizers=None, dataset=None) -> Composite:
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

    Returns
    -------
    zennit.core.Composite
    """
    if isinstance(composite, Composite):
        return composite
    if composite not in COMPOSITES:
        raise ValueError(f"composite {composite!r} not known; composites: {', '.join(COMPOSITES)}")
    kwargs = {"canonizers": canonizers_for(model) if canonizers is None else canonizers}
    if composite == "epsilon_gamma_box":
        # the box rule needs the bounds of the normalised input: pixels 0 and 1 after mean/std
        mean = torch.tensor(getattr(dataset, "mean", (0.0, 0.0, 0.0))).view(1, 3, 1, 1)
        std = torch.tensor(getattr(dataset, "std", (1.0, 1.0, 1.0))).view(1, 3, 1, 1)
        kwargs.update(low=(0 - mean) / std, high=(1 - mean) / std)
    return COMPOSITES[composite](**kwargs)
