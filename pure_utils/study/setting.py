"""A profile's setting, the features of that setting, and the paper's whole evaluation.

Flow, for one profile (:func:`pure_utils.study.profile.load_profile`)::

    setting = load_setting(profile)                    # model, data, references, neurons
    pure = setting.circuit_attributions()              # Tensor[n, n_ref, C_lower] (Eq. 3)
    acts = setting.activation_vectors()               # Tensor[n, n_ref, C]
    emb = embed_references(setting)                    # crops embedded in CLIP's role
    frame = tables.compare_clusterings(emb, {"PURE": pure, "activations (mean)": acts})

:func:`evaluate` runs all of it and returns every table (:class:`Evaluation`). The tables
themselves are built in :mod:`pure_utils.study.tables`; this module only knows how a profile turns
into a model, data, references and features.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from ..cache import TensorSpec, cached, resolve_cache
from ..circuits import BASELINES, activation_vectors, circuit_attributions
from ..crops import (crops_from_boxes, display_crops, embed_boxes, feature_heatmaps,
                     reference_boxes, reference_images)
from ..data import load_dataset
from ..disjoint import check_disjoint
from ..embed import ImageEmbedder, load_embedder
from ..layers import eval_mode, forward_until, layer_layout
from ..models import load_model, randomize_batchnorm, read_card, shipped_models
from ..references import References, mine_references
from ..shapes.generator import SyntheticConfig
from ..shapes.ground_truth import TrueFeatures, reference_concepts, true_features
from ..virtual import VirtualNeurons
from .profile import Profile, as_profile, check_profile, profile_device
from .tables import (ACTIVATIONS, ACTIVATIONS_PEAK, BASELINE_LABELS, PURE, compare_clusterings,
                     correlation_table, divergence_examples, ground_truth_table, heldout_purity,
                     paired_table, polysemanticity_table, summarize_frame)

__all__ = [
    "Setting", "load_setting", "layer_channels", "check_neurons", "model_layers", "select_neurons", "load_embedders", "evaluation_boxes",
    "embed_references", "true_features_of", "reference_concepts_of", "reference_crops",
    "heldout_references", "model_distribution", "strongly_polysemantic",
    "rank_neurons", "Evaluation", "evaluate", "baseline_pairs", "purity_pairs",
]


# --------------------------------------------------------------------------------------------
# setting: model, data, references
# --------------------------------------------------------------------------------------------
@dataclass
class Setting:
    """Everything an evaluation needs, loaded once from a profile.

    Attributes
    ----------
    profile : Profile
        With the model's own ``layer`` and ``lower_layer`` (``model_layers``); a mapping given
        here is checked and completed with the defaults (:func:`~pure_utils.study.profile.as_profile`).
    model : torch.nn.Module
    dataset : Dataset
    references : References
        Mined on all channels of ``profile["layer"]``.
    neurons : list of int
        The evaluated channels (all, or a seeded subset).
    device : str
    cache : Cache or None
    images : str
        Which images the references come from (:func:`model_distribution`), for tables.
    """

    profile: Profile
    model: torch.nn.Module
    dataset: object
    references: object
    neurons: list
    device: str
    cache: object = None
    images: str = "the profile's dataset"

    def __post_init__(self):
        self.profile = as_profile(self.profile, source="of the setting")

    @property
    def model_name(self) -> str:
        return getattr(self.model, "pure_name", self.profile.model_name)

    def neuron_list(self, neurons=None) -> list[int]:
        """``neurons`` as a list of ints; ``None``: the evaluated neurons."""
        return list(self.neurons) if neurons is None else [int(k) for k in neurons]

    def circuit_attributions(self, attribution: str | None = None, *, lower_layer=None,
                             neurons=None, dataset=None, references=None,
                             progress: bool = True) -> torch.Tensor:
        """PURE circuit vectors (Eq. 3) of the setting: ``Tensor[n_neurons, n_ref, C_lower]``.

        :func:`pure_utils.circuits.circuit_attributions` with the profile's model, layers,
        attribution, batch size, device and cache. Every argument left out comes from the
        profile (``attribution``, ``lower_layer``) or the setting (``neurons``: the evaluated
        ones; ``dataset`` and ``references``: the reference set; give both to attribute the
        references of another split, as in the test phase).
        """
        p = self.profile
        return circuit_attributions(
            self.model, self.dataset if dataset is None else dataset,
            self.references if references is None else references, p.layer,
            p.lower_layer if lower_layer is None else lower_layer,
            neurons=self.neuron_list(neurons), attribution=attribution or p.attribution,
            batch_size=p.batch_size, device=self.device, cache=self.cache,
            progress=progress)

    def activation_vectors(self, *, neurons=None, dataset=None, references=None,
                            pooling: str = "mean", progress: bool = True) -> torch.Tensor:
        """An activation baseline of the setting: ``Tensor[n_neurons, n_ref, C]``.

        :func:`pure_utils.circuits.activation_vectors` with the profile's model, layer, batch
        size, device and cache (arguments as in :meth:`circuit_attributions`); ``pooling``
        ``"mean"`` (the paper's baseline, ``"activations (mean)"``) or ``"peak"`` (the layer at
        the unit's peak, ``"activations (peak)"``; :data:`~pure_utils.circuits.BASELINES`).
        """
        p = self.profile
        return activation_vectors(
            self.model, self.dataset if dataset is None else dataset,
            self.references if references is None else references, p.layer,
            neurons=self.neuron_list(neurons), batch_size=p.batch_size,
            device=self.device, cache=self.cache, progress=progress, pooling=pooling)

    def baselines(self, **kwargs) -> dict:
        """Both activation baselines: ``{"activations (mean)": ..., "activations (peak)": ...}``
        (:meth:`activation_vectors` with each ``pooling`` of
        :data:`~pure_utils.circuits.BASELINES`; ``kwargs`` as there)."""
        return {label: self.activation_vectors(pooling=pooling, **kwargs)
                for label, pooling in BASELINES.items()}

    def virtual_neurons(self, vectors, k: int = 2) -> VirtualNeurons:
        """One neuron's virtual neurons: :class:`~pure_utils.virtual.VirtualNeurons` with ``k``
        clusters and the profile's k-means seed and restarts, fitted on ``vectors``
        (``Tensor[n_ref, C]``, e.g. a row of :meth:`circuit_attributions`)."""
        return VirtualNeurons(n_clusters=k, **self.profile.clustering).fit(vectors)

    def reference_images(self, neuron: int, n_ref: int | None = None) -> torch.Tensor:
        """The neuron's reference samples as images in [0, 1]: ``Tensor[n_ref, 3, H, W]``
        (:func:`~pure_utils.crops.reference_images`)."""
        return reference_images(self.dataset, self.references, neuron, n_ref=n_ref)

    def heatmaps(self, neurons=None, *, composite: str | None = None,
                 progress: bool = True) -> torch.Tensor:
        """Heatmaps of the neurons' references: ``Tensor[n_neurons, n_ref, H, W]``.

        :func:`~pure_utils.crops.feature_heatmaps` with the profile's layer, composite (or
        ``composite``: ``"gradient_x_input"`` where LRP does not cover the model), batch size
        and device; ``neurons`` default to the evaluated ones.
        """
        p = self.profile
        return feature_heatmaps(self.model, self.dataset, self.references, p.layer,
                                self.neuron_list(neurons), composite=composite or p.composite,
                                batch_size=p.batch_size, device=self.device, progress=progress)

    def display_crops(self, neuron: int, heatmaps: torch.Tensor) -> list[torch.Tensor]:
        """Display crops of one neuron's references (:func:`~pure_utils.crops.display_crops`
        with the profile's display crop), given its heatmaps (``Tensor[n_ref, H, W]``, a row of
        :meth:`heatmaps`)."""
        return display_crops(self.reference_images(neuron), heatmaps, **self.profile.display_crop)


def select_neurons(n_channels: int, n_neurons: int | None = None, seed: int = 0, *,
                   exclude=()) -> list[int]:
    """All channels, or a seeded random subset of ``n_neurons`` of them (sorted).

    Parameters
    ----------
    n_channels : int
        Channels of the layer.
    n_neurons : int, optional
        Subset size (``None``: all).
    seed : int
        Seed of the subset.
    exclude : collection of int
        Channels never chosen (those that never activate); without any, the subset is the
        same as before this option existed.

    Returns
    -------
    list of int
    """
    exclude = set(exclude)
    candidates = [k for k in range(n_channels) if k not in exclude]
    if n_neurons is None or n_neurons >= len(candidates):
        return candidates
    if n_neurons < 1:
        raise ValueError(f"n_neurons={n_neurons} must be >= 1 (or null for all {n_channels})")
    rng = np.random.default_rng(seed)
    return sorted(candidates[int(i)] for i in rng.choice(len(candidates), size=n_neurons,
                                                         replace=False))


def model_layers(profile: dict, model_name: str) -> dict:
    """The ``layer`` / ``lower_layer`` that ``profile["model_layers"]`` gives ``model_name``
    (empty: the profile's own apply)."""
    own = dict((profile.get("model_layers") or {}).get(model_name) or {})
    bad = sorted(set(own) - {"layer", "lower_layer"})
    if bad:
        raise ValueError(f"profile {profile.get('name')!r}: model_layers.{model_name} sets {bad}; "
                         "only layer and lower_layer can be given per model")
    return own


def _generator_changes(config: dict) -> str:
    """The knobs of a generator configuration that differ from the defaults, as text."""
    own, default = SyntheticConfig(**config).to_dict(), SyntheticConfig().to_dict()
    changed = {k: v for k, v in own.items() if default.get(k) != v}
    return ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in changed.items())


