"""Feature visualisations of (virtual) neurons: relevance heatmaps, crops, image grids, UMAP figures.

A neuron is shown by its reference samples, cropped to the part that makes it fire
(Dreyer et al. 2024, Appendix A.1): an LRP heatmap of channel ``k`` started at the spatial
position of its maximum activation is propagated down to the input, blurred, normalised by its
absolute maximum, and the bounding box of the pixels above a threshold, expanded to a square,
is cut out of the image. The *evaluation* crop (what CLIP / DINOv2 embed) uses a small blur and
no mask; the *display* crop uses a wide blur and dims the irrelevant region.

Boxes are ``(y0, x0, y1, x1)`` with exclusive ends, in input pixels.
"""
from __future__ import annotations

import base64
import io
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from ._progress import tqdm

__all__ = [
    "feature_heatmaps", "crop_boxes", "feature_crops", "display_crops", "reference_images",
    "image_grid", "virtual_neuron_grid", "umap_embedding", "umap_figure", "interactive_umap",
    "HoverImageFigure", "to_pil",
]


# --------------------------------------------------------------------------------------------
# heatmaps
# --------------------------------------------------------------------------------------------
class _StopForward(Exception):
    """Raised by a forward hook once the studied layer has run: later layers are not needed."""


def _make_composite(composite, canonizers, dataset):
    """A zennit composite from a registered name (or the composite itself)."""
    from zennit.composites import COMPOSITES, Composite

    if isinstance(composite, Composite):
        return composite
    if composite not in COMPOSITES:
        raise ValueError(f"composite {composite!r} not known; composites: {', '.join(COMPOSITES)}")
    kwargs = {"canonizers": canonizers}
    if composite == "epsilon_gamma_box":
        # the box rule needs the bounds of the normalised input: pixels 0 and 1 after mean/std
        mean = torch.tensor(getattr(dataset, "mean", (0.0, 0.0, 0.0))).view(1, 3, 1, 1)
        std = torch.tensor(getattr(dataset, "std", (1.0, 1.0, 1.0))).view(1, 3, 1, 1)
        kwargs.update(low=((0 - mean) / std), high=((1 - mean) / std))
    return COMPOSITES[composite](**kwargs)


