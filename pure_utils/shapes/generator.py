"""The controlled benchmark's image generator: shape images with known concepts and masks.

PURE (Dreyer et al., 2024) is usually judged through foundation-model proxies (CLIP distances of
feature visualisations). The paper names evaluation in a controlled setting as missing; this module
supplies one. Every image of :class:`SyntheticShapes` is drawn procedurally with NumPy, so its
ground truth is known exactly: which objects it holds, of which *concept* (shape x colour), and
which pixels each object covers.

- One **labelled object** (large) defines the class label: the label *is* its concept id.
- 1 to 3 **distractor objects** (smaller) of other concepts sit beside it.
- The **background** is a low-saturation gradient, stripe pattern or smooth noise, so that colour
  alone never comes from the background.

``SyntheticConfig(scene="two_objects")`` adds a **second object** as large as the labelled one
(its radius from ``second_scale``), never touching it, whose concept varies independently of the
label: a concept can then appear on a large object beside an unrelated labelled object that
changes from image to image (the situation the PURE paper describes). With ``extra_colours`` the
second object may also wear colours no concept uses, which a network trained on the default
scenes never saw.

Images are deterministic per ``(seed, split, index)``: every image has its own random generator
seeded from these numbers (NumPy ``SeedSequence`` + PCG64, identical on every platform), so random
access works and the size of a split never changes its pixels.

This module is the generator only; :class:`pure_utils.shapes.dataset.SyntheticShapes` is the dataset
over it. What drives a trained network's units on these images is worked out in
:mod:`pure_utils.shapes.ground_truth`; the shipped models are trained by :mod:`pure_utils.shapes.train`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np


__all__ = ["GENERATOR_VERSION", "SHAPES", "COLOURS", "SPLITS", "DEFAULT_SPLIT_SIZES", "SHAPE_AREAS",
           "SCENES", "SyntheticConfig", "Scene", "sample_scene", "draw_scene", "counterfactual",
           "render_image"]

#: Version of the image generator. It enters dataset fingerprints and model cards; bump it
#: whenever a change alters any pixel, so caches and shipped models are not silently mixed.
GENERATOR_VERSION = "shapes-1"

#: Shapes and colours that make up concepts (concept = shape x colour).
SHAPES = ("circle", "square", "triangle", "cross", "star", "ring")
COLOURS = {
    "red": (0.90, 0.15, 0.12),
    "green": (0.15, 0.72, 0.18),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "magenta": (0.85, 0.20, 0.85),
    "cyan": (0.10, 0.85, 0.90),
}
MAX_CONCEPTS = len(SHAPES) * len(COLOURS)

#: Split name -> number mixed into every image's seed (train and test never share a generator).
SPLITS = {"train": 0, "val": 1, "test": 2}
#: Default number of images per split (the pixels of image i do not depend on it).
DEFAULT_SPLIT_SIZES = {"train": 20000, "val": 2000, "test": 3000}

BACKGROUNDS = ("gradient", "stripes", "noise")
#: Kinds of scene: the benchmark's own (one labelled object and distractors) and one with a second
#: object of labelled size (see :class:`SyntheticConfig`).
SCENES = ("natural", "two_objects")
#: The labelled and the second object of a two-object scene lie at least this many times the sum
#: of their radii apart (centre to centre): no shape reaches beyond 1.15 r (a square's corners lie
#: at 0.8 * sqrt(2) r = 1.13 r), so the two never touch.
_TWO_GAP = 1.15
_SALT = 0x50555245  # fixed entropy word so that these streams differ from any other use of a seed


def _concept_grid(n: int) -> list[tuple[int, int]]:
    """The first ``n`` (shape, colour) index pairs, ordered so that every square prefix is a grid.

    Pairs are enumerated in growing squares (all pairs with ``max(shape, colour) == k`` after those
    with ``max < k``), so 4 concepts are 2 shapes x 2 colours, 16 are 4 shapes x 4 colours, 36 are
    all 6 x 6.
    """
    pairs = []
    for k in range(max(len(SHAPES), len(COLOURS))):
        for s in range(k + 1):
            for c in range(k + 1):
                if max(s, c) == k and s < len(SHAPES) and c < len(COLOURS):
                    pairs.append((s, c))
    return pairs[:n]


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic image generator.

    Parameters
    ----------
    n_concepts : int
        Number of concepts (= classes), 2 to 36. Concepts are shape x colour pairs taken from a
        6 x 6 grid in growing squares: the default 16 are 4 shapes (circle, square, triangle,
        cross) x 4 colours (red, green, blue, yellow).
    image_size : int
        Side length in pixels (square images). At least 32; the default 96 gives a 3 x 3
        ``layer4`` map in a ResNet (stride 32).
    object_scale : (float, float)
        Range of the labelled object's radius as a fraction of ``image_size`` (default 0.17-0.27,
        i.e. 16-26 px at 96 px).
    distractor_scale : (float, float)
        Range of each distractor's radius as a fraction of ``image_size`` (default 0.07-0.11); at
        most the smallest labelled object (``object_scale[0]``), so that the label stays the
        largest object.
    distractors_min, distractors_max : int
        Number of distractor objects per image, drawn uniformly from this range (default 1-3).
        Distractors have concepts different from the label and from each other.
    background_contrast : float
        Scale of the background's variation (gradient, stripes, blotches) around its grey level
        (default 1; 0: a flat background).
    noise_std : float
        Standard deviation of Gaussian pixel noise added to the whole image (default 0.02).
    colour_jitter : float
        Maximum relative brightness change of an object's colour (default 0.15).
    scene : {"natural", "two_objects"}
        ``"natural"`` (default): the benchmark's scenes, one labelled object and the distractors.
        ``"two_objects"``: besides them a *second object* whose concept is drawn uniformly from
        the concepts other than the label (and, with ``extra_colours``, from every shape of the
        concepts in each extra colour), with its radius from ``second_scale``; the two never
        touch (centres at least 1.15 times the sum of their radii apart). It comes second in
        :attr:`Scene.objects` with role ``"second"``; the distractors differ from both.
    second_scale : (float, float), optional
        ``"two_objects"`` only: range of the second object's radius as a fraction of
        ``image_size`` (default: ``object_scale``, labelled size). Both objects must fit side
        by side: ``object_scale[1] + second_scale[1] <= 0.55``.
    extra_colours : tuple of str
        ``"two_objects"`` only: colours of :data:`COLOURS` that no concept uses (default none),
        which the second object may wear; such an object has ``concept`` -1. They join
        :attr:`colours` (the ground truth's recolouring and vocabulary), never the concepts or
        the labels.
    """

    n_concepts: int = 16
    image_size: int = 96
    object_scale: tuple = (0.17, 0.27)
    distractor_scale: tuple = (0.07, 0.11)
    distractors_min: int = 1
    distractors_max: int = 3
    noise_std: float = 0.02
    colour_jitter: float = 0.15
    background_contrast: float = 1.0
    scene: str = "natural"
    second_scale: tuple | None = None
    extra_colours: tuple = ()

    def __post_init__(self):
        # tuples (not lists) keep the dataclass hashable and its json canonical
        object.__setattr__(self, "object_scale", tuple(float(v) for v in self.object_scale))
        object.__setattr__(self, "distractor_scale", tuple(float(v) for v in self.distractor_scale))
        if not 2 <= self.n_concepts <= MAX_CONCEPTS:
            raise ValueError(f"n_concepts={self.n_concepts} not accepted; use 2 to {MAX_CONCEPTS}")
        if self.image_size < 32:
            raise ValueError(f"image_size={self.image_size} not accepted; use at least 32 pixels")
        for name in ("object_scale", "distractor_scale"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] <= 0.5:
                raise ValueError(f"{name}={lo_hi} not accepted; use (low, high) with 0 < low <= high <= 0.5")
        if self.distractor_scale[1] > self.object_scale[0]:
            raise ValueError(
                f"distractor_scale={self.distractor_scale} must not exceed the smallest labelled "
                f"object, object_scale[0]={self.object_scale[0]} (the label is the largest object)")
        if not 0 <= self.distractors_min <= self.distractors_max:
            raise ValueError(
                f"distractors_min={self.distractors_min}, distractors_max={self.distractors_max} not "
                "accepted; use 0 <= distractors_min <= distractors_max")
        if self.distractors_max > self.n_concepts - 1:
            raise ValueError(
                f"distractors_max={self.distractors_max} needs at least {self.distractors_max + 1} "
                f"concepts (distractors differ from the label and each other); n_concepts={self.n_concepts}")
        if self.background_contrast < 0:
            raise ValueError(f"background_contrast={self.background_contrast} must be >= 0")
        if self.noise_std < 0 or not 0 <= self.colour_jitter < 1:
            raise ValueError(f"noise_std={self.noise_std} must be >= 0 and colour_jitter="
                             f"{self.colour_jitter} in [0, 1)")
        self._check_scene()

    def _check_scene(self):
        """Validate (and complete) ``scene``, ``second_scale`` and ``extra_colours``."""
        if self.scene not in SCENES:
            raise ValueError(f"scene={self.scene!r} not known; scenes: {', '.join(SCENES)}")
        if isinstance(self.extra_colours, str):
            raise ValueError(f"extra_colours={self.extra_colours!r} must be a sequence of colour "
                             "names, e.g. ('magenta', 'cyan')")
        object.__setattr__(self, "extra_colours", tuple(str(c) for c in self.extra_colours))
        if self.scene == "natural":
            if self.second_scale is not None or self.extra_colours:
                raise ValueError(f"second_scale={self.second_scale} and extra_colours="
                                 f"{self.extra_colours} apply to scene='two_objects' only; "
                                 f"scene={self.scene!r}")
            return
        second = self.object_scale if self.second_scale is None else self.second_scale
        object.__setattr__(self, "second_scale", tuple(float(v) for v in second))
        if len(self.second_scale) != 2 or not 0 < self.second_scale[0] <= self.second_scale[1] <= 0.5:
            raise ValueError(f"second_scale={self.second_scale} not accepted; use (low, high) with "
                             "0 < low <= high <= 0.5")
        room = math.sqrt(2) / (math.sqrt(2) + _TWO_GAP)  # the diagonal: the most room for two
        if self.object_scale[1] + self.second_scale[1] > room:
            raise ValueError(f"object_scale[1] + second_scale[1] = {self.object_scale[1]} + "
                             f"{self.second_scale[1]} exceeds {room:.4f}: the two largest objects "
                             "would not fit side by side without touching")
        if self.distractors_max > self.n_concepts - 2:
            raise ValueError(f"distractors_max={self.distractors_max} needs at least "
                             f"{self.distractors_max + 2} concepts in a two-object scene (distractors "
                             f"differ from the label and the second object); n_concepts={self.n_concepts}")
        used = {c for _, c in self.concepts}
        for c in self.extra_colours:
            if c not in COLOURS or c in used:
                raise ValueError(f"extra colour {c!r} not accepted; use colours no concept uses: "
                                 f"{', '.join(k for k in COLOURS if k not in used) or 'none left'}")
        if len(set(self.extra_colours)) != len(self.extra_colours):
            raise ValueError(f"extra_colours={self.extra_colours} names a colour twice")

    def to_dict(self) -> dict:
        """The knobs as plain JSON values; a knob at its default before it existed is left out,
        so configurations (and their digests, caches and cards) of earlier versions stay valid."""
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}
        if out["background_contrast"] == 1.0:
            del out["background_contrast"]
        for key, default in (("scene", "natural"), ("second_scale", None), ("extra_colours", [])):
            if out[key] == default:
                del out[key]
        return out

    @property
    def concepts(self) -> list[tuple[str, str]]:
        """(shape, colour) of each concept id."""
        names = list(COLOURS)
        return [(SHAPES[s], names[c]) for s, c in _concept_grid(self.n_concepts)]

    @property
    def concept_names(self) -> list[str]:
        """``"<colour> <shape>"`` for each concept id, e.g. ``"red circle"``."""
        return [f"{c} {s}" for s, c in self.concepts]

    @property
    def shapes(self) -> list[str]:
        """The shapes the concepts use, in the order of :data:`SHAPES`."""
        used = {s for s, _ in self.concepts}
        return [s for s in SHAPES if s in used]

    @property
    def colours(self) -> list[str]:
        """The colours the concepts use, in the order of :data:`COLOURS`, then
        ``extra_colours`` (in the same order)."""
        used = {c for _, c in self.concepts}
        return ([c for c in COLOURS if c in used]
                + [c for c in COLOURS if c in self.extra_colours])

    def digest(self) -> str:
        """Short hash of the knobs (enters the dataset fingerprint)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


# ---------------------------------------------------------------------------------------------
# rendering (pure NumPy)

def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, radius: float, cos_a: float,
                sin_a: float) -> np.ndarray:
    """Boolean mask of a shape centred at the origin of the offsets ``dy``, ``dx`` (pixel centres)."""
    u = cos_a * dx + sin_a * dy
    v = -sin_a * dx + cos_a * dy
    r = radius
    if shape == "circle":
        return u * u + v * v <= r * r
    if shape == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if shape == "cross":
        w = 0.3 * r
        return ((np.abs(u) <= w) & (np.abs(v) <= r)) | ((np.abs(v) <= w) & (np.abs(u) <= r))
    if shape in ("triangle", "star"):
        # equilateral triangle with circumradius r: three half-planes at distance r/2 (inradius)
        def triangle(offset):
            inside = np.ones(u.shape, bool)
            for k in range(3):
                t = offset + k * 2 * math.pi / 3
                inside &= u * round(math.cos(t), 9) + v * round(math.sin(t), 9) <= 0.5 * r
            return inside

        tri = triangle(math.pi / 2)
        return tri if shape == "triangle" else tri | triangle(-math.pi / 2)  # hexagram
    raise ValueError(f"shape {shape!r} not known; shapes: {', '.join(SHAPES)}")


def _background(rng: np.random.Generator, size: int, contrast: float = 1.0) -> tuple[np.ndarray, str]:
    """A low-saturation background, Array[size, size, 3] float in [0, 1], and its kind.

    ``contrast`` scales the variation around the grey level (1: the benchmark's default).
    """
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    grey = rng.uniform(0.25, 0.75)
    tint = rng.uniform(-0.06, 0.06, size=3)
    base = grey + tint
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    angle = round(rng.uniform(0, 2 * math.pi), 6)
    along = round(math.cos(angle), 9) * xx + round(math.sin(angle), 9) * yy
    if kind == "gradient":
        amp = rng.uniform(0.1, 0.3) * contrast
        img = base[None, None, :] + amp * (along - along.mean())[..., None]
    elif kind == "stripes":
        amp = rng.uniform(0.04, 0.12) * contrast
        period = rng.uniform(6, 16) / size
        # square wave from the fractional part: arithmetic only, so identical on every platform
        phase = np.floor(along / period * 2) % 2
        img = base[None, None, :] + amp * (2 * phase - 1)[..., None]
    else:
        amp = rng.uniform(0.08, 0.2) * contrast
        coarse = rng.uniform(-1, 1, size=(6, 6))
        # bilinear upsampling of a coarse random grid: smooth blotches
        pos = (np.arange(size) + 0.5) / size * 5
        i0 = np.minimum(np.floor(pos).astype(int), 4)
        f = pos - i0
        rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
        smooth = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
        img = base[None, None, :] + amp * smooth[..., None]
    return np.clip(img, 0, 1), kind


#: Area of each shape in units of its radius squared (the masks of :func:`_shape_mask`); a shape
#: swapped for another keeps its area (:func:`counterfactual`).
SHAPE_AREAS = {
    "circle": math.pi,
    "ring": math.pi * (1 - 0.55 ** 2),
    "square": 1.6 ** 2,
    "cross": 2 * (2 * 0.6) - 0.6 ** 2,          # two 2r x 0.6r bars, their 0.6r square shared
    "triangle": 3 * math.sqrt(3) / 4,            # circumradius r
    "star": math.sqrt(3),                        # hexagram: 4/3 of its triangle
}


@dataclass(frozen=True)
class Scene:
    """Everything random about one image, drawn from its seed before any pixel is painted.

    Attributes
    ----------
    size : int
        Side of the square image in pixels.
    background : ndarray[H, W, 3] float
        The background, in [0, 1].
    objects : tuple of dict
        In drawing order, the labelled object first: ``concept`` (int), ``shape``, ``colour``,
        ``center`` ((y, x) pixels), ``radius`` (pixels), ``angle`` (radians), ``bright``
        (brightness factor), ``jitter`` (3 offsets added to the colour), ``rgb`` (the colour
        painted: ``clip(COLOURS[colour] * bright + jitter, 0, 1)``) and ``role``
        ("label", "second" in a two-object scene, or "distractor"). ``concept`` is -1 for a
        second object in an extra colour (no concept).
    noise : ndarray[H, W, 3] float or None
        Pixel noise added after drawing.
    """

    size: int
    background: np.ndarray
    objects: tuple
    noise: np.ndarray | None


def _rgb(colour: str, bright: float, jitter) -> tuple:
    return tuple(float(v) for v in np.clip(np.array(COLOURS[colour]) * bright + np.asarray(jitter),
                                           0, 1))


def sample_scene(config: SyntheticConfig, seed: int, split: str, index: int) -> Scene:
    """The random content of one image of the benchmark (see :func:`render_image`)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} not known; splits: {', '.join(SPLITS)}")
    if index < 0:
        raise ValueError(f"index {index} must be >= 0")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [_SALT, int(seed), SPLITS[split], int(index)])))
    size = config.image_size
    concepts = config.concepts
    background, _ = _background(rng, size, config.background_contrast)

    label = int(rng.integers(config.n_concepts))
    if config.scene == "two_objects":
        specs = _two_objects(config, rng, label)
        taken = {label, specs[1][0]}
    else:
        specs, taken = [], {label}
    n_dis = int(rng.integers(config.distractors_min, config.distractors_max + 1))
    others = rng.permutation([c for c in range(config.n_concepts) if c not in taken])[:n_dis]

    if not specs:
        r_main = rng.uniform(*config.object_scale) * size
        cy, cx = rng.uniform(r_main, size - r_main, size=2)
        specs.append((label, *concepts[label], cy, cx, r_main, "label"))
    placed = [(y, x, r) for _, _, _, y, x, r, _ in specs]  # (cy, cx, r)
    n_large = len(specs)
    for concept in others:
        r = rng.uniform(*config.distractor_scale) * size
        for _ in range(100):
            y, x = rng.uniform(r, size - r, size=2)
            # distractors may touch the large objects and each other but never hide much of them
            if all(math.hypot(y - py, x - px) >= pr + 0.4 * r if k < n_large else
                   math.hypot(y - py, x - px) >= pr + 0.8 * r
                   for k, (py, px, pr) in enumerate(placed)):
                break
        placed.append((y, x, r))
        specs.append((int(concept), *concepts[concept], y, x, r, "distractor"))

    objects = []
    for concept, shape, colour, y, x, r, role in specs:
        angle = round(rng.uniform(0, 2 * math.pi), 6)
        bright = 1 + rng.uniform(-config.colour_jitter, config.colour_jitter)
        jitter = tuple(float(v) for v in rng.uniform(-0.04, 0.04, 3))
        objects.append(dict(concept=int(concept), shape=shape, colour=colour,
                            center=(float(y), float(x)), radius=float(r), angle=float(angle),
                            bright=float(bright), jitter=jitter, rgb=_rgb(colour, bright, jitter),
                            role=role))
    noise = rng.normal(0, config.noise_std, size=background.shape) if config.noise_std > 0 else None
    return Scene(size=size, background=background, objects=tuple(objects), noise=noise)


