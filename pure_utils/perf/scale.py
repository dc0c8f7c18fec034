"""The paper profile at full size, stage by stage: a dry run on random weights and generated images.

    python -m pure_utils.perf --scale paper                  # this CPU, at a reduced size
    python -m pure_utils.perf --scale paper --device cuda    # the paper's sizes on a GPU
    make bench-scale / make bench-gpu                         # the same, with the table written

Every stage of the paper's evaluation of one model, at the paper's sizes unless told otherwise:
timm ResNet-50 with random weights (BatchNorm re-randomised), generated 224 px images (no
download), all 2048 channels of ``layer4`` with ``n_ref = 100`` from ``--images`` images:

1. mining (the stash keeps the ``layer3`` output of the candidates, :mod:`pure_utils.stash`);
2. Gradient x Activation ``layer4 <- layer3`` for all neurons x ``n_ref``, from the stash;
3. the activation features (the baseline);
4. LRP heatmaps (``epsilon_plus_flat``) and crop boxes of all references (fp32 always);
5. crops, and the CLIP ViT-B/32 and DINOv2-base architectures (full size, random init) on all;
6. Eq. 5 for k in {2, 3, 4, 5} (PURE, activations (mean), CLIP, DINOv2, random), in worker processes;
7. the distance correlation (PURE, activations (mean), DINOv2 against CLIP).

After stage 3, on the first ``--compare-neurons`` neurons: attribution from the stash against
the re-forward (the end-to-end effect on mining + attribution, with the largest difference),
and with ``--compare-precision bf16`` the same attribution under bf16 autocast + channels_last
against fp32 (largest difference of the normalised vectors, ARI of the k-means labels); the
stash is then emptied for the heatmaps. With ``--memory-check`` a second process runs mining +
attribution at 4x the images (or 1/4 from 4096 images up) and both high-water marks are
compared.

Per stage: wall time, items per second, peak memory (resident set of this process, sampled;
CUDA max allocated on a GPU) and the time at the paper's size, extrapolated linearly in the
stage's items where the run did fewer (``--images``, ``--neurons``, ``--n-ref``, or a stage
stopped by ``--stage-cap`` seconds). The output says what was reduced; ``--out FILE.json``
writes the table as JSON and markdown (``FILE.md``).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import timm
import torch
from sklearn.metrics import adjusted_rand_score

from .._machine import machine_info
from ._measure import MIB, Stages, hwm, mapped_allocations
from ._output import json_ready, markdown, summary, write
from ..circuits import activation_vectors, circuit_attributions
from ..data import GeneratedImages
from ..embed import load_embedder
from ..metrics import kmeans_labels
from ..models import randomize_batchnorm
from ..crops import embed_boxes, reference_boxes
from ..references import mine_references
from ..stash import ActivationStash
from ..study.tables import ACTIVATIONS, compare_clusterings, correlation_table

__all__ = ["PAPER", "REDUCED_CPU", "run_scale", "main"]

#: The paper's sizes: ImageNet val, the neurons of ResNet-50's layer4, references per neuron.
PAPER = {"images": 50_000, "neurons": 2048, "n_ref": 100}
#: What a CPU run uses unless told otherwise (a few minutes on two cores).
REDUCED_CPU = {"images": 48, "neurons": 8, "n_ref": 6}
KS = (2, 3, 4, 5)
#: transformers configurations of the full-size architectures (random weights).
CLIP_B32 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, patch_size=32)
DINOV2_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14,
                   mlp_ratio=4)
PIPELINE = ("mining", "attribution", "activations", "heatmaps", "embeddings", "eq5", "correlation")
#: Reference vectors (and crops) of one model at the paper's size.
_REFS = PAPER["neurons"] * PAPER["n_ref"]


# --------------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------------
def _deadline(cap):
    return None if cap is None else time.perf_counter() + cap


@contextmanager
def _precision(name: str, model, device):
    """fp32 as is; ``"bf16"``: autocast to bfloat16 with the model in channels_last."""
    if name == "fp32":
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            yield
    finally:
        model.to(memory_format=torch.contiguous_format)


# --------------------------------------------------------------------------------------------
# Eq. 5 and the precision comparison in worker processes (k-means is the costly part)
# --------------------------------------------------------------------------------------------
def _eq5_part(clip, pure, acts, dino, neurons):
    features = {"PURE": pure, ACTIVATIONS: acts, "CLIP": clip, "DINOv2": dino}
    return compare_clusterings(clip, features, ks=KS, neurons=neurons, progress=False)


def _ari_part(a, b):
    return [[adjusted_rand_score(kmeans_labels(x, k), kmeans_labels(y, k)) for k in KS]
            for x, y in zip(a, b)]


def _in_parts(fn, arrays: list, n: int, workers: int, deadline=None, part: int = 8) -> tuple:
    """``fn`` on consecutive parts of ``part`` neurons (rows of every array), in ``workers``
    processes; returns ``(results in order, neurons done)`` - the parts done before the
    deadline (each neuron is independent of the others, so the parts give the one-call result)."""
    bounds = [(s, min(n, s + part)) for s in range(0, n, part)]
    if workers <= 1 or len(bounds) <= 1:
        out = []
        for s, e in bounds:
            out.append(fn(*[a[s:e] for a in arrays]))
            if deadline is not None and time.perf_counter() > deadline:
                return out, e
        return out, n
    # spawned, not forked: the parent holds threads (a GPU context, loader threads)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *[a[s:e] for a in arrays]) for s, e in bounds]
        timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
        wait(futures, timeout=timeout)
        for f in futures:  # parts not started yet; running ones end (and count) on leaving
            f.cancel()
    done = 0
    while done < len(futures) and not futures[done].cancelled():
        done += 1
    return [f.result() for f in futures[:done]], bounds[done - 1][1] if done else 0


# --------------------------------------------------------------------------------------------
# the dry run
# --------------------------------------------------------------------------------------------
def _size(text) -> int:
    """``"8GiB"``, ``"32MiB"``, ``"512M"``, ``"0"`` -> bytes."""
    text = str(text).strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; give e.g. 8GiB, 32MiB or 0")


def _resolve(args) -> tuple[argparse.Namespace, list]:
    """Fill the defaults that depend on the device; returns the arguments and what was reduced."""
    gpu = torch.device(args.device).type == "cuda"
    reduced = []
    for key, full in PAPER.items():
        if getattr(args, key) is None:
            setattr(args, key, full if gpu else REDUCED_CPU[key])
        if getattr(args, key) < full:
            reduced.append(f"{key} {getattr(args, key):,} of {full:,}")
    cpus = os.cpu_count() or 1
    defaults = dict(batch_size=256 if gpu else 16, work_batch_size=128 if gpu else 16,
                    heatmap_batch_size=64 if gpu else 16,
                    embed_batch_size=256 if gpu else 16, workers=max(1, min(14, cpus - 2)),
                    chunk_size=32 if gpu else 2, attr_chunk=args.neurons,
                    stash_memory=8 << 30 if gpu else 32 << 20, stash_disk=0 if gpu else 2 << 30,
                    eq5_workers=cpus, compare_neurons=args.neurons)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.compare_neurons = min(args.compare_neurons, args.neurons)
    stages = args.stages.split(",")
    if len(stages) < 2 or stages != list(PIPELINE[:len(stages)]):
        raise ValueError(f"stages={args.stages!r}: give the first stages of {','.join(PIPELINE)} "
                         "(mining and attribution at least), in that order")
    if args.n_ref > args.images:
        raise ValueError(f"--n-ref {args.n_ref} needs at least as many --images ({args.images})")
    if args.n_ref < max(KS):
        raise ValueError(f"--n-ref {args.n_ref}: Eq. 5 clusters into up to {max(KS)} groups; "
                         f"give at least {max(KS)}")
    return args, reduced


def _processes(args, neurons: int) -> int:
    """Worker processes for k-means on ``neurons`` neurons: one (this process) up to 32 neurons,
    where starting processes (seconds each) would cost more than it saves."""
    return 1 if neurons <= 32 else min(args.eq5_workers, -(-neurons // 2))


def _chunked(fn, neurons, chunk, deadline):
    """``fn(part)`` over consecutive parts of ``neurons``; ``(concatenated results, done)``."""
    out = []
    for s in range(0, len(neurons), chunk):
        out.append(fn(neurons[s:s + chunk]))
        if deadline is not None and time.perf_counter() > deadline:
            break
    return torch.cat(out), sum(len(o) for o in out)


@dataclass
class _DryRun:
    """What the stages of one dry run share: its options (``args``, as :func:`_resolve` gives
    them), the model, the images, the chosen neurons of layer4 (sorted), the stash, the stage
    records, the result so far, and the keyword arguments of every pass over the images
    (``loop``) and of attribution and the activation features (``attr``)."""

    args: argparse.Namespace
    model: torch.nn.Module
    data: GeneratedImages
    chosen: list
    stash: ActivationStash | None
    stages: Stages
    result: dict
    loop: dict
    attr: dict

    def precision(self, name: str | None = None):
        """The precision of a model stage: ``name``, by default the run's ``--precision``."""
        return _precision(name or self.args.precision, self.model, self.args.device)

    def deadline(self):
        """When a chunked stage started now stops (``--stage-cap``; ``None``: never)."""
        return _deadline(self.args.stage_cap)


