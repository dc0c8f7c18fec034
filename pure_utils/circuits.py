"""Circuit attributions: how much each channel of a lower layer contributes to a neuron.

For neuron ``k`` of layer ``L`` and one of its reference samples, PURE's circuit vector has one
entry per channel ``i`` of the lower layer ``L-1`` (Dreyer et al. 2024, Eq. 3):

    R_i = sum_s A_i^{L-1}(s) * [J^T relu(A_k^L)]_i(s)

the gradient of channel ``k`` of ``L`` with respect to the activation of ``L-1``, started
with the neuron's own activation map clamped at zero (``grad_output = relu(A_k^L)``, other
channels 0), times that activation, summed over space ``s``. With ``normalize=True`` the
vector is divided by ``sum_i |R_i| + 1e-10`` (sign kept), as in the reference pipeline.
``attribution`` may instead name a zennit composite: the LRP relevance arriving at the output
of ``L-1`` from the same initial relevance (Eq. 1-2), summed over space. LRP is refused on a
model the canonizers do not cover (:func:`pure_utils.canonizers.lrp_support`) unless asked for
with ``approximate=True``; :func:`lrp_conservation` measures how much of the initial relevance
arrives at ``L-1`` (1 for a covered model without biases).

Every layer is read through its layout (:mod:`pure_utils.layers`): for a ViT the channels are
the embedding dimensions of the tokens, the initial relevance is the neuron's clamped activation
on the patch tokens (``tokens="patches"``) and the sum at the lower layer runs over all its
tokens, so that what flows through the class token counts.

Results are checked on the way out: references mined on another model or dataset are refused
(:func:`pure_utils.references.check_references`), and a NaN or infinite vector stops the run,
naming its neuron and sample.

How the engine saves work (no approximation involved):

- one forward pass per image, shared by all neurons whose reference sets contain it;
- the output of ``L-1`` is replaced by a detached leaf tensor, so the backward pass runs from
  ``L`` to ``L-1`` only - never to the input - and parameters never require gradients;
- the neurons of one image are processed as "slots": slot ``j`` back-propagates, for every
  image of the batch at once, the ``j``-th neuron that needs the image. Images are sorted by
  how many neurons need them so that batches are nearly full in every slot;
- given the :class:`~pure_utils.stash.ActivationStash` of the mining run (Gradient x Activation,
  one lower layer), the lower layer's output of the reference images comes from it and only
  ``L`` runs (``L`` from ``L-1``, and its backward pass); images it does not hold are run as usual;
- images are read ahead in DataLoader worker processes (``num_workers``);
- under torch.distributed every rank computes whole batches of the single-process plan, in
  turn (the stash's records travel to the rank that needs them), and every rank returns the
  whole result, the single-process one (:mod:`pure_utils.distributed`).
"""
from __future__ import annotations

import contextlib
import hashlib
import warnings

import torch
from torch import nn

from ._progress import tqdm
from .cache import TensorSpec, cached
from .canonizers import LRPApproximationWarning, composite_for, lrp_support
from .data import check_dataset
from .distributed import first_found, is_distributed, is_main, my_share, sum_across_ranks
from .layers import (eval_mode, forward_until, frozen_parameters, get_layer, layer_layout,
                     layer_order, layout_key, resolve_layout, run_model, stop_after)
from .models import resolve_device
from .references import References, check_references, index_tensor, neuron_ids
from .stash import ActivationStash, feed_batches, stash_serves

#: The smallest median relevance conservation that approximate LRP accepts (see
#: :func:`circuit_attributions`' ``min_conservation``).
MIN_CONSERVATION = 0.1

__all__ = ["ATTRIBUTIONS", "BASELINES", "circuit_attributions", "activation_vectors",
           "lrp_conservation", "check_lower_layers", "MIN_CONSERVATION"]

#: The activation baselines by name -> ``pooling`` of :func:`activation_vectors`: every channel's
#: spatial mean (the paper's), or every channel where the unit itself peaks (a local baseline).
BASELINES = {"activations (mean)": "mean", "activations (peak)": "peak"}

#: Accepted ``attribution`` names: Gradient x Activation and zennit composite names (LRP).
ATTRIBUTIONS = ("gxa", "epsilon_plus_flat", "epsilon_plus", "epsilon_alpha2_beta1_flat",
                "epsilon_gamma_box")

