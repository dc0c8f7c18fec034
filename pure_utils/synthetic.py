"""The controlled benchmark: synthetic shape images with known concepts, and its default models.

PURE (Dreyer et al., 2024) is usually judged through foundation-model proxies (CLIP distances of
feature visualisations). The paper names evaluation in a controlled setting as missing; this module
supplies one. Every image of :class:`SyntheticShapes` is drawn procedurally with NumPy, so its
ground truth is known exactly: which objects it holds, of which *concept* (shape x colour), and
which pixels each object covers.

- One **labelled object** (large) defines the class label: the label *is* its concept id.
- 1 to 3 **distractor objects** (smaller) of other concepts sit beside it.
- The **background** is a low-saturation gradient, stripe pattern or smooth noise, so that colour
  alone never comes from the background.

Images are deterministic per ``(seed, split, index)``: every image has its own random generator
seeded from these numbers (NumPy ``SeedSequence`` + PCG64, identical on every platform), so random
access works and the size of a split never changes its pixels.

The module also trains the two small timm ResNets shipped in ``data/models``
(:func:`train_default_model`, ``python -m pure_utils.synthetic train``) and maps reference samples
to ground-truth concepts (:func:`reference_concepts`, :func:`polysemantic_by_concepts`,
:func:`layer_polysemanticity`). A model card (``<name>.json`` beside the weights) records the
architecture, generator version and dataset settings, seeds, hyperparameters, the training command,
history and time, the held-out accuracy and the share of ``layer4`` channels that are polysemantic
by ground truth (``layer4_polysemantic``).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

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
        Range of each distractor's radius as a fraction of ``image_size`` (default 0.07-0.11); keep
        it below ``object_scale`` so that the label stays the largest object.
    distractors_min, distractors_max : int
        Number of distractor objects per image, drawn uniformly from this range (default 1-3).
        Distractors have concepts different from the label and from each other.
    noise_std : float
        Standard deviation of Gaussian pixel noise added to the whole image (default 0.02).
    colour_jitter : float
        Maximum relative brightness change of an object's colour (default 0.15).
    """

    n_concepts: int = 16
    image_size: int = 96
    object_scale: tuple = (0.17, 0.27)
    distractor_scale: tuple = (0.07, 0.11)
    distractors_min: int = 1
    distractors_max: int = 3
    noise_std: float = 0.02
    colour_jitter: float = 0.15

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
        if self.distractor_scale[1] >= self.object_scale[0]:
            raise ValueError(
                f"distractor_scale={self.distractor_scale} must stay below object_scale="
                f"{self.object_scale} (the labelled object is the largest one)")
        if not 0 <= self.distractors_min <= self.distractors_max:
            raise ValueError(
                f"distractors_min={self.distractors_min}, distractors_max={self.distractors_max} not "
                "accepted; use 0 <= distractors_min <= distractors_max")
        if self.distractors_max > self.n_concepts - 1:
            raise ValueError(
                f"distractors_max={self.distractors_max} needs at least {self.distractors_max + 1} "
                f"concepts (distractors differ from the label and each other); n_concepts={self.n_concepts}")
        if self.noise_std < 0 or not 0 <= self.colour_jitter < 1:
            raise ValueError(f"noise_std={self.noise_std} must be >= 0 and colour_jitter="
                             f"{self.colour_jitter} in [0, 1)")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @property
    def concepts(self) -> list[tuple[str, str]]:
        """(shape, colour) of each concept id."""
        names = list(COLOURS)
        return [(SHAPES[s], names[c]) for s, c in _concept_grid(self.n_concepts)]

    @property
    def concept_names(self) -> list[str]:
        """``"<colour> <shape>"`` for each concept id, e.g. ``"red circle"``."""
        return [f"{c} {s}" for s, c in self.concepts]

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


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """A low-saturation background, Array[size, size, 3] float in [0, 1], and its kind."""
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    grey = rng.uniform(0.25, 0.75)
    tint = rng.uniform(-0.06, 0.06, size=3)
    base = grey + tint
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    angle = round(rng.uniform(0, 2 * math.pi), 6)
    along = round(math.cos(angle), 9) * xx + round(math.sin(angle), 9) * yy
    if kind == "gradient":
        amp = rng.uniform(0.1, 0.3)
        img = base[None, None, :] + amp * (along - along.mean())[..., None]
    elif kind == "stripes":
        amp = rng.uniform(0.04, 0.12)
        period = rng.uniform(6, 16) / size
        # square wave from the fractional part: arithmetic only, so identical on every platform
        phase = np.floor(along / period * 2) % 2
        img = base[None, None, :] + amp * (2 * phase - 1)[..., None]
    else:
        amp = rng.uniform(0.08, 0.2)
        coarse = rng.uniform(-1, 1, size=(6, 6))
        # bilinear upsampling of a coarse random grid: smooth blotches
        pos = (np.arange(size) + 0.5) / size * 5
        i0 = np.minimum(np.floor(pos).astype(int), 4)
        f = pos - i0
        rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
        smooth = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
        img = base[None, None, :] + amp * smooth[..., None]
    return np.clip(img, 0, 1), kind