def feature_heatmaps(model, dataset, references, layer: str, neurons: Sequence[int], *,
                     composite="epsilon_plus_flat", canonizers=None, n_ref: int | None = None,
                     batch_size: int = 32, device=None, progress: bool = True) -> torch.Tensor:
    """LRP heatmaps of channel ``k`` at the position of its maximum, down to the input.

    For every neuron ``k`` in ``neurons`` and each of its reference samples, the relevance of
    the single unit ``A_k^L(row, col)`` at the position stored in ``references.positions`` is
    propagated to the input pixels with a zennit composite; the initial relevance is the
    activation value there, and the relevance is summed over the colour channels.

    Parameters
    ----------
    model : torch.nn.Module
        The network (evaluation mode).
    dataset : Dataset
        Returns ``(Tensor[3, H, W] normalised, label)`` for the indices in ``references``.
    references : References
        ``.indices`` LongTensor[C, n_ref] and ``.positions`` LongTensor[C, n_ref, 2] (row, col
        in the layer's map).
    layer : str
        Module name of layer L (``"layer4"``).
    neurons : sequence of int
        Channels of ``layer`` to visualise.
    composite : str or zennit Composite
        A name registered in ``zennit.composites.COMPOSITES`` (default ``"epsilon_plus_flat"``,
        as in the reference pipeline) or a ready composite (its canonizers are then its own).
    canonizers : list, optional
        zennit canonizers; default ``pure_utils.canonizers.canonizers_for(model)`` (timm ResNet
        blocks). Pass ``[]`` for none.
    n_ref : int, optional
        Use only the first ``n_ref`` reference samples of each neuron (default: all).
    batch_size : int
        Samples per backward pass.
    device : str or torch.device, optional
        Default: the device of the model's parameters.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Tensor[len(neurons), n_ref, H, W]
        Signed relevance per input pixel (float32, on the CPU).
    """
    from .models import get_layer

    module = get_layer(model, layer)
    neurons = [int(k) for k in neurons]
    if hasattr(references, "rows"):
        # References may hold a subset of channels: map channel ids to rows
        rows = [int(r) for r in references.rows(neurons)]
    else:
        n_channels = references.indices.shape[0]
        bad = [k for k in neurons if not 0 <= k < n_channels]
        if bad:
            raise ValueError(f"neurons {bad} out of range; layer {layer!r} has {n_channels} channels")
        rows = neurons
    total_ref = references.indices.shape[1]
    n_ref = total_ref if n_ref is None else int(n_ref)
    if not 1 <= n_ref <= total_ref:
        raise ValueError(f"n_ref={n_ref} not in 1..{total_ref} (the references hold {total_ref})")
    if canonizers is None:
        from .canonizers import canonizers_for

        canonizers = canonizers_for(model)
    comp = _make_composite(composite, canonizers, dataset)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)

    # one job per (neuron, reference sample), processed in flat batches
    # (output row, reference slot, references row, channel)
    jobs = [(j, r, row, k) for j, (row, k) in enumerate(zip(rows, neurons)) for r in range(n_ref)]
    if not jobs:
        return torch.zeros(0, n_ref, 0, 0)
    first = dataset[int(references.indices[rows[0], 0])][0]
    H, W = first.shape[-2:]
    out = torch.zeros(len(neurons), n_ref, H, W)

    captured = {}

    def hook(_module, _inputs, output):
        captured["out"] = output
        raise _StopForward

    was_training = model.training
    model.eval()
    handle = None
    try:
        with comp.context(model) as modified:
            # registered inside the context so that it runs after zennit's own hooks
            handle = module.register_forward_hook(hook)
            starts = range(0, len(jobs), batch_size)
            for s in tqdm(starts, desc=f"heatmaps {layer}", disable=not progress):
                batch = jobs[s:s + batch_size]
                x = torch.stack([dataset[int(references.indices[row, r])][0]
                                 for _, r, row, _ in batch])
                x = x.to(device).requires_grad_(True)
                try:
                    modified(x)
                except _StopForward:
                    pass
                act = captured.pop("out")
                b = torch.arange(len(batch), device=device)
                ch = torch.tensor([k for *_, k in batch], device=device)
                pos = torch.stack([references.positions[row, r] for _, r, row, _ in batch]).to(device)
                init = torch.zeros_like(act)
                init[b, ch, pos[:, 0], pos[:, 1]] = act[b, ch, pos[:, 0], pos[:, 1]].detach()
                (grad,) = torch.autograd.grad(act, x, grad_outputs=init)
                rel = grad.sum(1).detach().cpu()
                for i, (j, r, *_) in enumerate(batch):
                    out[j, r] = rel[i]
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)
    return out


# --------------------------------------------------------------------------------------------
# crops
# --------------------------------------------------------------------------------------------
def _blur(maps: torch.Tensor, kernel: int) -> torch.Tensor:
    """Gaussian blur of ``Tensor[N, H, W]`` (torchvision's sigma for the kernel size)."""
    from torchvision.transforms.functional import gaussian_blur

    if kernel is None or kernel <= 1:
        return maps
    if kernel % 2 == 0:
        raise ValueError(f"blur_kernel={kernel} must be odd (or <= 1 for no blur)")
    # reflect padding needs kernel // 2 < size: shrink the kernel on tiny maps
    limit = 2 * min(maps.shape[-2:]) - 1
    if kernel > limit:
        kernel = limit if limit % 2 else limit - 1
    return gaussian_blur(maps.unsqueeze(1), [kernel, kernel]).squeeze(1)


