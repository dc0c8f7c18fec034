"""Feature visualisations of (virtual) neurons: relevance heatmaps, crop boxes and crops.

A neuron is shown by its reference samples, cropped to the part that makes it fire
(Dreyer et al. 2024, Appendix A.1): an LRP heatmap of channel ``k`` started at the spatial
position of its maximum activation is propagated down to the input, blurred, normalised by its
absolute maximum, and the bounding box of the pixels above a threshold, expanded to a square,
is cut out of the image. The *evaluation* crop (what CLIP / DINOv2 embed) uses a small blur and
no mask; the *display* crop uses a wide blur and dims the irrelevant region.

Where LRP is not correct (architectures the canonizers do not cover, such as ConvNeXt and ViTs;
:func:`pure_utils.canonizers.lrp_support`), ``composite="gradient_x_input"`` gives the heatmap
of an input-gradient method instead: the gradient of the same unit times the input. On a ViT's
token layer the map is a map over patches: the relevance of each patch, spread evenly over its
pixels (the patch map upsampled to the image), so the crop boxes are whole patches in input
pixels.

Boxes are ``(y0, x0, y1, x1)`` with exclusive ends, in input pixels.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from ._progress import tqdm
from .canonizers import LRPApproximationWarning, composite_for, lrp_support
from .data import iter_images, load_images
from .distributed import is_distributed, is_main, shard_range, sum_across_ranks
from .embed import ImageEmbedder, preprocess
from .layers import eval_mode, get_layer, patch_map, resolve_layout, run_model, stop_after
from .models import resolve_device
from .references import check_references, index_tensor, neuron_ids

__all__ = ["feature_heatmaps", "normalised_heatmaps", "crop_boxes", "feature_crops",
           "display_crops", "reference_images", "crops_from_boxes", "GRADIENT_X_INPUT", "reference_boxes", "embed_boxes"]


#: The ``composite`` of :func:`feature_heatmaps` that uses no LRP: gradient times input.
GRADIENT_X_INPUT = "gradient_x_input"


# --------------------------------------------------------------------------------------------
# heatmaps
# --------------------------------------------------------------------------------------------
def feature_heatmaps(model, dataset, references, layer: str, neurons: Sequence[int], *,
                     composite="epsilon_plus_flat", canonizers=None, n_ref: int | None = None,
                     batch_size: int = 32, device=None, progress: bool = True,
                     approximate: bool = False, inputs=None, layout=None,
                     tokens: str | None = None) -> torch.Tensor:
    """LRP heatmaps of channel ``k`` at the position of its maximum, down to the input.

    For every neuron ``k`` in ``neurons`` and each of its reference samples, the relevance of
    the single unit ``A_k^L(row, col)`` at the position stored in ``references.positions`` is
    propagated to the input pixels with a zennit composite; the initial relevance is the
    activation value there, and the relevance is summed over the colour channels. With
    ``composite="gradient_x_input"`` the map is the input gradient of the same unit times the
    (normalised) input, summed over the colour channels. On a token layer (a ViT) the position is
    a patch token, and the map is made a map over patches (:func:`pure_utils.layers.patch_map`).

    Parameters
    ----------
    model : torch.nn.Module
        The network (evaluation mode).
    dataset : Dataset
        Returns ``(Tensor[3, H, W] normalised, label)`` for the indices in ``references``.
    references : References
        ``.indices`` LongTensor[C, n_ref] and ``.positions`` LongTensor[C, n_ref, 2] (row, col
        in the layer's map). Mined references are refused with another model or dataset.
    layer : str
        Module name of layer L (``"layer4"``).
    neurons : sequence of int
        Channels of ``layer`` to visualise.
    composite : str or zennit Composite
        A name registered in ``zennit.composites.COMPOSITES`` (default ``"epsilon_plus_flat"``,
        as in the reference pipeline), a ready composite (its canonizers are then its own), or
        ``"gradient_x_input"`` (no LRP; any architecture).
    canonizers : list, optional
        zennit canonizers; default ``pure_utils.canonizers.canonizers_for(model)`` (timm ResNet
        blocks). Pass ``[]`` for none (then only correct on models without BatchNorm or
        residual blocks).
    n_ref : int, optional
        Use only the first ``n_ref`` reference samples of each neuron (default: all).
    batch_size, device, progress
        The run options (see :mod:`pure_utils`); ``batch_size`` counts samples per backward
        pass.
    approximate : bool
        Compute the heatmaps on a model the canonizers do not cover (see
        :func:`pure_utils.canonizers.lrp_support`; otherwise a ``ValueError`` names what is
        missing), with a warning that reports the share of the initial relevance reaching the
        input.
    inputs : iterator of Tensor[b, 3, H, W], optional
        The model inputs of every batch, in the order computed here (neuron by neuron, its
        reference samples in order, ``batch_size`` at a time), e.g. read ahead by DataLoader
        workers (:func:`pure_utils.data.iter_images`); default: read from ``dataset`` here.
    layout, tokens : optional
        How to read the layer's output (default: the references' layout; see
        :func:`pure_utils.circuits.circuit_attributions`).

    Returns
    -------
    Tensor[len(neurons), n_ref, H, W]
        Signed relevance per input pixel (float32, on the CPU).

    Raises
    ------
    ValueError
        For references of another model or dataset, for LRP on an uncovered model, and for
        heatmaps that come out NaN or infinite (naming the neurons and samples).
    """
    module = get_layer(model, layer)
    neurons = neuron_ids(neurons)
    check_references(references, model=model, dataset=dataset)
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
    if isinstance(composite, str) and composite == GRADIENT_X_INPUT:
        comp, uncovered = None, False
    else:
        comp = composite_for(composite, model, canonizers=canonizers, dataset=dataset, layer=layer,
                             approximate=approximate)
        uncovered = approximate and lrp_support(model, getattr(comp, "canonizers", None) or [],
                                                layer=layer)
    lay = resolve_layout(model, layer, layout, tokens, getattr(references, "layout", None))
    device = resolve_device(model, device)

    # one job per (neuron, reference sample), processed in flat batches
    # (output row, reference slot, references row, channel)
    jobs = [(j, r, row, k) for j, (row, k) in enumerate(zip(rows, neurons)) for r in range(n_ref)]
    if not jobs:
        return torch.zeros(0, n_ref, 0, 0)
    indices = index_tensor(references.indices)
    first = dataset[int(indices[rows[0], 0])][0]
    H, W = first.shape[-2:]
    out = torch.zeros(len(neurons), n_ref, H, W)
    initial = torch.zeros(len(neurons), n_ref)

    context = comp.context(model) if comp is not None else contextlib.nullcontext(model)
    with eval_mode(model), context as modified, stop_after(module) as captured:
        # stop_after is entered inside the composite's context so that its hook runs after
        # zennit's own hooks on the layer
        starts = range(0, len(jobs), batch_size)
        for s in tqdm(starts, desc=f"heatmaps {layer}", disable=not progress):
            batch = jobs[s:s + batch_size]
            x = (load_images(dataset, [indices[row, r] for _, r, row, _ in batch])
                 if inputs is None else next(inputs))
            x = x.to(device, non_blocking=True).requires_grad_(True)
            run_model(modified, x)
            act = lay.check(captured.pop("out"), layer)
            unit = lay.channels(act.detach())                      # [B, C, positions]
            b = torch.arange(len(batch), device=device)
            ch = torch.tensor([k for *_, k in batch], device=device)
            pos = torch.stack([references.positions[row, r] for _, r, row, _ in batch]).to(device)
            s = pos[:, 0] * lay.positions_grid(act, x.shape[-2:])[1] + pos[:, 1]
            init = torch.zeros_like(unit)
            init[b, ch, s] = unit[b, ch, s]
            (grad,) = torch.autograd.grad(act, x, grad_outputs=lay.place(init, act))
            rel = ((grad * x) if comp is None else grad).sum(1).detach().cpu()
            start = init[b, ch, s].float().cpu()
            for i, (j, r, *_) in enumerate(batch):
                out[j, r] = rel[i]
                initial[j, r] = start[i]
    if lay.patch_grid((H, W)) is not None:  # a token layer: a map over patches
        out = patch_map(out.reshape(-1, H, W), lay.patch_size).reshape(out.shape)
    bad = ~torch.isfinite(out).flatten(2).all(2)
    if bad.any():
        named = ", ".join(f"neuron {neurons[j]} on sample {int(indices[rows[j], r])}"
                          for j, r in bad.nonzero().tolist()[:10])
        raise ValueError(f"heatmaps of layer {layer!r} are not finite (NaN or inf) for {named}; "
                         "check these inputs (and the model's weights)")
    if uncovered:
        active = initial > 0
        if active.any():
            ratio = out.flatten(2).sum(2)[active] / initial[active]
            warnings.warn(f"approximate LRP heatmaps of {layer!r}: relevance reaching the input / "
                          f"initial relevance: median {ratio.median():.3f} (min {ratio.min():.3f}, "
                          f"max {ratio.max():.3f}); 1 means conserved",
                          LRPApproximationWarning, stacklevel=2)
    return out


# --------------------------------------------------------------------------------------------
# crops
# --------------------------------------------------------------------------------------------
def _blur(maps: torch.Tensor, kernel: int) -> torch.Tensor:
    """Gaussian blur of ``Tensor[N, H, W]`` (torchvision's sigma for the kernel size)."""
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
    """The reference samples of ``neuron`` as images in [0, 1], ``Tensor[n_ref, 3, H, W]``.

    Mined references are refused with another dataset (:func:`check_references`).
    """
    check_references(references, dataset=dataset)
    row = int(references.rows([neuron])[0]) if hasattr(references, "rows") else int(neuron)
    idx = references.indices[row]
    idx = idx if n_ref is None else idx[:n_ref]
    return torch.stack([dataset.image(int(i)) for i in idx])




def crops_from_boxes(dataset, indices, boxes) -> list[torch.Tensor]:
    """Cut ``dataset.image(i)`` to each box.

    Parameters
    ----------
    indices : LongTensor[m]
        Dataset indices (integers; a float tensor is refused, not truncated).
    boxes : LongTensor[m, 4]

    Returns
    -------
    list of Tensor[3, h, w]
    """
    indices = index_tensor(indices, "crop indices").reshape(-1)
    boxes = index_tensor(boxes, "crop boxes").reshape(-1, 4)
    if len(indices) != len(boxes):
        raise ValueError(f"{len(indices)} indices but {len(boxes)} boxes")
    return [dataset.image(int(i))[:, y0:y1, x0:x1]
            for i, (y0, x0, y1, x1) in zip(indices.tolist(), boxes.tolist())]


# --------------------------------------------------------------------------------------------
# the crop stages streamed at full size
# --------------------------------------------------------------------------------------------
# The crop stages at full size: heatmaps, crop boxes, crops and embeddings, streamed in chunks.
# 
# At the paper's size there are 204,800 reference samples per model (2048 neurons x 100): their
# heatmaps alone would take 41 GB, and reading every image in the main process would keep a GPU
# waiting. The two functions of this section stream:
# 
# - :func:`reference_boxes`: the crop boxes of every reference sample of the given neurons.
#   :func:`~pure_utils.crops.feature_heatmaps` runs on ``chunk_size`` neurons at a time and only
#   :func:`~pure_utils.crops.crop_boxes` of its maps are kept, so memory holds one chunk's heatmaps
#   whatever the number of neurons; the images of all chunks are read ahead by DataLoader worker
#   processes.
# - :func:`embed_boxes`: crops are cut and preprocessed in worker processes (each crop once per
#   distinct preprocessing, so two embedders that preprocess alike share it) and every embedder
#   runs on each batch; only the embeddings are kept.
# 
# Both give exactly what the one-call functions give (``feature_heatmaps`` then ``crop_boxes``;
# ``crops_from_boxes`` then ``Embedder.embed``): the batches are the same. Under
# torch.distributed each rank takes whole chunks of neurons (boxes) or whole batches of crops
# (embeddings), the very ones a single process forms, and every rank returns the whole result.
# A ``deadline`` (a :func:`time.perf_counter` value; single process only) stops after the chunk or
# batch that passes it, for measuring a stated fraction of a stage (:mod:`pure_utils.perf.scale`).

_NO_SHIFT, _NO_SCALE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def _check_deadline(deadline):
    if deadline is not None and is_distributed():
        raise ValueError("deadline= measures a fraction of a stage in a single process; under "
                         "torch.distributed every rank computes its whole share (give None)")


def reference_boxes(model, dataset, references, layer: str, neurons, *,
                    composite="epsilon_plus_flat", blur_kernel: int = 5, threshold: float = 0.02,
                    chunk_size: int = 8, batch_size: int = 32, num_workers: int = 0, device=None,
                    progress: bool = True, deadline: float | None = None) -> torch.Tensor:
    """Evaluation crop boxes of the reference samples of ``neurons`` (Appendix A.1), streamed.

    Parameters
    ----------
    model, dataset, references, layer, composite
        As in :func:`~pure_utils.crops.feature_heatmaps` (``references``: mined
        :class:`~pure_utils.references.References`).
    batch_size, device, progress, num_workers
        The run options (see :mod:`pure_utils`); the progress bar shows on rank 0 only.
    neurons : sequence of int
        Channels of ``layer``.
    blur_kernel, threshold
        As in :func:`~pure_utils.crops.crop_boxes`.
    chunk_size : int
        Neurons per heatmap computation (memory: ``chunk_size * n_ref`` heatmaps).
    deadline : float, optional
        Stop after the chunk that ends past this :func:`time.perf_counter` value.

    Returns
    -------
    LongTensor[m, n_ref, 4]
        ``(y0, x0, y1, x1)`` of the first ``m`` neurons (``m = len(neurons)`` without a
        deadline).
    """
    neurons = neuron_ids(neurons)
    _check_deadline(deadline)
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    n_ref = references.n_ref
    # checked once here, not once per chunk (a fingerprint hashes all weights)
    check_references(references, model=model, dataset=dataset)
    references = replace(references, model_fingerprint=None, dataset_fingerprint=None)
    chunks = [neurons[s:s + chunk_size] for s in range(0, len(neurons), chunk_size)]
    first, last = shard_range(len(chunks))
    # the inputs of every batch of feature_heatmaps, in its order: neuron by neuron, its samples
    batches = []
    for chunk in chunks[first:last]:
        flat = references.indices[references.rows(chunk)].reshape(-1).tolist()
        batches += [flat[s:s + batch_size] for s in range(0, len(flat), batch_size)]
    on_gpu = device is not None and torch.device(device).type == "cuda"
    inputs = iter_images(dataset, batches, num_workers, pin_memory=on_gpu)
    boxes = torch.zeros(len(neurons), n_ref, 4, dtype=torch.long)
    done = len(neurons)
    bar = tqdm(total=len(batches), desc=f"heatmaps and boxes {layer}", unit="batch",
               disable=not progress or not is_main())
    for c in range(first, last):
        maps = feature_heatmaps(model, dataset, references, layer, chunks[c], composite=composite,
                                batch_size=batch_size, device=device, progress=False,
                                inputs=inputs)
        start = c * chunk_size
        boxes[start:start + len(chunks[c])] = crop_boxes(maps, blur_kernel=blur_kernel,
                                                         threshold=threshold)
        bar.update(-(-len(chunks[c]) * n_ref // batch_size))
        if deadline is not None and time.perf_counter() > deadline:
            done = start + len(chunks[c])
            break
    bar.close()
    return sum_across_ranks(boxes)[:done]


class _Crops(torch.utils.data.Dataset):
    """Batch ``j``: for every distinct preprocessing, ``Tensor[b, 3, crop, crop]`` of its crops."""

    def __init__(self, dataset, indices, boxes, batches, specs):
        self.dataset, self.indices, self.boxes = dataset, indices, boxes
        self.batches, self.specs = batches, specs

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, j):
        sizes = sorted({(resize, crop) for resize, crop, _, _ in self.specs})
        out = {spec: [] for spec in self.specs}
        for k in self.batches[j]:
            y0, x0, y1, x1 = self.boxes[k]
            img = self.dataset.image(self.indices[k])[:, y0:y1, x0:x1]
            # the resize (the costly part) once per size; preprocess's own normalisation after
            resized = {size: preprocess(img, resize=size[0], crop=size[1], mean=_NO_SHIFT,
                                        std=_NO_SCALE) for size in sizes}
            for resize, crop, mean, std in self.specs:
                m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
                out[(resize, crop, mean, std)].append((resized[(resize, crop)] - m) / s)
        return {spec: torch.stack(x) for spec, x in out.items()}


def _spec(embedder) -> tuple:
    return (int(embedder.resize), int(embedder.crop), tuple(map(float, embedder.mean)),
            tuple(map(float, embedder.std)))


def embed_boxes(dataset, indices, boxes, embedders, *, batch_size: int = 32,
                num_workers: int = 0, progress: bool = True,
                deadline: float | None = None) -> list[torch.Tensor]:
    """Embed the crops ``dataset.image(i)[box]`` with every embedder, in one streamed pass.

    Parameters
    ----------
    dataset : Dataset
        With ``image(i)`` (the input-aligned image in [0, 1]).
    indices : LongTensor[m]
        Dataset index of each crop (a float tensor is refused).
    boxes : LongTensor[m, 4]
        ``(y0, x0, y1, x1)`` of each crop.
    embedders : sequence of ImageEmbedder
        Each runs on its own device (``embedder.device``).
    batch_size, progress, num_workers
        The run options (see :mod:`pure_utils`); ``batch_size`` counts crops (an embedder's
        own ``batch_size`` gives ``Embedder.embed``'s batches exactly), the workers cut and
        preprocess the crops ahead, the progress bar shows on rank 0 only.
    deadline : float, optional
        Stop after the batch that ends past this :func:`time.perf_counter` value.

    Returns
    -------
    list of Tensor[m', dim]
        One per embedder (float32, CPU), for the first ``m'`` crops (``m`` without a deadline).
    """
    _check_deadline(deadline)
    indices = index_tensor(indices, "crop indices").reshape(-1)
    boxes = index_tensor(boxes, "crop boxes").reshape(-1, 4)
    if len(indices) != len(boxes):
        raise ValueError(f"{len(indices)} indices but {len(boxes)} boxes")
    for e in embedders:
        if not isinstance(e, ImageEmbedder):
            raise ValueError(f"embedder {e!r} does not embed images; use its own embed()")
    specs = [_spec(e) for e in embedders]
    m = len(indices)
    first, last = shard_range(m, block=batch_size)
    batches = [list(range(s, min(last, s + batch_size))) for s in range(first, last, batch_size)]
    crops = _Crops(dataset, indices.tolist(), boxes.tolist(), batches, sorted(set(specs)))
    on_gpu = any(e.device.type == "cuda" for e in embedders)
    loader = (torch.utils.data.DataLoader(crops, batch_size=None, num_workers=num_workers,
                                          pin_memory=on_gpu)
              if num_workers > 0 else (crops[j] for j in range(len(batches))))
    out = [torch.zeros(m, e.dim) for e in embedders]
    done = m
    bar = tqdm(total=last - first, desc="crops and embeddings", unit="crop",
               disable=not progress or not is_main())
    with torch.no_grad():
        for batch, ready in zip(batches, loader):
            for e, spec, result in zip(embedders, specs, out):
                x = ready[spec].to(e.device, non_blocking=True)
                result[batch[0]:batch[-1] + 1] = e.forward(x).float().cpu()
            bar.update(len(batch))
            if deadline is not None and time.perf_counter() > deadline:
                done = batch[-1] + 1
                break
    bar.close()
    return [sum_across_ranks(r)[:done] for r in out]
