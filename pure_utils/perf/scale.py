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
6. Eq. 5 for k in {2, 3, 4, 5} (PURE, activations, CLIP, DINOv2, random), in worker processes;
7. the distance correlation (PURE, activations, DINOv2 against CLIP).

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
import math
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
from sklearn.metrics import adjusted_rand_score

from .._machine import machine_info
from ._measure import MIB, Stages, hwm, mapped_allocations, measured
from ..circuits import activation_features, circuit_attributions
from ..data import GeneratedImages
from ..embed import load_embedder
from ..metrics import kmeans_labels
from ..models import randomize_batchnorm
from ..crops import embed_boxes, reference_boxes
from ..references import mine_references
from ..stash import ActivationStash
from ..study.tables import compare_clusterings, correlation_table

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
    features = {"PURE": pure, "activations": acts, "CLIP": clip, "DINOv2": dino}
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


def _mine_and_attribute(run, args, model, data, chosen, stash, attr, prec):
    """Stages 1 and 2: ``(references, attributions of the first neurons done, their number)``."""
    refs_total = PAPER["neurons"] * PAPER["n_ref"]
    with run.stage("mining", "mining layer4 (top-n_ref of 2048 channels)", "images",
                   PAPER["images"]) as rec, prec():
        refs = mine_references(model, data, "layer4", args.n_ref,
                               **attr | {"batch_size": args.batch_size})
        rec["items"] = args.images
        if stash is not None:
            rec["note"] = (f"stash: {stash.stats['memory']} images in memory, "
                           f"{stash.stats['disk']} on disk, {stash.stats['dropped']} without room, "
                           f"{stash.update_s:.1f} s of the stage")
    with run.stage("attribution", "attribution GxA layer4<-layer3" + (", from the stash" if stash
                   else ""), "vectors", refs_total) as rec, prec():
        pure, done = _chunked(lambda part: circuit_attributions(
            model, data, refs, "layer4", "layer3", neurons=part, **attr),
            chosen[:args.attr_limit or args.neurons], args.attr_chunk, _deadline(args.stage_cap))
        rec["items"] = done * args.n_ref
    return refs, pure, done


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
    if args.threads:
        torch.set_num_threads(args.threads)
    device, stages = torch.device(args.device), set(args.stages.split(","))
    torch.manual_seed(args.seed)
    model = timm.create_model("resnet50", pretrained=False).eval()
    randomize_batchnorm(model, args.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    model.to(device)
    data = GeneratedImages(args.images, size=224, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    chosen = sorted(torch.randperm(PAPER["neurons"], generator=gen)[:args.neurons].tolist())
    n_ref, refs_total = args.n_ref, PAPER["neurons"] * PAPER["n_ref"]
    setting = dict(model="timm resnet50, random weights (BatchNorm re-randomised)",
                   layer="layer4", lower_layer="layer3", images=args.images, neurons=args.neurons,
                   n_ref=n_ref, image_size=224, device=str(device), precision=args.precision,
                   batch_size=args.batch_size, work_batch_size=args.work_batch_size,
                   heatmap_batch_size=args.heatmap_batch_size, embed_batch_size=args.embed_batch_size, workers=args.workers,
                   torch_threads=torch.get_num_threads(), stash=None if args.no_stash else
                   dict(memory_bytes=args.stash_memory, disk_bytes=args.stash_disk),
                   stage_cap_s=args.stage_cap, torch=torch.__version__,
                   cudnn_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_tf32=torch.backends.cuda.matmul.allow_tf32)
    log(f"setting: {json.dumps(setting)}")
    log("reduced: " + ("; ".join(reduced) if reduced else "nothing (the paper's sizes)"))
    run = Stages(device, log, after=lambda: checkpoint and checkpoint(result))
    prec = lambda: _precision(args.precision, model, device)  # noqa: E731
    loop = dict(num_workers=args.workers, device=device, progress=args.progress)
    result = dict(setting=setting, reduced=reduced, machine=machine_info(device),
                  when=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  stages=run.records)
    stash = (None if args.no_stash else
             ActivationStash("layer3", memory_bytes=args.stash_memory, disk_bytes=args.stash_disk,
                             folder=args.stash_folder))

    attr = dict(batch_size=args.work_batch_size, stash=stash, **loop)
    # the memory check compares resident sets of runs of different lengths: see
    # mapped_allocations for why glibc's threshold is fixed for these two stages then
    with (mapped_allocations() if args.memory_check or args.memory_child
          else nullcontext(False)) as mapped:
        refs, pure, done = _mine_and_attribute(run, args, model, data, chosen, stash, attr, prec)
    setting["fixed_mmap_threshold"] = mapped
    if mapped:
        log("  (mining and attribution ran with glibc's mmap threshold fixed at 1 MiB, for the "
            "memory check: comparable resident sets, at some cost in speed on a CPU)")
    result["hwm_after_attribution_mib"] = hwm() / MIB
    if "activations" in stages:
        with run.stage("activations", "activation features (baseline)", "vectors",
                       refs_total) as rec, prec():
            acts, n_acts = _chunked(lambda part: activation_features(
                model, data, refs, "layer4", neurons=part, **attr), chosen[:done],
                args.attr_chunk, _deadline(args.stage_cap))
            rec["items"] = n_acts * n_ref
            done = min(done, n_acts)
    _comparisons(result, run, args, model, data, refs, chosen, pure, stash, attr)
    if stash is not None:
        stash.close()  # its room is needed by the heatmaps now
    if "heatmaps" in stages:
        with run.stage("heatmaps", "LRP heatmaps + crop boxes (fp32)", "references",
                       refs_total) as rec:
            boxes = reference_boxes(model, data, refs, "layer4", chosen[:done],
                                    chunk_size=args.chunk_size, batch_size=args.heatmap_batch_size,
                                    deadline=_deadline(args.stage_cap), **loop)
            rec["items"] = len(boxes) * n_ref
            done = len(boxes)
    if "embeddings" in stages:
        t0 = time.perf_counter()
        embedders = [load_embedder(name, pretrained=False, image_size=224, config=cfg,
                                   device=device, batch_size=args.embed_batch_size)
                     for name, cfg in (("clip", CLIP_B32), ("dinov2", DINOV2_BASE))]
        built = time.perf_counter() - t0
        with run.stage("embeddings", "crops + CLIP ViT-B/32 + DINOv2-base", "crops",
                       refs_total) as rec, prec():
            idx = refs.indices[refs.rows(chosen[:done])]
            clip, dino = embed_boxes(data, idx.reshape(-1), boxes.reshape(-1, 4), embedders,
                                     batch_size=args.embed_batch_size, num_workers=args.workers,
                                     progress=args.progress, deadline=_deadline(args.stage_cap))
            done = len(clip) // n_ref
            rec["items"] = len(clip)
            clip, dino = (e[:done * n_ref].reshape(done, n_ref, -1) for e in (clip, dino))
            rec["note"] = (f"{sum(p.numel() for p in embedders[0].model.parameters()) / 1e6:.1f} M "
                           f"and {sum(p.numel() for p in embedders[1].model.parameters()) / 1e6:.1f}"
                           f" M parameters, built in {built:.1f} s (not in the stage)")
        del embedders
    if "eq5" in stages:
        spaces = {"PURE": pure[:done], "activations": acts[:done], "DINOv2": dino}
        with run.stage("eq5", "Eq. 5, k in {2, 3, 4, 5}, 4 methods + random", "neurons",
                       PAPER["neurons"]) as rec:
            # parts of two neurons: a part running at the deadline ends soon after it
            procs = _processes(args, done)
            frames, rec["items"] = _in_parts(
                _eq5_part, [clip, pure[:done], acts[:done], dino, chosen[:done]], done, procs,
                _deadline(args.stage_cap), part=2)
            rec["note"] = f"{procs} process{'es' if procs > 1 else ''}"
        result["eq5_gap"] = (pd.concat(frames).groupby(["method", "k"]).gap.mean().unstack()
                             .round(4).to_dict() if frames else {})
    if "correlation" in stages:
        with run.stage("correlation", "distance correlation (3 spaces against CLIP)", "neurons",
                       PAPER["neurons"]) as rec:
            corr = correlation_table(clip, spaces, n_samples=min(50, n_ref),
                                     n_subsets=min(30, done))
            rec["items"] = done
        result["correlation"] = dict(zip(corr.method, corr["mean"].round(4)))
    result["neurons_through_all_stages"] = done
    run.close()
    pipeline = [r for r in run.records if r["key"] in PIPELINE]
    result["paper_total_s"] = (sum(r["paper_s"] for r in pipeline)
                               if {r["key"] for r in pipeline} == set(PIPELINE) else None)
    if args.memory_check:
        result["memory"] = _memory_check(args, result, log)
    return result


def _comparisons(result, run, args, model, data, refs, chosen, pure, stash, attr):
    """The stash against the re-forward, and the other precision against this one, on the
    first ``compare_neurons`` neurons (adds ``end_to_end`` and ``precision`` to ``result``)."""
    sub = chosen[:args.compare_neurons]
    if not sub:
        return
    first = next(r for r in run.records if r["key"] == "attribution")
    mining = next(r for r in run.records if r["key"] == "mining")
    kw = dict(neurons=sub, **{k: v for k, v in attr.items() if k != "stash"})
    prec = lambda name: _precision(name, model, args.device)  # noqa: E731
    paper = PAPER["neurons"] * PAPER["n_ref"]
    if first["items"] == len(sub) * args.n_ref:  # the attribution stage did exactly these
        base, base_s = pure, first["seconds"]
    else:
        with run.stage("attribution-subset", "attribution, comparison neurons", "vectors",
                       paper) as rec, prec(args.precision):
            base = circuit_attributions(model, data, refs, "layer4", "layer3", stash=stash, **kw)
            rec["items"] = len(sub) * args.n_ref
        base_s = rec["seconds"]
    if stash is not None:
        with run.stage("reforward", "attribution, re-forward (no stash)", "vectors",
                       paper) as rec, prec(args.precision):
            again = circuit_attributions(model, data, refs, "layer4", "layer3", stash=None, **kw)
            rec["items"] = len(sub) * args.n_ref
        with_stash = mining["seconds"] + base_s
        # mining without the stash: less the time it spent keeping records
        without = mining["seconds"] - stash.update_s + rec["seconds"]
        e2e = dict(neurons=len(sub), with_stash_s=with_stash, without_stash_s=without,
                   speedup=without / with_stash, stash_update_s=stash.update_s,
                   max_abs_diff=float((again - base).abs().max()),
                   bitwise_equal=bool(torch.equal(again, base)),
                   stash=dict(stash.stats, reference_images=len(set(
                       refs.indices[refs.rows(sub)].flatten().tolist()))))
        result["end_to_end"] = e2e
        run.log(summary(result, "end_to_end"))
    if args.compare_precision and args.compare_precision != args.precision:
        other = args.compare_precision
        with run.stage("precision", f"attribution, {other}" + (
                " autocast + channels_last" if other == "bf16" else ""), "vectors",
                paper) as rec, prec(other):
            low = circuit_attributions(model, data, refs, "layer4", "layer3", stash=stash, **kw)
            rec["items"] = len(sub) * args.n_ref
        a, b = base[:len(sub)].numpy(), low.float().numpy()
        parts, _ = _in_parts(_ari_part, [a, b], len(sub), _processes(args, len(sub)))
        ari = np.asarray([row for part in parts for row in part])
        result["precision"] = dict(
            compared=f"{args.precision} against {other}", neurons=len(sub),
            max_abs_diff=float(np.abs(a - b).max()), ari_mean=float(ari.mean()),
            ari_min=float(ari.min()), share_identical_labels=float((ari == 1).mean()),
            ari_mean_per_k=dict(zip(KS, ari.mean(0).round(4).tolist())),
            time_ratio=rec["seconds"] / base_s)
        run.log(summary(result, "precision"))


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


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def _num(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.{digits}g}"


def summary(result: dict, key: str) -> str:
    """The line of the dry run's output about ``key``: ``"end_to_end"``, ``"precision"`` or
    ``"memory"`` (empty when the result has none)."""
    r = result.get(key)
    if not r:
        return ""
    neurons = f"{r.get('neurons')} neuron{'' if r.get('neurons') == 1 else 's'}"
    if key == "end_to_end":
        return (f"end to end, mining + attribution of {neurons}: "
                f"{r['with_stash_s']:.1f} s with the stash, {r['without_stash_s']:.1f} s "
                f"re-forwarding ({r['speedup']:.2f}x); largest difference of the normalised "
                f"vectors {r['max_abs_diff']:.2e} (bitwise equal: {r['bitwise_equal']})")
    if key == "precision":
        return (f"precision, {r['compared']} on {neurons}: largest difference of "
                f"the normalised attributions {r['max_abs_diff']:.3g}; ARI of the k-means labels "
                f"(k = 2..5) mean {r['ari_mean']:.3f}, min {r['ari_min']:.3f}, identical "
                f"{100 * r['share_identical_labels']:.0f}%; time {r['time_ratio']:.2f}x")
    one, four = r["one_x"], r["four_x"]
    return (f"memory, mining + attribution: peak RSS {one['hwm_mib']:.0f} MiB with "
            f"{one['images']:,} images, {four['hwm_mib']:.0f} MiB with {four['images']:,} (4x): "
            f"ratio {r['rss_ratio']:.3f} [target <= 1.10]" + (
                f"; CUDA max allocated {one['cuda_peak_mib']:.0f} and "
                f"{four['cuda_peak_mib']:.0f} MiB, ratio {r['cuda_ratio']:.3f}"
                if r.get("cuda_ratio") else ""))


def markdown(result: dict) -> str:
    """The stage table of a :func:`run_scale` result, as markdown."""
    lines = ["| stage | measured | wall (s) | per second | peak RSS (MiB) | peak CUDA (MiB) "
             "| at the paper's size (s) |", "|---|---|---|---|---|---|---|"]
    for r in result["stages"]:
        full = r["items"] == r["paper_items"]
        lines.append(f"| {r['stage']} | {measured(r)} | {_num(r['seconds'])} | "
                     f"{_num(r['per_s'])} {r['unit']} | {_num(r['rss_peak_mib'])} | "
                     f"{_num(r['cuda_peak_mib'])} | {'' if full else '~'}{_num(r['paper_s'])}"
                     f"{' (measured)' if full else ''} |")
    total = result.get("paper_total_s")
    if total:
        span = f"{total / 60:.1f} min" if total < 7200 else f"{total / 3600:.1f} h"
        lines.append(f"| **one model, the pipeline's stages** | | | | | | ~{_num(total)} "
                     f"(~{span}) |")
    return "\n".join(lines)


def _clean(obj):
    """JSON-ready: NaN and inf become None, tuples lists, other objects their text."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def write(result: dict, out) -> tuple[Path, Path]:
    """Write ``result`` as ``<out>.json`` and its table as ``<out>.md``; returns both paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    js, md = out.with_suffix(".json"), out.with_suffix(".md")
    js.write_text(json.dumps(_clean(result), indent=1) + "\n")
    m = result["machine"]
    where = f"{m['cpu_count']} CPUs ({m['cpu']})" + (f", GPU {m['gpu']}" if m.get("gpu") else "")
    extra = [f"Measured on {where}, {m['platform']}, Python {m['python']}, torch "
             f"{result['setting']['torch']}; {result['when']}.",
             "Reduced: " + ("; ".join(result["reduced"]) or "nothing") + "."]
    extra += [summary(result, k) for k in ("end_to_end", "precision", "memory")]
    md.write_text(markdown(result) + "\n\n" + "\n\n".join(e for e in extra if e) + "\n")
    return js, md


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
        print(json.dumps(_clean(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