def _normalised(heatmaps: torch.Tensor, blur_kernel: int) -> torch.Tensor:
    """``|blur(h)| / max |blur(h)|`` per map, ``Tensor[N, H, W]`` (all-zero maps stay zero)."""
    h = _blur(heatmaps.float(), blur_kernel).abs()
    peak = h.flatten(1).amax(1).view(-1, 1, 1)
    return torch.where(peak > 0, h / peak.clamp_min(1e-30), torch.zeros_like(h))


def normalised_heatmaps(heatmaps: torch.Tensor, blur_kernel: int = 5) -> torch.Tensor:
    """The maps the crop boxes are cut from: ``|blur(h)| / max |blur(h)|``, ``Tensor[N, H, W]``."""
    return _normalised(heatmaps.reshape(-1, *heatmaps.shape[-2:]), blur_kernel)


def _square(lo: torch.Tensor, hi: torch.Tensor, side: torch.Tensor, size: int):
    """Grow ``[lo, hi)`` symmetrically to length ``side``, shifted (then clipped) into ``[0, size)``."""
    side = side.clamp(max=size)
    lo = lo - (side - (hi - lo)) // 2
    lo = torch.minimum(lo.clamp(min=0), size - side)
    return lo, lo + side


def crop_boxes(heatmaps: torch.Tensor, *, blur_kernel: int = 5, threshold: float = 0.02,
               square: bool = True) -> torch.Tensor:
    """Bounding boxes of the relevant region of heatmaps (evaluation crop, Appendix A.1).

    Each map is blurred (Gaussian, ``blur_kernel``), made absolute and divided by its maximum;
    the box holds all pixels ``> threshold``. It is then expanded to a square around its centre
    (shifted to stay inside the image; clipped only where the square is larger than the image).
    An all-zero heatmap gives the whole image.

    Parameters
    ----------
    heatmaps : Tensor[..., H, W]
        Signed relevance maps.
    blur_kernel : int
        Odd Gaussian kernel size (``<= 1``: no blur). Default 5.
    threshold : float
        Relative relevance above which a pixel is relevant, in [0, 1). Default 0.02.
    square : bool
        Expand the box to a square (default True).

    Returns
    -------
    LongTensor[..., 4]
        ``(y0, x0, y1, x1)``, ends exclusive.
    """
    if heatmaps.dim() < 2:
        raise ValueError(f"heatmaps need shape [..., H, W], got {tuple(heatmaps.shape)}")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold={threshold} not in [0, 1)")
    lead, (H, W) = heatmaps.shape[:-2], heatmaps.shape[-2:]
    maps = heatmaps.reshape(-1, H, W)
    if maps.shape[0] == 0:
        return torch.zeros(*lead, 4, dtype=torch.long)
    mask = _normalised(maps, blur_kernel) > threshold
    rows, cols = mask.any(2), mask.any(1)                         # [N, H], [N, W]
    empty = ~rows.any(1)
    ar_h, ar_w = torch.arange(H), torch.arange(W)
    y0 = torch.where(rows, ar_h, H).amin(1)
    y1 = torch.where(rows, ar_h, -1).amax(1) + 1
    x0 = torch.where(cols, ar_w, W).amin(1)
    x1 = torch.where(cols, ar_w, -1).amax(1) + 1
    y0, x0 = torch.where(empty, 0, y0), torch.where(empty, 0, x0)
    y1, x1 = torch.where(empty, H, y1), torch.where(empty, W, x1)
    if square:
        side = torch.maximum(y1 - y0, x1 - x0)
        y0, y1 = _square(y0, y1, side, H)
        x0, x1 = _square(x0, x1, side, W)
    return torch.stack([y0, x0, y1, x1], -1).reshape(*lead, 4).long()


def _as_batch(images) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        return list(images)
    return list(images)