def _two_objects(config: SyntheticConfig, rng: np.random.Generator, label: int) -> list:
    """The labelled and the second object of a two-object scene, apart by at least
    :data:`_TWO_GAP` times the sum of their radii: ``[(concept, shape, colour, y, x, r, role)]``.

    The centres lie ``d`` apart along a direction ``u``; both fit in the image iff
    ``d * max(|u_y|, |u_x|) <= size - r1 - r2`` on each axis, so ``u`` is drawn among the
    directions that allow the smallest distance (all of them when there is room, else a cone
    around the diagonals), ``d`` between that distance and the largest along ``u``, and the
    midpoint uniformly where both objects stay inside.
    """
    size = config.image_size
    pool = [(c, s, col) for c, (s, col) in enumerate(config.concepts) if c != label]
    pool += [(-1, s, col) for col in COLOURS if col in config.extra_colours for s in config.shapes]
    second = pool[int(rng.integers(len(pool)))]
    r1 = rng.uniform(*config.object_scale) * size
    r2 = rng.uniform(*config.second_scale) * size
    free = size - r1 - r2
    d_min = _TWO_GAP * (r1 + r2)
    # max(|cos t|, |sin t|) = cos(pi/4 - |phi|) at t = pi/4 + phi: the cone where it is <= free/d_min
    q = free / d_min
    phi_max = math.pi / 4 if q >= 1 else math.pi / 4 - round(math.acos(q), 9)
    theta = math.pi / 4 + int(rng.integers(4)) * math.pi / 2 + rng.uniform(-phi_max, phi_max)
    uy, ux = round(math.sin(theta), 9), round(math.cos(theta), 9)
    d = rng.uniform(d_min, max(d_min, free / max(abs(uy), abs(ux))))
    centres = []
    for u in (uy, ux):
        a = d * u / 2  # the labelled object at mid + a, the second at mid - a
        lo, hi = max(r1 - a, r2 + a), min(size - r1 - a, size - r2 + a)
        mid = rng.uniform(lo, max(lo, hi))
        centres.append((mid + a, mid - a))
    (y1, y2), (x1, x2) = centres
    shape, colour = config.concepts[label]
    return [(label, shape, colour, y1, x1, r1, "label"), (*second, y2, x2, r2, "second")]