def render_image(config: SyntheticConfig, seed: int, split: str, index: int):
    """Draw one image of the benchmark.

    Parameters
    ----------
    config : SyntheticConfig
    seed : int
        Dataset seed.
    split : {"train", "val", "test"}
    index : int
        Position of the image in its split.

    Returns
    -------
    image : ndarray[H, W, 3] uint8
    object_map : ndarray[H, W] int8
        Index (into ``objects``) of the visible object at each pixel, -1 for background.
    objects : list of dict
        One dict per object in drawing order, the labelled object first: ``concept`` (int),
        ``shape``, ``colour`` (names), ``rgb`` (tuple of 3 floats, the object's colour before
        noise), ``center`` ((y, x) pixels), ``radius`` (pixels), ``angle`` (radians),
        ``role`` ("label" or "distractor").
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} not known; splits: {', '.join(SPLITS)}")
    if index < 0:
        raise ValueError(f"index {index} must be >= 0")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [_SALT, int(seed), SPLITS[split], int(index)])))
    size = config.image_size
    concepts = config.concepts
    colours = list(COLOURS)

    img, _ = _background(rng, size)
    object_map = np.full((size, size), -1, np.int8)

    label = int(rng.integers(config.n_concepts))
    n_dis = int(rng.integers(config.distractors_min, config.distractors_max + 1))
    others = rng.permutation([c for c in range(config.n_concepts) if c != label])[:n_dis]

    placed = []  # (cy, cx, r)
    specs = []
    r_main = rng.uniform(*config.object_scale) * size
    cy, cx = rng.uniform(r_main, size - r_main, size=2)
    placed.append((cy, cx, r_main))
    specs.append((label, cy, cx, r_main, "label"))
    for concept in others:
        r = rng.uniform(*config.distractor_scale) * size
        for _ in range(100):
            y, x = rng.uniform(r, size - r, size=2)
            # distractors may touch the labelled object and each other but never hide much of them
            if all(math.hypot(y - py, x - px) >= pr + 0.4 * r if k == 0 else
                   math.hypot(y - py, x - px) >= pr + 0.8 * r
                   for k, (py, px, pr) in enumerate(placed)):
                break
        placed.append((y, x, r))
        specs.append((int(concept), y, x, r, "distractor"))

    objects = []
    for k, (concept, y, x, r, role) in enumerate(specs):
        shape, colour = concepts[concept]
        angle = round(rng.uniform(0, 2 * math.pi), 6)
        cos_a, sin_a = round(math.cos(angle), 9), round(math.sin(angle), 9)
        bright = 1 + rng.uniform(-config.colour_jitter, config.colour_jitter)
        rgb = np.clip(np.array(COLOURS[colour]) * bright + rng.uniform(-0.04, 0.04, 3), 0, 1)
        # corners of a rotated square reach 0.8 * sqrt(2) * r = 1.13 r from the centre
        ext = 1.2 * r
        y0, y1 = max(0, int(y - ext) - 1), min(size, int(y + ext) + 2)
        x0, x1 = max(0, int(x - ext) - 1), min(size, int(x + ext) + 2)
        dy = (np.arange(y0, y1) + 0.5 - y)[:, None] * np.ones((1, x1 - x0))
        dx = (np.arange(x0, x1) + 0.5 - x)[None, :] * np.ones((y1 - y0, 1))
        m = _shape_mask(shape, dy, dx, r, cos_a, sin_a)
        img[y0:y1, x0:x1][m] = rgb
        object_map[y0:y1, x0:x1][m] = k  # later objects overwrite (occlude) earlier ones
        objects.append(dict(concept=int(concept), shape=shape, colour=colour,
                            rgb=tuple(float(v) for v in rgb), center=(float(y), float(x)),
                            radius=float(r), angle=float(angle), role=role))
    if config.noise_std > 0:
        img = img + rng.normal(0, config.noise_std, size=img.shape)
    image = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return image, object_map, objects


# ---------------------------------------------------------------------------------------------
# dataset

class SyntheticShapes(torch.utils.data.Dataset):
    """The controlled benchmark: shape images with known concepts and masks.

    Parameters
    ----------
    split : {"train", "val", "test"}
        Each split has its own random streams; the default models are trained on ``"train"``
        and evaluated on ``"test"``.
    n : int, optional
        Number of images (default per split: train 20000, val 2000, test 3000). Image ``i`` is
        the same whatever ``n`` is.
    seed : int
        Dataset seed (default 0).
    config : SyntheticConfig, optional
        Generator knobs (default ``SyntheticConfig()``).
    mean, std : tuple of 3 floats
        Normalisation applied in ``__getitem__`` (default 0.5 and 0.25 per channel).

    Notes
    -----
    Rendered images are cached in memory on first access (about 28 KB per 96 px image).
    ``ds[i]`` returns ``(Tensor[3, H, W] normalised, label)``; ``ds.image(i)`` the same image in
    [0, 1]; ``ds.annotations(i)`` the ground truth.
    """

    def __init__(self, split: str = "test", n: int | None = None, seed: int = 0,
                 config: SyntheticConfig | None = None, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)):
        if split not in SPLITS:
            raise ValueError(f"split {split!r} not known; splits: {', '.join(SPLITS)}")
        n = DEFAULT_SPLIT_SIZES[split] if n is None else int(n)
        if n < 1:
            raise ValueError(f"n={n} must be >= 1")
        self.split, self.n, self.seed = split, n, int(seed)
        self.config = config or SyntheticConfig()
        if not isinstance(self.config, SyntheticConfig):
            raise ValueError(f"config must be a SyntheticConfig, got {type(self.config).__name__}")
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        size = self.config.image_size
        self._pixels = np.zeros((n, size, size, 3), np.uint8)
        self._maps = np.zeros((n, size, size), np.int8)
        self._objects: list = [None] * n
        self._grids: dict = {}

    # -- protocol --------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n

    @property
    def fingerprint(self) -> str:
        """Stable id of the images: generator version, knobs, seed, split and size."""
        return (f"synthetic-{GENERATOR_VERSION}-{self.config.digest()}-seed{self.seed}-"
                f"{self.split}-n{self.n}")

    @property
    def class_names(self) -> list[str]:
        """Class names (= concept names: the label is the labelled object's concept)."""
        return self.config.concept_names

    @property
    def concept_names(self) -> list[str]:
        """``"<colour> <shape>"`` per concept id."""
        return self.config.concept_names

    @property
    def n_concepts(self) -> int:
        return self.config.n_concepts

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.config.image_size, self.config.image_size)

    def _check(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} images")
        return i

    def _render(self, i: int) -> int:
        i = self._check(i)
        if self._objects[i] is None:
            image, omap, objects = render_image(self.config, self.seed, self.split, i)
            self._pixels[i], self._maps[i] = image, omap
            self._objects[i] = objects
        return i

    def render_all(self, progress: bool = False) -> "SyntheticShapes":
        """Render (and cache) every image now instead of lazily."""
        from ._progress import tqdm

        for i in tqdm(range(self.n), disable=not progress, desc=f"rendering {self.split}"):
            self._render(i)
        return self

    def pixels(self, i: int) -> np.ndarray:
        """Raw image ``i``, ndarray[H, W, 3] uint8."""
        return self._pixels[self._render(i)]

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as Tensor[3, H, W] float in [0, 1] (what the model sees, before normalisation)."""
        return torch.from_numpy(self.pixels(i)).permute(2, 0, 1).float() / 255

    def label(self, i: int) -> int:
        """Class label of image ``i`` (the labelled object's concept)."""
        return self._objects[self._render(i)][0]["concept"]

    @property
    def labels(self) -> torch.Tensor:
        """LongTensor[n] of all labels (renders every image)."""
        return torch.tensor([self.label(i) for i in range(self.n)])

    def __getitem__(self, i: int):
        x = self.image(i)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std, self.label(i)

    # -- ground truth ----------------------------------------------------------------------
    def object_map(self, i: int) -> np.ndarray:
        """ndarray[H, W] int8: index of the visible object at each pixel (-1 background)."""
        return self._maps[self._render(i)]

    def annotations(self, i: int) -> dict:
        """Ground truth of image ``i``.

        Returns
        -------
        dict
            ``label`` (int) and ``objects``: a list, in drawing order with the labelled object
            first, of dicts with ``concept`` (int), ``name`` (str), ``mask`` (ndarray[H, W] bool:
            the object's *visible* pixels; objects drawn later cut the masks of earlier ones),
            ``shape``, ``colour``, ``rgb``, ``center`` (y, x), ``radius``, ``angle``, ``role``.
        """
        i = self._render(i)
        omap = self._maps[i]
        objects = []
        for k, obj in enumerate(self._objects[i]):
            objects.append(dict(obj, name=self.concept_names[obj["concept"]], mask=omap == k))
        return dict(label=objects[0]["concept"], objects=objects)

    def concept_at(self, i: int, box) -> int:
        """Concept of the object that covers most pixels of a box of image ``i``.

        Parameters
        ----------
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
        i = self._render(i)
        size = self.config.image_size
        r0, r1 = max(0, math.ceil(y0 - 0.5)), min(size, math.ceil(y1 - 0.5))
        c0, c1 = max(0, math.ceil(x0 - 0.5)), min(size, math.ceil(x1 - 0.5))
        patch = self._maps[i, r0:r1, c0:c1]
        counts = np.bincount(patch[patch >= 0].astype(np.int64), minlength=len(self._objects[i]))
        if counts.sum() == 0:
            return -1
        return self._objects[i][int(np.argmax(counts))]["concept"]

    def concept_grid(self, map_size) -> torch.Tensor:
        """Concept at every cell of a layer map, for every image.

        Cell ``(r, c)`` of an ``h x w`` map covers the input box
        ``[r*H/h, (r+1)*H/h) x [c*W/w, (c+1)*W/w)``; its concept is ``concept_at`` of that box.

        Returns
        -------
        LongTensor[n, h, w]
        """
        h, w = (int(v) for v in map_size)
        if (h, w) not in self._grids:
            size = self.config.image_size
            grid = torch.empty(self.n, h, w, dtype=torch.long)
            for i in range(self.n):
                for r in range(h):
                    for c in range(w):
                        grid[i, r, c] = self.concept_at(
                            i, (r * size / h, c * size / w, (r + 1) * size / h, (c + 1) * size / w))
            self._grids[(h, w)] = grid
        return self._grids[(h, w)]

    def __repr__(self) -> str:
        return (f"SyntheticShapes(split={self.split!r}, n={self.n}, seed={self.seed}, "
                f"n_concepts={self.n_concepts}, image_size={self.config.image_size})")


def reference_concepts(dataset: SyntheticShapes, references) -> torch.Tensor:
    """Ground-truth concept of every reference sample of every neuron.

    The concept of a reference sample is the concept of the object under the neuron's strongest
    activation: the layer-map cell ``(r, c)`` at the spatial argmax (``references.positions``) of a
    ``h x w`` map (``references.map_size``) covers the input box
    ``[r*H/h, (r+1)*H/h) x [c*W/w, (c+1)*W/w)``, and the object with the most visible pixels in
    that box gives the concept (-1 when the box shows only background; see
    :meth:`SyntheticShapes.concept_at`).

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
    if not hasattr(dataset, "concept_grid"):
        raise ValueError(f"dataset {dataset!r} has no ground-truth concepts; use a SyntheticShapes dataset")
    indices = torch.as_tensor(references.indices).long()
    positions = torch.as_tensor(references.positions).long()
    if positions.shape != (*indices.shape, 2):
        raise ValueError(f"positions of shape {tuple(positions.shape)} do not match indices of shape "
                         f"{tuple(indices.shape)}; expected {(*indices.shape, 2)}")
    h, w = references.map_size
    grid = dataset.concept_grid((h, w))
    valid = indices >= 0
    idx = indices.clamp(min=0)
    rows = positions[..., 0].clamp(0, h - 1)
    cols = positions[..., 1].clamp(0, w - 1)
    concepts = grid[idx, rows, cols]
    return torch.where(valid, concepts, torch.full_like(concepts, -1))


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


#: Name used in the shared API description; the same function.
polysemanticity_by_concepts = polysemantic_by_concepts


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
    from .references import mine_references

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
                      "(pure_utils.synthetic.reference_concepts); polysemantic = at least two concepts "
                      f"with >= {min_share:.0%} of the references"))


