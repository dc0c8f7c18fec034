"""Ground truth on the controlled benchmark: what drives each reference sample of a unit.

The generator (:mod:`pure_utils.shapes.generator`) knows every object of every image and can redraw any
image with an object removed or changed. :func:`true_features` asks the network instead of
the pixels: which object's removal silences the unit, and does the unit care about that
object's colour, its shape, or both. A unit's true features are the labels that hold a share of
its references (:class:`TrueFeatures`); :func:`layer_polysemanticity` counts the
polysemantic units of a layer. A reference whose driver's colour or shape retention lies within
``RULE["band"]`` of the attribute cut is ``"uncertain"``: the intervention cannot decide it, so it
is neither a feature of its unit nor scored.

The older pixel rule (:func:`reference_concepts`: the object under the unit's strongest cell)
is kept only to compare the two.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .._progress import tqdm
from ..cache import TensorSpec, cached
from ..models import resolve_device
from ..layers import eval_mode, forward_until
from .dataset import SyntheticShapes
from ..layers import layout_key, resolve_layout
from ..references import check_references, index_tensor, mine_references
from .generator import counterfactual

__all__ = ["RULE", "TrueFeatures", "true_features", "feature_names", "intervention_panels",
           "attribute_label", "feature_shares",
           "concept_at", "reference_concepts", "concept_shares", "concept_counts", "polysemantic_by_concepts",
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
    (:func:`true_features`): the layer-map cell ``(r, c)`` at the spatial argmax
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
    check_references(references, dataset=dataset)
    layout = getattr(references, "layout", None)
    if layout is not None and layout.kind == "tokens" and layout.tokens == "all":
        raise ValueError("the pixel rule needs positions on the patch grid, but these references "
                         "were mined with tokens='all' (positions are token indices); mine them "
                         "with tokens='patches'")
    indices = index_tensor(references.indices)
    positions = index_tensor(references.positions, "reference positions")
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


# --------------------------------------------------------------------------------------------
# ground truth by intervention
# --------------------------------------------------------------------------------------------
#: Thresholds of the intervention rule (:func:`true_features`), fixed before any result was
#: looked at. ``necessary``: an object is necessary when removing it lowers the unit's activation
#: by at least this share; ``background``: a reference is "background" when the unit keeps at
#: least this share of its activation with every object removed; ``attribute``: an attribute
#: matters when changing it keeps less than this share of the driver's contribution.
#: ``band``: the uncertainty band around the attribute cut, fixed (like the other thresholds)
#: before any comparison was looked at: a reference with a driver whose colour or shape
#: retention lies in ``[attribute - band, attribute + band)`` is ``"uncertain"``. A retention
#: within 0.1 of the cut is a decision the intervention cannot make reliably (the retention,
#: averaged over the alternative colours or shapes, moves by about that much between edits), so
#: such a reference is neither one attribute nor the conjunction; without the band one feature
#: is often scored as two nested ones (``"yellow"`` and ``"yellow circle"``) by retentions
#: that sit right at the cut.
RULE = dict(necessary=0.5, background=0.5, attribute=0.5, band=0.1)
#: Version of the rule; it enters cache keys.
RULE_VERSION = "intervention-2"
#: Images whose scenes are held at once (each scene holds two float images).
_CHUNK = 64
#: Labels that are not an attribute of an object.
OBJECT, MIXED, BACKGROUND, UNCERTAIN = "object", "mixed", "background", "uncertain"


def feature_names(config) -> list[str]:
    """The vocabulary of reference features for a generator configuration.

    Colours, shapes, then ``"<colour> <shape>"`` conjunctions (the dataset's concepts), then
    ``"object"``, ``"mixed"``, ``"background"`` and ``"uncertain"`` (an attribute retention
    inside the band, ``RULE["band"]``). The ids of :class:`TrueFeatures` index this list.
    """
    return [name for name, _ in _vocabulary(config)]


def _vocabulary(config) -> list[tuple[str, str]]:
    """``(name, kind)`` of every feature; kinds: colour, shape, conjunction, object, mixed,
    background, uncertain."""
    return ([(c, "colour") for c in config.colours] + [(s, "shape") for s in config.shapes]
            + [(f"{c} {s}", "conjunction") for c in config.colours for s in config.shapes]
            + [(OBJECT, OBJECT), (MIXED, MIXED), (BACKGROUND, BACKGROUND), (UNCERTAIN, UNCERTAIN)])


def attribute_label(colour_retention: float, shape_retention: float, colour: str, shape: str,
                    band: float | None = None) -> str:
    """Step 3 of the rule (:func:`true_features`) for one driver: the name of its label.

    Colour matters when its retention is below ``RULE["attribute"]``, and so does shape: colour
    only gives ``colour``, shape only ``shape``, both ``"<colour> <shape>"``, neither
    ``"object"``. Before that, a retention in ``[attribute - band, attribute + band)`` (either
    of the two) gives ``"uncertain"``: the cut cannot be decided there. ``band`` defaults to
    ``RULE["band"]``; ``band=0`` is the rule without the band (intervention-1).
    """
    cut = RULE["attribute"]
    band = RULE["band"] if band is None else float(band)
    if band < 0:
        raise ValueError(f"band={band} not accepted; use a width >= 0")
    if any(cut - band <= r < cut + band for r in (colour_retention, shape_retention)):
        return UNCERTAIN
    by_colour, by_shape = colour_retention < cut, shape_retention < cut
    return (f"{colour} {shape}" if by_colour and by_shape else colour if by_colour
            else shape if by_shape else OBJECT)


def feature_shares(labels: torch.Tensor, certain: torch.Tensor, n_names: int) -> torch.Tensor:
    """Share of each feature among each unit's *certain* references: ``Tensor[C, n_names]``.

    ``labels`` LongTensor[C, n_ref] (ids in ``0..n_names-1``); ``certain`` BoolTensor of the
    same shape. Uncertain references count neither as a feature nor in the total; a unit
    without a certain reference has shares 0.
    """
    labels = torch.as_tensor(labels).long()
    certain = torch.as_tensor(certain, dtype=torch.bool)
    if labels.ndim != 2 or certain.shape != labels.shape:
        raise ValueError(f"labels {tuple(labels.shape)} and certain {tuple(certain.shape)} must "
                         "both be [C, n_ref]")
    counts = torch.zeros(labels.shape[0], max(int(n_names), 1))
    counts.scatter_add_(1, labels, certain.to(counts.dtype))
    return counts / certain.sum(1, keepdim=True).clamp(min=1).to(counts.dtype)


@dataclass
class TrueFeatures:
    """What drives each reference sample of each unit, found by editing the image.

    Attributes
    ----------
    labels : LongTensor[C, n_ref]
        The feature of each reference sample, an index into ``names``.
    names : list of str
        The feature names (:func:`feature_names`): ``"red"``, ``"circle"``, ``"red circle"``,
        ``"object"``, ``"mixed"``, ``"background"``, ``"uncertain"``, ...
    kinds : list of str
        The kind of each name: ``"colour"``, ``"shape"``, ``"conjunction"``, ``"object"``,
        ``"mixed"``, ``"background"`` or ``"uncertain"``.
    responsibility : Tensor[C, n_ref]
        The largest drop of the unit's activation when one object is removed, as a share of the
        activation (0 for an inactive unit).
    driver : LongTensor[C, n_ref]
        Index of the driving object in the image's annotations (``dataset.annotations(i)``);
        -1 for "mixed" and "background".
    colour_retention, shape_retention : Tensor[C, n_ref]
        Share of the driver's contribution kept when its colour (shape) is changed, averaged
        over the other colours (shapes) of the dataset; NaN without a driver.
    activation : Tensor[C, n_ref]
        The unit's activation (spatial maximum) on the reference sample as rendered here.
    channels : LongTensor[C]
        The unit of each row.
    driver_concept : LongTensor[C, n_ref] or None
        The driver's own ``"<colour> <shape>"`` (an index into ``names``), -1 without a driver;
        with the retentions it lets :meth:`relabel` apply step 3 with another band.

    An ``"uncertain"`` reference (a retention inside ``RULE["band"]``) is no feature of its
    unit: :meth:`shares`, :meth:`features`, :meth:`counts` and :meth:`polysemantic` count the
    :attr:`certain` references only, and scores against the truth leave it out.
    """

    labels: torch.Tensor
    names: list
    kinds: list
    responsibility: torch.Tensor
    driver: torch.Tensor
    colour_retention: torch.Tensor
    shape_retention: torch.Tensor
    activation: torch.Tensor
    channels: torch.Tensor
    driver_concept: torch.Tensor | None = None

    def rows(self, neurons) -> torch.Tensor:
        """Row positions of the units ``neurons``."""
        lookup = {int(c): i for i, c in enumerate(self.channels.tolist())}
        missing = [int(k) for k in neurons if int(k) not in lookup]
        if missing:
            raise ValueError(f"unit {missing[0]} has no reference features here; units: "
                             f"{', '.join(map(str, list(lookup)[:20]))}")
        return torch.tensor([lookup[int(k)] for k in neurons], dtype=torch.long)

    def subset(self, neurons) -> "TrueFeatures":
        """The rows of the units ``neurons``, in that order."""
        r = self.rows(neurons)
        return TrueFeatures(**{f.name: (getattr(self, f.name)
                                             if f.name in ("names", "kinds") or getattr(self, f.name) is None
                                             else getattr(self, f.name)[r])
                                    for f in dataclasses.fields(self)})

    @property
    def certain(self) -> torch.Tensor:
        """``BoolTensor[C, n_ref]``: the references whose label is not ``"uncertain"``."""
        if UNCERTAIN not in self.names:
            return torch.ones(self.labels.shape, dtype=torch.bool)
        return self.labels != self.names.index(UNCERTAIN)

    def shares(self) -> torch.Tensor:
        """Share of each feature among each unit's certain references: ``Tensor[C, len(names)]``
        (:func:`feature_shares`: ``"uncertain"`` has share 0, a unit without a certain
        reference has shares 0)."""
        return feature_shares(self.labels, self.certain, len(self.names))

    def features(self, min_share: float = 0.2) -> list[list[str]]:
        """Each unit's true features: the labels holding at least ``min_share`` of its references,
        most frequent first."""
        shares = self.shares()
        out = []
        for row in shares:
            order = [int(j) for j in row.argsort(descending=True, stable=True)
                     if row[j] >= min_share - 1e-9]
            out.append([self.names[j] for j in order])
        return out

    def counts(self, min_share: float = 0.2) -> torch.Tensor:
        """Number of true features of each unit (``"uncertain"`` is none): ``LongTensor[C]``."""
        if not 0 < min_share <= 1:
            raise ValueError(f"min_share={min_share} not accepted; use a value in (0, 1]")
        return (self.shares() >= min_share - 1e-9).sum(dim=1)

    def polysemantic(self, min_share: float = 0.2) -> torch.Tensor:
        """Units with two or more true features: ``BoolTensor[C]``."""
        if not 0 < min_share <= 0.5:
            raise ValueError(f"min_share={min_share} not accepted; use a value in (0, 0.5]")
        return self.counts(min_share) >= 2

    def relabel(self, band: float) -> "TrueFeatures":
        """The same references with step 3 applied again with another ``band`` (the retentions
        are kept, so nothing is rendered again); ``band=0`` gives the rule without the band.

        Only references with a driver change; the others (background, mixed) keep their label.
        """
        if self.driver_concept is None:
            raise ValueError("these reference features hold no driver_concept (computed before "
                             "the band, or built by hand), so step 3 cannot be applied again")
        first = self.kinds.index("conjunction")
        colours = [n for n, k in zip(self.names, self.kinds) if k == "colour"]
        shapes = [n for n, k in zip(self.names, self.kinds) if k == "shape"]
        labels = self.labels.clone()
        for row, slot in torch.nonzero(self.driver_concept >= 0).tolist():
            q = int(self.driver_concept[row, slot]) - first
            name = attribute_label(float(self.colour_retention[row, slot]),
                                   float(self.shape_retention[row, slot]),
                                   colours[q // len(shapes)], shapes[q % len(shapes)], band)
            labels[row, slot] = self.names.index(name)
        return dataclasses.replace(self, labels=labels)

    def band_effect(self, min_share: float = 0.2) -> dict:
        """What the uncertainty band (``RULE["band"]``) changes, for a reader.

        Returns
        -------
        dict
            ``n_uncertain`` (references labelled ``"uncertain"``), ``n_references``,
            ``n_changed`` (units whose true features differ from those without the band,
            :meth:`relabel` with ``band=0``) and ``n_units``.
        """
        without = self.relabel(0.0).features(min_share)
        changed = sum(set(a) != set(b) for a, b in zip(self.features(min_share), without))
        return dict(n_uncertain=int((~self.certain).sum()), n_references=int(self.labels.numel()),
                    n_changed=int(changed), n_units=int(self.labels.shape[0]))

    def kind_shares(self) -> dict:
        """Share of all references of each kind of feature (colour, shape, conjunction, ...,
        ``"uncertain"`` included: this describes the labels, it scores nothing)."""
        kinds = [self.kinds[i] for i in self.labels.flatten().tolist()]
        return {k: kinds.count(k) / max(len(kinds), 1) for k in dict.fromkeys(self.kinds)}

    def table(self, min_share: float = 0.2):
        """One row per unit: ``neuron``, ``features`` (its true features), ``n_features``,
        ``n_uncertain`` (its references inside the band) and the mean ``responsibility`` of its
        drivers."""
        feats = self.features(min_share)
        return pd.DataFrame({"neuron": self.channels.tolist(),
                             "features": [", ".join(f) for f in feats],
                             "n_features": [len(f) for f in feats],
                             "n_uncertain": (~self.certain).sum(1).tolist(),
                             "responsibility": self.responsibility.mean(1).numpy()})


def _activations(model, dataset, jobs, layer: str, device, batch_size: int, layout) -> torch.Tensor:
    """Spatial maximum of every channel of ``layer`` for rendered scenes: ``Tensor[n_jobs, C]``.

    ``jobs`` are ``(scene, objects)`` pairs (see :meth:`SyntheticShapes.render`); they are
    rendered batch by batch, so memory does not grow with their number. ``layout``
    (:class:`pure_utils.layers.Layout`) says which positions the maximum runs over, as in mining.
    """
    out = []
    with torch.inference_mode(), eval_mode(model):
        for s in range(0, len(jobs), batch_size):
            x = torch.stack([dataset.render(scene, objs) for scene, objs in jobs[s:s + batch_size]])
            act = layout.check(forward_until(model, x.to(device), layer), layer)
            out.append(layout.channels(act).amax(-1).float().cpu())
    return torch.cat(out)


def _retention(edited: torch.Tensor, full: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Share of the driver's contribution ``full - removed`` kept under each edit (mean)."""
    contribution = (full - removed).clamp_min(1e-12)
    return ((edited - removed) / contribution).mean(0)


def _removals(scene) -> list[tuple[str, tuple]]:
    """``(title, job)`` of the scene as it is, without each object in turn and without any
    object; a job is ``(scene, objects)`` as :func:`_activations` renders it."""
    objs = list(scene.objects)
    return ([("as it is", (scene, None))]
            + [(f"without the {o['colour']} {o['shape']}", (scene, objs[:j] + [None] + objs[j + 1:]))
               for j, o in enumerate(objs)]
            + [("no objects", (scene, [None] * len(objs)))])


def _edits(scene, j: int, colours, shapes) -> list[tuple[str, tuple]]:
    """``(title, job)`` of object ``j`` redrawn with each other colour, then with each other
    shape (area kept; :func:`~pure_utils.shapes.generator.counterfactual`)."""
    objs, o = list(scene.objects), scene.objects[j]
    redrawn = ([(f"{o['shape']} made {c}", counterfactual(o, colour=c)) for c in colours
                if c != o["colour"]]
               + [(f"{o['colour']} {s}", counterfactual(o, shape=s)) for s in shapes if s != o["shape"]])
    return [(title, (scene, objs[:j] + [new] + objs[j + 1:])) for title, new in redrawn]


def _edit_jobs(dataset, colours, shapes, pair: tuple) -> tuple[list, tuple]:
    """The jobs of step 3 for object ``j`` of image ``i`` (``pair``), and its ``(colour, shape)``."""
    scene, j = dataset.scene(pair[0]), pair[1]
    return ([job for _, job in _edits(scene, j, colours, shapes)],
            (scene.objects[j]["colour"], scene.objects[j]["shape"]))


def _run_jobs(items: list, jobs_of, forward, desc: str, unit: str, progress: bool) -> dict:
    """``forward`` on the jobs of every item, ``_CHUNK`` items at a time (a scene holds float
    images): ``{item: (Tensor[n_jobs, C], info)}`` where ``jobs_of(item) -> (jobs, info)``."""
    out = {}
    bar = tqdm(total=len(items), desc=desc, disable=not progress, unit=unit)
    for start in range(0, len(items), _CHUNK):
        chunk = items[start:start + _CHUNK]
        jobs, info = zip(*[jobs_of(item) for item in chunk])
        parts = forward([job for item_jobs in jobs for job in item_jobs]).split([len(j) for j in jobs])
        out.update({item: (part, extra) for item, part, extra in zip(chunk, parts, info)})
        bar.update(len(chunk))
    bar.close()
    return out


def _drivers(removals: dict, indices: torch.Tensor, channels: torch.Tensor, names: list):
    """Steps 1 and 2 of the rule for every reference, from the activations of :func:`_removals`:
    ``labels`` (but those step 3 sets), ``responsibility``, ``driver`` and ``activation``
    (``[n_rows, n_ref]`` each), and ``{(row, slot): (image, driving object)}``."""
    n_rows, n_ref = indices.shape
    labels = torch.full((n_rows, n_ref), names.index(BACKGROUND), dtype=torch.long)
    resp = torch.zeros(n_rows, n_ref)
    driver = torch.full((n_rows, n_ref), -1, dtype=torch.long)
    activation = torch.zeros(n_rows, n_ref)
    drivers = {}
    for row, ch in enumerate(channels.tolist()):
        for slot, i in enumerate(indices[row].tolist()):
            acts = removals[i][0]
            a = float(acts[0, ch])
            activation[row, slot] = a
            if a <= 0 or float(acts[-1, ch]) >= RULE["background"] * a:
                continue  # "background"
            drops = (a - acts[1:-1, ch]) / a
            resp[row, slot] = float(drops.max())
            necessary = torch.nonzero(drops >= RULE["necessary"]).flatten().tolist()
            if len(necessary) == 1:
                driver[row, slot] = necessary[0]
                drivers[(row, slot)] = (i, necessary[0])
            else:
                labels[row, slot] = names.index(MIXED)
    return dict(labels=labels, responsibility=resp, driver=driver, activation=activation), drivers


def _intervene(dataset, indices: torch.Tensor, channels: torch.Tensor, names: list, forward,
               progress: bool) -> dict:
    """The rule of :func:`true_features` for every reference: the tensors of
    :class:`TrueFeatures`, ``[n_rows, n_ref]`` each. ``forward(jobs)`` gives every unit's
    activation on rendered ``(scene, objects)`` jobs (:func:`_activations`)."""
    # pass 1, all units at once: every image whole, without each object, without any object
    removals = _run_jobs(sorted(set(indices.flatten().tolist())),
                         lambda i: ([job for _, job in _removals(dataset.scene(i))], None),
                         forward, "interventions", "img", progress)
    found, drivers = _drivers(removals, indices, channels, names)
    # pass 2: each driver with its colour changed, and with its shape changed
    colours, shapes = list(dataset.config.colours), list(dataset.config.shapes)
    edits = _run_jobs(sorted(set(drivers.values())),
                      functools.partial(_edit_jobs, dataset, colours, shapes), forward,
                      "counterfactuals", "obj", progress)
    n_col = len(colours) - 1
    col_ret, shp_ret = (torch.full(indices.shape, float("nan")) for _ in range(2))
    concept = torch.full(indices.shape, -1, dtype=torch.long)
    for (row, slot), (i, j) in drivers.items():
        ch = int(channels[row])
        a, a_j = found["activation"][row, slot], removals[i][0][1 + j, ch]
        (e, (colour, shape)) = edits[(i, j)]
        col_ret[row, slot] = _retention(e[:n_col, ch], a, a_j)
        shp_ret[row, slot] = _retention(e[n_col:, ch], a, a_j)
        # step 3, with the uncertainty band (RULE["band"]): the retentions stay stored
        name = attribute_label(float(col_ret[row, slot]), float(shp_ret[row, slot]), colour, shape)
        found["labels"][row, slot] = names.index(name)
        concept[row, slot] = names.index(f"{colour} {shape}")
    return {**found, "colour_retention": col_ret, "shape_retention": shp_ret,
            "driver_concept": concept}


def true_features(model: torch.nn.Module, dataset, references, *, batch_size: int = 128,
                       device=None, cache=None, progress: bool = False) -> TrueFeatures:
    """What drives each reference sample of each unit, by re-rendering the image (ground truth).

    For a reference sample (image ``i``) of unit ``k`` with activation ``a`` (the spatial
    maximum of ``k`` at ``references.layer``, as in mining) the rule is:

    1. **Background.** With every object removed (background and noise unchanged) the unit
       keeps ``a_empty``. If ``a_empty >= 0.5 a`` the label is ``"background"``. An inactive
       unit (``a <= 0``) is labelled ``"background"`` too.
    2. **Driver.** Each object ``j`` is removed in turn, giving ``a_j``; its drop is
       ``(a - a_j) / a``. An object is *necessary* when its drop is at least 0.5. Exactly one
       necessary object is the *driver*; its drop is the reference's *responsibility*. None
       (no single object explains the activation, e.g. two redundant ones) or two or more
       (objects that act only together) give ``"mixed"``.
    3. **Attribute.** The driver is redrawn with each other colour of the dataset (same shape,
       place, size, brightness) and with each other shape (same colour, place, rotation and
       *area*: see :func:`pure_utils.shapes.generator.counterfactual`). The retention of an edit is
       ``(a_edit - a_j) / (a - a_j)``, the share of the driver's contribution that survives it,
       averaged over the alternatives. Colour matters when its retention is below 0.5, and so
       does shape. Colour only: the colour (``"red"``); shape only: the shape (``"circle"``);
       both: the conjunction (``"red circle"``); neither: ``"object"`` (any object there).
       **Uncertainty band.** If either retention lies in ``[0.4, 0.6)`` (within
       ``RULE["band"]`` = 0.1 of the cut) the label is ``"uncertain"`` instead: the averaged
       retention moves by about that much between edits, so the intervention cannot decide the
       cut there, and the reference is neither one attribute nor the conjunction. Uncertain
       references are no feature of their unit and are left out of every score against the
       truth (:attr:`TrueFeatures.certain`); their retentions are still stored, and
       :meth:`TrueFeatures.relabel` with ``band=0`` gives the rule without the band.

    Keeping the area when the shape changes is what lets a unit that counts red pixels come out
    as ``"red"``: with the radius kept instead, a triangle has 41% of a circle's area and the
    unit's response would shrink with it.

    Parameters
    ----------
    model : nn.Module
        The network the references were mined on.
    dataset : SyntheticShapes
        The dataset the references were mined on (it must render edited scenes).
    references : References
        ``indices`` ``[C, n_ref]``, ``layer``, ``channels``.
    batch_size, device, cache, progress
        The run options (see :mod:`pure_utils`); ``batch_size`` counts rendered images.

    Returns
    -------
    TrueFeatures
    """
    if not hasattr(dataset, "scene"):
        raise ValueError(f"dataset {dataset!r} cannot re-render its images; the intervention "
                         "ground truth needs the controlled benchmark (SyntheticShapes)")
    check_references(references, model=model, dataset=dataset)
    device = resolve_device(model, device)
    layer = references.layer
    layout = resolve_layout(model, layer, recorded=getattr(references, "layout", None))
    indices = index_tensor(references.indices)
    channels = index_tensor(references.channels, "reference channels")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= len(dataset)):
        raise ValueError(f"reference indices out of range for a dataset of {len(dataset)} images; "
                         "were the references mined on another dataset?")
    vocabulary = _vocabulary(dataset.config)
    names = [name for name, _ in vocabulary]
    forward = functools.partial(_activations, model, dataset, layer=layer, device=device,
                                batch_size=batch_size, layout=layout)
    compute = functools.partial(_intervene, dataset, indices, channels, names, forward, progress)
    digest = hashlib.sha256(indices.contiguous().numpy().astype("int64").tobytes()
                            + channels.numpy().astype("int64").tobytes()).hexdigest()[:24]
    shape = tuple(indices.shape)
    expect = {name: TensorSpec(shape, torch.float32) for name in
              ("responsibility", "activation", "colour_retention", "shape_retention")}
    expect.update(labels=TensorSpec(shape, torch.int64, low=0, high=len(names)),
                  driver=TensorSpec(shape, torch.int64, low=-1),
                  driver_concept=TensorSpec(shape, torch.int64, low=-1, high=len(names)))
    tensors = cached("true_features", cache, dataset, compute, model=model, expect=expect,
                     layer=layer, refs=digest, rule=RULE, rule_version=RULE_VERSION,
                     **layout_key(layout))
    return TrueFeatures(names=names, kinds=[kind for _, kind in vocabulary], channels=channels,
                             **tensors)