def draw_scene(scene: Scene, objects=None) -> tuple[np.ndarray, np.ndarray]:
    """Paint a scene.

    Parameters
    ----------
    scene : Scene
    objects : sequence of (dict or None), optional
        What to paint instead of ``scene.objects``, in drawing order: ``None`` leaves a slot
        empty (the object removed, with the background and the other objects unchanged), a dict
        paints that object (e.g. from :func:`counterfactual`). Default: the scene's objects.

    Returns
    -------
    image : ndarray[H, W, 3] uint8
    object_map : ndarray[H, W] int8
        Position (in ``objects``) of the visible object at each pixel, -1 for background.
    """
    objects = scene.objects if objects is None else objects
    size = scene.size
    img = scene.background.copy()
    object_map = np.full((size, size), -1, np.int8)
    for k, obj in enumerate(objects):
        if obj is None:
            continue
        y, x = obj["center"]
        r = obj["radius"]
        cos_a, sin_a = round(math.cos(obj["angle"]), 9), round(math.sin(obj["angle"]), 9)
        # corners of a rotated square reach 0.8 * sqrt(2) * r = 1.13 r from the centre
        ext = 1.2 * r
        y0, y1 = max(0, int(y - ext) - 1), min(size, int(y + ext) + 2)
        x0, x1 = max(0, int(x - ext) - 1), min(size, int(x + ext) + 2)
        dy = (np.arange(y0, y1) + 0.5 - y)[:, None] * np.ones((1, x1 - x0))
        dx = (np.arange(x0, x1) + 0.5 - x)[None, :] * np.ones((y1 - y0, 1))
        m = _shape_mask(obj["shape"], dy, dx, r, cos_a, sin_a)
        img[y0:y1, x0:x1][m] = obj["rgb"]
        object_map[y0:y1, x0:x1][m] = k  # later objects overwrite (occlude) earlier ones
    if scene.noise is not None:
        img = img + scene.noise
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8), object_map