_EPS = 1e-10


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------
def _check_attribution(attribution: str) -> str:
    if attribution not in ATTRIBUTIONS:
        raise ValueError(f"attribution {attribution!r} not known; attributions: "
                         f"{', '.join(ATTRIBUTIONS)}")
    return attribution


def check_lower_layers(model: nn.Module, layer: str, lower_layer) -> list[str]:
    """``lower_layer`` as a list of names, validated against ``layer``: every name a module that
    runs before ``layer`` (a ``ValueError`` says which is not), none twice, not empty."""
    get_layer(model, layer)
    lowers = [lower_layer] if isinstance(lower_layer, str) else list(lower_layer)
    if not lowers:
        raise ValueError("lower_layer is empty; give a layer name or a list of names")
    if len(set(lowers)) != len(lowers):
        raise ValueError(f"lower_layer {lowers} names a layer twice")
    order = layer_order(model, lowers + [layer])  # ValueError for unknown names
    for name, pos in zip(lowers, order[:-1]):
        if pos >= order[-1] or layer.startswith(name + "."):
            raise ValueError(f"lower_layer {name!r} must come before layer {layer!r} "
                             "(an earlier module whose output feeds it)")
    return lowers


def _no_neurons(layer):
    return ValueError(f"neurons is empty; give at least one channel of layer {layer!r}")


def _layer_of(references, layer):
    """The neurons' layer: ``layer`` if given, else the one the references were mined for."""
    if layer is not None:
        return layer
    if isinstance(references, References):
        return references.layer
    raise ValueError("layer must be given when references is an index tensor (References "
                     "record their layer)")


def _reference_rows(references, layer, neurons, *, model=None, dataset=None):
    """``(neurons list, LongTensor[N, n_ref] of dataset indices)``; mined references are checked
    against ``model`` and ``dataset``."""
    if isinstance(references, References):
        if references.layer != layer:
            raise ValueError(f"references were mined for layer {references.layer!r}, "
                             f"not {layer!r}")
        check_references(references, model=model, dataset=dataset)
        if neurons is None:
            neurons = references.channels.tolist()
        neurons = neuron_ids(neurons)
        if not neurons:
            raise _no_neurons(layer)
        return neurons, references.indices[references.rows(neurons)]
    # a plain index tensor: one row of dataset indices per neuron (e.g. the test phase)
    indices = index_tensor(references, "references given as an index tensor")
    if indices.ndim == 1:
        indices = indices[None]
    if neurons is None:
        raise ValueError("neurons must be given when references is an index tensor")
    neurons = neuron_ids(neurons)
    if not neurons:
        raise _no_neurons(layer)
    if indices.shape[0] == 1 and len(neurons) > 1:
        indices = indices.expand(len(neurons), -1)
    if indices.shape[0] != len(neurons):
        raise ValueError(f"references has {indices.shape[0]} rows for {len(neurons)} neurons")
    return neurons, indices


def _check_indices(indices: torch.Tensor, n: int) -> None:
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n):
        raise ValueError(f"reference index out of range for a dataset of {n} samples; "
                         "were the references mined on another dataset?")


def _check_channels(neurons, n_channels: int, layer: str) -> None:
    bad = [k for k in neurons if not 0 <= k < n_channels]
    if bad:
        raise ValueError(f"neuron index {bad[0]} out of range for layer {layer!r} "
                         f"with {n_channels} channels; accepted: 0..{n_channels - 1}")


def _normalize(r: torch.Tensor) -> torch.Tensor:
    """Divide by the sum of absolute values over the last axis (+1e-10); zero stays zero."""
    return r / (r.abs().sum(-1, keepdim=True) + _EPS)


def _check_finite(what: str, values: torch.Tensor, neurons, indices) -> None:
    """Raise naming the (neuron, sample) pairs whose ``values[row, slot, ...]`` are not finite."""
    bad = ~torch.isfinite(values.reshape(*indices.shape, -1)).all(-1)
    if not bad.any():
        return
    pairs = bad.nonzero().tolist()
    named = ", ".join(f"neuron {neurons[r]} on sample {int(indices[r, j])}" for r, j in pairs[:10])
    more = f" and {len(pairs) - 10} more" if len(pairs) > 10 else ""
    raise ValueError(f"{what} are not finite (NaN or inf) for {named}{more}; check these inputs "
                     "(and the model's weights)")