def layer_polysemanticity(model: torch.nn.Module, dataset: SyntheticShapes, layer: str = "layer4",
                          n_ref: int = 100, min_share: float = 0.2, *, batch_size: int = 250,
                          band: float | None = None, progress: bool = False) -> dict:
    """How many channels of ``layer`` are polysemantic by ground truth (by intervention).

    Mines the ``n_ref`` most activating images of every channel of ``layer`` on ``dataset``
    (:func:`pure_utils.references.mine_references`, spatial maximum), finds what drives each
    reference (:func:`true_features`) and counts the channels with two or more true
    features (:meth:`TrueFeatures.polysemantic`).

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
        Minimal share of each true feature.
    batch_size : int
        Images per forward pass.
    band : float, optional
        The uncertainty band of step 3 (default ``RULE["band"]``); ``0`` gives the rule without
        it (:meth:`TrueFeatures.relabel`), as the cards written before the band state.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        ``count``, ``n_neurons``, ``fraction``, ``neurons`` (ids of the polysemantic channels),
        ``features`` (each channel's true features) and the settings (``layer``, ``n_ref``,
        ``min_share``, ``split``, ``n``, ``seed``, ``band``, ``rule``), as stored in the model
        cards under ``layer4_polysemantic`` (cards written before the band have no ``band``).
    """
    refs = mine_references(model, dataset, layer, n_ref=min(int(n_ref), len(dataset)),
                           batch_size=batch_size, progress=progress)
    feats = true_features(model, dataset, refs, batch_size=batch_size, progress=progress)
    band = RULE["band"] if band is None else float(band)
    if band != RULE["band"]:
        feats = feats.relabel(band)
    poly = feats.polysemantic(min_share)
    return dict(count=int(poly.sum()), n_neurons=int(poly.numel()),
                fraction=round(float(poly.float().mean()), 4),
                neurons=[int(i) for i in torch.nonzero(poly).flatten()],
                features=feats.features(min_share),
                layer=layer, n_ref=refs.indices.shape[1], min_share=min_share,
                split=dataset.split, n=len(dataset), seed=dataset.seed, band=band,
                rule=(f"top-{refs.indices.shape[1]} images per {layer} channel by spatial max; the "
                      "feature of a reference is found by editing its image (remove each object, "
                      "change the driver's colour and shape; pure_utils.shapes.ground_truth."
                      f"true_features, rule {RULE_VERSION}, uncertainty band {band:g} around "
                      f"the attribute cut); polysemantic = at least two features with >= "
                      f"{min_share:.0%} of the references"))


