"""Datasets: the protocol every stage reads images through, and the datasets that follow it.

Every dataset returned by :func:`load_dataset` follows one protocol:

- ``len(ds)``; ``ds[i] -> (Tensor[3, H, W] normalised, int label)``;
- ``ds.image(i) -> Tensor[3, H, W]`` in [0, 1], spatially aligned with the model input (after
  resize and crop, before normalisation), used for visualisations;
- ``ds.fingerprint`` (a stable id for cache keys), ``ds.mean``, ``ds.std`` (3 floats each),
  ``ds.class_names``.

Datasets: the controlled benchmark (:class:`SyntheticShapes`, over the generator of
:mod:`pure_utils.synthetic`), image folders such as ImageNet val (:class:`ImageFolderDataset`)
and random smooth images for tests and benchmarks (:class:`GeneratedImages`). :func:`check_dataset`, :func:`load_images` and
:func:`iter_batches` are how the engine reads any of them.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as F

from ._progress import tqdm
from .synthetic import (DEFAULT_SPLIT_SIZES, GENERATOR_VERSION, SPLITS, Scene, SyntheticConfig,
                        draw_scene, render_image, sample_scene)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "DATASETS", "ImageFolderDataset",
           "SyntheticShapes", "GeneratedImages", "DatasetPart", "shared_images", "load_dataset", "check_dataset", "load_images", "iter_batches"]

#: ImageNet normalisation, as used by the timm ``*.a1_in1k`` weights and the PURE paper.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: File endings read by :class:`ImageFolderDataset` (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")

DATASETS = ("synthetic", "imagefolder", "imagenet", "generated")


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images of a folder, resized and centre-cropped as for ImageNet evaluation.

    Parameters
    ----------
    root : path
        Either a folder of class sub-folders (``root/<class>/<image>``, the ImageNet val
        layout; sub-folders sorted by name give labels 0, 1, ...) or a flat folder of images
        (every label -1).
    image_size : int
        Side of the square centre crop (default 224).
    resize : int
        The shorter image side is first resized to this (default 256), as in the paper's
        pipeline (Resize 256, CenterCrop 224).
    mean, std : tuple of 3 floats
        Normalisation (default ImageNet).
    class_names : list of str, optional
        Readable names for the class folders (default: the folder names).

    Raises
    ------
    FileNotFoundError
        When ``root`` is missing or holds no image; the message says how to get ImageNet val.
    """

    def __init__(self, root, image_size: int = 224, resize: int = 256, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, class_names=None):
        if root is None:
            raise FileNotFoundError(_missing_message(None))
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(_missing_message(self.root))
        if image_size < 1 or resize < image_size:
            raise ValueError(f"image_size={image_size}, resize={resize} not accepted; use "
                             "1 <= image_size <= resize")
        self.image_size, self.resize = int(image_size), int(resize)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)

        def images_in(folder: Path):
            return sorted(p for p in folder.iterdir()
                          if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)

        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.samples: list[tuple[Path, int]] = []
        if folders:
            for label, folder in enumerate(folders):
                self.samples += [(p, label) for p in images_in(folder)]
            self.folder_names = [f.name for f in folders]
        else:
            self.samples = [(p, -1) for p in images_in(self.root)]
            self.folder_names = []
        if not self.samples:
            raise FileNotFoundError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {self.root} or its class "
                f"sub-folders. {_HOW_TO_GET_IMAGENET}")
        if class_names is not None and len(class_names) != len(self.folder_names):
            raise ValueError(f"class_names has {len(class_names)} entries but {self.root} has "
                             f"{len(self.folder_names)} class folders")
        self.class_names = list(class_names) if class_names is not None else list(self.folder_names)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        """LongTensor[n] of labels (-1 for a flat folder)."""
        return torch.tensor([label for _, label in self.samples])

    @property
    def fingerprint(self) -> str:
        """Stable id: folder, file list, sizes and normalisation."""
        h = hashlib.sha256()
        for path, label in self.samples:
            h.update(f"{path.relative_to(self.root)}:{label};".encode())
        return (f"imagefolder-{self.root.name}-{h.hexdigest()[:12]}-n{len(self)}-"
                f"{self.resize}-{self.image_size}-{_digest(self.mean + self.std)}")

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` resized and centre-cropped, Tensor[3, image_size, image_size] in [0, 1]."""
        path, _ = self.samples[i]
        with Image.open(path) as img:
            img = img.convert("RGB")
            img = F.resize(img, self.resize, interpolation=F.InterpolationMode.BILINEAR)
            img = F.center_crop(img, [self.image_size, self.image_size])
            return F.to_tensor(img)

    def __getitem__(self, i: int):
        x = self.image(i)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std, self.samples[i][1]

    def __repr__(self) -> str:
        return (f"ImageFolderDataset(root={str(self.root)!r}, n={len(self)}, "
                f"classes={len(self.class_names)}, image_size={self.image_size})")


_HOW_TO_GET_IMAGENET = (
    "For the paper's setting, download the ImageNet (ILSVRC2012) validation images from "
    "https://image-net.org (free registration), arrange them in one sub-folder per class "
    "(e.g. with the valprep.sh script that circulates with the PyTorch ImageNet example, "
    "giving val/n01440764/*.JPEG, ...), and set dataset_kwargs.root in "
    "notebooks/profiles/paper.yaml (or pass root=... to load_dataset) to that val folder. "
    "Without ImageNet, use the default offline profile (dataset: synthetic).")


def _missing_message(root) -> str:
    what = "no image folder given (root=None)" if root is None else f"image folder {root} does not exist"
    return f"{what}. {_HOW_TO_GET_IMAGENET}"


def _digest(values) -> str:
    return hashlib.sha256(repr(tuple(values)).encode()).hexdigest()[:6]


def load_dataset(name: str = "synthetic", *, part: str | None = None, test_share: float = 0.1,
                 part_seed: int = 0, subset: int | None = None, **kwargs):
    """Create a dataset by name.

    Parameters
    ----------
    name : {"synthetic", "imagefolder", "imagenet", "generated"}
        ``"synthetic"``: :class:`SyntheticShapes` (kwargs: ``split``,
        ``n``, ``seed``, ``config`` - a ``SyntheticConfig`` or a dict of its fields - ...).
        ``"imagefolder"`` / ``"imagenet"``: :class:`ImageFolderDataset` (kwargs: ``root``,
        ``image_size=224``, ``resize=256``, ``mean``, ``std``, ``class_names``).
        ``"generated"``: :class:`GeneratedImages` (kwargs: ``n``, ``size``, ``seed``).
    part, test_share, part_seed, subset
        A seeded part of the dataset (:class:`DatasetPart`): ``part="mining"`` and
        ``part="test"`` with the same ``test_share`` and ``part_seed`` never share an image
        (e.g. references mined on one part of ImageNet val, the test phase on the other);
        ``subset=n`` keeps ``n`` images of it (e.g. of ImageNet train).
    **kwargs
        Passed to the dataset class.

    Returns
    -------
    Dataset following the protocol of this module.
    """
    dataset = _load_dataset(name, **kwargs)
    if part is None and subset is None:
        return dataset
    return DatasetPart(dataset, part=part, test_share=test_share, seed=part_seed, n=subset)


def _load_dataset(name: str, **kwargs):
    key = str(name).lower()
    if key == "synthetic":
        config = kwargs.pop("config", None)
        if isinstance(config, dict):
            config = SyntheticConfig(**config)
        return SyntheticShapes(config=config, **kwargs)
    if key in ("imagefolder", "imagenet"):
        return ImageFolderDataset(**kwargs)
    if key == "generated":
        return GeneratedImages(**kwargs)
    raise ValueError(f"dataset {name!r} not known; datasets: {', '.join(DATASETS)}")


# --------------------------------------------------------------------------------------------
# the controlled benchmark
# --------------------------------------------------------------------------------------------

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
        """
        i = self._render(i)
        omap = self._maps[i]
        objects = []
        for k, obj in enumerate(self._objects[i]):
            objects.append(dict(obj, name=self.concept_names[obj["concept"]], mask=omap == k))
        return dict(label=objects[0]["concept"], objects=objects)

    def __repr__(self) -> str:
        return (f"SyntheticShapes(split={self.split!r}, n={self.n}, seed={self.seed}, "
                f"n_concepts={self.n_concepts}, image_size={self.config.image_size})")


class GeneratedImages:
    """Random smooth images, generated on the fly (deterministic per index).

    Follows the dataset protocol (``len``, ``ds[i] -> (image, label)``, ``image(i)``,
    ``fingerprint``, ``mean``, ``std``, ``class_names``); used by the benchmark and by tests,
    where real data is neither needed nor available.

    Parameters
    ----------
    n : int
        Number of images.
    size : int
        Height and width in pixels.
    seed : int
        Seed; image ``i`` depends only on ``(seed, i, size)``.
    """

    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    class_names = ["generated"]

    def __init__(self, n: int, size: int = 224, seed: int = 0):
        self.n, self.size, self.seed = int(n), int(size), int(seed)
        self.fingerprint = f"generated-n{self.n}-s{self.size}-seed{self.seed}"

    def __len__(self) -> int:
        return self.n

    def image(self, i: int) -> torch.Tensor:
        """``Tensor[3, size, size]`` in [0, 1]: blobs of colour plus fine texture."""
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} images")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        coarse = torch.rand(1, 3, 6, 6, generator=g)
        img = torch.nn.functional.interpolate(coarse, size=(self.size, self.size), mode="bilinear",
                                              align_corners=False)[0]
        img = img + 0.15 * torch.randn(3, self.size, self.size, generator=g)
        return img.clamp(0, 1)

    def __getitem__(self, i: int):
        x = self.image(i)
        mean = torch.tensor(self.mean)[:, None, None]
        std = torch.tensor(self.std)[:, None, None]
        return (x - mean) / std, 0


# --------------------------------------------------------------------------------------------
# reading any dataset of the protocol
# --------------------------------------------------------------------------------------------
def check_dataset(dataset) -> int:
    """The number of samples; ``ValueError`` for an object without ``len`` or an empty one."""
    try:
        n = len(dataset)
    except TypeError as err:
        raise ValueError("dataset must support len() and indexing ds[i] -> (image, label)") from err
    if n == 0:
        raise ValueError("dataset is empty")
    return n


def load_images(dataset, indices) -> torch.Tensor:
    """``Tensor[len(indices), 3, H, W]``: the model inputs ``dataset[i][0]``."""
    return torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in indices])


def iter_batches(dataset, batch_size: int, num_workers: int = 0):
    """Yield ``(start, images)`` over the whole dataset in order."""
    if num_workers > 0:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                             num_workers=num_workers)
        start = 0
        for x, _ in loader:
            yield start, x
            start += len(x)
    else:
        n = len(dataset)
        for start in range(0, n, batch_size):
            yield start, load_images(dataset, range(start, min(n, start + batch_size)))


# --------------------------------------------------------------------------------------------
# seeded parts of a dataset: a mining part and a disjoint test part, or a subset
# --------------------------------------------------------------------------------------------
class DatasetPart:
    """A seeded part of a dataset (any dataset of the protocol).

    The images are permuted with ``seed``; the first ``round(test_share * len)`` of the
    permutation form the ``"test"`` part and the rest the ``"mining"`` part, so the two parts of
    one dataset never share an image. ``n`` keeps only the first ``n`` of the part (a subset,
    e.g. of ImageNet train for a held-out split). Indices inside the part are in ascending order
    of the dataset's own indices.

    Parameters
    ----------
    dataset : Dataset
    part : {"mining", "test", None}
        ``None``: the whole dataset (then only ``n`` applies).
    test_share : float
        Share of the images in the test part, in (0, 1).
    seed : int
    n : int, optional
        At most this many images of the part.
    """

    def __init__(self, dataset, *, part: str | None = None, test_share: float = 0.1, seed: int = 0,
                 n: int | None = None):
        if part not in (None, "mining", "test"):
            raise ValueError(f"part={part!r} not known; parts: mining, test (or None for all)")
        if not 0 < test_share < 1:
            raise ValueError(f"test_share={test_share} must lie in (0, 1)")
        total = check_dataset(dataset)
        order = np.random.default_rng(seed).permutation(total)
        n_test = int(round(test_share * total))
        chosen = {None: order, "test": order[:n_test], "mining": order[n_test:]}[part]
        if n is not None:
            if n < 1:
                raise ValueError(f"n={n} must be >= 1")
            chosen = chosen[:n]
        if len(chosen) == 0:
            raise ValueError(f"the {part} part of a dataset of {total} images with test_share="
                             f"{test_share} is empty")
        self.dataset, self.part, self.test_share, self.seed, self.n = dataset, part, test_share, seed, n
        self.indices = sorted(int(i) for i in chosen)
        self.mean, self.std = dataset.mean, dataset.std
        self.class_names = getattr(dataset, "class_names", [])

    @property
    def fingerprint(self) -> str | None:
        """The dataset's fingerprint with the part's definition (None if the dataset has none)."""
        base = getattr(self.dataset, "fingerprint", None)
        if base is None:
            return None
        return f"{base}-part-{self.part}-{self.test_share}-{self.seed}-{self.n}"

    def source_index(self, i: int) -> int:
        """The index of item ``i`` in the underlying dataset."""
        return self.indices[i]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]

    def image(self, i: int) -> torch.Tensor:
        return self.dataset.image(self.indices[i])

    #: methods of the underlying dataset whose first argument is an image index
    _INDEXED = ("scene", "annotations", "object_map", "pixels", "label")

    def __getattr__(self, name):
        # the rest of the underlying dataset's API (the benchmark's annotations, scenes, config);
        # methods that take an image index get it translated
        if name.startswith("__") or name in ("dataset", "indices"):
            raise AttributeError(name)
        value = getattr(self.dataset, name)
        if name in self._INDEXED:
            return lambda i, *args, **kwargs: value(self.indices[int(i)], *args, **kwargs)
        return value

    def __repr__(self) -> str:
        return (f"DatasetPart({self.dataset!r}, part={self.part!r}, test_share={self.test_share}, "
                f"seed={self.seed}, n={self.n}, images={len(self)})")


def shared_images(a, b) -> int | None:
    """How many images two datasets share, where that can be known.

    Parts of the same dataset (:class:`DatasetPart`) are compared by their source indices; two
    datasets with equal fingerprints share all their images; otherwise ``None`` (different
    sources, or no fingerprint to tell).
    """
    base = lambda d: d.dataset if isinstance(d, DatasetPart) else d  # noqa: E731
    fa, fb = getattr(base(a), "fingerprint", None), getattr(base(b), "fingerprint", None)
    if fa is None or fb is None or fa != fb:
        return None
    ia = set(a.indices) if isinstance(a, DatasetPart) else set(range(len(a)))
    ib = set(b.indices) if isinstance(b, DatasetPart) else set(range(len(b)))
    return len(ia & ib)