def model_distribution(profile: Profile | dict, model_name: str, kwargs=None) -> tuple[dict, str]:
    """The dataset keywords a model is evaluated with, and which images they give.

    A shipped model is scored on the images it was trained for: when ``own_distribution`` is
    on and the model's card records generator settings for the profile's dataset (the family
    of "When do circuits beat activations?": more distractors, larger ones, another
    background), those settings replace the ``config`` of the profile's keywords; the split,
    size and seed stay the profile's. Any other model (a timm name, a card of another dataset)
    uses the profile's keywords unchanged.

    Parameters
    ----------
    profile : Profile or dict
    model_name : str
    kwargs : dict, optional
        The keywords to adapt (default ``profile["dataset_kwargs"]``; the test phase gives
        ``heldout_dataset_kwargs``).

    Returns
    -------
    (dict, str)
        The keywords for :func:`~pure_utils.data.load_dataset` and a description of the images
        for tables ("test split, own settings: distractors_min=4, distractors_max=6").
    """
    p = as_profile(profile)
    kwargs = dict(p.dataset_kwargs or {}) if kwargs is None else dict(kwargs)
    split = kwargs.get("split", "the profile's")
    card = read_card(model_name) if model_name in shipped_models() else {}
    data = card.get("dataset") or {}
    if not (p.own_distribution and data.get("name") == p.dataset and data.get("config")):
        return kwargs, f"{split} split, the profile's settings"
    changes = _generator_changes(data["config"])
    if not changes and "config" not in kwargs:  # trained on the defaults: nothing to replace
        return kwargs, f"{split} split, own settings: the defaults"
    kwargs["config"] = dict(data["config"])
    return kwargs, f"{split} split, own settings: {changes or 'the defaults'}"


