"""torch.distributed: which share of the work is this process's, and how shares become one result.

The library never starts a process group itself: ``torchrun`` (or a test with
``torch.multiprocessing.spawn``) does, and every stage that can share its work looks at the group
it finds. Without an initialised group, or with a group of one process, every helper here is the
identity (rank 0 of a world of 1), so single-process runs take exactly the code path they always
took.

How the stages share their work (each rank ends with the full result):

- mining (:func:`pure_utils.references.mine_references`): the images, in contiguous shares made
  of whole batches (:func:`shard_range`), so that every batch is the batch a single process would
  form; the per-rank top-k lists are merged in rank order, which keeps ties by the lower index;
- circuit attributions and activation features: the batches of reference images a single
  process forms, in turn (rank ``r`` of ``W`` takes batches ``r``, ``r + W``, ...): each image's
  forward pass runs on one rank, shared by all the neurons that need it, in the batch it has in
  a single process (convolutions round the last bits by batch size);
- heatmaps and crop boxes (:mod:`pure_utils.crops`): whole chunks of neurons; embeddings:
  whole batches of crops.

Before a stage shares its work, the ranks compare what they were given
(:func:`check_same_on_every_rank`: the dataset's length and fingerprint, the model's fingerprint):
ranks that read other images or run other weights would merge shares of different
computations into a result no single process gives.

Shares are put together with :func:`sum_across_ranks` (every entry is computed by exactly one
rank and is zero elsewhere, so the sum is that entry, bit for bit) or
:func:`all_gather_objects`. The cache (:meth:`pure_utils.cache.Cache.get_or_compute`) is read and
written by rank 0 alone.
"""
from __future__ import annotations

import pickle

import torch
import torch.distributed as dist

__all__ = ["rank_and_size", "is_distributed", "is_main", "shard_range", "my_share",
           "all_gather_objects", "broadcast_object", "sum_across_ranks", "first_found",
           "check_same_on_every_rank", "portable_error", "barrier"]


def rank_and_size() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    """Whether a process group of more than one process is initialised."""
    return rank_and_size()[1] > 1


def is_main() -> bool:
    """Whether this is rank 0 (or the only process): the one that writes files and prints."""
    return rank_and_size()[0] == 0


def shard_range(n: int, *, block: int = 1, rank: int | None = None,
                size: int | None = None) -> tuple[int, int]:
    """The contiguous share ``[start, stop)`` of ``range(n)`` that belongs to a rank.

    Shares are made of whole blocks of ``block`` items (the last block may be shorter), as even
    as the blocks allow, in rank order: rank 0 holds the lowest indices.

    Parameters
    ----------
    n : int
        Number of items.
    block : int
        Items per block (mining: the batch size, so that every rank forms the batches a single
        process would).
    rank, size : int, optional
        Default: this process's rank and the world size.

    Returns
    -------
    (int, int)
    """
    if block < 1:
        raise ValueError(f"block={block} must be >= 1")
    own_rank, own_size = rank_and_size()
    rank = own_rank if rank is None else rank
    size = own_size if size is None else size
    blocks = -(-n // block)
    first, last = blocks * rank // size, blocks * (rank + 1) // size
    return min(n, first * block), min(n, last * block)


def my_share(items: list) -> list:
    """Every ``size``-th item, starting at this rank's position: ``items[rank::size]``.

    How the attribution stages deal out their batches, which they sort by cost, so that the
    shares cost about the same.
    """
    rank, size = rank_and_size()
    return list(items)[rank::size]


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, the CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a group."""
    if not is_distributed():
        return [obj]
    out = [None] * rank_and_size()[1]
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself without a group)."""
    if not is_distributed():
        return obj
    box = [obj]
    kwargs = {"device": _comm_device()} if dist.get_backend() == "nccl" else {}
    dist.broadcast_object_list(box, src=src, **kwargs)
    return box[0]


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over all ranks (``tensor`` itself without a group).

    Stages fill the entries they computed and leave zeros elsewhere: the sum is then the full
    result on every rank, exactly (``x + 0 == x``). Returns a tensor on ``tensor``'s device.
    """
    if not is_distributed():
        return tensor
    buf = tensor.to(_comm_device()).contiguous()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(tensor.device)


def first_found(local):
    """The first value that is not ``None`` among every rank's ``local``, in rank order.

    For a property every rank would find in its own share (e.g. a layer's width), when a rank's
    share may be empty. ``ValueError`` when no rank has one.
    """
    for value in all_gather_objects(local):
        if value is not None:
            return value
    raise ValueError("no rank had any item of the work to look at")


def check_same_on_every_rank(values: dict, what: str = "the inputs") -> None:
    """Refuse to go on unless every rank holds the same ``values`` (nothing without a group).

    A collective: every rank calls it, and every rank raises the same error, so that none waits
    for the others in a later collective.

    Parameters
    ----------
    values : dict
        Picklable values that must agree, by name (e.g. ``{"dataset length": 50000,
        "model fingerprint": "..."}``).
    what : str
        What they describe, for the message.

    Raises
    ------
    ValueError
        Naming the first rank (in rank order) whose values differ from rank 0's, and every
        entry that differs, with both values.
    """
    if not is_distributed():
        return
    parts = all_gather_objects(values)
    for rank, other in enumerate(parts[1:], start=1):
        diff = [f"{k}: {other.get(k)!r} on rank {rank}, {parts[0].get(k)!r} on rank 0"
                for k in values if other.get(k) != parts[0].get(k)]
        if diff:
            raise ValueError(
                f"{what} differ between the ranks ({'; '.join(diff)}); every rank must be given "
                "the same dataset and model (the same files and weights; an image folder copied "
                "to each machine has other modification times: use "
                "ImageFolderDataset(..., fingerprint='content'))")


def portable_error(err: Exception) -> Exception:
    """``err`` if it survives pickling (to be sent to the other ranks), else a ``RuntimeError``
    with its type and message (exceptions with other constructor arguments do not unpickle)."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # whatever pickling raises: the error is described instead
        return RuntimeError(f"{type(err).__name__}: {err}")


def barrier() -> None:
    """Wait for every rank (nothing without a group)."""
    if is_distributed():
        dist.barrier()