def _check_pairs(images, heatmaps):
    if len(images) != heatmaps.shape[0]:
        raise ValueError(f"{len(images)} images but {heatmaps.shape[0]} heatmaps")
    for img in images:
        if img.shape[-2:] != heatmaps.shape[-2:]:
            raise ValueError(f"image size {tuple(img.shape[-2:])} differs from heatmap size "
                             f"{tuple(heatmaps.shape[-2:])}; use dataset.image(i), which is "
                             "aligned with the model input")


def feature_crops(images, heatmaps: torch.Tensor, *, blur_kernel: int = 5,
                  threshold: float = 0.02) -> list[torch.Tensor]:
    """Evaluation crops: the square relevant region of each image, no masking.

    Parameters
    ----------
    images : Tensor[n, 3, H, W] or list of Tensor[3, H, W]
        Images in [0, 1] aligned with the heatmaps (``dataset.image(i)``).
    heatmaps : Tensor[n, H, W]
        Relevance maps from :func:`feature_heatmaps` (flatten neurons x references first).
    blur_kernel, threshold : see :func:`crop_boxes` (defaults 5 and 0.02).

    Returns
    -------
    list of Tensor[3, h, w]
        One crop per image (sizes vary; ``h == w`` unless the image is not square).
    """
    images = _as_batch(images)
    heatmaps = heatmaps.reshape(-1, *heatmaps.shape[-2:])
    _check_pairs(images, heatmaps)
    boxes = crop_boxes(heatmaps, blur_kernel=blur_kernel, threshold=threshold)
    return [img[..., y0:y1, x0:x1] for img, (y0, x0, y1, x1) in zip(images, boxes.tolist())]