def layer_channels(model, dataset, layer: str, device="cpu") -> int:
    """The number of channels of ``layer``: one image of ``dataset`` through the model up to it."""
    x = dataset[0][0].unsqueeze(0).to(device)
    with torch.inference_mode(), eval_mode(model):
        out = forward_until(model, x, layer)
    return layer_layout(model, layer).n_channels(out)


def check_neurons(neurons, *, layer: str, model_name: str, n_channels: int,
                  evaluated=None, dead=()) -> list[int]:
    """The channels a reader asked for, checked: ``ValueError`` naming the first that is out of
    range (``0 <= k < n_channels``), never activates (``dead``) or, when ``evaluated`` is given,
    is not among the channels the profile evaluates. Returns them as a list of ints."""
    given = [neurons] if isinstance(neurons, (int, np.integer)) else list(neurons)
    where, dead = f"layer {layer!r} of {model_name}", {int(d) for d in dead}
    evaluated = None if evaluated is None else {int(e) for e in evaluated}
    out = []
    for k in given:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"neuron {k!r} is not a channel index (an integer) of layer {layer!r}")
        k = int(k)
        if not 0 <= k < n_channels:
            raise ValueError(f"neuron index {k} out of range: {where} has {n_channels} channels "
                             f"(0..{n_channels - 1})")
        if k in dead:
            raise ValueError(f"neuron {k} of {where} never activates on the data (no reference "
                             "samples): choose another channel")
        if evaluated is not None and k not in evaluated:
            raise ValueError(f"neuron {k} of {where} is not among the {len(evaluated)} channels "
                             "the profile evaluates (n_neurons, neuron_seed): choose one of them "
                             "or evaluate all (n_neurons: null)")
        out.append(k)
    return out


