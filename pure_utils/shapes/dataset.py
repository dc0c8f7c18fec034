"""The controlled benchmark as a dataset: :class:`SyntheticShapes`.

The images come from the generator of :mod:`pure_utils.shapes.generator`; this module renders them
lazily, keeps them in memory and serves them through the dataset protocol of
:mod:`pure_utils.data`, with their annotations (objects, masks) and scenes (for edits).
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from .._progress import tqdm
from .generator import (DEFAULT_SPLIT_SIZES, GENERATOR_VERSION, SPLITS, Scene, SyntheticConfig,
                        draw_scene, render_image, sample_scene)

__all__ = ["SyntheticShapes", "load_synthetic"]


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
        Generator knobs (default ``SyntheticConfig()``); ``SyntheticConfig(scene="two_objects")``
        adds a second object of labelled size to every image. Knobs at their defaults stay out
        of the fingerprint, so caches of the default scenes keep their keys.
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

    # -- protocol --------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n

    @property
    def fingerprint(self) -> str:
        """Stable id of the tensors: generator version, knobs, seed, split, size, mean and std."""
        norm = hashlib.sha256(repr(self.mean + self.std).encode()).hexdigest()[:8]
        return (f"synthetic-{GENERATOR_VERSION}-{self.config.digest()}-seed{self.seed}-"
                f"{self.split}-n{self.n}-{norm}")

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
        for i in tqdm(range(self.n), disable=not progress, desc=f"rendering {self.split}"):
            self._render(i)
        return self

    def pixels(self, i: int) -> np.ndarray:
        """Raw image ``i``, ndarray[H, W, 3] uint8."""
        return self._pixels[self._render(i)]

    def scene(self, i: int) -> Scene:
        """The random content of image ``i`` (objects, background, noise) before painting."""
        return sample_scene(self.config, self.seed, self.split, self._check(i))

    def render(self, scene: Scene, objects=None, *, normalize: bool = True) -> torch.Tensor:
        """Paint a (possibly edited) scene as a model input.

        Parameters
        ----------
        scene : Scene
            From :meth:`scene`.
        objects : sequence of (dict or None), optional
            See :func:`draw_scene`: ``None`` removes an object, a dict (e.g. from
            :func:`counterfactual`) replaces it.
        normalize : bool
            ``True``: normalised as ``ds[i][0]``; ``False``: in [0, 1] as ``ds.image(i)``.

        Returns
        -------
        Tensor[3, H, W]
        """
        return self._tensor(draw_scene(scene, objects)[0], normalize)

    def _tensor(self, pixels: np.ndarray, normalize: bool) -> torch.Tensor:
        x = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
        if not normalize:
            return x
        return (x - torch.tensor(self.mean).view(3, 1, 1)) / torch.tensor(self.std).view(3, 1, 1)

    def arrays(self, indices) -> tuple[np.ndarray, torch.Tensor]:
        """Raw images and labels of many indices at once (for training loops).

        Returns
        -------
        (ndarray[n, H, W, 3] uint8, LongTensor[n])
        """
        indices = [self._render(i) for i in indices]
        labels = torch.tensor([self._objects[i][0]["concept"] for i in indices])
        return self._pixels[indices], labels

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as Tensor[3, H, W] float in [0, 1] (what the model sees, before normalisation)."""
        return self._tensor(self.pixels(i), normalize=False)

    def label(self, i: int) -> int:
        """Class label of image ``i`` (the labelled object's concept)."""
        return self._objects[self._render(i)][0]["concept"]

    @property
    def labels(self) -> torch.Tensor:
        """LongTensor[n] of all labels (renders every image)."""
        return torch.tensor([self.label(i) for i in range(self.n)])

    def __getitem__(self, i: int):
        return self._tensor(self.pixels(i), normalize=True), self.label(i)

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
            A two-object scene (``SyntheticConfig(scene="two_objects")``) lists its second
            object next, role ``"second"``; in an extra colour its ``concept`` is -1 and its
            ``name`` ``"<colour> <shape>"``.
        """
        i = self._render(i)
        omap = self._maps[i]
        objects = []
        for k, obj in enumerate(self._objects[i]):
            # a second object in an extra colour is no concept (concept -1): named by its attributes
            name = (self.concept_names[obj["concept"]] if obj["concept"] >= 0
                    else f"{obj['colour']} {obj['shape']}")
            objects.append(dict(obj, name=name, mask=omap == k))
        return dict(label=objects[0]["concept"], objects=objects)

    def __repr__(self) -> str:
        return (f"SyntheticShapes(split={self.split!r}, n={self.n}, seed={self.seed}, "
                f"n_concepts={self.n_concepts}, image_size={self.config.image_size})")


def load_synthetic(*, config=None, **kwargs) -> SyntheticShapes:
    """:class:`SyntheticShapes` with ``config`` given as a ``SyntheticConfig`` or a dict of its
    fields (as a profile writes it); the builder behind ``load_dataset("synthetic", ...)``."""
    if isinstance(config, dict):
        config = SyntheticConfig(**config)
    return SyntheticShapes(config=config, **kwargs)