def display_crops(images, heatmaps: torch.Tensor, *, blur_kernel: int = 51,
                  threshold: float = 0.01, dim_threshold: float = 0.02, alpha: float = 0.4,
                  outline: bool = True, outline_color=(0.0, 0.0, 0.0)) -> list[torch.Tensor]:
    """Display crops: square relevant region, irrelevant parts dimmed and outlined.

    The heatmap is blurred with a wide kernel; the crop box uses ``threshold``; pixels whose
    normalised relevance is below ``dim_threshold`` get opacity ``alpha``; the border of the
    relevant region is drawn in ``outline_color``.

    Parameters
    ----------
    images : Tensor[n, 3, H, W] or list of Tensor[3, H, W]
        Images in [0, 1] aligned with the heatmaps.
    heatmaps : Tensor[n, H, W]
        Relevance maps.
    blur_kernel : int
        Odd Gaussian kernel size (default 51; shrunk on images smaller than the kernel).
    threshold : float
        Crop threshold (default 0.01).
    dim_threshold : float
        Relevance below which a pixel is dimmed (default 0.02).
    alpha : float
        Opacity of dimmed pixels (default 0.4).
    outline : bool
        Draw the border of the relevant region.
    outline_color : tuple of 3 floats
        RGB of the border.

    Returns
    -------
    list of Tensor[4, h, w]
        RGBA crops in [0, 1] (show them on a white background, or with :func:`image_grid`).
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha} not in [0, 1]")
    images = _as_batch(images)
    heatmaps = heatmaps.reshape(-1, *heatmaps.shape[-2:])
    _check_pairs(images, heatmaps)
    norm = _normalised(heatmaps, blur_kernel)
    boxes = crop_boxes(heatmaps, blur_kernel=blur_kernel, threshold=threshold)
    keep = norm >= dim_threshold                                     # [n, H, W]
    # the region's border: kept pixels with a dropped 4-neighbour (erosion by a 3x3 min-pool)
    eroded = -F.max_pool2d(-keep.float().unsqueeze(1), 3, stride=1, padding=1).squeeze(1)
    border = keep & (eroded < 0.5)
    color = torch.tensor(outline_color, dtype=torch.float32).view(3, 1, 1)
    crops = []
    for img, k, b, (y0, x0, y1, x1) in zip(images, keep, border, boxes.tolist()):
        rgb = img[:3].float().clone()
        a = torch.where(k, 1.0, alpha).unsqueeze(0)
        if outline:
            rgb = torch.where(b.unsqueeze(0), color, rgb)
            a = torch.where(b.unsqueeze(0), 1.0, a)
        crops.append(torch.cat([rgb, a], 0)[:, y0:y1, x0:x1])
    return crops


def reference_images(dataset, references, neuron: int, n_ref: int | None = None) -> torch.Tensor:
    """The reference samples of ``neuron`` as images in [0, 1], ``Tensor[n_ref, 3, H, W]``."""
    row = int(references.rows([neuron])[0]) if hasattr(references, "rows") else int(neuron)
    idx = references.indices[row]
    idx = idx if n_ref is None else idx[:n_ref]
    return torch.stack([dataset.image(int(i)) for i in idx])


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def _to_display(img: torch.Tensor, size: int | None, background: float = 1.0) -> np.ndarray:
    """``Tensor[3|4, h, w]`` -> ``ndarray[size, size, 3]`` (RGBA composited on white)."""
    img = img.detach().float().cpu()
    if size is not None and img.shape[-2:] != (size, size):
        img = F.interpolate(img.unsqueeze(0), size=(size, size), mode="bilinear",
                            align_corners=False, antialias=True).squeeze(0)
    if img.shape[0] == 4:
        img = img[:3] * img[3:] + background * (1 - img[3:])
    return img.clamp(0, 1).permute(1, 2, 0).numpy()


def to_pil(img: torch.Tensor, size: int | None = None):
    """A ``Tensor[3|4, h, w]`` in [0, 1] as a PIL image (RGBA on white), optionally resized."""
    from PIL import Image

    return Image.fromarray((_to_display(img, size) * 255).round().astype(np.uint8))


def image_grid(images, *, ncols: int = 8, size: int = 64, titles=None, row_labels=None,
               ax=None, pad: int = 2):
    """Show images in a grid.

    Parameters
    ----------
    images : list of Tensor[3|4, h, w] or list of lists (rows)
        Images in [0, 1]; RGBA images (display crops) are shown on white. A list of lists
        gives one row per inner list (e.g. one per virtual neuron).
    ncols : int
        Columns for a flat list.
    size : int
        Each image is resized to ``size x size`` pixels.
    titles : list of str, optional
        Title above the grid per row (``row_labels`` is an alias kept for readability).
    ax : matplotlib Axes, optional
        Draw into this axes (default: a new figure).
    pad : int
        White pixels between images.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    rows = images if images and isinstance(images[0], (list, tuple)) else [
        list(images[i:i + ncols]) for i in range(0, len(images), ncols)]
    labels = row_labels if row_labels is not None else titles
    ncols = max((len(r) for r in rows), default=1)
    cell = size + pad
    canvas = np.ones((len(rows) * cell + pad, ncols * cell + pad, 3))
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            canvas[pad + i * cell: pad + i * cell + size, pad + j * cell: pad + j * cell + size] = \
                _to_display(img, size)
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(2.0, ncols * 0.9), max(1.0, len(rows) * 0.9)))
    else:
        fig = ax.figure
    ax.imshow(canvas)
    ax.set_xticks([])
    if labels is not None:
        ax.set_yticks([pad + i * cell + size / 2 for i in range(len(rows))])
        ax.set_yticklabels(list(labels))
    else:
        ax.set_yticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    return fig