def load_setting(profile: Profile | dict, *, model_name: str | None = None, progress: bool = True,
                 neurons=None) -> Setting:
    """Load the model and data of a profile and mine the reference samples.

    Parameters
    ----------
    profile : Profile or dict
        From :func:`~pure_utils.study.profile.load_profile` (a mapping is checked and completed
        with the defaults).
    model_name : str, optional
        Overrides ``profile["model_name"]`` (e.g. one of ``profile["model_names"]``); the
        setting's profile then names this model.
    progress : bool
        Show progress bars.
    neurons : int or list of int, optional
        Channels the caller will study (a profile's ``fig3_neurons``): checked before anything is
        mined (in the layer's range) and after (activate on the data, among the evaluated
        channels), with :func:`check_neurons`' message; ``None`` checks nothing.

    Returns
    -------
    Setting
        Its ``profile`` holds the model's own ``layer`` and ``lower_layer`` where
        ``profile["model_layers"]`` names them (a model of another architecture family). Its
        ``neurons`` are the profile's (all channels, or a seeded subset) less the channels that
        never activate on the data (``references.dead``). Its ``dataset`` holds the images
        of :func:`model_distribution` (a shipped model's own generator settings) and
        ``images`` says which.

    Raises
    ------
    FileNotFoundError, RuntimeError, ValueError
        Missing data folder, unavailable weights, bad keys - with what to change.
    """
    p = check_profile(profile)
    name = model_name or p.model_name
    p = replace(p, model_name=name, **model_layers(p, name))
    model = load_model(name, pretrained=p.pretrained, checkpoint=p.checkpoint)
    if p.randomize_batchnorm:
        randomize_batchnorm(model, seed=0)
    device = profile_device(p.device)
    model.to(device)
    kwargs, images = model_distribution(p, name)
    dataset = load_dataset(p.dataset, **kwargs)
    if neurons is not None:  # before any work: a channel the layer does not have
        check_neurons(neurons, layer=p.layer, model_name=name,
                      n_channels=layer_channels(model, dataset, p.layer, device))
    cache = resolve_cache(p.cache)
    refs = mine_references(model, dataset, p.layer, p.n_ref, batch_size=p.batch_size,
                           device=device, cache=cache, progress=progress)
    # a channel that never activates on the data has no references to study (References.dead,
    # named by mine_references' warning): it is never among the evaluated neurons
    dead = refs.dead.tolist()
    evaluated = select_neurons(refs.n_channels, p.n_neurons, p.neuron_seed, exclude=dead)
    if not evaluated:
        raise ValueError(f"no channel of {p.layer!r} of {name} activates on the data "
                         f"({len(dead)} of {refs.n_channels} never do): choose another layer")
    if neurons is not None:
        check_neurons(neurons, layer=p.layer, model_name=name, n_channels=refs.n_channels,
                      evaluated=evaluated, dead=dead)
    return Setting(profile=p, model=model, dataset=dataset, references=refs, neurons=evaluated,
                   device=device, cache=cache, images=images)


def heldout_references(setting: Setting, *, progress: bool = True) -> tuple[object, References]:
    """The profile's held-out split and its references (the test phase's new samples).

    Returns
    -------
    (Dataset, References)
        The dataset of ``profile["heldout_dataset_kwargs"]`` and the ``n_ref`` (at most its
        length) most activating samples of every channel on it.

    Raises
    ------
    ValueError
        When the profile names no held-out split (``heldout_dataset_kwargs: null``).
    """
    p = setting.profile
    if not p.heldout_dataset_kwargs:
        raise ValueError(f"profile {p.name!r} names no held-out split "
                         "(heldout_dataset_kwargs: null); the test phase needs new samples")
    kwargs, _ = model_distribution(p, setting.model_name, p.heldout_dataset_kwargs)
    ds = load_dataset(p.dataset, **kwargs)
    check_disjoint(ds, setting.dataset, f"profile {p.name!r}: the held-out split")
    refs = mine_references(setting.model, ds, p.layer, min(p.n_ref, len(ds)),
                           batch_size=p.batch_size, device=setting.device,
                           cache=setting.cache, progress=progress)
    return ds, refs


# --------------------------------------------------------------------------------------------
# crops and embeddings
# --------------------------------------------------------------------------------------------
def load_embedders(setting_or_profile, dataset=None):
    """The embedder in CLIP's role and the one in DINOv2's role, as the profile names them.

    Returns
    -------
    (Embedder, Embedder or None)
        ``visual_embedder: null`` in the profile gives ``None``.
    """
    if isinstance(setting_or_profile, Setting):
        profile, dataset = setting_or_profile.profile, setting_or_profile.dataset
    else:
        profile = as_profile(setting_or_profile)
    out = []
    for role in ("embedder", "visual_embedder"):
        name = profile[role]
        if name is None:
            out.append(None)
            continue
        kwargs = dict(profile[f"{role}_kwargs"] or {})
        if name == "attributes":
            if dataset is None or not hasattr(dataset, "object_map"):
                raise ValueError(f"{role}: 'attributes' reads the annotations of the controlled "
                                 f"benchmark; dataset {profile.dataset!r} has none - use clip / "
                                 "dinov2")
            kwargs.update(colours=dataset.config.colours, shapes=dataset.config.shapes)
        else:
            kwargs.setdefault("device", profile_device(profile.device))
        out.append(load_embedder(name, pretrained=profile[f"{role}_pretrained"], **kwargs))
    return tuple(out)


