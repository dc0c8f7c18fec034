"""PURE: turning polysemantic neurons into pure features by identifying relevant circuits.

A small library around the method of Dreyer et al. (2024): find a neuron's most activating
samples, attribute its activation to the channels of the layer below, cluster those attribution
vectors into *virtual neurons*, and evaluate how pure the resulting features are.

The public names are imported lazily so that ``import pure_utils`` stays cheap (no torch
import until a name that needs it is used).

Run options
-----------
Every stage that runs a model (:class:`PURE`, :func:`mine_references`,
:func:`circuit_attributions`, :func:`activation_vectors`, :func:`feature_heatmaps`, ...) takes
these keywords, with one meaning everywhere; a function's own docstring adds only what is
particular to it.

batch_size : int
    Images per forward (or backward) pass.
device : str, torch.device or None
    Where to compute; the model is moved there. ``None``: the device of the model's parameters.
cache : None, True, str, Path or Cache
    ``None`` or ``False``: compute and keep nothing; ``True``: the default :class:`Cache`
    (``.cache/pure``, or ``$PURE_CACHE_DIR``); a folder or a :class:`Cache`: that one. Results
    are stored, reused and verified when read (:mod:`pure_utils.cache`).
progress : bool
    Show progress bars.
num_workers : int
    DataLoader worker processes that read the images ahead (0: read in this process).
"""
from __future__ import annotations

import importlib
import importlib.util

# first of all (tqdm only, no torch): tqdm.auto is imported here with its notebook warning
# silenced, before a dependency (timm's huggingface_hub) imports it and prints the warning
from . import _progress  # noqa: F401

__version__ = "0.1.0"

# public name -> module that defines it: the engine, what PURE on one's own model needs. The
# controlled benchmark is ``pure_utils.shapes``, the paper's study ``pure_utils.study``, the book's
# tooling ``pure_utils.book`` and the speed tools ``pure_utils.perf``.
_EXPORTS = {
    "load_model": "models",
    "load_dataset": "data",
    "UnreadableImageError": "data",
    "get_layer": "layers",
    "forward_until": "layers",
    "layer_layout": "layers",
    "Layout": "layers",
    "mine_references": "references",
    "References": "references",
    "ActivationStash": "stash",
    "circuit_attributions": "circuits",
    "activation_vectors": "circuits",
    "lrp_support": "canonizers",
    "composite_for": "canonizers",
    "VirtualNeurons": "virtual",
    "feature_heatmaps": "crops",
    "crop_boxes": "crops",
    "feature_crops": "crops",
    "PURE": "pure",
    "load_embedder": "embed",
    "paired_difference": "metrics",
    "Cache": "cache",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        if importlib.util.find_spec(f"pure_utils.{name}") is not None:
            return importlib.import_module(f"pure_utils.{name}")
        raise AttributeError(f"module 'pure_utils' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pure_utils.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