def _setting(args) -> dict:
    """What the dry run runs, as its output and files state it."""
    return dict(model="timm resnet50, random weights (BatchNorm re-randomised)",
                layer="layer4", lower_layer="layer3", images=args.images, neurons=args.neurons,
                n_ref=args.n_ref, image_size=224, device=str(torch.device(args.device)),
                precision=args.precision, batch_size=args.batch_size,
                work_batch_size=args.work_batch_size, heatmap_batch_size=args.heatmap_batch_size,
                embed_batch_size=args.embed_batch_size, workers=args.workers,
                torch_threads=torch.get_num_threads(), stash=None if args.no_stash else
                dict(memory_bytes=args.stash_memory, disk_bytes=args.stash_disk),
                stage_cap_s=args.stage_cap, torch=torch.__version__,
                cudnn_tf32=torch.backends.cudnn.allow_tf32,
                matmul_tf32=torch.backends.cuda.matmul.allow_tf32)


def _start(args, reduced: list, log, checkpoint) -> _DryRun:
    """The model (random weights, BatchNorm re-randomised), the generated images, the chosen
    neurons and the stash of a dry run; logs its setting."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = timm.create_model("resnet50", pretrained=False).eval()
    randomize_batchnorm(model, args.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    model.to(device)
    data = GeneratedImages(args.images, size=224, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    chosen = sorted(torch.randperm(PAPER["neurons"], generator=gen)[:args.neurons].tolist())
    setting = _setting(args)
    log(f"setting: {json.dumps(setting)}")
    log("reduced: " + ("; ".join(reduced) if reduced else "nothing (the paper's sizes)"))
    stages = Stages(device, log, after=lambda: checkpoint and checkpoint(result))
    result = dict(setting=setting, reduced=reduced, machine=machine_info(device),
                  when=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  stages=stages.records)
    stash = (None if args.no_stash else
             ActivationStash("layer3", memory_bytes=args.stash_memory, disk_bytes=args.stash_disk,
                             folder=args.stash_folder))
    loop = dict(num_workers=args.workers, device=device, progress=args.progress)
    return _DryRun(args, model, data, chosen, stash, stages, result, loop,
                   attr=dict(batch_size=args.work_batch_size, stash=stash, **loop))


def _mine_and_attribute(run: _DryRun) -> tuple:
    """Stages 1 and 2: ``(references, attributions of the first neurons done, their number)``."""
    args, stash = run.args, run.stash
    with run.stages.stage("mining", "mining layer4 (top-n_ref of 2048 channels)", "images",
                          PAPER["images"]) as rec, run.precision():
        refs = mine_references(run.model, run.data, "layer4", args.n_ref,
                               **run.attr | {"batch_size": args.batch_size})
        rec["items"] = args.images
        if stash is not None:
            rec["note"] = (f"stash: {stash.stats['memory']} images in memory, "
                           f"{stash.stats['disk']} on disk, {stash.stats['dropped']} without room, "
                           f"{stash.update_s:.1f} s of the stage")
    with run.stages.stage("attribution", "attribution GxA layer4<-layer3" + (
            ", from the stash" if stash else ""), "vectors", _REFS) as rec, run.precision():
        pure, done = _chunked(lambda part: circuit_attributions(
            run.model, run.data, refs, "layer4", "layer3", neurons=part, **run.attr),
            run.chosen[:args.attr_limit or args.neurons], args.attr_chunk, run.deadline())
        rec["items"] = done * args.n_ref
    return refs, pure, done


def _activations(run: _DryRun, refs, done: int) -> tuple:
    """Stage 3, the baseline: ``(activation features of the first neurons, neurons done)``."""
    with run.stages.stage("activations", "activation features (baseline)", "vectors",
                          _REFS) as rec, run.precision():
        acts, n_acts = _chunked(lambda part: activation_vectors(
            run.model, run.data, refs, "layer4", neurons=part, **run.attr), run.chosen[:done],
            run.args.attr_chunk, run.deadline())
        rec["items"] = n_acts * run.args.n_ref
    return acts, min(done, n_acts)


def _heatmaps(run: _DryRun, refs, done: int) -> tuple:
    """Stage 4: ``(crop boxes of the first neurons' references, neurons done)``."""
    args = run.args
    with run.stages.stage("heatmaps", "LRP heatmaps + crop boxes (fp32)", "references",
                          _REFS) as rec:
        boxes = reference_boxes(run.model, run.data, refs, "layer4", run.chosen[:done],
                                chunk_size=args.chunk_size, batch_size=args.heatmap_batch_size,
                                deadline=run.deadline(), **run.loop)
        rec["items"] = len(boxes) * args.n_ref
    return boxes, len(boxes)


def _embeddings(run: _DryRun, refs, boxes, done: int) -> tuple:
    """Stage 5: ``(CLIP, DINOv2, neurons done)``, embeddings ``[neurons, n_ref, dim]`` of the
    crops by the full-size architectures (random weights; building them is not timed)."""
    args, n_ref = run.args, run.args.n_ref
    t0 = time.perf_counter()
    embedders = [load_embedder(name, pretrained=False, image_size=224, config=cfg,
                               device=torch.device(args.device), batch_size=args.embed_batch_size)
                 for name, cfg in (("clip", CLIP_B32), ("dinov2", DINOV2_BASE))]
    built = time.perf_counter() - t0
    with run.stages.stage("embeddings", "crops + CLIP ViT-B/32 + DINOv2-base", "crops",
                          _REFS) as rec, run.precision():
        idx = refs.indices[refs.rows(run.chosen[:done])]
        clip, dino = embed_boxes(run.data, idx.reshape(-1), boxes.reshape(-1, 4), embedders,
                                 batch_size=args.embed_batch_size, num_workers=args.workers,
                                 progress=args.progress, deadline=run.deadline())
        done = len(clip) // n_ref
        rec["items"] = len(clip)
        clip, dino = (e[:done * n_ref].reshape(done, n_ref, -1) for e in (clip, dino))
        size = [sum(p.numel() for p in e.model.parameters()) / 1e6 for e in embedders]
        rec["note"] = (f"{size[0]:.1f} M and {size[1]:.1f} M parameters, built in {built:.1f} s "
                       "(not in the stage)")
    return clip, dino, done


def _eq5(run: _DryRun, clip, spaces: dict, done: int) -> None:
    """Stage 6, Eq. 5 of the first ``done`` neurons in worker processes (``result["eq5_gap"]``)."""
    with run.stages.stage("eq5", "Eq. 5, k in {2, 3, 4, 5}, 4 methods + random", "neurons",
                          PAPER["neurons"]) as rec:
        # parts of two neurons: a part running at the deadline ends soon after it
        procs = _processes(run.args, done)
        frames, rec["items"] = _in_parts(
            _eq5_part, [clip, spaces["PURE"], spaces[ACTIVATIONS], spaces["DINOv2"],
                        run.chosen[:done]], done, procs, run.deadline(), part=2)
        rec["note"] = f"{procs} process{'es' if procs > 1 else ''}"
    run.result["eq5_gap"] = (pd.concat(frames).groupby(["method", "k"]).gap.mean().unstack()
                             .round(4).to_dict() if frames else {})


def _correlation(run: _DryRun, clip, spaces: dict, done: int) -> None:
    """Stage 7, the distance correlation against CLIP (``result["correlation"]``)."""
    with run.stages.stage("correlation", "distance correlation (3 spaces against CLIP)", "neurons",
                          PAPER["neurons"]) as rec:
        corr = correlation_table(clip, spaces, n_samples=min(50, run.args.n_ref),
                                 n_subsets=min(30, done))
        rec["items"] = done
    run.result["correlation"] = dict(zip(corr.method, corr["mean"].round(4)))


def run_scale(log=print, checkpoint=None, **options) -> dict:
    """Run the dry run (see the module's description) and return its figures.

    Parameters
    ----------
    log : callable
        Where the lines go (``print``).
    checkpoint : callable, optional
        ``checkpoint(result)`` after every stage, with the stages so far (``main`` writes the
        files then: a run stopped by a time limit keeps what it measured).
    **options
        The command line's options by their Python names (``images=64``, ``device="cuda"``,
        ``compare_precision="bf16"``, ...; see ``python -m pure_utils.perf --scale paper -h``).

    Returns
    -------
    dict
        ``setting``, ``reduced`` (what is below the paper's sizes), ``stages`` (one record per
        stage: ``seconds``, ``per_s``, ``rss_peak_mib``, ``hwm_mib``, ``cuda_peak_mib``,
        ``items``, ``paper_items``, ``paper_s``), ``end_to_end``, ``precision``, ``memory``,
        ``paper_total_s``.
    """
    args = _parser().parse_args([])
    unknown = set(options) - set(vars(args))
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; options: {sorted(vars(args))}")
    vars(args).update(options)
    args, reduced = _resolve(args)
    run = _start(args, reduced, log, checkpoint)
    result, stages = run.result, set(args.stages.split(","))
    # the memory check compares resident sets of runs of different lengths: see
    # mapped_allocations for why glibc's threshold is fixed for these two stages then
    with (mapped_allocations() if args.memory_check or args.memory_child
          else nullcontext(False)) as mapped:
        refs, pure, done = _mine_and_attribute(run)
    result["setting"]["fixed_mmap_threshold"] = mapped
    if mapped:
        log("  (mining and attribution ran with glibc's mmap threshold fixed at 1 MiB, for the "
            "memory check: comparable resident sets, at some cost in speed on a CPU)")
    result["hwm_after_attribution_mib"] = hwm() / MIB
    if "activations" in stages:
        acts, done = _activations(run, refs, done)
    _comparisons(run, refs, pure)
    if run.stash is not None:
        run.stash.close()  # its room is needed by the heatmaps now
    if "heatmaps" in stages:
        boxes, done = _heatmaps(run, refs, done)
    if "embeddings" in stages:
        clip, dino, done = _embeddings(run, refs, boxes, done)
    if "eq5" in stages:
        spaces = {"PURE": pure[:done], ACTIVATIONS: acts[:done], "DINOv2": dino}
        _eq5(run, clip, spaces, done)
    if "correlation" in stages:
        _correlation(run, clip, spaces, done)
    result["neurons_through_all_stages"] = done
    run.stages.close()
    pipeline = [r for r in run.stages.records if r["key"] in PIPELINE]
    result["paper_total_s"] = (sum(r["paper_s"] for r in pipeline)
                               if {r["key"] for r in pipeline} == set(PIPELINE) else None)
    if args.memory_check:
        result["memory"] = _memory_check(args, result, log)
    return result


def _comparisons(run: _DryRun, refs, pure) -> None:
    """The stash against the re-forward, and the other precision against this one, on the
    first ``compare_neurons`` neurons (adds ``end_to_end`` and ``precision`` to the result)."""
    args = run.args
    sub = run.chosen[:args.compare_neurons]
    if not sub:
        return
    first = next(r for r in run.stages.records if r["key"] == "attribution")
    if first["items"] == len(sub) * args.n_ref:  # the attribution stage did exactly these
        base, base_s = pure, first["seconds"]
    else:
        with run.stages.stage("attribution-subset", "attribution, comparison neurons", "vectors",
                              _REFS) as rec, run.precision():
            base = _attribution(run, refs, sub, run.stash)
            rec["items"] = len(sub) * args.n_ref
        base_s = rec["seconds"]
    if run.stash is not None:
        _end_to_end(run, refs, sub, base, base_s)
    if args.compare_precision and args.compare_precision != args.precision:
        _other_precision(run, refs, sub, base, base_s)


def _attribution(run: _DryRun, refs, neurons: list, stash) -> torch.Tensor:
    """Attribution ``layer4 <- layer3`` of ``neurons`` in one call, from ``stash`` if given."""
    return circuit_attributions(run.model, run.data, refs, "layer4", "layer3", neurons=neurons,
                                **run.attr | {"stash": stash})


def _end_to_end(run: _DryRun, refs, sub: list, base, base_s: float) -> None:
    """Mining + attribution with the stash against re-forwarding: ``result["end_to_end"]``."""
    stash, mining = run.stash, next(r for r in run.stages.records if r["key"] == "mining")
    with run.stages.stage("reforward", "attribution, re-forward (no stash)", "vectors",
                          _REFS) as rec, run.precision():
        again = _attribution(run, refs, sub, None)
        rec["items"] = len(sub) * run.args.n_ref
    with_stash = mining["seconds"] + base_s
    # mining without the stash: less the time it spent keeping records
    without = mining["seconds"] - stash.update_s + rec["seconds"]
    run.result["end_to_end"] = dict(
        neurons=len(sub), with_stash_s=with_stash, without_stash_s=without,
        speedup=without / with_stash, stash_update_s=stash.update_s,
        max_abs_diff=float((again - base).abs().max()),
        bitwise_equal=bool(torch.equal(again, base)),
        stash=dict(stash.stats, reference_images=len(set(
            refs.indices[refs.rows(sub)].flatten().tolist()))))
    run.stages.log(summary(run.result, "end_to_end"))


def _other_precision(run: _DryRun, refs, sub: list, base, base_s: float) -> None:
    """Attribution in ``--compare-precision`` against this run's: ``result["precision"]``."""
    args, other = run.args, run.args.compare_precision
    with run.stages.stage("precision", f"attribution, {other}" + (
            " autocast + channels_last" if other == "bf16" else ""), "vectors",
            _REFS) as rec, run.precision(other):
        low = _attribution(run, refs, sub, run.stash)
        rec["items"] = len(sub) * args.n_ref
    a, b = base[:len(sub)].numpy(), low.float().numpy()
    parts, _ = _in_parts(_ari_part, [a, b], len(sub), _processes(args, len(sub)))
    ari = np.asarray([row for part in parts for row in part])
    run.result["precision"] = dict(
        compared=f"{args.precision} against {other}", neurons=len(sub),
        max_abs_diff=float(np.abs(a - b).max()), ari_mean=float(ari.mean()),
        ari_min=float(ari.min()), share_identical_labels=float((ari == 1).mean()),
        ari_mean_per_k=dict(zip(KS, ari.mean(0).round(4).tolist())),
        time_ratio=rec["seconds"] / base_s)
    run.stages.log(summary(run.result, "precision"))


def _memory_check(args, result, log) -> dict:
    """Mining + attribution again at 4x (or 1/4 of) the images in a fresh process; the two
    high-water marks after attribution, and the CUDA peaks, side by side."""
    other = args.images // 4 if args.images >= 4096 else args.images * 4
    attributed = next(r for r in result["stages"] if r["key"] == "attribution")["items"]
    cmd = [sys.executable, "-m", "pure_utils.perf.scale", "--json-stdout", "--memory-child", "--stages",
           "mining,attribution", "--images", str(other), "--compare-neurons", "0",
           "--attr-limit", str(attributed // args.n_ref)]
    for key in ("device", "neurons", "n_ref", "batch_size", "work_batch_size", "workers",
                "attr_chunk", "stash_memory", "stash_disk", "stash_folder", "precision",
                "threads", "seed"):
        if getattr(args, key) is not None:
            cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.no_stash:
        cmd.append("--no-stash")
    log(f"memory check: mining + attribution again with {other:,} images in a new process")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # this process's cached blocks would crowd the new one's GPU
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the memory check's process failed:\n{done.stderr[-3000:]}")
    child = json.loads(done.stdout.strip().splitlines()[-1])

    def figures(res):
        recs = [r for r in res["stages"] if r["key"] in ("mining", "attribution")]
        cuda = [r["cuda_peak_mib"] for r in recs if r["cuda_peak_mib"] is not None]
        return dict(images=res["setting"]["images"], hwm_mib=res["hwm_after_attribution_mib"],
                    cuda_peak_mib=max(cuda) if cuda else None)

    one, four = sorted([figures(result), figures(child)], key=lambda f: f["images"])
    out = dict(one_x=one, four_x=four, rss_ratio=four["hwm_mib"] / one["hwm_mib"])
    if one["cuda_peak_mib"]:
        out["cuda_ratio"] = four["cuda_peak_mib"] / one["cuda_peak_mib"]
    log(summary({"memory": out}, "memory"))
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pure_utils.perf --scale paper",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--scale", choices=["paper"], default="paper", help="the profile whose sizes are run")
    add("--device", default="cpu", help="cpu (default) or cuda")
    add("--images", type=int, help="generated images to mine (default: 50000 on a GPU, 48 on a CPU)")
    add("--neurons", type=int, help="neurons of layer4 (default: 2048 on a GPU, 8 on a CPU)")
    add("--n-ref", type=int, help="references per neuron (default: 100 on a GPU, 6 on a CPU)")
    add("--batch-size", type=int, help="images per mining batch (GPU 256, CPU 16)")
    add("--work-batch-size", type=int, help="images per attribution batch (128, 16)")
    add("--heatmap-batch-size", type=int, help="references per heatmap batch (64, 16)")
    add("--embed-batch-size", type=int, help="crops per embedding batch (256, 16)")
    add("--workers", type=int, help="DataLoader worker processes (CPU count - 2, 1..14)")
    add("--chunk-size", type=int, help="neurons per heatmap chunk (32, 2)")
    add("--attr-chunk", type=int, help="neurons per attribution call (default: all; fewer for "
        "less memory - images the stash does not hold are then run once per call)")
    add("--attr-limit", type=int, help=argparse.SUPPRESS)
    add("--stash-memory", type=_size, help="stash room on the device (GPU 8GiB, CPU 32MiB)")
    add("--stash-disk", type=_size, help="stash room on disk (GPU 0, CPU 2GiB)")
    add("--stash-folder", help="where the stash spills (default: the cache folder)")
    add("--no-stash", action="store_true", help="mine without the stash (attribution re-forwards)")
    add("--precision", choices=["fp32", "bf16"], default="fp32",
        help="bf16: autocast + channels_last for the model stages but the heatmaps")
    add("--compare-precision", choices=["fp32", "bf16"],
        help="also run attribution in this precision and measure the difference")
    add("--compare-neurons", type=int, help="neurons of the comparisons (default: all)")
    add("--stage-cap", type=float, help="seconds after which a chunked stage (heatmaps, "
        "embeddings, Eq. 5; attribution with --attr-chunk) stops; it is then extrapolated from "
        "the fraction done")
    add("--memory-check", action="store_true", help="mining + attribution again at 4x the images")
    add("--eq5-workers", type=int, help="processes for Eq. 5 (default: CPU count)")
    add("--stages", default=",".join(PIPELINE), help=argparse.SUPPRESS)
    add("--threads", type=int, help="torch CPU threads")
    add("--seed", type=int, default=0)
    add("--progress", action="store_true", help="progress bars")
    add("--out", help="write the table to OUT.json and OUT.md")
    add("--json-stdout", action="store_true", help=argparse.SUPPRESS)
    add("--memory-child", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("out", "json_stdout", "scale")}
    # a child process of the memory check keeps stdout for its result
    log = (lambda line: print(line, file=sys.stderr)) if args.json_stdout else print
    # the files are written after every stage too: a run stopped by a time limit keeps them
    result = run_scale(log=log, checkpoint=(lambda r: write(r, args.out)) if args.out else None,
                       **options)
    log("")
    log(markdown(result))
    if args.out:
        js, md = write(result, args.out)
        log(f"written: {js}, {md}")
    if args.json_stdout:
        print(json.dumps(json_ready(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