def evaluation_boxes(setting: Setting, *, neurons=None, display: bool = False,
                     chunk_size: int = 8, progress: bool = True) -> torch.Tensor:
    """Crop boxes of the reference samples: ``LongTensor[n_neurons, n_ref, 4]`` (y0, x0, y1, x1).

    Heatmaps are computed neuron by neuron (they are large) and only the boxes are kept
    (and cached). ``display=True`` gives the boxes of the display variant; ``chunk_size``
    neurons share one heatmap computation.
    """
    p = setting.profile
    neurons = setting.neuron_list(neurons)
    kernel = p.display_blur_kernel if display else p.crop_blur_kernel
    thr = p.display_threshold if display else p.crop_threshold
    composite = p.composite

    def compute():
        # a few neurons per call: full batches, while the heatmaps (n_ref x H x W floats per
        # neuron) stay small in memory; shared by the ranks under torch.distributed
        return {"boxes": reference_boxes(
            setting.model, setting.dataset, setting.references, p.layer, neurons,
            composite=composite, blur_kernel=kernel, threshold=thr, chunk_size=max(1, chunk_size),
            batch_size=p.batch_size, device=setting.device, progress=progress)}

    expect = {"boxes": TensorSpec((len(neurons), setting.references.n_ref, 4), torch.int64, low=0)}
    return cached("crop_boxes", setting.cache, setting.dataset, compute, model=setting.model,
                  expect=expect, layer=p.layer, composite=composite, blur=kernel, threshold=thr,
                  neurons=neurons,
                  refs=setting.references.indices[setting.references.rows(neurons)])["boxes"].long()


def reference_crops(setting: Setting, neuron: int, boxes_of_neuron) -> list[torch.Tensor]:
    """Evaluation crops of one neuron's first ``m`` reference samples, given their boxes
    (``LongTensor[m, 4]``, ``m <= n_ref``)."""
    row = int(setting.references.rows([neuron])[0])
    boxes = torch.as_tensor(boxes_of_neuron).reshape(-1, 4)
    if len(boxes) > setting.references.n_ref:
        raise ValueError(f"{len(boxes)} boxes for the {setting.references.n_ref} reference samples "
                         f"of neuron {neuron}")
    return crops_from_boxes(setting.dataset, setting.references.indices[row, :len(boxes)], boxes)


def reference_concepts_of(setting: Setting, neurons=None) -> torch.Tensor:
    """The pixel rule's concept of each reference sample: ``LongTensor[n_neurons, n_ref]``.

    Kept to compare with the ground truth by intervention (:func:`true_features_of`).
    """
    refs = setting.references.subset(setting.neuron_list(neurons))
    return reference_concepts(setting.dataset, refs)


def true_features_of(setting: Setting, neurons=None, *, dataset=None, references=None,
                          progress: bool = True) -> TrueFeatures:
    """What drives each reference sample, by intervention (the benchmark's ground truth).

    :func:`pure_utils.shapes.ground_truth.true_features` of the evaluated neurons (or
    ``neurons``), on the reference set or on ``dataset`` / ``references`` (the held-out split);
    cached with the setting's cache.
    """
    refs = (setting.references if references is None else references)
    return true_features(setting.model, setting.dataset if dataset is None else dataset,
                              refs.subset(setting.neuron_list(neurons)),
                              batch_size=4 * setting.profile.batch_size,
                              device=setting.device, cache=setting.cache, progress=progress)


def strongly_polysemantic(setting: Setting, polysemanticity=None) -> list[int]:
    """The strongly polysemantic neurons, by a rule with a reason.

    With ground truth (the controlled benchmark): two or more true features
    (:meth:`TrueFeatures.polysemantic` with ``polysemantic_min_share``). Without: the
    paper's rule, a polysemanticity (Eq. 5 gap of the CLIP-role embeddings, ``polysemanticity``:
    a :func:`tables.polysemanticity_table`) above ``strong_polysemanticity`` (the paper: 1.5).
    """
    p = setting.profile
    if _has_concepts(setting):
        flags = true_features_of(setting).polysemantic(p.polysemantic_min_share)
        return [n for n, f in zip(setting.neurons, flags.tolist()) if f]
    if polysemanticity is None:
        raise ValueError("without ground truth the strongly polysemantic neurons come from the "
                         "polysemanticity table: pass polysemanticity=")
    gap = polysemanticity.set_index("neuron").polysemanticity
    return [int(n) for n in gap[gap > p.strong_polysemanticity].index]