def virtual_neuron_grid(crops, labels, *, per_cluster: int = 8, size: int = 64, ax=None,
                        names=None):
    """Rows of crops, one row per virtual neuron (cluster), in reference order.

    Parameters
    ----------
    crops : list of Tensor[3|4, h, w]
        Crops of one neuron's reference samples (most activating first).
    labels : array-like[n]
        Cluster (virtual neuron) of each crop.
    per_cluster : int
        Crops shown per row.
    names : list of str, optional
        Row labels (default ``"virtual neuron c (n=...)"``).
    """
    labels = np.asarray(labels)
    if len(labels) != len(crops):
        raise ValueError(f"{len(crops)} crops but {len(labels)} labels")
    clusters = sorted(set(labels.tolist()))
    rows = [[crops[i] for i in np.flatnonzero(labels == c)[:per_cluster]] for c in clusters]
    if names is None:
        names = [f"virtual neuron {c} (n={int((labels == c).sum())})" for c in clusters]
    return image_grid(rows, size=size, row_labels=names, ax=ax)


def umap_embedding(features, *, n_neighbors: int = 15, min_dist: float = 0.1,
                   random_state: int = 0) -> np.ndarray:
    """2-D UMAP of ``features`` (``Tensor|ndarray[n, d]``) -> ``ndarray[n, 2]``.

    ``n_neighbors`` is reduced to ``n - 1`` for small ``n``.
    """
    import umap

    X = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features,
                   dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 3:
        raise ValueError(f"features need shape [n >= 3, d], got {X.shape}")
    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, X.shape[0] - 1),
                        min_dist=min_dist, random_state=random_state, n_jobs=1)
    return reducer.fit_transform(X)