# ---------------------------------------------------------------------------------------------
# the shipped default models

#: build_resnet kwargs of the shipped models. layer4 is kept narrow (fewer channels than there are
#: concepts, or barely more) so that its neurons must share concepts: the benchmark needs
#: polysemantic neurons with known ground truth.
DEFAULT_ARCHITECTURES = {
    "synthetic_resnet_basic": dict(block="basic", layers=[1, 1, 1, 1], channels=[16, 32, 64, 24],
                                   stem_width=16, num_classes=16),
    "synthetic_resnet_bottleneck": dict(block="bottleneck", layers=[1, 1, 1, 1],
                                        channels=[16, 32, 48, 8], stem_width=16, num_classes=16),
}

#: Training hyperparameters of the shipped models (``train_default_model`` defaults).
DEFAULT_TRAINING = dict(epochs=8, n_train=10000, batch_size=64, lr=4e-3, weight_decay=5e-4,
                        label_smoothing=0.05, seed=0, data_seed=0, n_eval=3000, n_check=1000,
                        n_val=500, threads=2)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips of a batch (label-preserving: every shape is mirror-symmetric up to rotation)."""
    flip_h = torch.rand(x.shape[0], generator=gen) < 0.5
    flip_v = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip_h.view(-1, 1, 1, 1), x.flip(3), x)
    return torch.where(flip_v.view(-1, 1, 1, 1), x.flip(2), x)


def _batches(dataset: SyntheticShapes, indices, batch_size: int):
    mean = torch.tensor(dataset.mean).view(1, 3, 1, 1)
    std = torch.tensor(dataset.std).view(1, 3, 1, 1)
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        for i in idx:
            dataset._render(int(i))
        x = torch.from_numpy(dataset._pixels[idx]).permute(0, 3, 1, 2).float() / 255
        y = torch.tensor([dataset._objects[int(i)][0]["concept"] for i in idx])
        yield (x - mean) / std, y


@torch.no_grad()
def _correct(model: torch.nn.Module, dataset: SyntheticShapes, n: int | None = None,
             batch_size: int = 250) -> torch.Tensor:
    """Whether ``model`` classifies each of the first ``n`` images right: ``BoolTensor[n]``."""
    was_training = model.training
    model.eval()
    n = len(dataset) if n is None else min(int(n), len(dataset))
    hits = [model(x).argmax(1) == y for x, y in _batches(dataset, np.arange(n), batch_size)]
    model.train(was_training)
    return torch.cat(hits)


def evaluate_accuracy(model: torch.nn.Module, dataset: SyntheticShapes, n: int | None = None,
                      batch_size: int = 250) -> float:
    """Top-1 accuracy of ``model`` on the first ``n`` images of ``dataset`` (default: all)."""
    hits = _correct(model, dataset, n, batch_size)
    return int(hits.sum()) / len(hits)


def train_default_model(name: str = "synthetic_resnet_basic", *, out_dir=None, epochs: int | None = None,
                        n_train: int | None = None, n_eval: int | None = None,
                        n_check: int | None = None, n_val: int | None = None, batch_size: int | None = None,
                        lr: float | None = None, max_steps: int | None = None,
                        threads: int | None = None, seed: int | None = None,
                        architecture: dict | None = None, config: SyntheticConfig | None = None,
                        init=None, command: str | None = None, progress: bool = True) -> dict:
    """Train one of the shipped default models on the synthetic train split and write it.

    AdamW with a one-epoch linear warm-up and a cosine schedule, label smoothing, random flips.
    Training uses the ``train`` split (its own random streams), accuracy is measured on the
    ``test`` split with the same dataset seed.

    Parameters
    ----------
    name : str
        A key of ``DEFAULT_ARCHITECTURES`` (``"synthetic_resnet_basic"``,
        ``"synthetic_resnet_bottleneck"``).
    out_dir : path, optional
        Where ``<name>.safetensors`` and ``<name>.json`` go (default ``data/models``).
    epochs, n_train, n_eval, n_check, n_val, batch_size, lr, seed, threads : optional
        Override ``DEFAULT_TRAINING``. ``n_eval`` test images give the card's accuracy,
        the first ``n_check`` of them a second accuracy used by the quick test; ``n_val``
        validation images are scored after every epoch.
    max_steps : int, optional
        Stop after this many optimiser steps (for smoke runs).
    architecture : dict, optional
        ``build_resnet`` kwargs (default ``DEFAULT_ARCHITECTURES[name]``).
    config : SyntheticConfig, optional
        Generator knobs (default ``SyntheticConfig()``).
    init : path, optional
        Warm start: ``<name>.safetensors`` of an earlier run (its card ``<name>.json`` beside it
        is copied into the new card under ``warm_start``, so the full training history stays
        recorded). The new run is a further stage with its own warm-up and cosine schedule.
    command : str, optional
        The command line that started the run (stored in the card).
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        The model card that was written.
    """
    import timm
    from safetensors.torch import save_file
    from ._progress import tqdm

    from .models import MODELS_DIR, build_resnet

    if architecture is None:
        if name not in DEFAULT_ARCHITECTURES:
            raise ValueError(f"model {name!r} not known; models: {', '.join(DEFAULT_ARCHITECTURES)}")
        architecture = dict(DEFAULT_ARCHITECTURES[name])
    hp = dict(DEFAULT_TRAINING)
    for key, value in dict(epochs=epochs, n_train=n_train, n_eval=n_eval, n_check=n_check, n_val=n_val,
                           batch_size=batch_size, lr=lr, seed=seed, threads=threads).items():
        if value is not None:
            hp[key] = value
    hp["max_steps"] = max_steps
    if hp["n_train"] < hp["batch_size"]:
        raise ValueError(f"n_train={hp['n_train']} must be at least batch_size={hp['batch_size']}")
    config = config or SyntheticConfig()
    if architecture.get("num_classes") != config.n_concepts:
        architecture["num_classes"] = config.n_concepts
    out_dir = Path(out_dir) if out_dir is not None else MODELS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)

    old_threads = torch.get_num_threads()
    torch.set_num_threads(int(hp["threads"]))
    try:
        torch.manual_seed(hp["seed"])
        model = build_resnet(**architecture)
        warm_start = None
        if init is not None:
            from safetensors.torch import load_file

            init = Path(init)
            model.load_state_dict(load_file(str(init)))
            previous = init.with_suffix(".json")
            warm_start = dict(weights=init.name, sha256=hashlib.sha256(init.read_bytes()).hexdigest(),
                              card=json.loads(previous.read_text()) if previous.exists() else None)
        # channels_last is about 1.5x faster for these small convolutions on CPU
        model = model.to(memory_format=torch.channels_last)
        train = SyntheticShapes("train", n=hp["n_train"], seed=hp["data_seed"], config=config)
        test = SyntheticShapes("test", n=max(hp["n_eval"], hp["n_check"]), seed=hp["data_seed"],
                               config=config)
        val = SyntheticShapes("val", n=hp["n_val"], seed=hp["data_seed"], config=config)
        t0 = time.time()
        train.render_all(progress=progress)
        # incomplete last batches are dropped (they only add noise to the BatchNorm statistics)
        steps_per_epoch = hp["n_train"] // hp["batch_size"]
        total = steps_per_epoch * hp["epochs"]
        if max_steps is not None:
            total = min(total, int(max_steps))
        warmup = min(steps_per_epoch, max(total // 10, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warmup if s < warmup else
            0.5 * (1 + math.cos(math.pi * (s - warmup) / max(total - warmup, 1))))
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=hp["label_smoothing"])
        gen = torch.Generator().manual_seed(hp["seed"])
        step = 0
        bar = tqdm(total=total, disable=not progress, desc=f"training {name}")
        model.train()
        history = []
        while step < total:
            order = torch.randperm(hp["n_train"], generator=gen).numpy()
            running, seen = 0.0, 0
            for x, y in _batches(train, order, hp["batch_size"]):
                if len(y) < hp["batch_size"]:
                    continue
                x = _augment(x, gen).contiguous(memory_format=torch.channels_last)
                loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                running += loss.item() * len(y)
                seen += len(y)
                step += 1
                bar.update(1)
                if step >= total:
                    break
            val_acc = evaluate_accuracy(model, val)
            history.append(dict(loss=round(running / max(seen, 1), 4), val_accuracy=val_acc))
            bar.set_postfix(loss=history[-1]["loss"], val=val_acc)
            if progress:
                print(f"epoch {len(history)}: {history[-1]}, {time.time() - t0:.0f} s", flush=True)
        bar.close()
        train_time = time.time() - t0
        # one pass over the test images gives both accuracies (n_check is a prefix of the split)
        hits = _correct(model, test)
        acc = int(hits[:hp["n_eval"]].sum()) / min(hp["n_eval"], len(hits))
        acc_check = int(hits[:hp["n_check"]].sum()) / min(hp["n_check"], len(hits))
        model.eval()
        poly = layer_polysemanticity(model, test, "layer4", n_ref=100, progress=False)
    finally:
        torch.set_num_threads(old_threads)

    weights = out_dir / f"{name}.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(weights))
    card = dict(
        name=name,
        description=("Small timm ResNet trained on the synthetic shapes benchmark of pure_utils "
                     "(pure_utils.synthetic); layer4 is narrow so that its neurons are polysemantic."),
        architecture=architecture,
        n_parameters=sum(p.numel() for p in model.parameters()),
        generator_version=GENERATOR_VERSION,
        dataset=dict(name="synthetic", config=config.to_dict(), seed=hp["data_seed"],
                     train_split="train", n_train=hp["n_train"], concept_names=config.concept_names),
        seed=hp["seed"],
        hyperparameters=dict(optimizer="AdamW", schedule="linear warm-up + cosine",
                             augmentation="random horizontal and vertical flips",
                             steps=step, warmup_steps=warmup, n_val=hp["n_val"],
                             **{k: hp[k] for k in ("epochs", "batch_size", "lr", "weight_decay",
                                                   "label_smoothing", "max_steps")}),
        accuracy=dict(split="test", seed=hp["data_seed"], n=hp["n_eval"], value=acc),
        accuracy_check=dict(split="test", seed=hp["data_seed"], n=hp["n_check"], value=acc_check,
                            note="first n images of the same test split, used by the quick test"),
        history=history,
        command=command,
        training_time_s=round(train_time, 1),
        training_time_total_s=round(train_time + _previous_time(warm_start), 1),
        warm_start=warm_start,
        training_threads=int(hp["threads"]),
        machine=_machine(),
        versions=dict(torch=torch.__version__, timm=timm.__version__, numpy=np.__version__),
        layer4_polysemantic=poly,
    )
    (out_dir / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def _machine() -> dict:
    """What the training time was measured on (CPU count and model, platform, Python)."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:  # the CPU model name on Linux
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(cpu_count=os.cpu_count(), cpu=cpu, platform=platform.platform(),
                python=platform.python_version())