def _indices_digest(neurons, indices) -> str:
    h = hashlib.sha256()
    h.update(str(list(neurons)).encode())
    h.update(indices.contiguous().numpy().astype("int64").tobytes())
    return h.hexdigest()[:24]


# --------------------------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------------------------
def _capture(model, x, layer_module, lower_modules, lowers, layouts):
    """Forward ``x`` until ``layer``; the first lower layer to run becomes a grad-requiring leaf.

    ``layouts``: those of ``lowers`` and, last, of the layer, which check the outputs.
    Returns ``(out, acts)``: the output of ``layer`` (in the graph) and the lower layers'
    outputs (same order as ``lowers``) that the backward pass differentiates.
    """
    state = {"acts": {}, "leaf": False}

    def lower_hook(name, layout):
        def hook(mod, inp, out):
            out = layout.check(out, name)
            if not state["leaf"]:
                # cut the graph here: the backward pass stops at this layer
                out = out.detach().requires_grad_(True)
                state["leaf"] = True
            state["acts"][name] = out
            # a clone keeps the captured tensor safe from in-place ops further up (x += ...)
            return out.clone()
        return hook

    handles = [m.register_forward_hook(lower_hook(n, lay))
               for n, m, lay in zip(lowers, lower_modules, layouts)]
    try:
        with stop_after(layer_module) as top, torch.enable_grad():
            run_model(model, x)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in lowers if n not in state["acts"]]
    if missing or "out" not in top:
        raise ValueError(f"lower_layer {missing[0] if missing else lowers[0]!r} did not run "
                         "before the layer in the forward pass")
    out = layouts[-1].check(top["out"], "layer")
    if not out.requires_grad:
        raise ValueError(f"the layer's output does not depend on lower_layer {lowers}")
    return out, [state["acts"][n] for n in lowers]


def _from_lower(layer_module, lower, layouts):
    """``(out, [leaf])`` as :func:`_capture` gives them, with the lower layer's output given."""
    leaf = layouts[0].check(lower, "lower_layer").detach().requires_grad_(True)
    with torch.enable_grad():
        # the layer gets a copy of the leaf, as in _capture (safe from in-place operations)
        out = layouts[-1].check(layer_module(leaf.clone()), "layer")
    return out, [leaf]


def _attribute(model, dataset, layer, lowers, neurons, indices, *, layouts, composite,
               batch_size, device, progress, stash=None, num_workers=0):
    """Unnormalised circuit vectors and their initial relevance.

    ``stash``: a usable :class:`~pure_utils.stash.ActivationStash` (Gradient x Activation, one
    lower layer) or ``None``.

    Returns
    -------
    (list of Tensor[N, n_ref, C_l], Tensor[N, n_ref])
        One tensor per lower layer; the initial relevance (the neuron's clamped activation map,
        summed) of every vector. ``composite``: ``None`` for Gradient x Activation; ``layouts``:
        those of ``lowers`` and, last, of ``layer``.
    """
    lay = layouts[-1]
    layer_module = get_layer(model, layer)
    lower_modules = [get_layer(model, n) for n in lowers]

    # image -> list of (row of the result, reference position, channel)
    jobs: dict[int, list] = {}
    for row, (k, refs) in enumerate(zip(neurons, indices.tolist())):
        for pos, img in enumerate(refs):
            jobs.setdefault(int(img), []).append((row, pos, k))
    # most-needed images first: batches of images with similar slot counts waste little work
    images = sorted(jobs, key=lambda i: (-len(jobs[i]), i))
    plan = [images[s:s + batch_size] for s in range(0, len(images), batch_size)]

    n_rows, n_ref = indices.shape
    results = None
    initial = torch.zeros(n_rows, n_ref)
    bar = tqdm(total=sum(len(jobs[i]) for b in my_share(plan) for i in b),
               desc=f"circuits {layer}<-{','.join(lowers)}", unit="vec",
               disable=not progress or not is_main())
    context = composite.context(model) if composite is not None else contextlib.nullcontext()
    with eval_mode(model), context, frozen_parameters(model):
        for batch, x, lower in feed_batches(model, dataset, plan, stash=stash,
                                            num_workers=num_workers, device=device):
            if lower is not None:
                out, acts = _from_lower(layer_module, lower, layouts)
            else:
                out, acts = _capture(model, x, layer_module, lower_modules, lowers, layouts)
            if results is None:
                _check_channels(neurons, lay.n_channels(out), layer)
                results = [torch.zeros(n_rows, n_ref, low.n_channels(a))
                           for a, low in zip(acts, layouts)]
            unit = lay.channels(out.detach())  # [B, C, positions of the unit]
            # the activations multiply the gradients (GxA); LRP reads the relevance itself
            weights = [a.detach() for a in acts] if composite is None else None
            n_slots = len(jobs[batch[0]])
            for slot in range(n_slots):
                sel = [(b, jobs[img][slot]) for b, img in enumerate(batch) if len(jobs[img]) > slot]
                b_idx = torch.tensor([b for b, _ in sel], device=out.device)
                ch = torch.tensor([job[2] for _, job in sel], device=out.device)
                seed = torch.zeros_like(unit)
                # initial relevance: the neuron's own activation map, clamped at zero
                seed[b_idx, ch] = unit[b_idx, ch].clamp(min=0)
                grads = torch.autograd.grad(out, acts, lay.place(seed, out),
                                            retain_graph=slot < n_slots - 1, allow_unused=True)
                rows = torch.tensor([job[0] for _, job in sel])
                pos = torch.tensor([job[1] for _, job in sel])
                initial[rows, pos] = seed[b_idx, ch].sum(-1).float().cpu()
                for li, g in enumerate(grads):
                    if g is None:  # this lower layer does not feed the layer: no circuit
                        continue
                    g = g[b_idx]
                    if weights is not None:
                        g = g * weights[li][b_idx]
                    # every position of the lower layer, prefix tokens included
                    results[li][rows, pos] = layouts[li].everywhere(g).sum(-1).float().cpu()
                bar.update(len(sel))
            del out, acts, weights, unit
    bar.close()
    if is_distributed():  # every entry was computed by one rank and is zero on the others
        widths = first_found(None if results is None else [r.shape[-1] for r in results])
        if results is None:
            results = [torch.zeros(n_rows, n_ref, w) for w in widths]
        results = [sum_across_ranks(r) for r in results]
        initial = sum_across_ranks(initial)
    return results, initial


