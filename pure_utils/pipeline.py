"""The crop stages at full size: heatmaps, crop boxes, crops and embeddings, streamed in chunks.

At the paper's size there are 204,800 reference samples per model (2048 neurons x 100): their
heatmaps alone would take 41 GB, and reading every image in the main process would keep a GPU
waiting. The two functions here stream:

- :func:`reference_boxes`: the crop boxes of every reference sample of the given neurons.
  :func:`~pure_utils.crops.feature_heatmaps` runs on ``chunk_size`` neurons at a time and only
  :func:`~pure_utils.crops.crop_boxes` of its maps are kept, so memory holds one chunk's heatmaps
  whatever the number of neurons; the images of all chunks are read ahead by DataLoader worker
  processes.
- :func:`embed_boxes`: crops are cut and preprocessed in worker processes (each crop once per
  distinct preprocessing, so two embedders that preprocess alike share it) and every embedder
  runs on each batch; only the embeddings are kept.

Both give exactly what the one-call functions give (``feature_heatmaps`` then ``crop_boxes``;
``crops_from_boxes`` then ``Embedder.embed``): the batches are the same. Under
torch.distributed each rank takes whole chunks of neurons (boxes) or whole batches of crops
(embeddings), the very ones a single process forms, and every rank returns the whole result.
A ``deadline`` (a :func:`time.perf_counter` value; single process only) stops after the chunk or
batch that passes it, for measuring a stated fraction of a stage (:mod:`pure_utils.perf.scale`).
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from ._progress import tqdm
from .crops import crop_boxes, feature_heatmaps
from .data import iter_images
from .distributed import is_distributed, is_main, shard_range, sum_across_ranks
from .embed import ImageEmbedder, preprocess
from .references import check_references, index_tensor, neuron_ids

__all__ = ["reference_boxes", "embed_boxes"]

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
    model, dataset, references, layer, composite, batch_size, device
        As in :func:`~pure_utils.crops.feature_heatmaps` (``references``: mined
        :class:`~pure_utils.references.References`).
    neurons : sequence of int
        Channels of ``layer``.
    blur_kernel, threshold
        As in :func:`~pure_utils.crops.crop_boxes`.
    chunk_size : int
        Neurons per heatmap computation (memory: ``chunk_size * n_ref`` heatmaps).
    num_workers : int
        DataLoader worker processes that read the images ahead.
    progress : bool
        Show a progress bar (rank 0).
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
    batch_size : int
        Crops per forward pass (the embedders' own ``batch_size`` gives ``Embedder.embed``'s
        batches exactly).
    num_workers : int
        DataLoader worker processes that cut and preprocess the crops ahead.
    progress : bool
        Show a progress bar (rank 0).
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