def intervention_panels(model: torch.nn.Module, dataset, references, neuron: int, slot: int, *,
                        obj: int = 0, device=None) -> list[dict]:
    """The edits behind one reference sample's ground truth, for a figure.

    Parameters
    ----------
    model, dataset, references
        As in :func:`true_features`.
    neuron : int
        The unit.
    slot : int
        Which of its reference samples (0: the most activating).
    obj : int
        The object recoloured and reshaped (e.g. the driver, ``TrueFeatures.driver``).

    Returns
    -------
    list of dict
        One per rendered variant, in this order: the image as it is, without each object, without
        any object, then object ``obj`` with each other colour and with each other shape (area
        kept). Keys: ``title`` (what was done), ``image`` (Tensor[3, H, W] in [0, 1]),
        ``activation`` (the unit's spatial maximum on it).
    """
    check_references(references, model=model, dataset=dataset)
    row = int(references.rows([neuron])[0]) if hasattr(references, "rows") else int(neuron)
    i = int(references.indices[row, slot])
    scene = dataset.scene(i)
    variants = _removals(scene) + _edits(scene, obj, dataset.config.colours, dataset.config.shapes)
    layout = resolve_layout(model, references.layer, recorded=getattr(references, "layout", None))
    acts = _activations(model, dataset, [job for _, job in variants], references.layer,
                        resolve_device(model, device), 64, layout)
    return [dict(title=t, image=dataset.render(*job, normalize=False),
                 activation=float(acts[k, neuron])) for k, (t, job) in enumerate(variants)]
