"""Models: the shipped models and their cards, timm models by name, checkpoints.

Everything about one layer of a model (lookup, layout, the truncated forward pass) lives in
:mod:`pure_utils.layers`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import huggingface_hub
import timm
import torch
from safetensors.torch import load_file
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from ._machine import machine_info  # noqa: F401  (part of this module's API)
from .cache import model_fingerprint
from .paths import DATA_DIR, MODELS_DIR

__all__ = ["DEFAULT_MODELS", "shipped_models", "build_resnet", "build_model", "read_card",
           "load_model", "input_dtype", "randomize_batchnorm", "model_fingerprint", "resolve_device",
           "machine_info", "DATA_DIR", "MODELS_DIR"]

#: The models trained on the controlled benchmark and shipped with the project
#: (name -> path of the JSON card; the weights lie beside it as ``<name>.safetensors``).
DEFAULT_MODELS = {
    "synthetic_resnet_basic": MODELS_DIR / "synthetic_resnet_basic.json",
    "synthetic_resnet_bottleneck": MODELS_DIR / "synthetic_resnet_bottleneck.json",
}


def build_resnet(block: str = "basic", layers=(1, 1, 1, 1), channels=(16, 32, 64, 32),
                 stem_width: int = 16, num_classes: int = 16, **kwargs) -> nn.Module:
    """Build a timm ``ResNet`` with reduced widths.

    Parameters
    ----------
    block : {"basic", "bottleneck"}
        Residual block type (timm ``BasicBlock`` as in ResNet-18/34, ``Bottleneck`` as in
        ResNet-50/101; a bottleneck stage outputs ``4 * channels[i]`` channels).
    layers : sequence of 4 ints
        Number of blocks per stage.
    channels : sequence of 4 ints
        Base width of each stage.
    stem_width : int
        Channels of the stem convolution.
    num_classes : int
        Size of the classifier.
    **kwargs
        Passed on to ``timm.models.resnet.ResNet``.
    """
    blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
    if block not in blocks:
        raise ValueError(f"block {block!r} not known; blocks: {', '.join(blocks)}")
    if len(layers) != 4 or len(channels) != 4:
        raise ValueError(f"layers and channels need 4 entries each, got {list(layers)} and {list(channels)}")
    model = ResNet(block=blocks[block], layers=list(layers), channels=tuple(channels),
                   stem_width=stem_width, num_classes=num_classes, **kwargs)
    return model


def build_model(architecture: dict) -> nn.Module:
    """Build a shipped model from the ``architecture`` of its card (random weights).

    Parameters
    ----------
    architecture : dict
        :func:`build_resnet` kwargs (the ResNets), or ``timm_model`` (a timm architecture name,
        e.g. ``"convnext_atto"``) with the keyword arguments that shrink it (``dims``,
        ``depths``, ``num_classes``, ...), passed on to ``timm.create_model`` with
        ``pretrained=False``.

    Returns
    -------
    torch.nn.Module
    """
    arch = dict(architecture)
    name = arch.pop("timm_model", None)
    if name is None:
        return build_resnet(**arch)
    try:
        return timm.create_model(name, pretrained=False, **arch)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"architecture timm_model={name!r} is not a timm model name "
                             "(see timm.list_models())") from err
        raise


def shipped_models() -> dict:
    """Every model shipped in ``data/models`` (the two defaults and the model family):
    name -> path of its JSON card."""
    return {**DEFAULT_MODELS, **{p.stem: p for p in sorted(MODELS_DIR.glob("*.json"))}}


def read_card(name: str) -> dict:
    """The JSON card of a shipped model (architecture, training, accuracy)."""
    path = shipped_models()[name]
    if not path.exists():
        raise FileNotFoundError(
            f"the card of the shipped model {name!r} is missing at {path}; "
            "train it with `make models` (python -m pure_utils.shapes.train)")
    return json.loads(path.read_text())


def _load_state_dict(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder; give the weights file "
                                "(.safetensors, .pt or .pth)")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"checkpoint {path} is not a readable safetensors file "
                             f"({type(err).__name__}: {err}); is it damaged or cut short?") from None
    # never unpickle arbitrary objects: tensors and plain containers only. torch's own message
    # for a refused file advises turning that safety off, so it is not passed on.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors alike
        raise ValueError(
            f"checkpoint {path} cannot be read as a state dict of tensors "
            f"({type(err).__name__}); the file is damaged, or it holds other objects than "
            "tensors. Save the weights with safetensors.torch.save_file(model.state_dict(), ...) "
            "or torch.save(model.state_dict(), ...)") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def _offline() -> bool:
    """Whether the Hugging Face hub is switched off (``HF_HUB_OFFLINE``, read at call time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _cached_weights(name: str) -> bool | None:
    """Whether timm's pretrained weights of ``name`` lie in a local cache (the Hugging Face
    cache or torch hub's); ``None`` when timm has no pretrained config for the name."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError):
        cfg = None
    if cfg is None:
        return None
    hub = getattr(cfg, "hf_hub_id", None)
    if hub:
        files = [getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin",
                 "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if any(isinstance(huggingface_hub.try_to_load_from_cache(hub, f), str) for f in files if f):
            return True
    url = getattr(cfg, "url", None) or ""
    return bool(url) and (Path(torch.hub.get_dir()) / "checkpoints" / url.split("/")[-1]).exists()


def _weights_error(name: str, reason) -> RuntimeError:
    return RuntimeError(
        f"could not load pretrained weights for {name!r}: {reason}. They come from the "
        "Hugging Face hub: run once with internet access (the weights are then cached "
        "in ~/.cache/huggingface), or pass checkpoint=<path to a local state dict>")


def load_model(name: str, *, pretrained: bool = False, checkpoint=None,
               num_classes: int | None = None) -> nn.Module:
    """Load a model in evaluation mode.

    Parameters
    ----------
    name : str
        A shipped model (``"synthetic_resnet_basic"``, ``"synthetic_resnet_bottleneck"``,
        ``"synthetic_convnext"``, the model family ``"family_*"``; see :func:`shipped_models`)
        or any timm model name with its weight tag (``"resnet50.a1_in1k"``).
    pretrained : bool
        timm names only: load timm's pretrained weights (needs internet or a filled
        Hugging Face cache). Shipped defaults always load their committed weights
        (``pretrained=True`` is refused for them).
    checkpoint : path, optional
        A local state dict (safetensors preferred; ``.pt``/``.pth`` files are read with
        ``weights_only=True``) loaded after the model is built.
    num_classes : int, optional
        Classifier size for timm models (default: the model's own). For a shipped default,
        only its own number of classes is accepted.

    Returns
    -------
    torch.nn.Module
        The model with ``requires_grad`` switched off for all parameters, in ``eval()`` mode,
        with ``model.pure_name`` set (used in cache keys). A timm model without pretrained
        weights is initialised from seed 0: the same name gives the same weights in every process.
    """
    shipped = shipped_models()
    if name in shipped:
        card = read_card(name)
        own = card["architecture"].get("num_classes", 16)
        if pretrained or (num_classes is not None and num_classes != own):
            raise ValueError(
                f"model {name!r} is a shipped model with its own weights and {own} classes: "
                f"pretrained={pretrained!r} and num_classes={num_classes!r} apply to timm names "
                "only; load it without them, or give checkpoint=<your weights> for other weights")
        model = build_model(card["architecture"])
        weights = shipped[name].with_suffix(".safetensors")
        model.load_state_dict(_load_state_dict(checkpoint or weights))
        model.pure_card = card
    else:
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        if pretrained and _offline() and _cached_weights(name) is False:  # no retries offline
            raise _weights_error(name, "HF_HUB_OFFLINE is set and they are not in the local cache")
        try:
            # a random initialisation is seeded: the same name gives the same network in every
            # process (a book build's chapters then share their cache entries)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = timm.create_model(name, pretrained=pretrained, **kwargs)
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise ValueError(
                    f"model {name!r} is neither a shipped model ({', '.join(shipped)}) "
                    "nor a timm model name (see timm.list_models())") from err
            raise
        except (OSError, ConnectionError) as err:
            raise _weights_error(name, err) from err
        if checkpoint is not None:
            model.load_state_dict(_load_state_dict(checkpoint))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.pure_name = name if checkpoint is None else f"{name}@{Path(checkpoint).name}"
    return model


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random affine parameters and running statistics (in place).

    timm zero-initialises the last BatchNorm of each residual block, so a freshly built
    random model computes nearly nothing in its residual branches; tests and benchmarks use
    this to get a model whose every path matters.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
    return model


def resolve_device(model: nn.Module, device=None, *, half: bool = False) -> torch.device:
    """The device to compute on; moves ``model`` there when a device is given.

    ``None``: the device of the model's parameters (the CPU for a model without any). A model
    without weights (on the ``meta`` device) is refused, and one in half precision (float16,
    bfloat16) unless ``half`` (the stage runs it in its precision): ``ValueError`` saying what
    to change.
    """
    if any(t.is_meta for t in model.state_dict().values()):
        raise ValueError("the model is on the 'meta' device: it has shapes but no weights. Give it "
                         "weights first: model.to_empty(device='cpu') then "
                         "model.load_state_dict(...), or build it on a real device")
    dtype = input_dtype(model)
    if not half and dtype in (torch.float16, torch.bfloat16):
        raise ValueError(f"the model's parameters are {dtype}; this stage computes gradients or "
                         "relevances, in float32 (in half precision small contributions vanish): "
                         "pass model.float() (mine_references accepts half precision)")
    if device is None:
        p = next(model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device)
    return device
def input_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of the model's parameters (``None`` without any): a model in half
    precision is given its inputs in half precision."""
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return None if p is None else p.dtype
