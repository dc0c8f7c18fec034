"""The attribute reader: CLIP's role on the controlled benchmark, read from the annotations.

Registered as the embedder ``"attributes"`` of :func:`pure_utils.embed.load_embedder`.
"""
from __future__ import annotations

import numpy as np
import torch

from ..embed import Embedder

__all__ = ["AttributeEmbedder", "load_attribute_reader"]


class AttributeEmbedder(Embedder):
    """A perfect reader of object attributes, in CLIP's role on the controlled benchmark.

    It embeds a crop (a box of a dataset image, as cut by the A.1 pipeline) by what the crop
    shows: for each colour and each shape of the dataset, the share of the box's pixels covered
    by visible objects of that colour (shape), and the share of background pixels. Distances
    are graded: two crops of red objects of different shapes are nearer than a red circle and a
    green square, and a crop that shows two objects lies between them. It is *not* CLIP: it
    sees nothing but the annotated colours and shapes (no texture, no context, no semantics).

    Parameters
    ----------
    colours, shapes : sequence of str
        The dataset's colours and shapes (``dataset.config.colours``, ``dataset.config.shapes``).
    """

    input_kind = "boxes"

    def __init__(self, colours, shapes):
        self.colours, self.shapes = list(colours), list(shapes)
        if not self.colours or not self.shapes:
            raise ValueError("the attribute embedder needs the dataset's colours and shapes")
        self.dim = len(self.colours) + len(self.shapes) + 1   # the last slot: background
        self.name, self.pretrained = "attributes", False

    def embed(self, items, *, batch_size: int | None = None, progress: bool = True) -> torch.Tensor:
        """Embed crops given as ``(dataset, index, box)`` triples.

        Parameters
        ----------
        items : sequence of (SyntheticShapes, int, (y0, x0, y1, x1))
            The box (ends exclusive, input pixels) of a dataset image.

        Returns
        -------
        Tensor[n, len(colours) + len(shapes) + 1]
        """
        out = torch.zeros(len(items), self.dim)
        n_col = len(self.colours)
        for row, (dataset, index, box) in enumerate(items):
            if not hasattr(dataset, "object_map"):
                raise TypeError("the attribute embedder reads crops of the controlled benchmark: "
                                "items are (SyntheticShapes, index, box) triples")
            y0, x0, y1, x1 = (int(v) for v in box)
            patch = np.asarray(dataset.object_map(int(index)))[y0:y1, x0:x1]
            objects = dataset.annotations(int(index))["objects"]
            total = max(patch.size, 1)
            counts = np.bincount(patch[patch >= 0].astype(np.int64), minlength=len(objects))
            for k, obj in enumerate(objects):
                if counts[k]:
                    out[row, self.colours.index(obj["colour"])] += counts[k] / total
                    out[row, n_col + self.shapes.index(obj["shape"])] += counts[k] / total
            out[row, -1] = float((patch < 0).sum()) / total
        return out

    def __repr__(self):
        return f"AttributeEmbedder(colours={self.colours}, shapes={self.shapes})"


def load_attribute_reader(*, name="attributes", pretrained=False, device=None, batch_size=None,
                          image_size=None, pretrained_tag=None, config=None,
                          **kwargs) -> AttributeEmbedder:
    """The builder behind ``load_embedder("attributes", colours=..., shapes=...)`` (the other
    arguments of :func:`~pure_utils.embed.load_embedder` do not apply to it)."""
    if set(kwargs) != {"colours", "shapes"}:
        raise ValueError("embedder 'attributes' needs colours= and shapes= (the dataset's "
                         "config.colours and config.shapes); it reads the annotations of the "
                         f"controlled benchmark; got {', '.join(kwargs) or 'neither'}")
    return AttributeEmbedder(**kwargs)
