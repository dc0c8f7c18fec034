"""Ground truth on the controlled benchmark: what each reference sample of a unit shows.

The generator (:mod:`pure_utils.synthetic`) knows every object of every image. This module maps a
unit's reference samples to concepts (:func:`reference_concepts`), counts how many concepts make
up a unit's references (:func:`concept_shares`, :func:`concept_counts`), and decides which units
are polysemantic (:func:`polysemantic_by_concepts`, :func:`layer_polysemanticity`).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .references import mine_references
from .synthetic import SyntheticShapes

__all__ = ["concept_at", "reference_concepts", "concept_shares", "concept_counts", "polysemantic_by_concepts",
           "layer_polysemanticity"]


def concept_at(dataset: SyntheticShapes, i: int, box) -> int:
    """Concept of the object that covers most pixels of a box of image ``i`` (the pixel rule).

    Parameters
    ----------
    dataset : SyntheticShapes
    i : int
        Image index.
    box : (y0, x0, y1, x1)
        Half-open box in input pixels; may be fractional. A pixel belongs to the box when its
        centre ``(y + 0.5, x + 0.5)`` lies in ``[y0, y1) x [x0, x1)``.

    Returns
    -------
    int
        The concept id of the object with the most visible pixels in the box (ties: the object
        drawn first, i.e. the labelled object), or -1 when the box holds no object pixel.
    """
    y0, x0, y1, x1 = box
    omap = dataset.object_map(i)
    size = omap.shape[0]
    r0, r1 = max(0, math.ceil(y0 - 0.5)), min(size, math.ceil(y1 - 0.5))
    c0, c1 = max(0, math.ceil(x0 - 0.5)), min(size, math.ceil(x1 - 0.5))
    patch = omap[r0:r1, c0:c1]
    objects = dataset.annotations(i)["objects"]
    counts = np.bincount(patch[patch >= 0].astype(np.int64), minlength=len(objects))
    if counts.sum() == 0:
        return -1
    return objects[int(np.argmax(counts))]["concept"]


def reference_concepts(dataset: SyntheticShapes, references) -> torch.Tensor:
    """The concept of the object under each reference sample's strongest activation (pixel rule).

    This is the pixel heuristic, kept to compare with the ground truth by intervention
    (:func:`reference_features`): the layer-map cell ``(r, c)`` at the spatial argmax
    (``references.positions``) of a ``h x w`` map (``references.map_size``) covers the input box
    ``[r*H/h, (r+1)*H/h) x [c*W/w, (c+1)*W/w)``, and the object with the most visible pixels in
    that box gives the concept (:func:`concept_at`; -1 when the box shows only background). It
    looks at pixels, not at what the unit responds to.

    Parameters
    ----------
    dataset : SyntheticShapes
        The dataset the references were mined on.
    references : References
        With ``indices`` LongTensor[C, n_ref], ``positions`` LongTensor[C, n_ref, 2] and
        ``map_size`` (h, w). Negative indices (unfilled slots) give -1.

    Returns
    -------
    LongTensor[C, n_ref]
    """
    if not hasattr(dataset, "object_map"):
        raise ValueError(f"dataset {dataset!r} has no ground-truth concepts; use a SyntheticShapes dataset")
    indices = torch.as_tensor(references.indices).long()
    positions = torch.as_tensor(references.positions).long()
    if positions.shape != (*indices.shape, 2):
        raise ValueError(f"positions of shape {tuple(positions.shape)} do not match indices of shape "
                         f"{tuple(indices.shape)}; expected {(*indices.shape, 2)}")
    h, w = references.map_size
    H, W = dataset.image_size
    out = torch.full(indices.shape, -1, dtype=torch.long)
    for (row, slot), i in np.ndenumerate(indices.numpy()):
        if i < 0:
            continue
        r = min(max(int(positions[row, slot, 0]), 0), h - 1)
        c = min(max(int(positions[row, slot, 1]), 0), w - 1)
        out[row, slot] = concept_at(dataset, int(i), (r * H / h, c * W / w, (r + 1) * H / h,
                                                      (c + 1) * W / w))
    return out


def concept_shares(concepts: torch.Tensor, n_concepts: int | None = None) -> torch.Tensor:
    """Share of each concept among each neuron's reference samples.

    Parameters
    ----------
    concepts : LongTensor[C, n_ref]
        Concept ids, -1 for background (counted in the total, never as a concept).
    n_concepts : int, optional
        Number of concepts (default: largest id + 1).

    Returns
    -------
    Tensor[C, n_concepts]
    """
    concepts = torch.as_tensor(concepts).long()
    if concepts.ndim != 2:
        raise ValueError(f"concepts must be LongTensor[C, n_ref], got shape {tuple(concepts.shape)}")
    n_concepts = int(concepts.max().item()) + 1 if n_concepts is None else int(n_concepts)
    n_concepts = max(n_concepts, 1)
    counts = torch.zeros(concepts.shape[0], n_concepts + 1)
    counts.scatter_add_(1, (concepts + 1).clamp(min=0), torch.ones(concepts.shape, dtype=counts.dtype))
    return counts[:, 1:] / max(concepts.shape[1], 1)


def polysemantic_by_concepts(concepts: torch.Tensor, min_share: float = 0.2) -> torch.Tensor:
    """Which neurons are polysemantic by ground truth.

    A neuron is polysemantic when at least two concepts each make up at least ``min_share`` of its
    reference samples (background references, -1, count in the total but not as a concept).

    Parameters
    ----------
    concepts : LongTensor[C, n_ref]
        Output of :func:`reference_concepts`.
    min_share : float
        Minimal share of a concept, in (0, 0.5] (default 0.2).

    Returns
    -------
    BoolTensor[C]
    """
    if not 0 < min_share <= 0.5:
        raise ValueError(f"min_share={min_share} not accepted; use a value in (0, 0.5]")
    return concept_counts(concepts, min_share) >= 2


def concept_counts(concepts: torch.Tensor, min_share: float = 0.2) -> torch.Tensor:
    """How many concepts make up at least ``min_share`` of each neuron's reference samples.

    Background references (-1) count in the total, never as a concept (as in
    :func:`concept_shares`).

    Parameters
    ----------
    concepts : LongTensor[C, n_ref]
        Output of :func:`reference_concepts`.
    min_share : float
        Minimal share, in (0, 1].

    Returns
    -------
    LongTensor[C]
    """
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share={min_share} not accepted; use a value in (0, 1]")
    return (concept_shares(concepts) >= min_share - 1e-9).sum(dim=1)


def layer_polysemanticity(model: torch.nn.Module, dataset: SyntheticShapes, layer: str = "layer4",
                          n_ref: int = 100, min_share: float = 0.2, *, batch_size: int = 250,
                          progress: bool = False) -> dict:
    """How many channels of ``layer`` are polysemantic by ground truth.

    Mines the ``n_ref`` most activating images of every channel of ``layer`` on ``dataset``
    (:func:`pure_utils.references.mine_references`, spatial maximum), gives every reference its
    concept (:func:`reference_concepts`) and applies :func:`polysemantic_by_concepts`.

    Parameters
    ----------
    model : nn.Module
        A network trained on ``dataset``'s concepts.
    dataset : SyntheticShapes
        Where the references are mined (the shipped cards use the first 3000 test images).
    layer : str
        Module name (default ``"layer4"``).
    n_ref : int
        Reference samples per channel (at most ``len(dataset)``).
    min_share : float
        Minimal share of each of the two concepts.
    batch_size : int
        Images per forward pass.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        ``count``, ``n_neurons``, ``fraction``, ``neurons`` (ids of the polysemantic channels) and
        the settings (``layer``, ``n_ref``, ``min_share``, ``split``, ``n``, ``seed``, ``rule``),
        as stored in the model cards under ``layer4_polysemantic``.
    """
    refs = mine_references(model, dataset, layer, n_ref=min(int(n_ref), len(dataset)),
                           batch_size=batch_size, progress=progress)
    poly = polysemantic_by_concepts(reference_concepts(dataset, refs), min_share)
    return dict(count=int(poly.sum()), n_neurons=int(poly.numel()),
                fraction=round(float(poly.float().mean()), 4),
                neurons=[int(i) for i in torch.nonzero(poly).flatten()],
                layer=layer, n_ref=refs.indices.shape[1], min_share=min_share,
                split=dataset.split, n=len(dataset), seed=dataset.seed,
                rule=(f"top-{refs.indices.shape[1]} images per {layer} channel by spatial max; concept of "
                      "a reference = object with most visible pixels in the input box of the argmax cell "
                      "(pure_utils.ground_truth.reference_concepts); polysemantic = at least two concepts "
                      f"with >= {min_share:.0%} of the references"))