def _circuits(model, dataset, references, layer, lower_layer, *, neurons, attribution,
              batch_size, device, cache, progress, approximate, stash=None, num_workers=0,
              layout=None, tokens=None):
    """``(lowers, tensors)``: the stored results, ``lower{i}`` Tensor[N, n_ref, C_i] (unnormalised)
    and ``initial`` Tensor[N, n_ref]."""
    lowers = check_lower_layers(model, layer, lower_layer)
    n = check_dataset(dataset)
    neurons, indices = _reference_rows(references, layer, neurons, model=model, dataset=dataset)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    _check_indices(indices, n)
    recorded = references.layout if isinstance(references, References) else None
    layouts = [layer_layout(model, name, layout) for name in lowers]
    layouts.append(resolve_layout(model, layer, layout, tokens, recorded))
    # refused (or announced) before anything runs, whether or not the result is cached
    composite = None if attribution == "gxa" else composite_for(
        attribution, model, dataset=dataset, layer=layer, lower_layer=lowers,
        approximate=approximate)
    device = resolve_device(model, device)
    # the stash serves Gradient x Activation from the one lower layer it keeps
    stash = stash if _stash_serves(stash, model, dataset, layer, lowers, composite) else None

    def compute():
        parts, initial = _attribute(model, dataset, layer, lowers, neurons, indices,
                                    layouts=layouts, composite=composite, batch_size=batch_size,
                                    device=device, progress=progress, stash=stash,
                                    num_workers=num_workers)
        for name, p in zip(lowers, parts):
            _check_finite(f"circuit attributions of layer {layer!r} at {name!r}", p, neurons, indices)
        return {**{f"lower{i}": p for i, p in enumerate(parts)}, "initial": initial}

    shape = tuple(indices.shape)
    expect = {f"lower{i}": TensorSpec(shape + (None,), torch.float32, finite=True)
              for i in range(len(lowers))}
    expect["initial"] = TensorSpec(shape, torch.float32, low=0, finite=True)
    tensors = cached("circuits", cache, dataset, compute, model=model, expect=expect, layer=layer,
                     lower_layer=lowers, attribution=attribution, neurons=neurons,
                     refs=_indices_digest(neurons, indices), **layout_key(*layouts))
    return lowers, tensors


def _stash_serves(stash, model, dataset, layer, lowers, composite) -> bool:
    if stash is None:
        return False
    if not isinstance(stash, ActivationStash):
        raise ValueError(f"stash={stash!r}: give the ActivationStash of the mining run, or None")
    return composite is None and stash_serves(stash, model, dataset, layer, lowers)


