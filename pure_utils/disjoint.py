"""Whether a test set holds images of the reference set, in any guise: compared by file content.

PURE's test phase assigns *new* samples to the virtual neurons; a sample that was among the
reference samples would flatter it. Parts of one dataset are disjoint by construction
(:class:`pure_utils.data.DatasetPart`), but the same images can come back in other guises: the
same folder read with another resize (another fingerprint), a byte-identical copy under
another path, the same file twice in one folder (split into the mining and the test part).
:func:`check_disjoint` compares image folders by the SHA-256 of their files' bytes
(:meth:`pure_utils.data.ImageFolderDataset.file_digest`), and reports how many it compared.
"""
from __future__ import annotations

from typing import NamedTuple

from .data import DatasetPart, ImageFolderDataset, shared_images

__all__ = ["Overlap", "check_disjoint"]


class Overlap(NamedTuple):
    """What :func:`check_disjoint` compared: ``shared`` test images seen among the references."""

    shared: int
    test: int       # test images compared (0: nothing could be compared)
    reference: int  # reference images compared
    by: str         # "file content (SHA-256 of the bytes)", "dataset index" or why not compared
    examples: tuple = ()  # (test image, reference image) pairs, at most 5

    def __str__(self) -> str:
        if not self.test:
            return f"not compared: {self.by}"
        return (f"compared {self.test} test images with {self.reference} reference images by "
                f"{self.by}: {self.shared} shared")


def _files(dataset):
    """``(ImageFolderDataset, its sample indices)`` behind a dataset, or ``None`` without files."""
    if isinstance(dataset, ImageFolderDataset):
        return dataset, list(range(len(dataset)))
    if isinstance(dataset, DatasetPart):
        inner = _files(dataset.dataset)
        return None if inner is None else (inner[0], [inner[1][i] for i in dataset.indices])
    return None


def _overlap(test, reference) -> Overlap:
    a, b = _files(test), _files(reference)
    if a is None or b is None:
        n = shared_images(test, reference)
        if n is None:
            return Overlap(0, 0, 0, "the datasets have no files, and other sources (fingerprints)")
        return Overlap(n, len(test), len(reference), "dataset index")
    seen = {}
    for i in b[1]:
        seen.setdefault(b[0].file_digest(i), i)
    pairs = [(i, seen[d]) for i in a[1] if (d := a[0].file_digest(i)) in seen]
    examples = tuple(f"{a[0].samples[i][0]} = {b[0].samples[j][0]}" for i, j in pairs[:5])
    return Overlap(len(pairs), len(a[1]), len(b[1]), "file content (SHA-256 of the bytes)",
                   examples)


def check_disjoint(test, reference, what: str = "the test set") -> Overlap:
    """Refuse test images that are among the reference images, in any guise.

    Image folders (and parts of them) are compared by the SHA-256 of their files' bytes, so the
    same folder read with another resize, a byte-identical copy under another path, and
    duplicate files split into the mining and the test part are all caught. Datasets without
    files are compared as :func:`shared_images` does (parts of one dataset by index, equal
    fingerprints); other sources without files cannot be compared (the result says so).

    Parameters
    ----------
    test, reference : Dataset
    what : str
        How the error names the test set (e.g. ``"profile 'paper': the held-out split"``).

    Returns
    -------
    Overlap
        How many images were compared, and how (``str()`` gives a sentence).

    Raises
    ------
    ValueError
        When they share an image: how many, the first pairs of files, and how they were compared.
    """
    overlap = _overlap(test, reference)
    if overlap.shared:
        pairs = f" ({'; '.join(overlap.examples)})" if overlap.examples else ""
        raise ValueError(f"{what} ({test!r}) shares {overlap.shared} images with the reference set "
                         f"({reference!r}){pairs}; {overlap}. The test phase needs samples that "
                         "played no part in the preparation (use part: mining / part: test of "
                         "one dataset, or another split, without copies of its images)")
    return overlap
