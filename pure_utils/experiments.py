"""The paper's evaluation as routines that notebooks call (they hold no algorithm themselves).

Flow, for one profile (:func:`pure_utils.profiles.load_profile`)::

    setting = load_setting(profile)                    # model, data, references, neurons
    pure = circuit_features(setting)                   # Tensor[n, n_ref, C_lower] (Eq. 3)
    acts = activation_baseline(setting)                # Tensor[n, n_ref, C]
    main, visual = load_embedders(setting)             # CLIP role, DINOv2 role
    boxes = evaluation_boxes(setting)                  # crops of the reference samples
    e_main = embed_references(setting, main, boxes)    # Tensor[n, n_ref, d]
    frame = compare_clusterings(e_main, {"PURE": pure, "activations": acts, ...})
    summary = summarize_frame(frame)                   # mean, sem, 95% bootstrap CI per method, k

:func:`evaluate` runs all of it (the smoke test does) and returns every table.

Method names in the tables: ``"PURE"``, ``"activations"``, the embedders' labels from the
profile (``embedder_label`` - CLIP's role -, ``visual_embedder_label`` - DINOv2's role),
``"random"`` and, on data with ground truth, ``"ground truth"``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from ._progress import tqdm

from .metrics import _np
from .metrics import (distance_correlation, distance_matrix, ground_truth_scores, intra_inter,
                      kmeans_labels, polysemanticity, purity, summarize)
from .references import _cached

__all__ = [
    "Setting", "load_setting", "select_neurons", "circuit_features", "activation_baseline",
    "load_embedders", "evaluation_boxes", "crops_from_boxes", "reference_crops",
    "embed_references", "reference_concepts_of", "random_labels", "ground_truth_labels",
    "cluster_all", "compare_clusterings", "summarize_frame", "correlation_table",
    "divergence_examples", "polysemanticity_table", "ground_truth_table", "heldout_purity",
    "Evaluation", "evaluate", "cluster_composition", "clustering_table", "choose_k_table",
    "variant_scores", "rank_neurons",
]

PURE, ACTIVATIONS, RANDOM, GROUND_TRUTH = "PURE", "activations", "random", "ground truth"


# --------------------------------------------------------------------------------------------
# setting: model, data, references
# --------------------------------------------------------------------------------------------
@dataclass
class Setting:
    """Everything an evaluation needs, loaded once from a profile.

    Attributes
    ----------
    profile : dict
    model : torch.nn.Module
    dataset : Dataset
    references : References
        Mined on all channels of ``profile["layer"]``.
    neurons : list of int
        The evaluated channels (all, or a seeded subset).
    device : str
    cache : Cache or None
    """

    profile: dict
    model: torch.nn.Module
    dataset: object
    references: object
    neurons: list
    device: str
    cache: object = None
    extras: dict = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return getattr(self.model, "pure_name", self.profile["model_name"])


def _neurons(setting: Setting, neurons) -> list[int]:
    return list(setting.neurons) if neurons is None else [int(k) for k in neurons]


def select_neurons(n_channels: int, n_neurons: int | None = None, seed: int = 0) -> list[int]:
    """All channels, or a seeded random subset of ``n_neurons`` of them (sorted).

    Parameters
    ----------
    n_channels : int
        Channels of the layer.
    n_neurons : int, optional
        Subset size (``None``: all).
    seed : int
        Seed of the subset.

    Returns
    -------
    list of int
    """
    if n_neurons is None or n_neurons >= n_channels:
        return list(range(n_channels))
    if n_neurons < 1:
        raise ValueError(f"n_neurons={n_neurons} must be >= 1 (or null for all {n_channels})")
    rng = np.random.default_rng(seed)
    return sorted(int(k) for k in rng.choice(n_channels, size=n_neurons, replace=False))


def load_setting(profile: dict, *, model_name: str | None = None, progress: bool = True) -> Setting:
    """Load the model and data of a profile and mine the reference samples.

    Parameters
    ----------
    profile : dict
        From :func:`~pure_utils.profiles.load_profile`.
    model_name : str, optional
        Overrides ``profile["model_name"]`` (e.g. one of ``profile["model_names"]``).
    progress : bool
        Show progress bars.

    Returns
    -------
    Setting

    Raises
    ------
    FileNotFoundError, RuntimeError, ValueError
        Missing data folder, unavailable weights, bad keys - with what to change.
    """
    from .cache import resolve_cache
    from .data import load_dataset
    from .models import load_model, randomize_batchnorm
    from .profiles import check_profile, resolve_device
    from .references import mine_references

    check_profile(profile)
    name = model_name or profile["model_name"]
    model = load_model(name, pretrained=bool(profile.get("pretrained", False)),
                       checkpoint=profile.get("checkpoint"))
    if profile.get("randomize_batchnorm"):
        randomize_batchnorm(model, seed=0)
    device = resolve_device(profile.get("device"))
    model.to(device)
    dataset = load_dataset(profile["dataset"], **dict(profile.get("dataset_kwargs") or {}))
    cache = resolve_cache(profile.get("cache"))
    refs = mine_references(model, dataset, profile["layer"], int(profile["n_ref"]),
                           batch_size=int(profile["batch_size"]), device=device, cache=cache,
                           progress=progress)
    neurons = select_neurons(refs.n_channels, profile.get("n_neurons"),
                             int(profile.get("neuron_seed", 0)))
    return Setting(profile=profile, model=model, dataset=dataset, references=refs,
                   neurons=neurons, device=device, cache=cache)


def circuit_features(setting: Setting, method: str | None = None, *, neurons=None,
                     progress: bool = True) -> torch.Tensor:
    """PURE circuit vectors of the evaluated neurons: ``Tensor[n_neurons, n_ref, C_lower]``.

    ``method`` defaults to ``profile["method"]`` (``"gxa"``).
    """
    from .circuits import circuit_attributions

    p = setting.profile
    return circuit_attributions(setting.model, setting.dataset, setting.references, p["layer"],
                                p["lower_layer"], neurons=_neurons(setting, neurons),
                                method=method or p.get("method", "gxa"),
                                batch_size=int(p["batch_size"]), device=setting.device,
                                cache=setting.cache, progress=progress)


def activation_baseline(setting: Setting, *, neurons=None, progress: bool = True) -> torch.Tensor:
    """Mean clamped activations of all channels of L: ``Tensor[n_neurons, n_ref, C]``."""
    from .circuits import activation_features

    p = setting.profile
    return activation_features(setting.model, setting.dataset, setting.references, p["layer"],
                               neurons=_neurons(setting, neurons), batch_size=int(p["batch_size"]),
                               device=setting.device, cache=setting.cache, progress=progress)


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
    from .embed import load_embedder
    from .profiles import resolve_device

    if isinstance(setting_or_profile, Setting):
        profile, dataset = setting_or_profile.profile, setting_or_profile.dataset
    else:
        profile = setting_or_profile
    out = []
    for role in ("embedder", "visual_embedder"):
        name = profile.get(role)
        if name is None:
            out.append(None)
            continue
        kwargs = dict(profile.get(f"{role}_kwargs") or {})
        if name == "ground_truth":
            if dataset is None or not hasattr(dataset, "n_concepts"):
                raise ValueError(f"{role}: 'ground_truth' needs a dataset with concepts (synthetic); "
                                 f"dataset {profile.get('dataset')!r} has none - use clip / dinov2")
            kwargs["n_concepts"] = dataset.n_concepts
        else:
            kwargs.setdefault("device", resolve_device(profile.get("device")))
        out.append(load_embedder(name, pretrained=bool(profile.get(f"{role}_pretrained", True)),
                                 **kwargs))
    return tuple(out)


def evaluation_boxes(setting: Setting, *, neurons=None, display: bool = False,
                     chunk_size: int = 8, progress: bool = True) -> torch.Tensor:
    """Crop boxes of the reference samples: ``LongTensor[n_neurons, n_ref, 4]`` (y0, x0, y1, x1).

    Heatmaps are computed neuron by neuron (they are large) and only the boxes are kept
    (and cached). ``display=True`` gives the boxes of the display variant; ``chunk_size``
    neurons share one heatmap computation.
    """
    from .visualize import crop_boxes, feature_heatmaps

    p = setting.profile
    neurons = _neurons(setting, neurons)
    kernel = p.get("display_blur_kernel" if display else "crop_blur_kernel", 51 if display else 5)
    thr = p.get("display_threshold" if display else "crop_threshold", 0.01 if display else 0.02)
    composite = p.get("composite", "epsilon_plus_flat")

    def compute():
        # a few neurons per call: full batches, while the heatmaps (n_ref x H x W floats per
        # neuron) stay small in memory
        chunk = max(1, chunk_size)
        boxes = []
        for s in tqdm(range(0, len(neurons), chunk), desc="crops", disable=not progress):
            h = feature_heatmaps(setting.model, setting.dataset, setting.references, p["layer"],
                                 neurons[s:s + chunk], composite=composite,
                                 batch_size=int(p["batch_size"]), device=setting.device,
                                 progress=False)
            boxes.append(crop_boxes(h, blur_kernel=kernel, threshold=thr))
        if not boxes:
            return {"boxes": torch.zeros(0, setting.references.n_ref, 4, dtype=torch.long)}
        return {"boxes": torch.cat(boxes)}

    return _cached("crop_boxes", setting.cache, setting.model, setting.dataset, compute,
                   layer=p["layer"], composite=composite, blur=kernel, threshold=thr, neurons=neurons,
                   refs=setting.references.indices[setting.references.rows(neurons)])["boxes"].long()


def crops_from_boxes(dataset, indices, boxes) -> list[torch.Tensor]:
    """Cut ``dataset.image(i)`` to each box.

    Parameters
    ----------
    indices : LongTensor[m]
        Dataset indices.
    boxes : LongTensor[m, 4]

    Returns
    -------
    list of Tensor[3, h, w]
    """
    return [dataset.image(int(i))[:, y0:y1, x0:x1]
            for i, (y0, x0, y1, x1) in zip(torch.as_tensor(indices).tolist(),
                                           torch.as_tensor(boxes).tolist())]


def reference_crops(setting: Setting, neuron: int, boxes_of_neuron) -> list[torch.Tensor]:
    """Evaluation crops of one neuron's reference samples (``boxes_of_neuron``: ``[n_ref, 4]``)."""
    row = int(setting.references.rows([neuron])[0])
    return crops_from_boxes(setting.dataset, setting.references.indices[row], boxes_of_neuron)


