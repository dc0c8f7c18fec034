"""Layers: everything about one layer of a model.

A layer is addressed by its module name (``"layer3"``, ``"layer4"``), as in timm.
:func:`get_layer` finds it, :func:`forward_until` runs a model only as far as that layer
(:func:`stop_after`, a hook that ends the forward pass once a module has run, and
:func:`run_model`), :func:`eval_mode` and :func:`frozen_parameters` set the model's state for a
stage and restore it, and the layer's :class:`Layout` says where its channels and positions lie.

Layouts: where the channels (the units) and the positions of a layer's output lie.

PURE reads a layer as channels over positions: mining takes each channel's maximum over the
positions, a circuit sums the attributions at the lower layer over its positions, the activation
baseline averages each channel over the positions, and a heatmap starts at one position of one
channel. CNNs and vision transformers lay these out differently, so every stage reads a layer's
output through its :class:`Layout`:

- ``"map"``: ``[B, C, H, W]``, channels first (the feature maps of ResNet, ConvNeXt, EfficientNet,
  RegNet, MobileNet stages and blocks).
- ``"map_last"``: ``[B, H, W, C]``, channels last (inside a ConvNeXt block whose MLP is made of
  Linear layers, the stages of timm's Swin).
- ``"vector"``: ``[B, C]``, one position per channel: a pooled feature vector or a classifier
  head (the model's classifier and what follows its global pooling).
- ``"tokens"``: ``[B, N, D]``, a transformer's tokens. The channels are the ``D`` embedding
  dimensions and the positions are the patch tokens, on the patch grid. The tokens in front of
  them (class, register and distillation tokens, ``prefix_tokens``) are no patch: with
  ``tokens="patches"`` (the default) they are not among the unit's positions (mining, the
  activation baseline and the initial relevance ignore them); ``tokens="all"`` counts every
  token, its positions are then the token indices ``(0, i)`` on a ``1 x N`` grid.

Every layout also takes a ``[B, C]`` output (a pooled vector: one position). Anything else
(the ``[B, heads, N, N]`` attention weights, a 3-d output of a CNN module, a tuple) is refused
with an error naming the layer, its output shape and what is accepted.

Detection is explicit, never guessed from the sizes of the output (a ``[B, 197, 192]`` output is
tokens because the module belongs to a vision transformer, not because 197 is not a channel
count). :func:`layer_layout` gives, in this order:

1. the ``layout=`` argument: a name above or a :class:`Layout` (for a model not detected below,
   e.g. ``Layout("tokens", prefix_tokens=1)``);
2. in a timm vision transformer (``VisionTransformer`` and its subclasses such as DeiT, ``Eva``,
   ``Beit``): the patch embedding's submodules give maps (the convolution before flattening),
   the patch embedding itself gives tokens without prefix tokens, every other module tokens
   with the model's ``num_prefix_tokens``;
3. the model's classifier (``get_classifier()``, the modules holding it or inside it), a
   flattening global pool or ``Flatten``, the modules that follow one in the same container, and
   a vision transformer's ``fc_norm``, ``head_drop`` and ``head``: vectors;
4. elsewhere, a module that acts on the last axis - a ``Linear``, a ``LayerNorm`` or ``RmsNorm``
   that is not a channels-first (``2d``) one, or any module inside an MLP made of ``Linear``
   layers - gives channels-last maps (or ``[B, C]`` vectors, as a classifier does); inside a
   patch embedding, maps; a model that declares ``output_fmt = "NHWC"`` (Swin) channels-last
   maps; every other module of a CNN, maps.

Lower layers. A circuit sums the attributions of the lower layer over *all* its positions,
prefix tokens included, whatever ``tokens`` says: what flows into the unit through the class
token is part of its circuit, as every position of a CNN map is.

Which units of a ViT? Any module name works. Two choices are natural: the block outputs
(``blocks.i``, the residual stream, ``D`` units), which is what the next block and the head read,
like ``layer4`` of a ResNet, and the MLP hidden units (``blocks.i.mlp.act``, ``4 D`` units after
the GELU). The MLP hidden units are the better "neurons": the elementwise GELU acts on each of
them alone, so their basis is privileged, as a CNN channel after its ReLU is; no nonlinearity
acts on a single direction of the residual stream, whose basis any rotation absorbed by the
adjacent linear maps would leave equally valid. Circuits between two blocks
(``blocks.i`` from ``blocks.{i-1}``) and from the MLP units to the block below
(``blocks.i.mlp.act`` from ``blocks.{i-1}``) are both computed the same way.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from timm.layers import GatedMlp, GluMlp, Mlp, PatchEmbed, SwiGLU
from timm.layers.norm import LayerNorm2d, RmsNorm
from timm.models.beit import Beit
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from torch import nn


__all__ = ["layer_names", "get_layer", "layer_order", "eval_mode", "frozen_parameters",
           "StopForward", "stop_after", "run_model", "layer_output", "forward_until",
           "LAYOUTS", "TOKEN_SETS", "TOKEN_MODELS", "Layout", "layer_layout", "resolve_layout",
           "layout_key", "patch_map"]

def layer_names(model: nn.Module) -> list[str]:
    """Names of the model's modules (``named_modules`` order, root excluded)."""
    return [n for n, _ in model.named_modules() if n]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; a ``ValueError`` lists the top-level names otherwise."""
    modules = dict(model.named_modules())
    if not name or name not in modules:
        top = [n for n, _ in model.named_children()]
        raise ValueError(f"layer {name!r} not found; layers: {', '.join(top)}")
    return modules[name]


def layer_order(model: nn.Module, names) -> list[int]:
    """Positions of ``names`` in the module order (used to check that a lower layer comes first)."""
    order = {n: i for i, n in enumerate(layer_names(model))}
    for n in names:
        get_layer(model, n)
    return [order[n] for n in names]


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Evaluation mode (BatchNorm running statistics, no dropout), restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def frozen_parameters(model: nn.Module):
    """Switch off ``requires_grad`` of all parameters (restored afterwards).

    Attribution only needs gradients with respect to activations; a parameter that requires
    grad would make autograd record the whole forward pass and compute weight gradients.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class StopForward(Exception):
    """Raised by the hook of :func:`stop_after` to end a forward pass early."""