def _previous_time(warm_start) -> float:
    card = (warm_start or {}).get("card") or {}
    return float(card.get("training_time_total_s", card.get("training_time_s", 0.0)))


def main(argv=None):
    """Command line: ``python -m pure_utils.synthetic train --model NAME [...]``."""
    from .models import MODELS_DIR

    parser = argparse.ArgumentParser(prog="python -m pure_utils.synthetic",
                                     description="Train the shipped models on the synthetic benchmark.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a default model and write <out>/<name>.safetensors + .json")
    p.add_argument("--model", default="synthetic_resnet_basic", choices=list(DEFAULT_ARCHITECTURES) + ["all"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-eval", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--init", default=None, help="warm start from this .safetensors (a further stage)")
    p.add_argument("--out", default=None, help="output folder (default data/models)")
    p.add_argument("--tiny", action="store_true",
                   help="smoke run: a few steps on 64 images, written to --out (default: a temp folder)")
    p.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    names = list(DEFAULT_ARCHITECTURES) if args.model == "all" else [args.model]
    kwargs = dict(epochs=args.epochs, n_train=args.n_train, n_eval=args.n_eval,
                  batch_size=args.batch_size, lr=args.lr, threads=args.threads, seed=args.seed,
                  max_steps=args.max_steps, init=args.init)
    out = args.out
    if args.tiny:
        import tempfile

        out = out or tempfile.mkdtemp(prefix="pure_tiny_")
        kwargs.update(epochs=1, n_train=64, n_eval=32, n_check=16, n_val=16, batch_size=16, max_steps=3)
    command = " ".join(["python -m pure_utils.synthetic"] + [shlex.quote(a) for a in
                                                               (argv if argv is not None else sys.argv[1:])])
    for name in names:
        card = train_default_model(name, out_dir=out, progress=not args.no_progress,
                                   command=command, **kwargs)
        where = Path(out) if out else MODELS_DIR
        print(f"{name}: test accuracy {card['accuracy']['value']:.4f} "
              f"(n={card['accuracy']['n']}, seed={card['accuracy']['seed']}), "
              f"training {card['training_time_s']:.0f} s, "
              f"layer4 polysemantic {card['layer4_polysemantic']['count']}/"
              f"{card['layer4_polysemantic']['n_neurons']} -> {where / (name + '.safetensors')}")


if __name__ == "__main__":
    main()
