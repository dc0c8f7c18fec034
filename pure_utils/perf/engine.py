"""Benchmark: the PURE engine against a naive circuit-attribution pipeline.

Run ``python -m pure_utils.perf`` (``--quick`` for a small sanity run, ``--help`` for knobs).
``python -m pure_utils.perf --scale paper`` runs the paper-scale dry run of every stage
instead (:mod:`pure_utils.perf.scale`; ``--scale paper --help`` for its knobs).

The naive pipeline is how CRP-based pipelines compute PURE vectors: for each neuron, its
reference images go through the *whole* model and the backward pass runs to the *input*, with
parameter gradients enabled. It shares nothing between neurons, so it is timed on a subset of
the neurons and its time is scaled per neuron (the output says so). The engine
(:func:`pure_utils.circuits.circuit_attributions`) shares one forward per image between
neurons and back-propagates from ``layer`` to ``lower_layer`` only.

Setting (defaults): timm ``resnet50`` with random weights (BatchNorm re-randomised), 512
generated images at 224 px, 64 neurons of ``layer4``, ``n_ref = 100``, lower layer ``layer3``.
Targets: engine at least 5x faster per neuron; attributions equal within 1e-5.
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import timm
import torch
from torch import nn

from .._progress import tqdm
from ..circuits import circuit_attributions
from ..data import GeneratedImages
from ..models import randomize_batchnorm
from ..layers import get_layer
from ..references import check_references, mine_references
from .scale import main as scale_main

__all__ = ["GeneratedImages", "naive_attributions", "run_benchmark", "main"]

def naive_attributions(model: nn.Module, dataset, references, layer: str, lower_layer: str,
                       neurons, *, batch_size: int = 32, progress: bool = True) -> torch.Tensor:
    """Gradient x Activation circuit vectors the naive way (the benchmark's baseline).

    Per neuron and batch of its reference images: full forward pass of the model, backward
    pass from ``layer`` (initial gradient: the neuron's clamped activation map) down to the
    input, with the input and all parameters requiring gradients.

    Returns
    -------
    Tensor[len(neurons), n_ref, C_lower]
        Normalised vectors, as :func:`~pure_utils.circuits.circuit_attributions`.
    """
    low_mod, high_mod = get_layer(model, lower_layer), get_layer(model, layer)
    check_references(references, model=model, dataset=dataset)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    device = next(model.parameters()).device
    out = []
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        for k in tqdm(list(neurons), desc="naive", disable=not progress):
            rows = []
            for start in range(0, references.n_ref, batch_size):
                idx = references.indices[k, start:start + batch_size].tolist()
                x = torch.stack([dataset[i][0] for i in idx]).to(device).requires_grad_(True)
                store = {}
                hooks = [low_mod.register_forward_hook(lambda m, i, o: store.__setitem__("low", o)),
                         high_mod.register_forward_hook(lambda m, i, o: store.__setitem__("high", o))]
                try:
                    model(x)
                finally:
                    for h in hooks:
                        h.remove()
                low, high = store["low"], store["high"]
                low.retain_grad()
                grad = torch.zeros_like(high)
                grad[:, k] = high[:, k].detach().clamp(min=0)
                high.backward(grad)
                r = (low.grad * low.detach()).sum((2, 3))
                rows.append((r / (r.abs().sum(-1, keepdim=True) + 1e-10)).cpu())
                model.zero_grad(set_to_none=True)
            out.append(torch.cat(rows))
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.zero_grad(set_to_none=True)
    return torch.stack(out)


def _clock(device) -> float:
    """Wall-clock time, after waiting for queued GPU work (timings would be meaningless otherwise)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def run_benchmark(*, images: int = 512, neurons: int = 64, naive_neurons: int = 8,
                  n_ref: int = 100, size: int = 224, model_name: str = "resnet50",
                  layer: str = "layer4", lower_layer: str = "layer3", batch_size: int = 32,
                  seed: int = 0, device=None, progress: bool = False, log=print) -> dict:
    """Run the benchmark and print its figures; returns them as a dict."""
    if naive_neurons > neurons:
        raise ValueError(f"naive_neurons={naive_neurons} must be <= neurons={neurons}")
    torch.manual_seed(seed)
    model = timm.create_model(model_name, pretrained=False).eval()
    randomize_batchnorm(model, seed)
    for p in model.parameters():
        p.requires_grad_(False)
    if device is not None:
        model.to(device)
    data = GeneratedImages(images, size=size, seed=seed)
    log(f"setting: timm {model_name} (random weights, BatchNorm re-randomised), {images} generated "
        f"images at {size} px, {neurons} neurons of {layer}, n_ref={n_ref}, lower layer "
        f"{lower_layer}, torch threads={torch.get_num_threads()}, device={device or 'cpu'}")

    t0 = _clock(device)
    refs = mine_references(model, data, layer, n_ref, batch_size=batch_size, progress=progress)
    t_mine = _clock(device) - t0
    log(f"mining: {images} images in {t_mine:.1f} s = {images / t_mine:.1f} images/s "
        "(one forward pass, stopped after the layer)")

    gen = torch.Generator().manual_seed(seed)
    chosen = sorted(torch.randperm(refs.n_channels, generator=gen)[:neurons].tolist())
    common = chosen[:naive_neurons]

    t0 = _clock(device)
    fast = circuit_attributions(model, data, refs, layer, lower_layer, neurons=chosen,
                                batch_size=batch_size, progress=progress)
    t_engine = _clock(device) - t0
    per_engine = t_engine / neurons
    log(f"engine attribution: {neurons} neurons x {n_ref} refs in {t_engine:.1f} s "
        f"= {per_engine:.2f} s per neuron")

    t0 = _clock(device)
    slow = naive_attributions(model, data, refs, layer, lower_layer, common,
                              batch_size=batch_size, progress=progress)
    t_naive = _clock(device) - t0
    per_naive = t_naive / naive_neurons
    log(f"naive attribution: {naive_neurons} neurons x {n_ref} refs in {t_naive:.1f} s "
        f"= {per_naive:.2f} s per neuron; scaled per neuron to {neurons} neurons: "
        f"{per_naive * neurons:.1f} s (estimate: timed on {naive_neurons} of the {neurons})")

    ratio = per_naive / per_engine
    diff = (fast[:naive_neurons] - slow).abs().max().item()
    log(f"speed-up (naive / engine, per neuron): {ratio:.1f}x  [target >= 5]")
    log(f"max |engine - naive| on the {naive_neurons} common neurons: {diff:.2e}  [target <= 1e-5]")
    ok = ratio >= 5 and diff <= 1e-5 and math.isfinite(diff)
    log("targets met" if ok else "TARGETS NOT MET")
    return {"mining_images_per_s": images / t_mine, "mining_s": t_mine, "engine_s": t_engine,
            "engine_s_per_neuron": per_engine, "naive_s": t_naive,
            "naive_s_per_neuron": per_naive, "ratio": ratio, "max_abs_diff": diff, "ok": ok}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--scale" or a.startswith("--scale=") for a in argv):
        return scale_main(argv)
    parser = argparse.ArgumentParser(prog="python -m pure_utils.perf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=["paper"],
                        help="run the paper-scale dry run of every stage instead (see "
                        "--scale paper --help)")
    parser.add_argument("--images", type=int, default=512, help="generated images to mine")
    parser.add_argument("--neurons", type=int, default=64, help="neurons attributed by the engine")
    parser.add_argument("--naive-neurons", type=int, default=8,
                        help="neurons (a subset of the above) run through the naive pipeline")
    parser.add_argument("--n-ref", type=int, default=100, help="reference samples per neuron")
    parser.add_argument("--size", type=int, default=224, help="image size in pixels")
    parser.add_argument("--model", default="resnet50", help="timm model name (random weights)")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--lower-layer", default="layer3")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default=None, help="e.g. cuda (default: cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--quick", action="store_true",
                        help="small sanity run: 24 images at 64 px, 4 neurons (2 naive), n_ref 6")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.images, args.neurons, args.naive_neurons, args.n_ref, args.size = 24, 4, 2, 6, 64
    result = run_benchmark(images=args.images, neurons=args.neurons,
                           naive_neurons=args.naive_neurons, n_ref=args.n_ref, size=args.size,
                           model_name=args.model, layer=args.layer, lower_layer=args.lower_layer,
                           batch_size=args.batch_size, seed=args.seed, device=args.device,
                           progress=args.progress)
    return 0 if result["ok"] or args.quick else 1


if __name__ == "__main__":
    raise SystemExit(main())
