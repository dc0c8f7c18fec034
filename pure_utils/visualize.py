"""Figures: image grids, UMAP plots, the interactive hover view, and summary lines.

Figures only; the heatmaps and crops they show come from :mod:`pure_utils.crops`.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
import torch.nn.functional as F
from matplotlib.offsetbox import AnnotationBbox, OffsetImage
from PIL import Image

# the crop functions were once defined here; names kept importable from their old home
from .crops import (crop_boxes, crops_from_boxes, display_crops, feature_crops,  # noqa: F401
                    feature_heatmaps, normalised_heatmaps, reference_images)
from .metrics import distance_matrix

__all__ = ["METHOD_ORDER", "method_order", "method_palette", "intra_inter_figure",
           "correlation_figure", "distance_scatter", "crop_steps_figure", "circuit_heatmap", "virtual_activations_figure",
           "image_grid", "panel_figure", "paired_differences_figure", "virtual_neuron_grid", "umap_embedding", "label_colours", "umap_figure", "interactive_umap",
           "HoverImageFigure", "to_pil", "summary_lines"]


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
#: The order in which methods appear in every figure and table: PURE's variants, the activation
#: baselines (``"activations (mean)"``, then ``"activations (peak)"``), the visual embedder's role (DINOv2), the semantic embedder's role (CLIP, the attribute
#: reader), the ground truth, random labels. Each kind has one colour in every figure.
METHOD_ORDER = ("PURE", "activations", "visual", "semantic", "ground truth", "random")
_KIND_COLOURS = {"PURE": "#1f77b4", "activations": "#ff7f0e", "visual": "#2ca02c",
                 "semantic": "#9467bd", "ground truth": "#555555", "random": "#bbbbbb"}
_PURE_SHADES = ("#1f77b4", "#6baed6", "#08519c", "#9ecae1")
#: The activation baselines by name (:data:`pure_utils.circuits.BASELINES`); another name of the
#: kind takes the kind's colour.
_BASELINE_COLOURS = {"activations (mean)": "#ff7f0e", "activations (peak)": "#a6540a"}


def _kind(name: str) -> str:
    name = str(name)
    if name.startswith("PURE"):
        return "PURE"
    if name == "activations" or name.startswith("activations ("):
        return "activations"
    if name in ("ground truth", "random"):
        return name
    if "DINO" in name.upper():
        return "visual"
    return "semantic"   # CLIP and its stand-ins (the attribute reader, a random CLIP)


def method_order(names) -> list:
    """``names`` in the book's order of methods (:data:`METHOD_ORDER`); among PURE's variants
    the paper's Gradient x Activation comes first."""
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda n: (METHOD_ORDER.index(_kind(n)),
                                        0 if str(n) in ("PURE", "PURE (gxa)") else 1, str(n)))


def method_palette(names) -> dict:
    """One colour per method, the same in every figure: name -> colour."""
    out, shade = {}, 0
    for name in method_order(names):
        if _kind(name) == "PURE":
            out[name] = _PURE_SHADES[shade % len(_PURE_SHADES)]
            shade += 1
        else:
            out[name] = _BASELINE_COLOURS.get(str(name), _KIND_COLOURS[_kind(name)])
    return out


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


def panel_figure(panels, *, ncols: int = 6, size: float = 1.6, suptitle: str | None = None):
    """Images with a caption each, in a grid (e.g. the edits of :func:`intervention_panels`).

    Parameters
    ----------
    panels : list of dict, or list of lists of dict
        ``image`` (Tensor[3|4, h, w] in [0, 1]) and ``title``; an ``activation`` is added to the
        caption. A list of lists gives one row per inner list.
    ncols : int
        Panels per row for a flat list.
    size : float
        Inches per panel.
    """
    rows = panels if panels and isinstance(panels[0], list) else [
        panels[i:i + ncols] for i in range(0, len(panels), ncols)]
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(ncols * size, len(rows) * (size + 0.35)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, row in enumerate(rows):
        for ax, panel in zip(axes[r], row):
            ax.imshow(_to_display(panel["image"], None))
            caption = panel["title"]
            if "activation" in panel:
                caption += f"\nactivation {panel['activation']:.2f}"
            ax.set_title(caption, fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
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
    import umap  # heavy (numba compiles on first use): loaded only when a UMAP is drawn

    X = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features,
                   dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 3:
        raise ValueError(f"features need shape [n >= 3, d], got {X.shape}")
    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, X.shape[0] - 1),
                        min_dist=min_dist, random_state=random_state, n_jobs=1)
    return reducer.fit_transform(X)