def reference_concepts_of(setting: Setting, neurons=None) -> torch.Tensor:
    """Ground-truth concept of each reference sample: ``LongTensor[n_neurons, n_ref]``."""
    from .synthetic import reference_concepts

    refs = setting.references.subset(_neurons(setting, neurons))
    return reference_concepts(setting.dataset, refs)


def embed_references(setting: Setting, embedder, boxes=None, *, neurons=None,
                     progress: bool = True) -> torch.Tensor:
    """Embeddings of the reference samples' feature visualisations: ``Tensor[n_neurons, n_ref, d]``.

    Image embedders embed the evaluation crops (``boxes`` from :func:`evaluation_boxes`);
    the ground-truth embedder embeds the reference samples' concepts (no crops needed).
    """
    neurons = _neurons(setting, neurons)
    if embedder.input_kind == "concepts":
        concepts = reference_concepts_of(setting, neurons)
        return embedder.embed(concepts.reshape(-1)).reshape(*concepts.shape, -1)
    if boxes is None:
        raise ValueError(f"embedder {embedder.name!r} embeds crops: pass boxes=evaluation_boxes(setting)")
    rows = setting.references.rows(neurons)
    indices = setting.references.indices[rows]
    if tuple(boxes.shape[:2]) != tuple(indices.shape):
        raise ValueError(f"boxes of shape {tuple(boxes.shape)} do not match the references "
                         f"{tuple(indices.shape)} of the {len(neurons)} neurons")

    def compute():
        crops = crops_from_boxes(setting.dataset, indices.reshape(-1), boxes.reshape(-1, 4))
        emb = embedder.embed(crops, progress=progress)
        return {"embeddings": emb.reshape(*indices.shape, -1)}

    spec = getattr(embedder, "spec", None) or {"repr": repr(embedder)}
    # the crops (dataset, indices, boxes) and the embedder fix the result; the model does not
    return _cached("embeddings", setting.cache, None, setting.dataset, compute,
                   embedder={k: str(v) for k, v in spec.items()}, dim=embedder.dim,
                   indices=indices, boxes=boxes)["embeddings"]