def _ratios(tensors: dict, i: int) -> torch.Tensor:
    """Relevance arriving at lower layer ``i`` over the initial relevance (NaN where none)."""
    initial = tensors["initial"]
    arrived = tensors[f"lower{i}"].sum(-1)
    return torch.where(initial > 0, arrived / initial.clamp_min(1e-30), torch.nan)


def circuit_attributions(model: nn.Module, dataset, references, layer: str | None = None,
                         lower_layer=None, *,
                         neurons=None, attribution: str = "gxa", normalize: bool = True,
                         batch_size: int = 32, device=None, cache=None,
                         progress: bool = True,
                         approximate: bool = False, stash: ActivationStash | None = None,
                         num_workers: int = 0, layout=None,
                         tokens: str | None = None,
                         min_conservation: float | None = None) -> torch.Tensor:
    """PURE circuit vectors of neurons of ``layer`` on their reference samples (Eq. 3).

    Parameters
    ----------
    model : nn.Module
        Any CNN or vision transformer; used in ``eval()`` mode with parameters'
        ``requires_grad`` off (both restored).
    dataset : Dataset
        ``dataset[i] -> (Tensor[3, H, W], label)``; ``dataset.fingerprint`` for caching.
    references : References or LongTensor[N, m]
        Mined references of ``layer`` (refused when mined on another model or dataset), or
        integer dataset indices per neuron (``neurons`` required; a single row is used for all
        neurons) - e.g. new samples in the test phase.
    layer : str, optional
        Layer ``L`` of the neurons: by default ``references.layer``; given, it must equal it
        (required when ``references`` is an index tensor).
    lower_layer : str or list of str
        Layer ``L-1``; a list gives the per-layer vectors, each normalised on its own,
        concatenated in the given order (the "fuller circuit" ablation).
    neurons : int or sequence of int, optional
        Channels of ``layer`` (default: all channels held by ``references``); not empty.
    attribution : str
        ``"gxa"`` (Gradient x Activation, the paper's default) or a zennit composite name from
        :data:`ATTRIBUTIONS` (LRP with :func:`~pure_utils.canonizers.canonizers_for` canonizers).
    normalize : bool
        Divide each vector by the sum of its absolute values + 1e-10 (sign kept).
    batch_size, device, cache, progress, num_workers
        The run options (see :mod:`pure_utils`); an image's neurons share one pass; the
        cache keeps the unnormalised vectors.
    approximate : bool
        LRP only: compute it on a model the canonizers do not cover (otherwise a ``ValueError``
        names what is missing), with a :class:`~pure_utils.canonizers.LRPApproximationWarning`
        that reports the relevance conservation measured (see :func:`lrp_conservation`). When
        the median conservation falls below ``min_conservation`` the vectors are refused.
    min_conservation : float, optional
        Approximate LRP only: the smallest median share of the initial relevance that must
        arrive at the lower layer (default :data:`MIN_CONSERVATION`, 0.1: below it more than 90%
        of the relevance is lost on the way and the normalised vectors describe what is left
        over, not the unit); ``0`` accepts any.
    stash : ActivationStash, optional
        The stash of the mining run (:func:`~pure_utils.references.mine_references`): Gradient x
        Activation from one lower layer then starts from the kept activations and runs only
        ``layer`` (the same vectors, without the second pass through the lower layers). Ignored
        for LRP, multiple lower layers, or a stash that kept nothing; refused for another model
        or dataset.
    layout : None, str, Layout or dict
        How to read the layers' outputs (default: detected, or for ``layer`` the layout the
        references were mined with; see :func:`pure_utils.layers.layer_layout`); a dict maps
        layer names to layouts.
    tokens : {"patches", "all"}, optional
        Token layers: the positions of the neuron (default: the references'; else
        ``"patches"``). The lower layer is always summed over all its tokens.

    Returns
    -------
    Tensor[len(neurons), n_ref, C_lower]
        ``C_lower`` is the sum of the channels of the lower layers. A neuron that does not
        activate on a sample gives a zero vector.

    Raises
    ------
    ValueError
        Among others, for references of another model or dataset, for non-finite vectors
        (naming the neurons and samples), and for LRP on an uncovered model.
    """
    attribution = _check_attribution(attribution)
    layer = _layer_of(references, layer)
    if lower_layer is None:
        raise ValueError("lower_layer must be given: the layer below the neurons (e.g. 'layer3')")
    lowers, tensors = _circuits(model, dataset, references, layer, lower_layer, neurons=neurons,
                                attribution=attribution, batch_size=batch_size, device=device,
                                cache=cache, progress=progress, approximate=approximate,
                                stash=stash, num_workers=num_workers, layout=layout,
                                tokens=tokens)
    if attribution != "gxa" and lrp_support(model, layer=layer, lower_layer=lowers):
        for i, name in enumerate(lowers):
            r = _ratios(tensors, i)
            r = r[torch.isfinite(r)]
            if not r.numel():
                continue
            said = (f"approximate LRP ({attribution}): relevance arriving at {name!r} / initial "
                    f"relevance at {layer!r}: median {r.median():.3f} (min {r.min():.3f}, max "
                    f"{r.max():.3f}) over {r.numel()} vectors; 1 means conserved")
            bound = MIN_CONSERVATION if min_conservation is None else float(min_conservation)
            if bound > 0 and float(r.median()) < bound:
                raise ValueError(f"{said}. Below min_conservation={bound}: the vectors would "
                                 "describe the relevance left over, not the unit. Use attribution="
                                 "'gxa', or pass min_conservation=0 to accept them anyway")
            warnings.warn(said, LRPApproximationWarning, stacklevel=2)
    parts = [tensors[f"lower{i}"] for i in range(len(lowers))]
    if normalize:
        parts = [_normalize(p) for p in parts]
    return torch.cat(parts, dim=-1)