@contextlib.contextmanager
def stop_after(module: nn.Module):
    """Within the block, a forward pass ends right after ``module`` has run.

    Yields a dict that receives the module's output under ``"out"``. Run the model with
    :func:`run_model`, which swallows the :class:`StopForward` the hook raises. Register it
    after other hooks on the same module (e.g. inside a zennit composite's context) so that
    they run first.
    """
    captured: dict = {}

    def hook(_module, _inputs, output):
        captured["out"] = output
        raise StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def run_model(model: nn.Module, x: torch.Tensor) -> None:
    """``model(x)``, ended early by a :func:`stop_after` hook (the output is in its dict)."""
    try:
        model(x)
    except StopForward:
        pass


def layer_output(name: str, out) -> torch.Tensor:
    """Check that the output of layer ``name`` is a feature tensor ``[B, C, ...]``."""
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"layer {name!r} returns a {type(out).__name__}, not a tensor; "
                         "choose a module whose output is a feature map")
    if out.ndim < 2:
        raise ValueError(f"layer {name!r} output has shape {tuple(out.shape)}; need [B, C, ...]")
    return out


def forward_until(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """Run ``model`` on ``x`` and return the output of ``layer``, skipping everything above it.

    Parameters
    ----------
    model : nn.Module
    x : Tensor[B, 3, H, W]
    layer : str
        Module name.

    Returns
    -------
    Tensor[B, C, h, w]
    """
    with stop_after(get_layer(model, layer)) as captured:
        run_model(model, x)
    if "out" not in captured:
        raise RuntimeError(f"layer {layer!r} was not called in the model's forward pass")
    return layer_output(layer, captured["out"])


#: Layout names and the output each one reads (every layout also reads ``[B, C]``).
LAYOUTS = {"map": "[B, C, H, W]", "map_last": "[B, H, W, C]", "tokens": "[B, N, D]",
           "vector": "[B, C]"}
#: Values of ``tokens``: the positions of a unit of a token layer.
TOKEN_SETS = ("patches", "all")
#: The vision transformers whose token layers are detected (subclasses included).
TOKEN_MODELS = (VisionTransformer, Eva, Beit)
#: MLPs that may be made of Linear layers (then acting on the last axis) or of 1x1 convolutions.
_MLPS = (Mlp, GluMlp, SwiGLU, GatedMlp)


@dataclass(frozen=True)
class Layout:
    """How a layer's output holds channels and positions.

    Attributes
    ----------
    kind : {"map", "map_last", "tokens", "vector"}
        ``[B, C, H, W]``, ``[B, H, W, C]``, ``[B, N, D]`` or ``[B, C]`` (one position).
    prefix_tokens : int
        ``"tokens"``: the class, register and distillation tokens in front of the patch tokens.
    tokens : {"patches", "all"}
        ``"tokens"``: the unit's positions are the patch tokens (default) or all tokens.
    grid : tuple of 2 ints, optional
        ``"tokens"``: the patch grid ``(h, w)`` at the model's input size (``None``: unknown).
    patch_size : tuple of 2 ints, optional
        ``"tokens"``: input pixels per patch ``(ph, pw)`` (``None``: unknown).
    """

    kind: str = "map"
    prefix_tokens: int = 0
    tokens: str = "patches"
    grid: tuple | None = None
    patch_size: tuple | None = None

    def __post_init__(self):
        if self.kind not in LAYOUTS:
            raise ValueError(f"layout {self.kind!r} not known; layouts: "
                             + ", ".join(f"{k!r} {v}" for k, v in LAYOUTS.items()))
        if self.tokens not in TOKEN_SETS:
            raise ValueError(f"tokens={self.tokens!r} not known; use one of "
                             f"{', '.join(map(repr, TOKEN_SETS))}")
        if int(self.prefix_tokens) < 0:
            raise ValueError(f"prefix_tokens={self.prefix_tokens} must be >= 0")

    def __str__(self) -> str:
        if self.kind != "tokens":
            return f"{self.kind} {LAYOUTS[self.kind]}"
        where = "all tokens" if self.tokens == "all" else "patch tokens"
        return f"tokens [B, N, D] ({self.prefix_tokens} prefix tokens; positions: {where})"

    @property
    def _first(self) -> int:
        """Index of the first token that is one of the unit's positions."""
        return self.prefix_tokens if self.tokens == "patches" else 0

    # --- checks -------------------------------------------------------------------------------
    def check(self, out, layer: str) -> torch.Tensor:
        """``out`` if this layout reads it; otherwise a ``ValueError`` naming ``layer``, the
        output's shape and what is accepted."""
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"layer {layer!r} returns a {type(out).__name__}, not a tensor; "
                             "choose a module whose output is a feature map or tokens")
        want = {"tokens": 3, "vector": 2}.get(self.kind, 4)
        if out.ndim not in (2, want):
            raise ValueError(
                f"layer {layer!r} outputs a tensor of shape {tuple(out.shape)}, which its layout "
                f"{self} does not read; accepted: {LAYOUTS[self.kind]} or [B, C]. Choose another "
                "module (e.g. a block or stage), or pass layout= one of "
                + ", ".join(f"{k!r} {v}" for k, v in LAYOUTS.items()))
        if self.kind == "tokens" and out.ndim == 3 and out.shape[1] <= self._first:
            raise ValueError(f"layer {layer!r} outputs {out.shape[1]} tokens, but its layout "
                             f"{self} puts {self.prefix_tokens} prefix tokens in front: no patch "
                             "token left; pass tokens='all' or a Layout with other prefix_tokens")
        return out

    # --- reading ------------------------------------------------------------------------------
    def n_channels(self, out: torch.Tensor) -> int:
        """Number of channels (units) of ``out``."""
        return int(out.shape[1] if out.ndim == 2 or self.kind == "map" else out.shape[-1])

    def channels(self, out: torch.Tensor) -> torch.Tensor:
        """The unit's positions of every channel: ``Tensor[B, C, S]``.

        ``map``: all ``H * W`` positions (row-major); ``map_last`` alike; ``tokens``: the patch
        tokens (``tokens="patches"``) or all tokens, in token order; ``[B, C]``: ``S = 1``.
        """
        if out.ndim == 2:
            return out[:, :, None]
        if self.kind == "map":
            return out.flatten(2)
        if self.kind == "map_last":
            return out.flatten(1, 2).transpose(1, 2)
        return out[:, self._first:].transpose(1, 2)

    def everywhere(self, out: torch.Tensor) -> torch.Tensor:
        """Every position of every channel, prefix tokens included: ``Tensor[B, C, S_all]``
        (what a circuit sums over at the lower layer)."""
        if self.kind == "tokens" and out.ndim == 3:
            return out.transpose(1, 2)
        return self.channels(out)

    def place(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`channels`: ``values`` ``Tensor[B, C, S]`` laid out like ``like``
        (zero at the positions that are not the unit's, e.g. a class token)."""
        if like.ndim == 2:
            return values[:, :, 0]
        if self.kind == "map":
            return values.reshape(like.shape)
        if self.kind == "map_last":
            b, h, w, c = like.shape
            return values.transpose(1, 2).reshape(b, h, w, c)
        out = torch.zeros_like(like, dtype=values.dtype)
        out[:, self._first:] = values.transpose(1, 2)
        return out

    def positions_grid(self, out: torch.Tensor, input_size=None) -> tuple[int, int]:
        """``(h, w)`` of the unit's positions: stored positions are ``(s // w, s % w)``.

        Maps: their own ``(H, W)``; ``[B, C]``: ``(1, 1)``; patch tokens: the patch grid (the
        model's, or from ``input_size`` and ``patch_size`` for other input sizes), ``(1, n)``
        when neither matches the number of patch tokens; ``tokens="all"``: ``(1, N)``.
        """
        if out.ndim == 2:
            return (1, 1)
        if self.kind == "map":
            return tuple(int(s) for s in out.shape[2:])
        if self.kind == "map_last":
            return tuple(int(s) for s in out.shape[1:3])
        n = int(out.shape[1]) - self._first
        if self.tokens == "patches":
            for grid in (self.grid, self._input_grid(input_size, ceil=False),
                         self._input_grid(input_size, ceil=True)):
                if grid is not None and grid[0] * grid[1] == n:
                    return tuple(int(g) for g in grid)
        return (1, n)

    def patch_grid(self, input_size) -> tuple[int, int] | None:
        """The patch grid ``(h, w)`` for inputs of ``input_size`` (``None``: no patches)."""
        if self.kind != "tokens" or self.patch_size is None:
            return None
        grid = self._input_grid(input_size, ceil=False)
        return grid if grid is not None else self.grid

    def _input_grid(self, input_size, ceil: bool):
        if input_size is None or self.patch_size is None:
            return None
        (H, W), (ph, pw) = input_size, self.patch_size
        return ((H + ph - 1) // ph, (W + pw - 1) // pw) if ceil else (H // ph, W // pw)


# --------------------------------------------------------------------------------------------
# detection
# --------------------------------------------------------------------------------------------
def _pair(v):
    if v is None:
        return None
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(s) for s in v)


def _last_axis(module: nn.Module) -> bool:
    """Whether ``module`` itself acts on the last axis of its input."""
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.LayerNorm):  # timm's LayerNorm2d subclasses it, channels first
        return not isinstance(module, LayerNorm2d) and "2d" not in type(module).__name__.lower()
    return isinstance(module, RmsNorm) and "2d" not in type(module).__name__.lower()


def _linear_mlp(module: nn.Module) -> bool:
    return isinstance(module, _MLPS) and isinstance(getattr(module, "fc1", None), nn.Linear)


def _patch_embed_layout(module) -> str:
    if getattr(module, "flatten", False):
        return "tokens"
    return "map_last" if str(getattr(module, "output_fmt", "NCHW")).endswith("NHWC") else "map"


def _flattens(module: nn.Module) -> bool:
    """A ``Flatten`` or a global pool that flattens (timm's ``SelectAdaptivePool2d(flatten=True)``)."""
    return isinstance(module, nn.Flatten) or isinstance(getattr(module, "flatten", None), nn.Flatten)


def _is_vector(model: nn.Module, parts: list, ancestors: list, module: nn.Module) -> bool:
    """Whether the module's output is a ``[B, C]`` vector (see the module docstring, rule 3)."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
        if any(m is head for m in ancestors[1:] + [module]):
            return True  # the classifier or a module inside it
        if module is not model and any(m is head for m in module.modules()):
            return True  # a head that holds the classifier
    if _flattens(module):
        return True
    siblings = list(ancestors[-1].children())
    index = next((i for i, m in enumerate(siblings) if m is module), 0)
    if any(_flattens(m) for m in siblings[:index]):
        return True  # after a flattening pool in the same container (ConvNeXt's head.fc)
    return isinstance(model, TOKEN_MODELS) and parts[0] in ("fc_norm", "head_drop", "head")


def _detect(model: nn.Module, layer: str, module: nn.Module) -> tuple[str, int]:
    """``(kind, prefix_tokens)`` of ``layer`` from the module types (see the module docstring)."""
    parts = layer.split(".")
    ancestors = [model] + [get_layer(model, ".".join(parts[:i])) for i in range(1, len(parts))]
    if _is_vector(model, parts, ancestors, module):
        return "vector", 0
    in_patch_embed = any(isinstance(m, PatchEmbed) for m in ancestors)
    last_axis = _last_axis(module) or any(_linear_mlp(m) for m in ancestors + [module])
    if isinstance(model, TOKEN_MODELS):
        if isinstance(module, PatchEmbed):
            return _patch_embed_layout(module), 0
        if in_patch_embed:
            return ("tokens" if last_axis else "map"), 0
        return "tokens", int(getattr(model, "num_prefix_tokens", 0))
    if last_axis:
        return "map_last", 0
    if isinstance(module, PatchEmbed):
        return _patch_embed_layout(module), 0
    if in_patch_embed:
        return "map", 0
    if str(getattr(model, "output_fmt", "NCHW")).endswith("NHWC"):
        return "map_last", 0
    return "map", 0


def layer_layout(model: nn.Module, layer: str, layout=None, tokens: str | None = None) -> Layout:
    """The layout of the output of ``layer`` (see the module docstring for the rules).

    Parameters
    ----------
    model : nn.Module
    layer : str
        Module name.
    layout : None, str, Layout or dict
        ``None``: detected from the model and the module types; a name of :data:`LAYOUTS`; a
        :class:`Layout` (used as it is); a dict from layer names to any of these (layers not in
        it are detected).
    tokens : {"patches", "all"}, optional
        Token layers: the unit's positions (default ``"patches"``: class and register tokens
        left out).

    Returns
    -------
    Layout
    """
    module = get_layer(model, layer)  # ValueError listing the layers
    if isinstance(layout, dict):
        layout = layout.get(layer)
    if tokens is not None and tokens not in TOKEN_SETS:
        raise ValueError(f"tokens={tokens!r} not known; use one of "
                         f"{', '.join(map(repr, TOKEN_SETS))}")
    if isinstance(layout, Layout):
        return layout if tokens is None else Layout(layout.kind, layout.prefix_tokens, tokens,
                                                    layout.grid, layout.patch_size)
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} for layer {layer!r} not known; layouts: "
                         + ", ".join(f"{k!r} {v}" for k, v in LAYOUTS.items())
                         + " (or a pure_utils.layers.Layout)")
    kind, prefix = _detect(model, layer, module)
    if layout is not None and layout != kind:
        kind, prefix = layout, (prefix if layout == "tokens" else 0)
    if kind != "tokens":
        return Layout(kind)
    embed = getattr(model, "patch_embed", None)
    grid = _pair(getattr(embed, "grid_size", None))
    patch = _pair(getattr(embed, "patch_size", None))
    return Layout("tokens", prefix, tokens or "patches", grid, patch)


def resolve_layout(model: nn.Module, layer: str, layout=None, tokens: str | None = None,
                   recorded: Layout | None = None) -> Layout:
    """The layout a stage reads ``layer`` with, given the layout references were mined with.

    ``recorded`` (``References.layout``) is used when neither ``layout`` nor ``tokens`` is
    given; given ones must agree with it (another layout would read other units or positions).
    """
    if isinstance(layout, dict):
        layout = layout.get(layer)
    if recorded is not None and layout is None and tokens is None:
        return recorded
    lay = layer_layout(model, layer, layout, tokens)
    if recorded is not None and lay != recorded:
        raise ValueError(f"references of layer {layer!r} were mined with layout {recorded}, not "
                         f"{lay}; mine them again with this layout, or leave layout and tokens "
                         "out to use theirs")
    return lay


def layout_key(*layouts: Layout) -> dict:
    """Cache-key parameters of the layouts: none when every layout is a plain map (the keys of
    results stored before layouts existed stay valid), else their descriptions."""
    if all(lay is None or lay.kind == "map" for lay in layouts):
        return {}
    return {"layouts": [str(lay) for lay in layouts]}


def patch_map(relevance: torch.Tensor, patch_size) -> torch.Tensor:
    """A pixel relevance map made a map over patches: each patch's mean spread over its pixels.

    Parameters
    ----------
    relevance : Tensor[B, H, W]
    patch_size : (ph, pw)

    Returns
    -------
    Tensor[B, H, W]
        Constant on every patch; the sum over a patch is kept. Pixels right of or below the
        last whole patch (which a patch embedding without padding never reads) are 0.
    """
    ph, pw = _pair(patch_size)
    B, H, W = relevance.shape
    gh, gw = H // ph, W // pw
    core = relevance[:, :gh * ph, :gw * pw].reshape(B, gh, ph, gw, pw).mean((2, 4))
    out = torch.zeros_like(relevance)
    out[:, :gh * ph, :gw * pw] = core.repeat_interleave(ph, 1).repeat_interleave(pw, 2)
    return out