def embed_references(setting: Setting, embedder=None, boxes=None, *, neurons=None,
                     progress: bool = True) -> torch.Tensor:
    """Embeddings of the reference samples' feature visualisations: ``Tensor[n_neurons, n_ref, d]``.

    Parameters
    ----------
    setting : Setting
    embedder : Embedder, optional
        Default: the profile's embedder in CLIP's role (:func:`load_embedders`).
    boxes : LongTensor[n_neurons, n_ref, 4], optional
        Crop boxes (default: :func:`evaluation_boxes`). Image embedders embed the crops; the
        attribute embedder reads what the annotations show inside each box.
    neurons : sequence of int, optional
        Default: the evaluated neurons.
    """
    neurons = setting.neuron_list(neurons)
    if embedder is None:
        embedder = load_embedders(setting)[0]
    if boxes is None:
        boxes = evaluation_boxes(setting, neurons=neurons, progress=progress)
    rows = setting.references.rows(neurons)
    indices = setting.references.indices[rows]
    if tuple(boxes.shape[:2]) != tuple(indices.shape):
        raise ValueError(f"boxes of shape {tuple(boxes.shape)} do not match the references "
                         f"{tuple(indices.shape)} of the {len(neurons)} neurons")

    def compute():
        flat_indices, flat_boxes = indices.reshape(-1), boxes.reshape(-1, 4)
        if isinstance(embedder, ImageEmbedder):  # streamed, shared by the ranks when distributed
            (emb,) = embed_boxes(setting.dataset, flat_indices, flat_boxes, [embedder],
                                 batch_size=embedder.batch_size, progress=progress)
        elif embedder.input_kind == "boxes":
            items = [(setting.dataset, int(i), b) for i, b in zip(flat_indices, flat_boxes.tolist())]
            emb = embedder.embed(items, progress=progress)
        else:
            emb = embedder.embed(crops_from_boxes(setting.dataset, flat_indices, flat_boxes),
                                 progress=progress)
        return {"embeddings": emb.reshape(*indices.shape, -1)}

    spec = getattr(embedder, "spec", None) or {"repr": repr(embedder)}
    # the crops (dataset, indices, boxes) and the embedder fix the result; the model does not
    expect = {"embeddings": TensorSpec(tuple(indices.shape) + (embedder.dim,))}
    return cached("embeddings", setting.cache, setting.dataset, compute, expect=expect,
                  embedder={k: str(v) for k, v in spec.items()}, dim=embedder.dim,
                  indices=indices, boxes=boxes)["embeddings"]


def _has_concepts(setting: Setting) -> bool:
    return setting.profile.has_concepts and hasattr(setting.dataset, "object_map")