def lrp_conservation(model: nn.Module, dataset, references, layer: str | None = None,
                     lower_layer: str | None = None, *,
                     neurons=None, attribution: str = "epsilon_plus_flat", approximate: bool = False,
                     batch_size: int = 32, device=None, cache=None,
                     progress: bool = False, layout=None,
                     tokens: str | None = None) -> torch.Tensor:
    """How much of a neuron's initial relevance arrives at the lower layer.

    For every (neuron, reference sample): the relevance summed over all channels and positions
    of ``lower_layer``, divided by the initial relevance (the neuron's clamped activation map,
    summed). LRP conserves relevance, so on a model the canonizers cover and without biases
    (which absorb relevance) the ratio is 1; elsewhere it says how far off the attribution is.

    Parameters
    ----------
    model, dataset, references, layer, neurons, layout, tokens
        As in :func:`circuit_attributions`.
    batch_size, device, cache, progress
        The run options (see :mod:`pure_utils`).
    lower_layer : str
        One lower layer.
    attribution : str
        An LRP composite name (default ``"epsilon_plus_flat"``); ``"gxa"`` is accepted too.
    approximate : bool
        Measure it on a model the canonizers do not cover (otherwise a ``ValueError``).

    Returns
    -------
    Tensor[len(neurons), n_ref]
        The ratios; NaN where the neuron does not activate (no initial relevance).
    """
    if not isinstance(lower_layer, str):
        raise ValueError(f"lower_layer={lower_layer!r}: give one layer name")
    attribution = _check_attribution(attribution)
    layer = _layer_of(references, layer)
    _, tensors = _circuits(model, dataset, references, layer, lower_layer, neurons=neurons,
                           attribution=attribution, batch_size=batch_size, device=device,
                           cache=cache, progress=progress, approximate=approximate,
                           layout=layout, tokens=tokens)
    return _ratios(tensors, 0)