# --------------------------------------------------------------------------------------------
# clusterings and Eq. 5 comparison (Fig. 4 top)
# --------------------------------------------------------------------------------------------
def random_labels(n: int, k: int, seed) -> np.ndarray:
    """Uniformly random cluster labels (the lower bound), seeded: ``ndarray[n]``."""
    return np.random.default_rng(seed).integers(0, k, size=n)


def ground_truth_labels(concepts, k: int) -> np.ndarray:
    """The ground-truth concepts restricted to ``k`` clusters (the upper bound).

    The ``k - 1`` most frequent concepts keep their own cluster; all others share the last
    one (ties by lower concept id). With at most ``k`` distinct concepts the concepts are
    returned as they are (relabelled ``0..``).

    Parameters
    ----------
    concepts : array-like[n]
        Concept ids (``-1``: background, a concept of its own).
    k : int

    Returns
    -------
    ndarray[n] of int
    """
    c = _np(concepts, np.int64).reshape(-1)
    values, counts = np.unique(c, return_counts=True)
    order = values[np.lexsort((values, -counts))]
    keep = order if len(order) <= k else order[:k - 1]
    lookup = {v: i for i, v in enumerate(keep)}
    return np.array([lookup.get(v, len(keep)) for v in c], dtype=int)


def cluster_all(features, k: int, *, random_state: int = 0, n_init: int = 10,
                progress: bool = False, desc: str = "k-means") -> np.ndarray:
    """k-means labels per neuron: ``features`` ``[n_neurons, n_ref, d]`` -> ``ndarray[n_neurons, n_ref]``."""
    return np.stack([kmeans_labels(f, k, random_state=random_state, n_init=n_init)
                     for f in tqdm(features, desc=desc, disable=not progress)])