def label_colours(labels, palette: str = "tab10") -> dict:
    """``{label: colour}`` that follows the label, not its order of appearance: an integer label
    ``c`` gets the palette's colour ``c`` (cycled), so virtual neuron 0 has one colour in every
    row and figure; other labels take the palette's colours in sorted order."""
    values = np.unique(np.asarray(labels))
    colours = sns.color_palette(palette)
    if np.issubdtype(values.dtype, np.integer):
        return {v: colours[int(v) % len(colours)] for v in values}
    return {v: colours[i % len(colours)] for i, v in enumerate(values)}


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

    Each label keeps its colour in every plot (:func:`label_colours`: virtual neuron 0 is always
    the palette's first colour), and smaller clusters are drawn above larger ones.
    """
    coords = np.asarray(coords)
    if ax is None:
        fig, ax = plt.subplots(figsize=(4, 4))
    else:
        fig = ax.figure
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=18, edgecolors="none")
    else:
        labels = np.asarray(labels)
        colours = label_colours(labels, palette)
        values, counts = np.unique(labels, return_counts=True)
        # the smaller a cluster, the higher it is drawn, so that it stays visible
        above = np.empty(len(values), dtype=int)
        above[np.argsort(-counts, kind="stable")] = np.arange(len(values))
        for v, z in zip(values, above):
            keep = labels == v
            ax.scatter(coords[keep, 0], coords[keep, 1], s=18, edgecolors="none",
                       color=colours[v], label=str(v), zorder=2 + int(z))
        ax.legend()
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
    import plotly.graph_objects as go  # optional weight: only the interactive figure needs it

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
        From :func:`pure_utils.study.setting.summarize_frame`: columns ``x``, ``hue``, ``mean``,
        ``ci_low``, ``ci_high``.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    colours = method_palette(summary[hue]) if hue == "method" else {}
    groups = dict(list(summary.groupby(hue, sort=False)))
    for name in (method_order(groups) if hue == "method" else groups):
        d = groups[name].sort_values(x)
        ax.errorbar(d[x], d["mean"], yerr=[d["mean"] - d["ci_low"], d["ci_high"] - d["mean"]],
                    marker="o", capsize=2, label=str(name), color=colours.get(name))
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return ax.figure


def paired_differences_figure(pairs, *, label: str = "model", group: str = "knob",
                              marked=(), ax=None, ylabel: str = "difference", method="a"):
    """Paired differences with their intervals, one point per row, grouped along the x axis.

    Parameters
    ----------
    pairs : pandas.DataFrame
        Rows of :func:`pure_utils.study.tables.paired_table` with a ``label`` column (e.g. the model)
        and a ``group`` column (e.g. the knob); ``a`` names the compared method.
    marked : sequence of str
        Labels drawn with an open marker (e.g. the controls).
    method : str or tuple of str
        The column whose values are the series, one colour each (default ``"a"``), or several
        columns, each series labelled with their values joined by ``" - "`` (``("a", "b")``:
        ``"PURE (gxa) - activations (peak)"``, to show PURE against both baselines).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(max(5.0, 0.8 * pairs[label].nunique() + 2), 3.4))
    order = list(dict.fromkeys(pairs.sort_values(group, kind="stable")[label]))
    x = {name: i for i, name in enumerate(order)}
    columns = [method] if isinstance(method, str) else list(method)
    groups = list(pairs.groupby(columns, sort=False))
    width = 0.6 / max(len(groups), 1)
    for j, (key, d) in enumerate(groups):
        name = " - ".join(map(str, key if isinstance(key, tuple) else (key,)))
        xs = np.array([x[n] for n in d[label]]) - 0.3 + (j + 0.5) * width
        err = [d["mean"] - d.ci_low, d.ci_high - d["mean"]]
        ax.errorbar(xs, d["mean"], yerr=err, fmt="o", capsize=3, label=str(name),
                    color=f"C{j}")
        for xi, (_, r) in zip(xs, d.iterrows()):
            if r[label] in marked:
                ax.plot(xi, r["mean"], "o", mfc="white", mec=f"C{j}", ms=9)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([str(n).replace("family_", "") for n in order], rotation=30, ha="right",
                       fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def circuit_heatmap(R, labels, *, n_channels: int = 40, lower_layer: str = "layer3"):
    """A unit's circuit vectors as a heatmap, rows grouped by virtual neuron (Fig. 2, step 2).

    Parameters
    ----------
    R : Tensor[n_ref, C_lower]
        The unit's circuit vectors.
    labels : array-like[n_ref]
        Virtual neuron of each reference sample.
    n_channels : int
        Columns shown: the lower channels with the largest mean absolute attribution.
    """
    R = torch.as_tensor(R)
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    top = R.abs().mean(0).argsort(descending=True)[:n_channels]
    fig, ax = plt.subplots(figsize=(8, 4))
    sns.heatmap(R[order][:, top].numpy(), cmap="RdBu_r", center=0, ax=ax,
                xticklabels=[int(c) for c in top], yticklabels=False,
                cbar_kws={"label": "normalised attribution"})
    for b in np.cumsum(np.bincount(labels, minlength=int(labels.max()) + 1))[:-1]:
        ax.axhline(b, color="k", lw=1)
    ax.set_xlabel(f"channel of {lower_layer}")
    ax.set_ylabel("reference sample (grouped by virtual neuron)")
    fig.tight_layout()
    return fig


def virtual_activations_figure(virtual):
    """The unit's activation on new samples, credited to their virtual neuron (Fig. 2, step 4).

    Parameters
    ----------
    virtual : ndarray[n, k]
        :meth:`VirtualNeurons.virtual_activations` (samples by the unit's activation).
    """
    fig, ax = plt.subplots(figsize=(6, 2.5))
    for c in range(virtual.shape[1]):
        ax.plot(virtual[:, c], ".", label=f"virtual neuron {c}")
    ax.set_xlabel("held-out sample (by activation of the unit)")
    ax.set_ylabel("virtual activation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def intra_inter_figure(comparison, k: int = 2, *, judge: str = "embedding"):
    """Mean intra- and inter-cluster distances per method at ``k`` (Fig. 4, top left).

    Bars: means over neurons, error bars: standard errors; methods in the book's order.
    """
    d = comparison[comparison.k == k]
    order = method_order(d.method)
    long = d.melt(id_vars=["neuron", "method"], value_vars=["intra", "inter"], var_name="distance",
                  value_name="value")
    fig, ax = plt.subplots(figsize=(8, 3.5))
    sns.barplot(long, x="method", y="value", hue="distance", order=order, errorbar="se", ax=ax,
                palette=["#9ecae1", "#08519c"])
    ax.set_ylabel(f"mean distance ({judge})")
    ax.set_xlabel("")
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    return fig


def correlation_figure(correlation, *, judge: str = "embedding"):
    """Correlation of each method's distances with the judge's, with standard errors (Fig. 4,
    bottom left); methods in the book's order and colours."""
    c = correlation.set_index("method").loc[method_order(correlation.method)]
    colours = method_palette(c.index)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(c.index, c["mean"], yerr=c["sem"], color=[colours[m] for m in c.index], capsize=3)
    ax.set_ylabel(f"Pearson r with {judge} distances")
    ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    return fig


def distance_scatter(reference, spaces: dict, *, judge: str = "embedding"):
    """Pairwise distances of one unit's references: the judge's against each space's."""
    D = distance_matrix(reference)
    iu = np.triu_indices_from(D, 1)
    colours = method_palette(spaces)
    fig, axes = plt.subplots(1, len(spaces), figsize=(4 * len(spaces), 3), squeeze=False)
    for ax, name in zip(axes[0], method_order(spaces)):
        ax.scatter(D[iu], distance_matrix(spaces[name])[iu], s=4, alpha=0.4, color=colours[name])
        ax.set_xlabel(f"{judge} distance")
        ax.set_ylabel(f"{name} distance")
    fig.tight_layout()
    return fig


def crop_steps_figure(images, heatmaps, normalised, boxes, crops, display, titles):
    """Appendix A.1 step by step, one row per sample: image, heatmap, blurred map with the box,
    evaluation crop, display crop."""
    fig, axes = plt.subplots(len(images), 5, figsize=(11, 2.3 * len(images)), squeeze=False)
    for r in range(len(images)):
        y0, x0, y1, x1 = boxes[r].tolist()
        lim = float(heatmaps[r].abs().max()) or 1.0
        panels = [(images[r].permute(1, 2, 0), {}, titles[r]),
                  (heatmaps[r], dict(cmap="bwr", vmin=-lim, vmax=lim), "LRP heatmap"),
                  (normalised[r], dict(cmap="magma", vmin=0, vmax=1), "blurred, normalised"),
                  (crops[r].permute(1, 2, 0), {}, f"crop {y1 - y0}x{x1 - x0}"),
                  (to_pil(display[r]), {}, "display")]
        for ax, (img, kw, title) in zip(axes[r], panels):
            ax.imshow(img, **kw)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        axes[r][2].add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                           edgecolor="cyan", lw=1.5))
    fig.tight_layout()
    return fig