def activation_vectors(model: nn.Module, dataset, references, layer: str | None = None, *,
                        neurons=None,
                        batch_size: int = 64, device=None, cache=None,
                        progress: bool = True, stash: ActivationStash | None = None,
                        num_workers: int = 0, layout=None, tokens: str | None = None,
                        pooling: str = "mean") -> torch.Tensor:
    """The activation baseline: the clamped activations of all channels, pooled over space.

    For each reference sample of each neuron, ``mean_s relu(A_c^L(s))`` for every channel ``c``
    of ``layer`` (after O'Mahony et al. 2023, as in the PURE paper's comparison); for a ViT's
    tokens, the mean over the patch tokens (``tokens="patches"``). With ``pooling="peak"``,
    ``relu(A_c^L(s*))`` at the position ``s*`` where neuron ``k`` itself is largest (the argmax
    of its map over the positions mining uses - the patch tokens of a ViT -, the first one on
    ties): what all channels do where ``k`` fires. :data:`BASELINES` names both.

    Parameters
    ----------
    model, dataset, references, layer, neurons, layout, tokens
        As in :func:`circuit_attributions`.
    batch_size, device, cache, progress, num_workers
        The run options (see :mod:`pure_utils`); each distinct image is computed once.
    stash : ActivationStash, optional
        The stash of the mining run: ``layer`` runs from the kept activations of its lower
        layer (the same features); images it does not hold are run as usual.
    pooling : {"mean", "peak"}
        The spatial mean (default) or the vector at the neuron's peak.

    Returns
    -------
    Tensor[len(neurons), n_ref, C]

    Notes
    -----
    Under torch.distributed each rank computes its share of the images; every rank returns the
    whole result.
    """
    if pooling not in BASELINES.values():
        raise ValueError(f"pooling={pooling!r} not known; accepted: {', '.join(BASELINES.values())}")
    layer = _layer_of(references, layer)
    layer_module = get_layer(model, layer)
    n = check_dataset(dataset)
    neurons, indices = _reference_rows(references, layer, neurons, model=model, dataset=dataset)
    _check_indices(indices, n)
    recorded = references.layout if isinstance(references, References) else None
    lay = resolve_layout(model, layer, layout, tokens, recorded)
    # what is computed once: an image (mean), or an image for one neuron (peak)
    wanted = [i if pooling == "mean" else (i, neurons[r])
              for r, row in enumerate(indices.tolist()) for i in row]
    needs = {}
    for i, k in set(wanted) if pooling == "peak" else ():
        needs.setdefault(i, []).append(k)
    device = resolve_device(model, device)
    if not _stash_serves(stash, model, dataset, layer,
                         [stash.lower_layer] if stash is not None else [], None):
        stash = None

    def compute():
        images, keys = sorted(set(indices.flatten().tolist())), sorted(set(wanted))
        plan = [images[s:s + batch_size] for s in range(0, len(images), batch_size)]
        feats = {}
        bar = tqdm(total=sum(map(len, my_share(plan))), desc=f"activations {layer}", unit="img",
                   disable=not progress or not is_main())
        with torch.inference_mode(), eval_mode(model):
            for batch, x, lower in feed_batches(model, dataset, plan, stash=stash,
                                                num_workers=num_workers, device=device):
                act = lay.check(forward_until(model, x, layer) if lower is None else  # from its input
                                layer_module(lower), layer)
                _check_channels(neurons, lay.n_channels(act), layer)
                clamped = lay.channels(act.clamp(min=0))  # [B, C, positions]
                if pooling == "mean":
                    feats.update(zip(batch, clamped.sum(-1).float().cpu() / clamped.shape[-1]))
                else:
                    feats.update(_peaks(lay.channels(act), clamped, batch, needs))
                bar.update(len(batch))
        bar.close()
        if is_distributed():  # each image was computed by one rank: the sum is every image
            (width,) = first_found([len(v) for v in feats.values()][:1] or None)
            full = torch.zeros(len(keys), width)
            for j, i in enumerate(keys):
                if i in feats:
                    full[j] = feats[i]
            feats = dict(zip(keys, sum_across_ranks(full)))
        flat = torch.stack([feats[i] for i in wanted]).clone()
        _check_finite(f"activations of layer {layer!r}", flat, neurons, indices)
        return {"features": flat.reshape(*indices.shape, -1)}

    expect = {"features": TensorSpec(tuple(indices.shape) + (None,), torch.float32, low=0,
                                     finite=True)}
    return cached("activation_vectors", cache, dataset, compute, model=model, expect=expect,
                  layer=layer, neurons=neurons, refs=_indices_digest(neurons, indices),
                  **layout_key(lay), **({} if pooling == "mean" else {"pooling": pooling}))["features"]


def _peaks(raw: torch.Tensor, clamped: torch.Tensor, batch, needs: dict) -> dict:
    """``{(image, k): Tensor[C]}``: ``clamped[b, :, s*]`` at the first argmax ``s*`` of ``raw[b, k]``
    (where mining finds the peak) for each neuron ``k`` in ``needs[image]``, ``image = batch[b]``;
    ``raw``, ``clamped``: ``Tensor[B, C, positions]``."""
    return {(i, k): clamped[b, :, int(raw[b, k].float().argmax())].float().cpu()
            for b, i in enumerate(batch) for k in needs.get(i, ())}
