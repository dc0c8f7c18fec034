"""Fill the cache with the heavy stages of a profile, in one process or on several GPUs and machines.

    python -m pure_utils.study.prepare --profile paper
    torchrun --nproc_per_node 8 -m pure_utils.study.prepare --profile paper
    torchrun --nnodes 2 --node_rank N --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint HOST:29500 -m pure_utils.study.prepare --profile paper

For every model of the profile (``model_names``, or ``--model``): the references (mining), the
PURE attributions, the activation features, the crop boxes and the embeddings in CLIP's and
DINOv2's roles - the artefacts :func:`pure_utils.study.setting.evaluate` and the notebooks compute
first. Under ``torchrun`` the ranks share every stage (:mod:`pure_utils.distributed`) and rank 0
writes the cache; ``PROFILE=paper make book`` on rank 0's machine then finds them all there.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch
import torch.distributed as dist

from ..distributed import barrier, is_main, rank_and_size
from .setting import embed_references, evaluation_boxes, load_embedders, load_setting
from .profile import Profile, as_profile, load_profile, profile_device

__all__ = ["prepare", "main"]


def prepare(profile: Profile | dict, *, models=None, progress: bool = True, log=print) -> list[dict]:
    """Compute (or find in the cache) the heavy artefacts of ``profile`` for each model.

    Parameters
    ----------
    profile : Profile or dict
        From :func:`~pure_utils.study.profile.load_profile`; its ``cache`` should be on, or nothing
        is kept for the book.
    models : list of str, optional
        Default: ``profile["model_names"]``.
    progress : bool
        Progress bars (rank 0).
    log : callable
        Where the lines go (rank 0 only).

    Returns
    -------
    list of dict
        Per model: ``model`` and the seconds of each stage.
    """
    say = log if is_main() else (lambda line: None)
    profile = as_profile(profile)
    if not profile.cache:
        say(f"profile {profile.name!r} has cache: false - nothing will be kept for the book")
    out = []
    for name in profile.model_names if models is None else models:
        times, clock = {"model": name}, time.perf_counter()

        def lap(stage):
            nonlocal clock
            now = time.perf_counter()
            times[stage], clock = now - clock, now
            say(f"{name}: {stage} in {times[stage]:.1f} s")

        s = load_setting(profile, model_name=name, progress=progress)
        lap("references")
        s.circuit_attributions(progress=progress)
        lap("attributions")
        s.activation_vectors(progress=progress)
        lap("activation features")
        boxes = evaluation_boxes(s, progress=progress)
        lap("crop boxes")
        for embedder in load_embedders(s):
            if embedder is not None:
                embed_references(s, embedder, boxes, progress=progress)
        lap("embeddings")
        out.append(times)
    return out


def _start_group() -> str | None:
    """Join the process group ``torchrun`` describes (nothing for a single process); returns
    the device of this rank when it has a GPU."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or dist.is_initialized():
        return None
    gpu = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if gpu:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if gpu else "gloo")
    return f"cuda:{local}" if gpu else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pure_utils.study.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper", help="profile name or path (default paper)")
    parser.add_argument("--model", action="append", help="one model (repeatable; default: all "
                        "of the profile's model_names)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    device = _start_group()
    profile = load_profile(args.profile)
    if device is not None:  # one GPU per rank
        profile = dataclasses.replace(profile, device=device)
    _, size = rank_and_size()
    if is_main():
        print(f"prepare {profile.name}: {size} process(es), device "
              f"{profile_device(profile.device)}")
    prepare(profile, models=args.model, progress=not args.no_progress)
    barrier()
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