def counterfactual(obj: dict, *, shape: str | None = None, colour: str | None = None) -> dict:
    """The object ``obj`` with another shape and/or colour, everything else kept.

    A new colour keeps the object's brightness factor and colour jitter. A new shape keeps the
    centre, the rotation, the colour and the *area*: the radius is scaled by
    ``sqrt(SHAPE_AREAS[old] / SHAPE_AREAS[new])``, so a unit that only counts coloured pixels
    sees as many of them after the swap.

    Returns
    -------
    dict
        A new object (``concept`` is -1: the pair may lie outside the dataset's concepts).
    """
    new = dict(obj, concept=-1)
    if colour is not None:
        if colour not in COLOURS:
            raise ValueError(f"colour {colour!r} not known; colours: {', '.join(COLOURS)}")
        new.update(colour=colour, rgb=_rgb(colour, obj["bright"], obj["jitter"]))
    if shape is not None:
        if shape not in SHAPE_AREAS:
            raise ValueError(f"shape {shape!r} not known; shapes: {', '.join(SHAPES)}")
        new.update(shape=shape,
                   radius=obj["radius"] * math.sqrt(SHAPE_AREAS[obj["shape"]] / SHAPE_AREAS[shape]))
    return new


def render_image(config: SyntheticConfig, seed: int, split: str, index: int):
    """Draw image ``index`` of a split: ``(image uint8 [H, W, 3], object_map [H, W], objects)``.

    :func:`sample_scene` then :func:`draw_scene`; ``objects`` are the scene's (see :class:`Scene`).
    """
    scene = sample_scene(config, seed, split, index)
    image, object_map = draw_scene(scene)
    return image, object_map, [dict(o) for o in scene.objects]

