"""PURE: turning polysemantic neurons into pure features by identifying relevant circuits.

A small library around the method of Dreyer et al. (2024): find a neuron's most activating
samples, attribute its activation to the channels of the layer below, cluster those attribution
vectors into *virtual neurons*, and evaluate how pure the resulting features are.

The public names are imported lazily so that ``import pure_utils`` stays cheap (no torch
import until a name that needs it is used).
"""
from __future__ import annotations

import importlib
import importlib.util

# first of all (tqdm only, no torch): tqdm.auto is imported here with its notebook warning
# silenced, before a dependency (timm's huggingface_hub) imports it and prints the warning
from . import _progress  # noqa: F401

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # models.py
    "load_model": "models",
    "layer_names": "models",
    "get_layer": "models",
    "randomize_batchnorm": "models",
    "forward_until": "models",
    "DEFAULT_MODELS": "models",
    # layouts.py
    "Layout": "layouts",
    "layer_layout": "layouts",
    # canonizers.py
    "canonizers_for": "canonizers",
    "composite_for": "canonizers",
    "lrp_support": "canonizers",
    # data.py
    "load_dataset": "data",
    "ImageFolderDataset": "data",
    "GeneratedImages": "data",
    "SyntheticShapes": "benchmark",
    "UnreadableImageError": "data",
    # synthetic.py
    "SyntheticConfig": "synthetic",
    # ground_truth.py
    "reference_features": "ground_truth",
    "ReferenceFeatures": "ground_truth",
    "reference_concepts": "ground_truth",
    "polysemantic_by_concepts": "ground_truth",
    "layer_polysemanticity": "ground_truth",
    "concept_shares": "ground_truth",
    "concept_counts": "ground_truth",
    # grafting.py
    "graft_unit": "grafting",
    "Graft": "grafting",
    "concept_split": "grafting",
    # train.py
    "train_default_model": "train",
    # references.py
    "References": "references",
    "mine_references": "references",
    "check_references": "references",
    # stash.py
    "ActivationStash": "stash",
    # circuits.py
    "circuit_attributions": "circuits",
    "activation_features": "circuits",
    "lrp_conservation": "circuits",
    "ATTRIBUTIONS": "circuits",
    "METHODS": "circuits",
    # virtual.py
    "VirtualNeurons": "virtual",
    # crops.py
    "feature_heatmaps": "crops",
    "crop_boxes": "crops",
    "feature_crops": "crops",
    "display_crops": "crops",
    # embed.py
    "Embedder": "embed",
    "load_embedder": "embed",
    # metrics.py
    "distance_matrix": "metrics",
    "intra_inter": "metrics",
    "polysemanticity": "metrics",
    "distance_correlation": "metrics",
    "ground_truth_scores": "metrics",
    "bootstrap_ci": "metrics",
    "paired_difference": "metrics",
    # cache.py
    "Cache": "cache",
    "CacheWarning": "cache",
    "model_fingerprint": "cache",
    # profiles.py
    "load_profile": "profiles",
    "from_parameters": "profiles",
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