def compare_clusterings(embeddings, features: dict, *, ks=(2, 3, 4, 5), neurons=None,
                        concepts=None, include_random: bool = True, random_state: int = 0,
                        n_init: int = 10, progress: bool = True):
    """Eq. 5 on the main embedder's embeddings for several clusterings (Fig. 4 top).

    Each entry of ``features`` is clustered per neuron with k-means (``k`` in ``ks``); random
    labels (lower bound) and, with ``concepts``, the ground truth restricted to ``k`` clusters
    (:func:`ground_truth_labels`, upper bound) are added. Every clustering is scored by
    ``rho_intra`` and ``rho_inter`` of the distances between ``embeddings``.

    Parameters
    ----------
    embeddings : Tensor[n_neurons, n_ref, d]
        Embeddings in CLIP's role (the ground-truth embedder offline).
    features : dict of str -> Tensor[n_neurons, n_ref, d_m]
        What each method clusters, e.g. ``{"PURE": circuits, "activations": acts,
        "CLIP": embeddings, "DINOv2": dino}`` (same samples, same order).
    ks : sequence of int
        Numbers of clusters.
    neurons : sequence of int, optional
        Channel ids for the ``neuron`` column (default ``0..n_neurons-1``).
    concepts : LongTensor[n_neurons, n_ref], optional
        Ground-truth concepts (adds the ``"ground truth"`` method).
    include_random : bool
        Add ``"random"`` labels (seeded by ``random_state``, neuron and k).
    random_state, n_init : int
        k-means settings.

    Returns
    -------
    pandas.DataFrame
        One row per neuron, method and k: ``neuron, method, k, intra, inter, gap``
        (``gap = inter - intra``, large is better).
    """
    import pandas as pd

    n = len(embeddings)
    neurons = list(range(n)) if neurons is None else [int(k) for k in neurons]
    if len(neurons) != n:
        raise ValueError(f"{len(neurons)} neuron ids for {n} neurons of embeddings")
    for name, f in features.items():
        if len(f) != n or f.shape[1] != embeddings.shape[1]:
            raise ValueError(f"features {name!r} of shape {tuple(f.shape)} do not match embeddings "
                             f"{tuple(embeddings.shape)} (same neurons and reference samples)")
    rows = []
    for i in tqdm(range(n), desc="Eq. 5", disable=not progress):
        D = distance_matrix(embeddings[i])
        for k in ks:
            labelings = {name: kmeans_labels(f[i], k, random_state=random_state, n_init=n_init)
                         for name, f in features.items()}
            if include_random:
                labelings[RANDOM] = random_labels(D.shape[0], k, [random_state, neurons[i], k])
            if concepts is not None:
                labelings[GROUND_TRUTH] = ground_truth_labels(concepts[i], k)
            for name, labels in labelings.items():
                intra, inter = intra_inter(D, labels)
                rows.append(dict(neuron=neurons[i], method=name, k=int(k), intra=intra,
                                 inter=inter, gap=inter - intra))
    return pd.DataFrame(rows, columns=["neuron", "method", "k", "intra", "inter", "gap"])


def summarize_frame(frame, value: str = "gap", by=("method", "k"), *, n_boot: int = 1000,
                    seed: int = 0, level: float = 0.95):
    """Mean, standard error (std / sqrt(n)) and bootstrap interval of ``value`` per group.

    Returns
    -------
    pandas.DataFrame
        Columns ``*by, mean, sem, ci_low, ci_high, n`` (groups in order of appearance).
    """
    import pandas as pd

    if value not in frame.columns:
        raise ValueError(f"column {value!r} not in the frame; columns: {', '.join(frame.columns)}")
    rows = []
    for key, group in frame.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)),
                     **summarize(group[value].to_numpy(), n_boot=n_boot, seed=seed, level=level)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# distance correlation and divergence (Fig. 4 bottom, right)
# --------------------------------------------------------------------------------------------
def correlation_table(reference, spaces: dict, *, n_samples: int = 50, n_subsets: int = 30,
                      seed: int = 0):
    """Correlation of each space's distances with the reference space's (Fig. 4 bottom).

    Parameters
    ----------
    reference : Tensor[n_neurons, n_ref, d]
        Embeddings in CLIP's role.
    spaces : dict of str -> Tensor[n_neurons, n_ref, d_m]
        E.g. ``{"PURE": circuits, "activations": acts, "DINOv2": dino}``.
    n_samples, n_subsets, seed
        See :func:`~pure_utils.metrics.distance_correlation`; ``n_subsets`` is lowered to the
        number of neurons when there are fewer.

    Returns
    -------
    pandas.DataFrame
        ``method, mean, sem, n_subsets``.
    """
    import pandas as pd

    n_subsets = min(n_subsets, len(reference))
    rows = []
    for name, space in spaces.items():
        r = distance_correlation(reference, space, n_samples=n_samples, n_subsets=n_subsets,
                                 seed=seed)
        rows.append(dict(method=name, mean=r["mean"], sem=r["sem"], n_subsets=n_subsets))
    return pd.DataFrame(rows)


def divergence_examples(reference, pure, activations, *, neurons=None, n_samples: int = 50):
    """Per neuron: how well PURE and activation distances follow the reference distances.

    For each neuron, the Pearson correlation of its pairwise distances (pairs ``i < j`` of the
    first ``n_samples`` reference samples) in the reference space with those of the PURE
    vectors and of the activations. Sorted by ``difference = r_pure - r_activations``,
    descending: the first rows are where activations diverge from the reference while PURE
    follows it (Fig. 4 right), the last rows the opposite.

    Returns
    -------
    pandas.DataFrame
        ``neuron, r_pure, r_activations, difference``.
    """
    import pandas as pd

    n = len(reference)
    neurons = list(range(n)) if neurons is None else [int(k) for k in neurons]
    rows = []
    for i in range(n):
        rp = distance_correlation([reference[i]], [pure[i]], n_samples=n_samples, n_subsets=1)["mean"]
        ra = distance_correlation([reference[i]], [activations[i]], n_samples=n_samples,
                                  n_subsets=1)["mean"]
        rows.append(dict(neuron=neurons[i], r_pure=rp, r_activations=ra, difference=rp - ra))
    frame = pd.DataFrame(rows, columns=["neuron", "r_pure", "r_activations", "difference"])
    return frame.sort_values("difference", ascending=False, kind="stable").reset_index(drop=True)


