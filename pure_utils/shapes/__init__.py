"""The controlled benchmark: generated images of shapes with known concepts and masks.

- :mod:`~pure_utils.shapes.generator`: scenes, masks and counterfactual edits (``SyntheticConfig``);
- :mod:`~pure_utils.shapes.dataset`: ``SyntheticShapes``, the benchmark as a dataset
  (``load_dataset("synthetic", ...)`` builds it by name);
- :mod:`~pure_utils.shapes.ground_truth`: what drives each reference sample, by intervention;
- :mod:`~pure_utils.shapes.grafting`: a unit grafted onto a trained model, reading two concepts
  through disjoint lower channels (a positive control by construction) or through one shared channel;
- :mod:`~pure_utils.shapes.reader`: the attribute reader, CLIP's role on the benchmark
  (``load_embedder("attributes", ...)``);
- :mod:`~pure_utils.shapes.train`: training the shipped models (``python -m pure_utils.shapes.train``).
"""
from .dataset import SyntheticShapes, load_synthetic
from .generator import SyntheticConfig
from .grafting import Graft, concept_split, graft_unit, pair_truth
from .ground_truth import (TrueFeatures, concept_counts, concept_shares, layer_polysemanticity,
                           polysemantic_by_concepts, reference_concepts, true_features)

__all__ = ["SyntheticShapes", "SyntheticConfig", "load_synthetic", "TrueFeatures",
           "true_features", "reference_concepts", "polysemantic_by_concepts",
           "layer_polysemanticity", "concept_shares", "concept_counts", "graft_unit", "Graft", "pair_truth",
           "concept_split"]