def umap_figure(coords, labels=None, *, images=None, n_thumbnails: int = 0, zoom: float = 0.5,
                ax=None, title: str | None = None, palette: str = "tab10"):
    """Scatter plot of a 2-D embedding coloured by cluster, optionally with image thumbnails.

    Parameters
    ----------
    coords : ndarray[n, 2]
        From :func:`umap_embedding`.
    labels : array-like[n], optional
        Cluster of each point (colour).
    images : list of Tensor[3|4, h, w], optional
        Thumbnails; the first ``n_thumbnails`` points get one drawn at their position.
    zoom : float
        Thumbnail scale (matplotlib ``OffsetImage`` zoom of a 64 px image).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    coords = np.asarray(coords)
    if ax is None:
        fig, ax = plt.subplots(figsize=(4, 4))
    else:
        fig = ax.figure
    hue = None if labels is None else [str(v) for v in np.asarray(labels)]
    sns.scatterplot(x=coords[:, 0], y=coords[:, 1], hue=hue, palette=palette if hue else None,
                    ax=ax, s=18, edgecolor="none")
    if images is not None:
        for i in range(min(n_thumbnails, len(images))):
            box = AnnotationBbox(OffsetImage(_to_display(images[i], 64), zoom=zoom),
                                 coords[i], frameon=False)
            ax.add_artist(box)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    if title:
        ax.set_title(title)
    return fig


def _thumbnail_uri(img: torch.Tensor, size: int) -> str:
    buf = io.BytesIO()
    to_pil(img, size).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class HoverImageFigure:
    """A plotly scatter whose hovered point shows its image beside the plot.

    Plotly hover labels cannot hold images, so each point carries its thumbnail (a base64
    PNG) in ``customdata`` and a small script shows it in an ``<img>`` next to the plot.
    The HTML is self-contained (plotly.js inlined by default), so it works offline, in
    Jupyter and in a Jupyter Book page.

    Attributes
    ----------
    figure : plotly.graph_objects.Figure
        The scatter itself (``customdata[:, 0]`` holds the thumbnails).
    """

    def __init__(self, figure, *, include_plotlyjs=True, thumbnail_size: int = 96):
        self.figure = figure
        self.include_plotlyjs = include_plotlyjs
        self.thumbnail_size = thumbnail_size

    def to_html(self, full_html: bool = False) -> str:
        """HTML of the plot and its hover image (``full_html=True``: a standalone page)."""
        s = self.thumbnail_size
        script = (
            "var gd = document.getElementById('{plot_id}');"
            "var img = document.getElementById('{plot_id}-thumb');"
            "gd.on('plotly_hover', function(ev) {"
            "  var p = ev.points[0]; var cd = p.customdata;"
            "  img.src = Array.isArray(cd) ? cd[0] : cd; img.style.visibility = 'visible'; });"
        )
        body = self.figure.to_html(full_html=False, include_plotlyjs=self.include_plotlyjs,
                                   post_script=script)
        # the plot's div id is only known after rendering: find it to name the image
        start = body.find('id="') + 4
        plot_id = body[start:body.find('"', start)]
        html = (f'<div style="display:flex;align-items:center;gap:8px">'
                f'<div style="flex:1">{body}</div>'
                f'<img id="{plot_id}-thumb" width="{s}" height="{s}" '
                f'style="visibility:hidden;image-rendering:pixelated;border:1px solid #ccc"/></div>')
        if full_html:
            html = f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{html}</body></html>"
        return html

    def write_html(self, path) -> None:
        """Write a standalone HTML page."""
        from pathlib import Path

        Path(path).write_text(self.to_html(full_html=True), encoding="utf-8")

    def _repr_html_(self) -> str:
        return self.to_html()


def interactive_umap(coords, images, labels=None, *, hover_text=None, title: str = "",
                     thumbnail_size: int = 96, include_plotlyjs=True) -> HoverImageFigure:
    """Interactive UMAP scatter: hovering a point shows its image.

    Parameters
    ----------
    coords : ndarray[n, 2]
        2-D embedding.
    images : list of Tensor[3|4, h, w]
        One image (crop) per point, in [0, 1].
    labels : array-like[n], optional
        Cluster of each point (one trace and colour per cluster).
    hover_text : list of str, optional
        Extra text per point (e.g. the dataset index).
    thumbnail_size : int
        Pixel size of the hover image.
    include_plotlyjs : bool or str
        ``True`` inlines plotly.js (works offline, ~4 MB); ``"cdn"`` links it.

    Returns
    -------
    HoverImageFigure
        Displays itself in Jupyter; ``.write_html(path)`` saves a standalone page.
    """
    import plotly.graph_objects as go

    coords = np.asarray(coords)
    n = coords.shape[0]
    if len(images) != n:
        raise ValueError(f"{n} points but {len(images)} images")
    labels = np.zeros(n, dtype=int) if labels is None else np.asarray(labels)
    hover_text = [f"#{i}" for i in range(n)] if hover_text is None else list(hover_text)
    uris = [_thumbnail_uri(img, thumbnail_size) for img in images]
    fig = go.Figure()
    for c in sorted(set(labels.tolist())):
        sel = np.flatnonzero(labels == c)
        fig.add_trace(go.Scatter(
            x=coords[sel, 0], y=coords[sel, 1], mode="markers", name=f"cluster {c}",
            customdata=[[uris[i]] for i in sel], text=[hover_text[i] for i in sel],
            hovertemplate="%{text}<extra>cluster " + str(c) + "</extra>"))
    fig.update_layout(title=title, width=560, height=460, xaxis_title="UMAP 1",
                      yaxis_title="UMAP 2", template="simple_white")
    return HoverImageFigure(fig, include_plotlyjs=include_plotlyjs, thumbnail_size=thumbnail_size)


def summary_lines(summary, *, x: str = "k", hue: str = "method", ax=None, ylabel: str = "mean",
                  title: str | None = None):
    """Means with their intervals as one line per group (e.g. per method over ``k``).

    Parameters
    ----------
    summary : pandas.DataFrame
        From :func:`pure_utils.experiments.summarize_frame`: columns ``x``, ``hue``, ``mean``,
        ``ci_low``, ``ci_high``.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    for name, d in summary.groupby(hue, sort=False):
        d = d.sort_values(x)
        ax.errorbar(d[x], d["mean"], yerr=[d["mean"] - d["ci_low"], d["ci_high"] - d["mean"]],
                    marker="o", capsize=2, label=str(name))
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return ax.figure
