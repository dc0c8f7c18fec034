"""Datasets: the protocol every stage reads images through, and the datasets that follow it.

Every dataset returned by :func:`load_dataset` follows one protocol:

- ``len(ds)``; ``ds[i] -> (Tensor[3, H, W] normalised, int label)``;
- ``ds.image(i) -> Tensor[3, H, W]`` in [0, 1], spatially aligned with the model input (after
  resize and crop, before normalisation), used for visualisations;
- ``ds.fingerprint`` (a stable id for cache keys: it must change whenever any ``ds[i]`` would),
  ``ds.mean``, ``ds.std`` (3 floats each), ``ds.class_names``.

Datasets: the controlled benchmark (:class:`SyntheticShapes`, over the generator of
:mod:`pure_utils.shapes.generator`), image folders such as ImageNet val (:class:`ImageFolderDataset`),
random smooth images for tests and benchmarks (:class:`GeneratedImages`) and seeded parts of
any of them (:class:`DatasetPart`). :func:`check_dataset`, :func:`load_images`,
:func:`iter_samples`, :func:`iter_images` and :func:`iter_batches` are how the engine reads any of
them (in DataLoader worker processes that read ahead, when asked for).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import functional as F

from ._images import BACKGROUND, read_image
from .registry import Registry

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "DATASETS", "FINGERPRINTS",
           "ImageFolderDataset", "GeneratedImages", "DatasetPart",
           "UnreadableImageError", "shared_images", "BACKGROUND", "load_dataset", "check_dataset",
           "load_images", "iter_samples", "iter_images", "iter_batches"]

#: ImageNet normalisation, as used by the timm ``*.a1_in1k`` weights and the PURE paper.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: File endings read by :class:`ImageFolderDataset` (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")

#: Dataset names of :func:`load_dataset` (``DATASETS.register(name, builder)`` adds one). The
#: controlled benchmark is named by path: the engine does not import :mod:`pure_utils.shapes`.
DATASETS = Registry("dataset")
DATASETS.register("synthetic", "pure_utils.shapes.dataset:load_synthetic")
#: How an image folder's fingerprint sees its files (see :class:`ImageFolderDataset`).
FINGERPRINTS = ("stat", "content")


class UnreadableImageError(OSError):
    """An image of a dataset cannot be read (a damaged or truncated file, a header the decoder
    refuses, values outside the range of the image's mode); names the file."""


#: SHA-256 of image files' bytes, by path, with the (size, mtime, inode) they had: every
#: dataset of a process shares it, so that a file is read once however many datasets see it.
_FILE_DIGESTS: dict = {}


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images of a folder, resized and centre-cropped as for ImageNet evaluation.

    Files are read with the true range of their mode, EXIF orientation and transparency over
    white (:mod:`pure_utils._images`), or raise :class:`UnreadableImageError` naming them.

    Parameters
    ----------
    root : path
        Either a folder of class sub-folders (``root/<class>/<image>``, the ImageNet val
        layout; sub-folders sorted by name give labels 0, 1, ...) or a flat folder of images
        (every label -1). Image files lying beside class folders are not read (their class is
        unknown); a warning names them.
    image_size : int
        Side of the square centre crop (default 224).
    resize : int
        The shorter image side is first resized to this (default 256), as in the paper's
        pipeline (Resize 256, CenterCrop 224).
    mean, std : tuple of 3 floats
        Normalisation (default ImageNet).
    class_names : list of str, optional
        Readable names for the class folders (default: the folder names).
    fingerprint : {"stat", "content"}
        What the cache key sees of the files. ``"stat"`` (default): every file's full resolved
        path, size and modification time (ns), checked at each use (cheap: no file is read),
        so another folder or an image replaced in place gives another key. ``"content"``: every
        file's relative path and the SHA-256 of its bytes, so that copies of the same images
        on other machines share entries of a shared cache (each file is read once per process,
        and again only when its size or modification time changes).
    exif : bool
        Apply each file's EXIF orientation (default), or read the rows as stored (as
        torchvision's loader does).

    Raises
    ------
    FileNotFoundError
        When ``root`` is missing or holds no image; the message says how to get ImageNet val.
    """

    def __init__(self, root, image_size: int = 224, resize: int = 256, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, class_names=None, fingerprint: str = "stat", exif: bool = True):
        if root is None:
            raise FileNotFoundError(_missing_message(None))
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(_missing_message(self.root))
        if image_size < 1 or resize < image_size:
            raise ValueError(f"image_size={image_size}, resize={resize} not accepted; use "
                             "1 <= image_size <= resize")
        if fingerprint not in FINGERPRINTS:
            raise ValueError(f"fingerprint={fingerprint!r} not known; use one of "
                             f"{', '.join(map(repr, FINGERPRINTS))}")
        self.fingerprint_mode = fingerprint
        self._resolved_paths: list | None = None  # symlinks resolved on first use
        self._digests = _FILE_DIGESTS  # path -> (stat signature, SHA-256 of the bytes)
        self.exif = bool(exif)
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
            loose = [p.name for p in images_in(self.root)]
            if loose:
                warnings.warn(f"{len(loose)} image file(s) beside the class folders of "
                              f"{self.root}: {', '.join(loose[:10])}"
                              f"{', ...' if len(loose) > 10 else ''}; they "
                              "are not read (their class is unknown): move them into a class "
                              "folder", stacklevel=2)
        else:
            self.samples = [(p, -1) for p in images_in(self.root)]
            self.folder_names = []
        if not self.samples:
            raise FileNotFoundError(_empty_message(self.root, folders))
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
        """Id of the tensors: the files (see ``fingerprint=``), labels, sizes and normalisation."""
        h = hashlib.sha256(self.fingerprint_mode.encode())
        for i, (path, label) in enumerate(self.samples):
            st = self._stat(i)
            rel = path.relative_to(self.root)
            if self.fingerprint_mode == "stat":
                h.update(f"{self._resolved(i)}:{st.st_size}:{st.st_mtime_ns}:{label};".encode())
            else:
                h.update(f"{rel}:{self._content_digest(path, st)}:{label};".encode())
        return (f"imagefolder-{self.root.resolve().name}-{self.fingerprint_mode}-{h.hexdigest()[:16]}-"
                f"n{len(self)}-{self.resize}-{self.image_size}-{_digest(self.mean + self.std)}"
                + ("" if self.exif else "-stored"))

    def lineage(self) -> str:
        """The dataset's identity but for its list of files (equal after a file is deleted)."""
        where = self.root.resolve() if self.fingerprint_mode == "stat" else self.root.resolve().name
        return (f"imagefolder-{where}-{self.fingerprint_mode}-{self.resize}-{self.image_size}-"
                f"{_digest(self.mean + self.std)}-exif{int(self.exif)}")

    def sample_ids(self) -> list[str]:
        """Every sample's file as the fingerprint sees it, and its label (a gone file too)."""
        ids = []
        for i, (path, label) in enumerate(self.samples):
            try:
                st = path.stat()
            except FileNotFoundError:
                ids.append(f"{path}:gone:{label}")
                continue
            if self.fingerprint_mode == "stat":
                ids.append(f"{self._resolved(i)}:{st.st_size}:{st.st_mtime_ns}:{label}")
            else:
                digest = self._content_digest(path, st)
                ids.append(f"{path.relative_to(self.root)}:{digest}:{label}")
        return ids

    def file_digest(self, i: int) -> str:
        """SHA-256 of the bytes of image ``i``'s file (read once per process and file version)."""
        return self._content_digest(self.samples[i][0], self._stat(i))

    def _resolved(self, i: int) -> Path:
        if self._resolved_paths is None:
            self._resolved_paths = [p.resolve() for p, _ in self.samples]
        return self._resolved_paths[i]

    def _stat(self, i: int) -> os.stat_result:
        path = self.samples[i][0]
        try:
            return path.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"image {path} (index {i}) is gone since the dataset was "
                                    "created; create the dataset again") from None

    def _content_digest(self, path: Path, st: os.stat_result) -> str:
        signature = (st.st_size, st.st_mtime_ns, st.st_ino)
        known = self._digests.get(path)
        if known is None or known[0] != signature:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            known = self._digests[path] = (signature, h.hexdigest())
        return known[1]

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` resized and centre-cropped, Tensor[3, image_size, image_size] in [0, 1]."""
        path, _ = self.samples[i]
        try:
            img = read_image(path, exif=self.exif)
        except Exception as err:  # a damaged file: PIL raises OSError, ValueError, SyntaxError,
            # EOFError, DecompressionBombError, zlib and struct errors...
            raise UnreadableImageError(f"image {path} (index {i}) cannot be read: "
                                       f"{type(err).__name__}: {err}") from err
        img = F.resize(img, self.resize, interpolation=F.InterpolationMode.BILINEAR)
        img = F.center_crop(img, [self.image_size, self.image_size])
        x = F.to_tensor(img)  # "F" images (high bit depth): one channel of floats in [0, 1]
        return x if x.shape[0] == 3 else x.expand(3, -1, -1).clone()

    def __getitem__(self, i: int):
        x = self.image(i)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std, self.samples[i][1]

    def __repr__(self) -> str:
        return (f"ImageFolderDataset(root={str(self.root)!r}, n={len(self)}, "
                f"classes={len(self.class_names)}, image_size={self.image_size}, "
                f"fingerprint={self.fingerprint_mode!r})")


_HOW_TO_GET_IMAGENET = (
    "For the paper's setting, download the ImageNet (ILSVRC2012) validation images from "
    "https://image-net.org (free registration), arrange them in one sub-folder per class "
    "(e.g. with the valprep.sh script that circulates with the PyTorch ImageNet example, "
    "giving val/n01440764/*.JPEG, ...), and set dataset_kwargs.root in "
    "notebooks/profiles/paper.yaml (or pass root=... to load_dataset) to that val folder. "
    "Without ImageNet, use the default offline profile (dataset: synthetic).")


def _empty_message(root: Path, folders: list) -> str:
    """What an existing folder without images holds, and where images are looked for."""
    where = [root] + list(folders)
    others = sorted({p.suffix.lower() or p.name for f in where for p in f.iterdir()
                     if p.is_file() and not p.name.startswith(".")})
    held = (f"{len(folders)} class sub-folder(s) without images" if folders else "no class sub-folder")
    found = f"; files found: {', '.join(others[:10])}" if others else "; no files"
    return (f"no images in the image folder {root}: it holds {held}{found}. Images are files ending "
            f"in {', '.join(IMAGE_EXTENSIONS)} (any case), either in one sub-folder per class "
            f"({root}/<class>/<image>) or directly in {root}; give root= the folder that holds them")


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
        ``"synthetic"``: ``pure_utils.shapes.SyntheticShapes`` (kwargs: ``split``,
        ``n``, ``seed``, ``config`` - a ``SyntheticConfig`` or a dict of its fields - ...).
        ``"imagefolder"`` / ``"imagenet"``: :class:`ImageFolderDataset` (kwargs: ``root``,
        ``image_size=224``, ``resize=256``, ``mean``, ``std``, ``class_names``,
        ``fingerprint="stat"``).
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
    return DATASETS.get(name)(**kwargs)


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

    @property
    def fingerprint(self) -> str:
        """Id of the tensors: number, size, seed and normalisation."""
        return (f"generated-n{self.n}-s{self.size}-seed{self.seed}-"
                f"{_digest(tuple(self.mean) + tuple(self.std))}")

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


class _Guarded(torch.utils.data.Dataset):
    """Sample ``indices[j]`` as ``(i, image, None)``, or ``(i, None, why)`` if reading it fails."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j):
        i = self.indices[j]
        try:
            return i, torch.as_tensor(self.dataset[i][0]), None
        except Exception as err:  # any error reading one sample: a decoder's ValueError,
            # SyntaxError or EOFError as much as an OSError (a bug shows in the reason)
            why = str(err) if isinstance(err, UnreadableImageError) else (
                f"dataset[{i}] cannot be read: {type(err).__name__}: {err}")
            return i, None, why


def _collate(batch):
    """``(indices read, Tensor[n, 3, H, W] or None, [(index, why), ...])``, stacked where the
    batch is read (in a worker process when there are workers, so that pinning and the copy to a
    GPU can start from one tensor)."""
    good = [(i, x) for i, x, why in batch if why is None]
    if len({tuple(x.shape) for _, x in good}) > 1:
        raise ValueError("the images of a batch differ in size: " + ", ".join(
            f"dataset[{i}] {tuple(x.shape)}" for i, x in good) + "; every image must have the "
            "model's input size (resize and crop them in the dataset)")
    images = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], images, [(i, why) for i, _, why in batch if why is not None]


def iter_samples(dataset, batch_size: int, num_workers: int = 0, *, start: int = 0,
                 stop: int | None = None, skip_unreadable: bool = False,
                 pin_memory: bool = False):
    """Yield ``(indices, images, unreadable)`` over ``dataset[start:stop]`` in order.

    Parameters
    ----------
    dataset : Dataset
    batch_size : int
        Samples per batch (readable or not).
    num_workers : int
        DataLoader worker processes (0: read in this process); they read ahead while the
        caller computes.
    start, stop : int
        The range of indices (``stop``: default the end).
    skip_unreadable : bool
        ``False``: a sample whose reading raises any error (a damaged image file: an
        ``OSError``, a decoder's ``ValueError``, ``SyntaxError``, ``EOFError``...) raises
        :class:`UnreadableImageError` naming it and the error. ``True``: it is left out of
        ``images`` and listed in ``unreadable``.
    pin_memory : bool
        Put the batches in page-locked memory (with workers), so that a copy to a GPU with
        ``non_blocking=True`` overlaps with computing.

    Yields
    ------
    indices : list of int
        Dataset indices of the rows of ``images``.
    images : Tensor[len(indices), 3, H, W] or None
        ``None`` when no sample of the batch could be read.
    unreadable : list of (int, str)
        Indices left out, with the reason.
    """
    order = list(range(start, len(dataset) if stop is None else min(stop, len(dataset))))
    reader = _Guarded(dataset, order)
    if num_workers > 0:
        batches = torch.utils.data.DataLoader(reader, batch_size=batch_size, shuffle=False,
                                              num_workers=num_workers, collate_fn=_collate,
                                              pin_memory=pin_memory)
    else:
        batches = (_collate([reader[j] for j in range(s, min(len(order), s + batch_size))])
                   for s in range(0, len(order), batch_size))
    for kept, images, bad in batches:
        if bad and not skip_unreadable:
            raise UnreadableImageError(bad[0][1])
        yield kept, images, bad


class _Inputs(torch.utils.data.Dataset):
    """Batch ``j`` of given indices as one ``Tensor[n, 3, H, W]`` of model inputs."""

    def __init__(self, dataset, batches):
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, j):
        return load_images(self.dataset, self.batches[j])


def iter_images(dataset, batches, num_workers: int = 0, *, pin_memory: bool = False):
    """Yield the model inputs of each batch of indices, ``Tensor[len(batch), 3, H, W]``, in order.

    Parameters
    ----------
    dataset : Dataset
    batches : list of list of int
        Dataset indices, one list per batch (e.g. the reference images of a stage, in the order
        the stage computes them).
    num_workers : int
        DataLoader worker processes that read ahead (0: read when asked, in this process).
    pin_memory : bool
        Page-locked batches (with workers), for ``non_blocking`` copies to a GPU.
    """
    batches = [[int(i) for i in b] for b in batches]
    if num_workers <= 0:
        return (load_images(dataset, b) for b in batches)
    loader = torch.utils.data.DataLoader(_Inputs(dataset, batches), batch_size=None,
                                         shuffle=False, num_workers=num_workers,
                                         pin_memory=pin_memory)
    return iter(loader)


def iter_batches(dataset, batch_size: int, num_workers: int = 0):
    """Yield ``(start, images)`` over the whole dataset in order (see :func:`iter_samples`)."""
    for indices, images, _ in iter_samples(dataset, batch_size, num_workers):
        yield indices[0], images


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



DATASETS.register("imagefolder", ImageFolderDataset)
DATASETS.register("imagenet", ImageFolderDataset)
DATASETS.register("generated", GeneratedImages)