def rank_neurons(setting: Setting, embeddings=None, *, neurons=None):
    """Neurons ordered from most to least polysemantic, for choosing examples.

    Two measures, as available:

    - ``polysemanticity``: the paper's gap (k-means k=2 on ``embeddings``, inter - intra).
      With the ground-truth embedder it saturates (every channel with two concepts scores
      ~1 whatever their proportions), so it cannot rank channels of the controlled benchmark;
    - ``second_share``: with ground truth, the share of the second most frequent true feature
      (by intervention, :func:`true_features_of`) among the reference samples (0 for a
      pure channel, up to 0.5 for an even mix).

    The order uses ``second_share`` when the profile has ground truth, else ``polysemanticity``.

    Returns
    -------
    pandas.DataFrame
        ``neuron`` and the available measures, most polysemantic first.
    """
    p = setting.profile
    neurons = setting.neuron_list(neurons)
    frame = polysemanticity_table(embeddings, neurons=neurons, random_state=p.random_state,
                                  n_init=p.n_init) if embeddings is not None else None
    key = "polysemanticity"
    if _has_concepts(setting):
        shares = true_features_of(setting, neurons, progress=False).shares()
        second = dict(zip(neurons, shares.sort(dim=1, descending=True).values[:, 1].tolist()))
        if frame is None:
            frame = pd.DataFrame({"neuron": neurons})
        frame["second_share"] = frame.neuron.map(second)
        key = "second_share"
    if frame is None:
        raise ValueError("rank_neurons needs embeddings or a dataset with ground-truth concepts")
    return frame.sort_values(key, ascending=False, kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# everything at once
# --------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """All tables of one evaluation run (see :func:`evaluate`).

    Both activation baselines are scored beside PURE: ``"activations (mean)"`` (the paper's)
    and ``"activations (peak)"`` (:data:`~pure_utils.study.tables.BASELINE_LABELS`); every
    paired table compares PURE with each of them.
    """

    setting: Setting
    comparison: object            # DataFrame: neuron, method, k, intra, inter, gap
    comparison_summary: object    # DataFrame: method, k, mean, sem, ci_low, ci_high, n, n_excluded
    comparison_pairs: object      # DataFrame: a, b, k, mean, ci_low, ci_high, p_value, n, word (gap)
    correlation: object           # DataFrame: method, mean, sem, n_subsets
    divergence: object            # DataFrame: neuron, r_pure, r_activations, difference, r_peak, ...
    polysemanticity: object       # DataFrame: neuron, polysemanticity
    features: object = None       # TrueFeatures of the evaluated neurons (ground truth)
    ground_truth: object = None   # DataFrame: neuron, method, k, ari, nmi (polysemantic neurons)
    ground_truth_summary: object = None
    ground_truth_pairs: object = None   # DataFrame: PURE (attribution) - each baseline, ARI, per k
    purity: object = None         # DataFrame: neuron, method, k, purity_neuron, purity_random, purity_virtual
    purity_pairs: object = None   # DataFrame: PURE against chance, both baselines, the unit alone
    tensors: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)   # stage -> seconds of this run (cache hits: load time)


def baseline_pairs(a) -> list[tuple[str, str]]:
    """``[(a, "activations (mean)"), (a, "activations (peak)")]`` for a method or a list of them:
    the paired comparisons of PURE with both activation baselines."""
    return [(m, b) for m in ([a] if isinstance(a, str) else a) for b in BASELINE_LABELS]


def evaluate(profile: Profile | dict, *, model_name: str | None = None, progress: bool = True,
             neurons=None) -> Evaluation:
    """Run the paper's whole evaluation for one profile and model.

    Steps: references; PURE circuits and both activation baselines (``"activations (mean)"``,
    the paper's, and ``"activations (peak)"``); evaluation crops; embeddings in CLIP's and
    DINOv2's roles; Eq. 5 comparison for ``profile["ks"]``; distance correlation; divergence;
    polysemanticity; and, on data with ground truth (features by intervention,
    :func:`true_features_of`), ARI / NMI on the polysemantic neurons for every attribution
    of ``profile["attributions"]`` and the test-phase purity on held-out images. Every
    comparison of PURE with another method is paired over the same neurons
    (:func:`pure_utils.study.tables.paired_table`), and PURE is compared with each baseline.
    ``neurons``: channels the caller will show (a profile's ``fig4_divergence_neuron``),
    checked as :func:`load_setting` checks them, before anything is mined.

    Returns
    -------
    Evaluation
    """
    p = as_profile(profile)
    clock, timings = time.perf_counter(), {}

    def lap(stage):
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = timings.get(stage, 0.0) + now - clock
        clock = now

    s = load_setting(p, model_name=model_name, progress=progress, neurons=neurons)
    lap("model, data and references (mining)")
    ks = list(p.ks)
    label_main, label_visual = p.embedder_label, p.visual_embedder_label
    kw = dict(random_state=p.random_state, n_init=p.n_init)
    boot = dict(n_boot=p.n_boot, level=p.ci_level)

    pure = s.circuit_attributions(progress=progress)
    lap("circuit attributions (PURE)")
    acts = s.baselines(progress=progress)
    lap("activation features (baselines)")
    main, visual = load_embedders(s)
    boxes = evaluation_boxes(s, progress=progress)
    lap("relevance heatmaps and crop boxes (A.1)")
    e_main = embed_references(s, main, boxes, progress=progress)
    spaces = {PURE: pure, **acts}
    features = {**spaces, label_main: e_main}
    e_visual = None
    if visual is not None:
        e_visual = embed_references(s, visual, boxes, progress=progress)
        features[label_visual] = spaces[label_visual] = e_visual
    lap("embeddings")
    truth = true_features_of(s, progress=progress) if _has_concepts(s) else None
    labels = None if truth is None else truth.labels
    lap("ground truth by intervention")

    comparison = compare_clusterings(e_main, features, ks=ks, neurons=s.neurons,
                                     concepts=labels, progress=progress, **kw)
    n_samples = min(p.correlation_n_samples, s.references.n_ref)
    result = Evaluation(
        setting=s, comparison=comparison, features=truth,
        comparison_summary=summarize_frame(comparison, **boot),
        comparison_pairs=paired_table(comparison, "gap", baseline_pairs(PURE), **boot),
        correlation=correlation_table(e_main, spaces, n_samples=n_samples,
                                      n_subsets=p.correlation_n_subsets,
                                      seed=p.correlation_seed),
        divergence=divergence_examples(e_main, pure, acts[ACTIVATIONS], peak=acts[ACTIVATIONS_PEAK],
                                       neurons=s.neurons, n_samples=n_samples),
        polysemanticity=polysemanticity_table(e_main, neurons=s.neurons, **kw),
        tensors=dict(pure=pure, activations=acts[ACTIVATIONS], activations_peak=acts[ACTIVATIONS_PEAK],
                     embeddings=e_main, visual_embeddings=e_visual, boxes=boxes, labels=labels),
        timings=timings)
    lap("clusterings, Eq. 5, correlations")
    if truth is not None:
        _score_ground_truth(result, p, pure, acts, lap, progress=progress)
    return result


def _score_ground_truth(result: Evaluation, p: Profile, pure, acts: dict, lap, *, progress: bool):
    """:func:`evaluate`'s scores against the true features (ARI / NMI on the polysemantic
    neurons, every attribution and both baselines) and, with a held-out split, the test phase;
    written into ``result``. ``acts``: :meth:`Setting.baselines`."""
    s, truth, ks = result.setting, result.features, list(p.ks)
    labels = truth.labels
    kw = dict(random_state=p.random_state, n_init=p.n_init)
    boot = dict(n_boot=p.n_boot, level=p.ci_level)
    poly = truth.polysemantic(p.polysemantic_min_share)
    sel = torch.nonzero(poly).flatten().tolist()
    attributions = {f"{PURE} ({a})": a for a in p.attributions}
    gt_feats = {name: pure if a == p.attribution else s.circuit_attributions(a, progress=progress)
                for name, a in attributions.items()}
    gt_feats.update(acts)
    if sel:
        # clusterings use every reference; the scores only the certain ones (outside the band)
        gt = ground_truth_table(labels[sel], {m: f[sel] for m, f in gt_feats.items()}, ks=ks,
                                neurons=[s.neurons[i] for i in sel], certain=truth.certain[sel],
                                progress=progress, **kw)
        result.ground_truth = gt
        result.ground_truth_summary = summarize_frame(gt, "ari", **boot)
        result.ground_truth_pairs = paired_table(gt, "ari", baseline_pairs(list(attributions)), **boot)
    result.tensors["polysemantic"] = poly
    lap("scores against ground truth")
    if p.heldout_dataset_kwargs:
        ds, refs = heldout_references(s, progress=progress)
        test_feats = {name: s.circuit_attributions(a, dataset=ds, references=refs, progress=progress)
                      for name, a in attributions.items()}
        test_feats.update(s.baselines(dataset=ds, references=refs, progress=progress))
        test_truth = true_features_of(s, dataset=ds, references=refs, progress=progress)
        result.purity = heldout_purity(gt_feats, test_feats, test_truth.labels,
                                       train_concepts=labels, ks=ks, neurons=s.neurons,
                                       test_certain=test_truth.certain,
                                       train_certain=truth.certain, **kw)
        result.purity_pairs = purity_pairs(result.purity, p.attribution, **boot)
        lap("test phase on the held-out split")


def purity_pairs(purity, attribution: str, **boot):
    """The test phase of PURE against chance, both activation baselines and the unit alone.

    Paired over the neurons, per ``k``: PURE's purity (``purity_virtual`` of
    ``"PURE (<attribution>)"``) minus (a) a random assignment with the same cluster sizes,
    (b) each activation baseline's own test phase (those in ``purity``), (c) the unsplit unit.

    Returns
    -------
    pandas.DataFrame
        :func:`pure_utils.study.tables.paired_table` rows with ``b`` in ``"random assignment"``,
        ``"activations (mean)"``, ``"activations (peak)"``, ``"unit alone"``.
    """
    name = f"{PURE} ({attribution})"
    own = purity[purity.method == name]
    baselines = [b for b in BASELINE_LABELS if (purity.method == b).any()]
    long = pd.concat([
        own.assign(method=name, value=own.purity_virtual),
        own.assign(method="random assignment", value=own.purity_random),
        own.assign(method="unit alone", value=own.purity_neuron),
        purity[purity.method.isin(baselines)].assign(value=lambda d: d.purity_virtual)])
    return paired_table(long, "value", [(name, "random assignment"), *[(name, b) for b in baselines],
                                        (name, "unit alone")], **boot)