def polysemanticity_table(embeddings, *, neurons=None, random_state: int = 0, n_init: int = 10):
    """Each neuron's polysemanticity (``inter - intra`` of k-means k=2 on its embeddings).

    Returns
    -------
    pandas.DataFrame
        ``neuron, polysemanticity``, most polysemantic first.
    """
    import pandas as pd

    n = len(embeddings)
    neurons = list(range(n)) if neurons is None else [int(k) for k in neurons]
    vals = [polysemanticity(e, random_state=random_state, n_init=n_init) for e in embeddings]
    frame = pd.DataFrame({"neuron": neurons, "polysemanticity": vals})
    return frame.sort_values("polysemanticity", ascending=False, kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# ground truth (controlled benchmark)
# --------------------------------------------------------------------------------------------
def ground_truth_table(concepts, features: dict, *, ks=(2, 3, 4, 5), neurons=None,
                       include_random: bool = True, include_ground_truth: bool = True,
                       random_state: int = 0, n_init: int = 10, progress: bool = True):
    """ARI and NMI between each method's clusters and the ground-truth concepts, per neuron.

    Parameters
    ----------
    concepts : LongTensor[n_neurons, n_ref]
        Concept of each reference sample (:func:`pure_utils.synthetic.reference_concepts`).
    features : dict of str -> Tensor[n_neurons, n_ref, d_m]
        What each method clusters (e.g. ``{"PURE (gxa)": ..., "PURE (epsilon_plus_flat)": ...,
        "activations": ...}``).
    ks : sequence of int
    neurons : sequence of int, optional
        Channel ids for the ``neuron`` column (select polysemantic neurons before calling, e.g.
        with ``synthetic.polysemantic_by_concepts``).
    include_random, include_ground_truth : bool
        Add the lower bound (random labels) and the upper bound (the concepts restricted to
        ``k`` clusters, :func:`ground_truth_labels`).

    Returns
    -------
    pandas.DataFrame
        ``neuron, method, k, ari, nmi``.
    """
    import pandas as pd

    concepts = torch.as_tensor(concepts)
    n = concepts.shape[0]
    neurons = list(range(n)) if neurons is None else [int(k) for k in neurons]
    if len(neurons) != n:
        raise ValueError(f"{len(neurons)} neuron ids for {n} rows of concepts")
    for name, f in features.items():
        if tuple(f.shape[:2]) != tuple(concepts.shape):
            raise ValueError(f"features {name!r} of shape {tuple(f.shape)} do not match concepts "
                             f"{tuple(concepts.shape)}")
    rows = []
    for i in tqdm(range(n), desc="ground truth", disable=not progress):
        c = concepts[i].numpy()
        for k in ks:
            labelings = {name: kmeans_labels(f[i], k, random_state=random_state, n_init=n_init)
                         for name, f in features.items()}
            if include_random:
                labelings[RANDOM] = random_labels(len(c), k, [random_state, neurons[i], k])
            if include_ground_truth:
                labelings[GROUND_TRUTH] = ground_truth_labels(c, k)
            for name, labels in labelings.items():
                s = ground_truth_scores(labels, c)
                rows.append(dict(neuron=neurons[i], method=name, k=int(k), ari=s["ari"],
                                 nmi=s["nmi"]))
    return pd.DataFrame(rows, columns=["neuron", "method", "k", "ari", "nmi"])


def heldout_purity(train_features: dict, test_features: dict, test_concepts, *,
                      train_concepts=None, ks=(2,), neurons=None, random_state: int = 0,
                      n_init: int = 10):
    """Purity of held-out samples assigned to virtual neurons (the test phase, Fig. 2).

    Per neuron and method, virtual neurons are fitted on the reference samples
    (``train_features``) and held-out samples (e.g. the neuron's most activating images of
    another split) are assigned to the closest centroid. Purity (:func:`metrics.purity`) of
    those assignments against the held-out concepts is compared with the purity of the neuron
    itself (all held-out samples in one group).

    Parameters
    ----------
    train_features, test_features : dict of str -> Tensor[n_neurons, n_*, d_m]
        The same methods in both.
    test_concepts : LongTensor[n_neurons, n_test]
    train_concepts : LongTensor[n_neurons, n_ref], optional
        Adds ``purity_train`` (purity of the fitted clusters on the reference samples).
    ks : sequence of int

    Returns
    -------
    pandas.DataFrame
        ``neuron, method, k, purity_neuron, purity_virtual`` (and ``purity_train``).
    """
    import pandas as pd

    from .virtual import VirtualNeurons

    test_concepts = torch.as_tensor(test_concepts)
    n = test_concepts.shape[0]
    neurons = list(range(n)) if neurons is None else [int(k) for k in neurons]
    if set(train_features) != set(test_features):
        raise ValueError(f"methods differ: train {sorted(train_features)}, test {sorted(test_features)}")
    rows = []
    for i in range(n):
        c = test_concepts[i].numpy()
        base = purity(np.zeros(len(c), dtype=int), c)
        for k in ks:
            for name in train_features:
                Xtr, Xte = _np(train_features[name][i]), _np(test_features[name][i])
                vn = VirtualNeurons(n_clusters=k, random_state=random_state, n_init=n_init).fit(Xtr)
                row = dict(neuron=neurons[i], method=name, k=int(k), purity_neuron=base,
                           purity_virtual=purity(vn.predict(Xte), c))
                if train_concepts is not None:
                    row["purity_train"] = purity(vn.labels_, torch.as_tensor(train_concepts)[i].numpy())
                rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# everything at once
# --------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """All tables of one evaluation run (see :func:`evaluate`)."""

    setting: Setting
    comparison: object            # DataFrame: neuron, method, k, intra, inter, gap
    comparison_summary: object    # DataFrame: method, k, mean, sem, ci_low, ci_high, n
    correlation: object           # DataFrame: method, mean, sem, n_subsets
    divergence: object            # DataFrame: neuron, r_pure, r_activations, difference
    polysemanticity: object       # DataFrame: neuron, polysemanticity
    ground_truth: object = None   # DataFrame: neuron, method, k, ari, nmi (polysemantic neurons)
    ground_truth_summary: object = None
    purity: object = None         # DataFrame: neuron, method, k, purity_neuron, purity_virtual
    tensors: dict = field(default_factory=dict)


def evaluate(profile: dict, *, model_name: str | None = None, progress: bool = True) -> Evaluation:
    """Run the paper's whole evaluation for one profile and model.

    Steps: references; PURE circuits and the activation baseline; evaluation crops; embeddings
    in CLIP's and DINOv2's roles; Eq. 5 comparison for ``profile["ks"]``; distance correlation;
    divergence; polysemanticity; and, on data with ground truth, ARI / NMI on the polysemantic
    neurons for every method of ``profile["methods"]`` and the test-phase purity on held-out
    images.

    Returns
    -------
    Evaluation
    """
    from .synthetic import polysemantic_by_concepts

    p = profile
    s = load_setting(p, model_name=model_name, progress=progress)
    ks = [int(k) for k in p["ks"]]
    label_main = p.get("embedder_label", p["embedder"])
    label_visual = p.get("visual_embedder_label", p.get("visual_embedder"))
    kw = dict(random_state=int(p.get("random_state", 0)), n_init=int(p.get("n_init", 10)))
    boot = dict(n_boot=int(p.get("n_boot", 1000)), level=float(p.get("ci_level", 0.95)))

    pure = circuit_features(s, progress=progress)
    acts = activation_baseline(s, progress=progress)
    main, visual = load_embedders(s)
    needs_crops = any(e is not None and e.input_kind == "images" for e in (main, visual))
    boxes = evaluation_boxes(s, progress=progress) if needs_crops else None
    e_main = embed_references(s, main, boxes, progress=progress)
    features = {PURE: pure, ACTIVATIONS: acts, label_main: e_main}
    e_visual = None
    if visual is not None:
        e_visual = embed_references(s, visual, boxes, progress=progress)
        features[label_visual] = e_visual
    has_concepts = bool(p.get("has_concepts")) and hasattr(s.dataset, "concept_grid")
    concepts = reference_concepts_of(s) if has_concepts else None

    comparison = compare_clusterings(e_main, features, ks=ks, neurons=s.neurons,
                                     concepts=concepts, progress=progress, **kw)
    spaces = {PURE: pure, ACTIVATIONS: acts}
    if e_visual is not None:
        spaces[label_visual] = e_visual
    n_samples = min(int(p.get("correlation_n_samples", 50)), s.references.n_ref)
    correlation = correlation_table(e_main, spaces, n_samples=n_samples,
                                    n_subsets=int(p.get("correlation_n_subsets", 30)),
                                    seed=int(p.get("correlation_seed", 0)))
    result = Evaluation(
        setting=s, comparison=comparison,
        comparison_summary=summarize_frame(comparison, **boot),
        correlation=correlation,
        divergence=divergence_examples(e_main, pure, acts, neurons=s.neurons, n_samples=n_samples),
        polysemanticity=polysemanticity_table(e_main, neurons=s.neurons, **kw),
        tensors=dict(pure=pure, activations=acts, embeddings=e_main, visual_embeddings=e_visual,
                     boxes=boxes, concepts=concepts))

    if has_concepts:
        poly = polysemantic_by_concepts(concepts, float(p.get("polysemantic_min_share", 0.2)))
        sel = torch.nonzero(poly).flatten().tolist()
        gt_feats, gt_methods = {}, {}
        for method in p.get("methods", [p.get("method", "gxa")]):
            f = pure if method == p.get("method", "gxa") else circuit_features(s, method, progress=progress)
            gt_feats[f"{PURE} ({method})"] = f
            gt_methods[f"{PURE} ({method})"] = method
        gt_feats[ACTIVATIONS] = acts
        gt_methods[ACTIVATIONS] = None
        if sel:
            gt = ground_truth_table(concepts[sel], {m: f[sel] for m, f in gt_feats.items()}, ks=ks,
                                    neurons=[s.neurons[i] for i in sel], progress=progress, **kw)
            result.ground_truth = gt
            result.ground_truth_summary = summarize_frame(gt, "ari", **boot)
        result.tensors["polysemantic"] = poly
        result.purity = _purity_on_heldout_split(s, gt_feats, gt_methods, concepts, ks, kw, progress)
    return result


def _purity_on_heldout_split(s: Setting, train_features: dict, methods: dict, train_concepts, ks, kw,
                             progress):
    """Test phase on the profile's held-out split: the neurons' references mined there.

    ``methods`` maps each key of ``train_features`` to its attribution method
    (``circuit_attributions``), or to ``None`` for the activation baseline.
    """
    from .circuits import activation_features, circuit_attributions
    from .data import load_dataset
    from .references import mine_references
    from .synthetic import reference_concepts

    p = s.profile
    held = p.get("heldout_dataset_kwargs")
    if not held:
        return None
    ds = load_dataset(p["dataset"], **dict(held))
    n_ref = min(int(p["n_ref"]), len(ds))
    refs = mine_references(s.model, ds, p["layer"], n_ref, batch_size=int(p["batch_size"]),
                           device=s.device, cache=s.cache, progress=progress)
    test_feats = {}
    for name in train_features:
        method = methods[name]
        if method is None:
            test_feats[name] = activation_features(s.model, ds, refs, p["layer"], neurons=s.neurons,
                                                   batch_size=int(p["batch_size"]), device=s.device,
                                                   cache=s.cache, progress=progress)
        else:
            test_feats[name] = circuit_attributions(s.model, ds, refs, p["layer"], p["lower_layer"],
                                                    neurons=s.neurons, method=method,
                                                    batch_size=int(p["batch_size"]),
                                                    device=s.device, cache=s.cache,
                                                    progress=progress)
    test_concepts = reference_concepts(ds, refs.subset(s.neurons))
    return heldout_purity(train_features, test_feats, test_concepts, train_concepts=train_concepts,
                             ks=ks, neurons=s.neurons, **kw)


# --------------------------------------------------------------------------------------------
# ablations and inspection (chapters beyond the paper)
# --------------------------------------------------------------------------------------------
def cluster_composition(labels, concepts, concept_names=None):
    """Which concepts make up each cluster (virtual neuron).

    Parameters
    ----------
    labels : array-like[n]
        Cluster of each reference sample.
    concepts : array-like[n]
        Ground-truth concept of each sample (``-1``: background).
    concept_names : list of str, optional
        Names of the concept ids.

    Returns
    -------
    pandas.DataFrame
        ``cluster, size, concept, share`` with the most frequent concept of each cluster first.
    """
    import pandas as pd

    labels = np.asarray(labels).reshape(-1)
    c = _np(concepts, np.int64).reshape(-1)
    if len(labels) != len(c):
        raise ValueError(f"{len(labels)} labels but {len(c)} concepts")
    rows = []
    for cl in sorted(set(labels.tolist())):
        members = c[labels == cl]
        values, counts = np.unique(members, return_counts=True)
        for v, n in sorted(zip(values.tolist(), counts.tolist()), key=lambda t: (-t[1], t[0])):
            name = "background" if v < 0 else (concept_names[v] if concept_names else str(v))
            rows.append(dict(cluster=int(cl), size=int(len(members)), concept=name,
                             share=n / len(members)))
    return pd.DataFrame(rows, columns=["cluster", "size", "concept", "share"])


def clustering_table(concepts, features: dict, *, algorithms=("kmeans",), k: int = 2,
                     neurons=None, random_state: int = 0, n_init: int = 10, progress: bool = True):
    """ARI / NMI against ground truth for several clustering algorithms (ablation).

    Parameters
    ----------
    concepts : LongTensor[n_neurons, n_ref]
    features : dict of str -> Tensor[n_neurons, n_ref, d_m]
    algorithms : sequence of str
        :data:`pure_utils.virtual.ALGORITHMS` names.
    k : int

    Returns
    -------
    pandas.DataFrame
        ``neuron, method, algorithm, k, ari, nmi``.
    """
    import pandas as pd

    from .virtual import VirtualNeurons

    concepts = torch.as_tensor(concepts)
    n = concepts.shape[0]
    neurons = list(range(n)) if neurons is None else [int(x) for x in neurons]
    rows = []
    for i in tqdm(range(n), desc="algorithms", disable=not progress):
        c = concepts[i].numpy()
        for name, f in features.items():
            X = _np(f[i])
            for algorithm in algorithms:
                vn = VirtualNeurons(n_clusters=k, random_state=random_state, n_init=n_init,
                                    algorithm=algorithm).fit(X)
                s = ground_truth_scores(vn.labels_, c)
                rows.append(dict(neuron=neurons[i], method=name, algorithm=algorithm, k=int(k),
                                 ari=s["ari"], nmi=s["nmi"]))
    return pd.DataFrame(rows, columns=["neuron", "method", "algorithm", "k", "ari", "nmi"])


def choose_k_table(features, *, ks=(2, 3, 4, 5), concepts=None, min_share: float = 0.2,
                   neurons=None, random_state: int = 0, n_init: int = 10):
    """Pick the number of virtual neurons per neuron by the silhouette of k-means.

    For each neuron, k-means runs for every ``k`` in ``ks`` on its attribution vectors and the
    ``k`` with the largest silhouette score (Euclidean) is chosen. With ground-truth
    ``concepts`` the true count is added: the number of concepts holding at least
    ``min_share`` of the neuron's reference samples (at least 1;
    :func:`pure_utils.synthetic.concept_counts`, background is no concept).

    Parameters
    ----------
    features : Tensor[n_neurons, n_ref, d]
    ks : sequence of int
    concepts : LongTensor[n_neurons, n_ref], optional

    Returns
    -------
    pandas.DataFrame
        ``neuron, chosen_k, silhouette`` (best score) and ``true_k`` with concepts, plus one
        ``silhouette_k{k}`` column per ``k``.
    """
    import pandas as pd
    from sklearn.metrics import silhouette_score

    from .synthetic import concept_counts

    n = len(features)
    true_k = None if concepts is None else concept_counts(concepts, min_share).clamp(min=1)
    neurons = list(range(n)) if neurons is None else [int(x) for x in neurons]
    rows = []
    for i in range(n):
        X = _np(features[i])
        scores = {}
        for k in ks:
            if not 2 <= int(k) < len(X):
                scores[int(k)] = float("nan")  # the silhouette needs 2 <= k < n_samples
                continue
            labels = kmeans_labels(X, int(k), random_state=random_state, n_init=n_init)
            scores[int(k)] = (float(silhouette_score(X, labels)) if len(set(labels.tolist())) > 1
                              else float("nan"))
        valid = {k: v for k, v in scores.items() if np.isfinite(v)}
        best = max(valid, key=lambda k: (valid[k], -k)) if valid else int(ks[0])
        row = dict(neuron=neurons[i], chosen_k=best, silhouette=scores.get(best, float("nan")))
        if true_k is not None:
            row["true_k"] = int(true_k[i])
        row.update({f"silhouette_k{k}": v for k, v in scores.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def variant_scores(features: dict, *, k: int = 2, concepts=None, embeddings=None, neurons=None,
                   random_state: int = 0, n_init: int = 10):
    """Score clusterings of several feature variants per neuron (for ablations).

    With ground-truth ``concepts`` the score is the ARI of k-means labels against them; without,
    it is the Eq. 5 gap ``inter - intra`` on ``embeddings`` (CLIP's role).

    Parameters
    ----------
    features : dict of str -> Tensor[n_neurons, n_ref, d_m]
    k : int
    concepts : LongTensor[n_neurons, n_ref], optional
    embeddings : Tensor[n_neurons, n_ref, d], optional
        Needed when ``concepts`` is not given.

    Returns
    -------
    pandas.DataFrame
        ``neuron, method, k, score`` (and ``metric``: ``"ARI"`` or ``"gap"``).
    """
    if concepts is not None:
        frame = ground_truth_table(concepts, features, ks=[k], neurons=neurons,
                                   include_random=True, include_ground_truth=False,
                                   random_state=random_state, n_init=n_init, progress=False)
        return frame.rename(columns={"ari": "score"}).drop(columns="nmi").assign(metric="ARI")
    if embeddings is None:
        raise ValueError("variant_scores needs concepts (ground truth) or embeddings (Eq. 5)")
    frame = compare_clusterings(embeddings, features, ks=[k], neurons=neurons, random_state=random_state,
                                n_init=n_init, progress=False)
    return (frame.rename(columns={"gap": "score"}).drop(columns=["intra", "inter"])
            .assign(metric="gap"))


def rank_neurons(setting: Setting, embeddings=None, *, neurons=None):
    """Neurons ordered from most to least polysemantic, for choosing examples.

    Two measures, as available:

    - ``polysemanticity``: the paper's gap (k-means k=2 on ``embeddings``, inter - intra).
      With the ground-truth embedder it saturates (every channel with two concepts scores
      ~1 whatever their proportions), so it cannot rank channels of the controlled benchmark;
    - ``second_share``: with ground-truth concepts, the share of the second most frequent
      concept among the reference samples (0 for a pure channel, up to 0.5 for an even mix).

    The order uses ``second_share`` when the profile has concepts, else ``polysemanticity``.

    Returns
    -------
    pandas.DataFrame
        ``neuron`` and the available measures, most polysemantic first.
    """
    import pandas as pd

    from .synthetic import concept_shares

    neurons = _neurons(setting, neurons)
    frame = pd.DataFrame({"neuron": neurons})
    key = None
    if embeddings is not None:
        frame["polysemanticity"] = [polysemanticity(e, random_state=int(setting.profile.get("random_state", 0)),
                                                    n_init=int(setting.profile.get("n_init", 10)))
                                    for e in embeddings]
        key = "polysemanticity"
    if bool(setting.profile.get("has_concepts")) and hasattr(setting.dataset, "concept_grid"):
        shares = concept_shares(reference_concepts_of(setting, neurons), setting.dataset.n_concepts)
        frame["second_share"] = shares.sort(dim=1, descending=True).values[:, 1].numpy()
        key = "second_share"
    if key is None:
        raise ValueError("rank_neurons needs embeddings or a dataset with ground-truth concepts")
    return frame.sort_values(key, ascending=False, kind="stable").reset_index(drop=True)
