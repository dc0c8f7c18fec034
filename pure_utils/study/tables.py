"""The tables the chapters show: per-neuron scores of clusterings, and their summaries.

Every table is a ``pandas.DataFrame`` with one row per neuron (and method, ``k``, ...). The
clusterings compared are called *methods* in every table: ``"PURE"`` (or ``"PURE (gxa)"``,
``"PURE (epsilon_plus_flat)"``: PURE with an attribution), the two activation baselines
``"activations (mean)"`` (the paper's: the layer's spatially averaged activations) and
``"activations (peak)"`` (the layer's activations where the unit peaks), named as in
:data:`pure_utils.circuits.BASELINES`, the embedders' labels, ``"random"`` (the lower bound) and ``"ground truth"`` (the upper bound).

:func:`compare_clusterings` (Eq. 5) and :func:`ground_truth_table` (ARI / NMI), and the
ablation tables of :mod:`pure_utils.study.ablations`, share one loop over neurons, ``k`` and methods
(:func:`score_rows`); the others are their own kind of table.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import yaml

from .._arrays import as_numpy
from .._progress import tqdm
from ..metrics import (DETECTION_KEYS, PAIRED_KEYS, distance_correlation, distance_matrix,
                       ground_truth_scores, intra_inter, kmeans_labels, paired_difference,
                       pairwise_distances_upper, polysemanticity,
                      purity, random_assignment_purity, summarize)
from ..paths import DATA_DIR
from ..virtual import VirtualNeurons

__all__ = [
    "PURE", "ACTIVATIONS", "ACTIVATIONS_PEAK", "BASELINE_LABELS", "RANDOM", "GROUND_TRUTH", "random_labels", "ground_truth_labels",
    "compare_clusterings", "summarize_frame", "paired_table", "correlation_table", "comparability", "comparability_word", "divergence_examples",
    "polysemanticity_table", "ground_truth_table", "heldout_purity", "cluster_composition",
    "results_table", "paper_numbers", "paper_gaps", "certain_mask",
]

PURE, RANDOM, GROUND_TRUTH = "PURE", "random", "ground truth"
#: The activation baselines, named as :data:`pure_utils.circuits.BASELINES` names them: every
#: channel's spatial mean (the paper's baseline) and every channel where the unit peaks.
ACTIVATIONS, ACTIVATIONS_PEAK = "activations (mean)", "activations (peak)"
#: Both labels, the paper's first (the keys of :data:`~pure_utils.circuits.BASELINES`).
BASELINE_LABELS = (ACTIVATIONS, ACTIVATIONS_PEAK)


# --------------------------------------------------------------------------------------------
# the bounds: random labels and the ground truth restricted to k clusters
# --------------------------------------------------------------------------------------------
def random_labels(n: int, k: int, seed) -> np.ndarray:
    """Uniformly random cluster labels (the lower bound), seeded: ``ndarray[n]``."""
    return np.random.default_rng(seed).integers(0, k, size=n)


def ground_truth_labels(concepts, k: int, certain=None) -> np.ndarray:
    """The ground-truth concepts restricted to ``k`` clusters (the upper bound).

    The ``k - 1`` most frequent concepts keep their own cluster; all others share the last
    one (ties by lower concept id). With at most ``k`` distinct concepts the concepts are
    returned as they are (relabelled ``0..``).

    Parameters
    ----------
    concepts : array-like[n]
        Concept ids (``-1``: background, a concept of its own).
    k : int
    certain : bool array-like[n], optional
        References whose truth is certain (``TrueFeatures.certain``): only they are
        counted, and the uncertain ones, which no score compares, join the last cluster.

    Returns
    -------
    ndarray[n] of int
    """
    c = as_numpy(concepts, np.int64).reshape(-1)
    keep_mask = np.ones(len(c), bool) if certain is None else as_numpy(certain).reshape(-1) > 0
    values, counts = np.unique(c[keep_mask], return_counts=True)
    order = values[np.lexsort((values, -counts))]
    keep = order if len(order) <= k else order[:k - 1]
    lookup = {v: i for i, v in enumerate(keep)}
    last = min(len(keep), max(k - 1, 0))
    return np.array([lookup.get(v, len(keep)) if m else last for v, m in zip(c, keep_mask)],
                    dtype=int)


# --------------------------------------------------------------------------------------------
# the shared per-neuron loop
# --------------------------------------------------------------------------------------------
def neuron_ids(neurons, n: int) -> list[int]:
    """Channel ids of the ``n`` rows of a table (default ``0..n-1``)."""
    ids = list(range(n)) if neurons is None else [int(k) for k in neurons]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} neuron ids for {n} neurons")
    return ids


def score_rows(shape, neurons, features: dict, score, *, ks=(2,), algorithms=("kmeans",),
                include_random: bool = True, truth=None, true_k=None, certain=None,
                random_state: int = 0, n_init: int = 10, desc: str = "",
                progress: bool = False) -> list[dict]:
    """One row per neuron, ``k``, clustering algorithm and method, scored by ``score(i, labels)``.

    ``shape`` is ``(n_neurons, n_ref)``. For neuron ``i`` every entry of ``features`` is
    clustered (``VirtualNeurons`` with ``algorithm``); ``"random"`` labels and, with ``truth``
    (``[n_neurons, n_ref]`` labels), the ground truth restricted to ``k`` clusters are added.
    ``ks`` may hold ``"true"``: each neuron's own number of true features, ``true_k[i]`` (the
    ``k`` column then reads ``"true"``). ``score`` returns a dict of columns. ``certain``
    (``[n_neurons, n_ref]`` booleans) tells the upper bound which references' truth counts
    (:func:`ground_truth_labels`); every clustering uses all references.
    """
    n, n_ref = shape[:2]
    if "true" in ks and true_k is None:
        raise ValueError('k = "true" needs true_k, the number of true features of each neuron')
    rows = []
    for i in tqdm(range(n), desc=desc, disable=not progress):
        for k_name in ks:
            k = int(true_k[i]) if k_name == "true" else int(k_name)
            for algorithm in algorithms:
                labelings = {name: _cluster(f[i], k, algorithm, random_state, n_init)
                             for name, f in features.items()}
                if include_random:
                    labelings[RANDOM] = random_labels(n_ref, k, [random_state, neurons[i], k])
                if truth is not None:
                    labelings[GROUND_TRUTH] = ground_truth_labels(
                        truth[i], k, None if certain is None else certain[i])
                for name, labels in labelings.items():
                    rows.append(dict(neuron=neurons[i], method=name, k=k_name if k_name == "true"
                                     else k, algorithm=algorithm, **score(i, labels)))
    return rows


def _cluster(X, k: int, algorithm: str, random_state: int, n_init: int) -> np.ndarray:
    if algorithm == "kmeans":
        return kmeans_labels(X, k, random_state=random_state, n_init=n_init)
    return VirtualNeurons(n_clusters=k, random_state=random_state, n_init=n_init,
                          algorithm=algorithm).fit(as_numpy(X)).labels_


def check_rows(features: dict, shape, what: str) -> None:
    for name, f in features.items():
        if tuple(f.shape[:2]) != tuple(shape[:2]):
            raise ValueError(f"features {name!r} of shape {tuple(f.shape)} do not match {what} "
                             f"{tuple(shape)} (same neurons and reference samples)")


# --------------------------------------------------------------------------------------------
# Eq. 5 comparison (Fig. 4 top) and its summary
# --------------------------------------------------------------------------------------------
def compare_clusterings(embeddings, features: dict, *, ks=(2, 3, 4, 5), neurons=None,
                        concepts=None, include_random: bool = True, random_state: int = 0,
                        n_init: int = 10, progress: bool = True) -> pd.DataFrame:
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
        What each method clusters, e.g. ``{"PURE": circuits, "activations (mean)": acts,
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
    n = len(embeddings)
    neurons = neuron_ids(neurons, n)
    check_rows(features, embeddings.shape, "embeddings")
    distances = {}

    def score(i, labels):
        if i not in distances:  # one distance matrix per neuron, shared by every clustering
            distances.clear()
            distances[i] = distance_matrix(embeddings[i])
        intra, inter = intra_inter(distances[i], labels)
        return dict(intra=intra, inter=inter, gap=inter - intra)

    rows = score_rows(embeddings.shape, neurons, features, score, ks=ks,
                       include_random=include_random,
                       truth=concepts, random_state=random_state, n_init=n_init, desc="Eq. 5",
                       progress=progress)
    return pd.DataFrame(rows, columns=["neuron", "method", "k", "intra", "inter", "gap"])


def summarize_frame(frame: pd.DataFrame, value: str = "gap", by=("method", "k"), *,
                    common: bool = True, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95) -> pd.DataFrame:
    """Mean, standard error (std / sqrt(n)) and bootstrap interval of ``value`` per group.

    With ``common`` (the default) and ``"method"`` among ``by``, every method of a group (the
    same ``k``, say) is summarised over the same neurons: those on which *all* its methods have
    a finite value. ``n_excluded`` counts the neurons left out; nothing is dropped silently.

    Returns
    -------
    pandas.DataFrame
        Columns ``*by, mean, sem, ci_low, ci_high, n, n_excluded`` (groups in order of
        appearance).
    """
    if value not in frame.columns:
        raise ValueError(f"column {value!r} not in the frame; columns: {', '.join(frame.columns)}")
    frame = frame.assign(_keep=True)
    if common and "method" in by and "neuron" in frame.columns:
        others = [c for c in by if c != "method"]
        finite = np.isfinite(frame[value].to_numpy(dtype=float))
        bad = frame.loc[~finite, others + ["neuron"]].drop_duplicates()
        if len(bad):
            merged = frame.merge(bad.assign(_bad=True), on=others + ["neuron"], how="left")
            frame = frame.assign(_keep=merged["_bad"].isna().to_numpy())
    rows = []
    for key, group in frame.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        kept = group[group._keep]
        rows.append({**dict(zip(by, key)),
                     **summarize(kept[value].to_numpy(), n_boot=n_boot, seed=seed, level=level),
                     "n_excluded": int(group.neuron.nunique() - kept.neuron.nunique())
                     if "neuron" in group else 0})
    return pd.DataFrame(rows)


def paired_table(frame: pd.DataFrame, value: str, pairs, *, by=("k",), n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95, detection: bool = False) -> pd.DataFrame:
    """Paired comparisons of methods over the same neurons (:func:`metrics.paired_difference`).

    Parameters
    ----------
    frame : DataFrame
        Per-neuron scores with columns ``neuron``, ``method``, ``value`` and ``by``.
    value : str
        The score compared (``"ari"``, ``"gap"``, ...).
    pairs : sequence of (str, str)
        ``(a, b)`` method pairs; each row reports ``a - b``.
    by : sequence of str
        Columns that split the comparison (each ``k`` on its own).
    detection : bool
        Also the columns ``n_tied, min_p, p_sign_flip, p_zsplit, mdd``: what each comparison
        can detect (see :func:`~pure_utils.metrics.paired_difference`). Default False.

    Returns
    -------
    pandas.DataFrame
        ``a, b, *by, mean, ci_low, ci_high, p_value, n, n_excluded, word``: the mean of the
        per-neuron differences ``a - b``, its bootstrap interval, the Wilcoxon signed-rank
        p-value, the neurons compared and left out, and ``"higher"`` / ``"lower"`` / ``"no
        detectable difference"`` as the interval says.
    """
    keys = PAIRED_KEYS + (DETECTION_KEYS if detection else ())
    rows = []
    groups = frame.groupby(list(by), sort=False) if by else [((), frame)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        wide = group.pivot_table(index="neuron", columns="method", values=value, aggfunc="first",
                                 dropna=False)
        for a, b in pairs:
            missing = [m for m in (a, b) if m not in wide.columns]
            if missing:
                raise ValueError(f"method {missing[0]!r} not in the frame; methods: "
                                 f"{', '.join(map(str, wide.columns))}")
            stats = paired_difference(wide[a], wide[b], n_boot=n_boot, seed=seed, level=level)
            rows.append({"a": a, "b": b, **dict(zip(by, key)), **{c: stats[c] for c in keys}})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# distance correlation and divergence (Fig. 4 bottom, right)
# --------------------------------------------------------------------------------------------
def correlation_table(reference, spaces: dict, *, n_samples: int = 50, n_subsets: int = 30,
                      seed: int = 0) -> pd.DataFrame:
    """Correlation of each space's distances with the reference space's (Fig. 4 bottom).

    Parameters
    ----------
    reference : Tensor[n_neurons, n_ref, d]
        Embeddings in CLIP's role.
    spaces : dict of str -> Tensor[n_neurons, n_ref, d_m]
        E.g. ``{"PURE": circuits, "activations (mean)": acts, "DINOv2": dino}``.
    n_samples, n_subsets, seed
        See :func:`~pure_utils.metrics.distance_correlation`; ``n_subsets`` is lowered to the
        number of neurons when there are fewer.

    Returns
    -------
    pandas.DataFrame
        ``method, mean, sem, n_subsets, values`` (``values``: the correlation of each group;
        every method uses the same groups, so two methods can be compared group by group).
    """
    n_subsets = min(n_subsets, len(reference))
    rows = []
    for name, space in spaces.items():
        r = distance_correlation(reference, space, n_samples=n_samples, n_subsets=n_subsets,
                                 seed=seed)
        rows.append(dict(method=name, mean=r["mean"], sem=r["sem"], n_subsets=n_subsets,
                         values=r["values"]))
    return pd.DataFrame(rows)


def divergence_examples(reference, pure, activations, *, peak=None, neurons=None,
                        n_samples: int = 50) -> pd.DataFrame:
    """Per neuron: how well PURE and activation distances follow the reference distances.

    For each neuron, the Pearson correlation of its pairwise distances (pairs ``i < j`` of the
    first ``n_samples`` reference samples) in the reference space with those of the PURE
    vectors and of the averaged activations (the paper's baseline; with ``peak``, also of the
    activations at the unit's peak). Sorted by ``difference = r_pure - r_activations``,
    descending: the first rows are where the averaged activations diverge from the reference
    while PURE follows it (Fig. 4 right), the last rows the opposite.

    Returns
    -------
    pandas.DataFrame
        ``neuron, r_pure, r_activations, difference`` (and ``r_peak, difference_peak = r_pure -
        r_peak`` with ``peak``).
    """
    n = len(reference)
    neurons = neuron_ids(neurons, n)
    spaces = [pure, activations] + ([] if peak is None else [peak])
    rows = []
    for i in range(n):
        r = [distance_correlation([reference[i]], [space[i]], n_samples=n_samples,
                                  n_subsets=1)["mean"] for space in spaces]
        row = dict(neuron=neurons[i], r_pure=r[0], r_activations=r[1], difference=r[0] - r[1])
        if peak is not None:
            row.update(r_peak=r[2], difference_peak=r[0] - r[2])
        rows.append(row)
    columns = ["neuron", "r_pure", "r_activations", "difference"]
    frame = pd.DataFrame(rows, columns=columns + ([] if peak is None else ["r_peak", "difference_peak"]))
    return frame.sort_values("difference", ascending=False, kind="stable").reset_index(drop=True)


def polysemanticity_table(embeddings, *, neurons=None, random_state: int = 0,
                          n_init: int = 10) -> pd.DataFrame:
    """Each neuron's polysemanticity (``inter - intra`` of k-means k=2 on its embeddings).

    Returns
    -------
    pandas.DataFrame
        ``neuron, polysemanticity``, most polysemantic first.
    """
    neurons = neuron_ids(neurons, len(embeddings))
    vals = [polysemanticity(e, random_state=random_state, n_init=n_init) for e in embeddings]
    frame = pd.DataFrame({"neuron": neurons, "polysemanticity": vals})
    return frame.sort_values("polysemanticity", ascending=False, kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# scores against ground truth (controlled benchmark)
# --------------------------------------------------------------------------------------------
def ground_truth_score(concepts, certain=None):
    """``score(i, labels)`` for :func:`score_rows`: ARI and NMI of neuron ``i``'s clustering
    against ``concepts[i]``, over the references with ``certain[i]`` only (all by default)."""
    def score(i, labels):
        s = ground_truth_scores(labels, concepts[i], None if certain is None else certain[i])
        return dict(ari=s["ari"], nmi=s["nmi"])
    return score


def ground_truth_table(concepts, features: dict, *, ks=(2, 3, 4, 5), neurons=None,
                       include_random: bool = True, include_ground_truth: bool = True,
                       true_k=None, certain=None, random_state: int = 0, n_init: int = 10,
                       progress: bool = True) -> pd.DataFrame:
    """ARI and NMI between each method's clusters and the ground-truth concepts, per neuron.

    Every method clusters all of a neuron's references; the score compares only those whose
    truth is ``certain`` (the references inside the uncertainty band of
    :func:`pure_utils.shapes.ground_truth.true_features` have no truth to agree with).

    Parameters
    ----------
    concepts : LongTensor[n_neurons, n_ref]
        Concept of each reference sample (:func:`pure_utils.shapes.ground_truth.reference_concepts`).
    features : dict of str -> Tensor[n_neurons, n_ref, d_m]
        What each method clusters (e.g. ``{"PURE (gxa)": ..., "PURE (epsilon_plus_flat)": ...,
        "activations (mean)": ..., "activations (peak)": ...}``).
    ks : sequence of int or "true"
        ``"true"``: each neuron's number of true features (``true_k``).
    neurons : sequence of int, optional
        Channel ids for the ``neuron`` column (select polysemantic neurons before calling, e.g.
        with ``TrueFeatures.polysemantic``).
    true_k : sequence of int, optional
        Each neuron's number of true features (``TrueFeatures.counts``).
    include_random, include_ground_truth : bool
        Add the lower bound (random labels) and the upper bound (the concepts restricted to
        ``k`` clusters, :func:`ground_truth_labels`).
    certain : BoolTensor[n_neurons, n_ref], optional
        The references whose truth is certain (``TrueFeatures.certain``): only they are
        scored. Default: all.

    Returns
    -------
    pandas.DataFrame
        ``neuron, method, k, ari, nmi`` (NaN for a neuron without a certain reference).
    """
    concepts = as_numpy(concepts, np.int64)
    n = concepts.shape[0]
    neurons = neuron_ids(neurons, n)
    check_rows(features, concepts.shape, "concepts")
    certain = certain_mask(certain, concepts.shape)
    rows = score_rows(concepts.shape, neurons, features, ground_truth_score(concepts, certain),
                       ks=ks, include_random=include_random,
                       truth=concepts if include_ground_truth else None, true_k=true_k,
                       certain=certain, random_state=random_state, n_init=n_init,
                       desc="ground truth", progress=progress)
    return pd.DataFrame(rows, columns=["neuron", "method", "k", "ari", "nmi"])


def certain_mask(certain, shape):
    """``certain`` as a boolean array of ``shape`` (None stays None)."""
    if certain is None:
        return None
    mask = as_numpy(certain) > 0
    if mask.shape != tuple(shape[:2]):
        raise ValueError(f"certain {mask.shape} must have the shape of the concepts {tuple(shape[:2])}")
    return mask


def heldout_purity(train_features: dict, test_features: dict, test_concepts, *,
                   train_concepts=None, ks=(2,), neurons=None, test_certain=None,
                   train_certain=None, random_state: int = 0, n_init: int = 10) -> pd.DataFrame:
    """Purity of held-out samples assigned to virtual neurons (the test phase, Fig. 2).

    Per neuron and method, virtual neurons are fitted on the reference samples
    (``train_features``) and held-out samples (e.g. the neuron's most activating images of
    another split) are assigned to the closest centroid. Purity (:func:`metrics.purity`) of
    those assignments against the held-out labels is compared with the purity of the neuron
    itself (all held-out samples in one group, ``purity_neuron``) and with chance: the same
    assignment shuffled over the samples (``purity_random``, the cluster sizes kept; see
    :func:`metrics.random_assignment_purity`). Assigning by any method's own centroids
    (activations included) is that method's test phase.

    Parameters
    ----------
    train_features, test_features : dict of str -> Tensor[n_neurons, n_*, d_m]
        The same methods in both.
    test_concepts : LongTensor[n_neurons, n_test]
    train_concepts : LongTensor[n_neurons, n_ref], optional
        Adds ``purity_train`` (purity of the fitted clusters on the reference samples).
    ks : sequence of int
    test_certain, train_certain : BoolTensor of the shape of ``test_concepts`` (``train_concepts``), optional
        The samples whose truth is certain (``TrueFeatures.certain``). Virtual neurons are
        fitted on, and assign, all samples; every purity counts only the certain ones (NaN for a
        neuron without any). Default: all.

    Returns
    -------
    pandas.DataFrame
        ``neuron, method, k, purity_neuron, purity_random, purity_virtual`` (and
        ``purity_train``).
    """
    test_concepts = as_numpy(test_concepts, np.int64)
    n = test_concepts.shape[0]
    neurons = neuron_ids(neurons, n)
    if set(train_features) != set(test_features):
        raise ValueError(f"methods differ: train {sorted(train_features)}, test {sorted(test_features)}")
    test_certain = certain_mask(test_certain, test_concepts.shape)
    if train_certain is not None and train_concepts is not None:
        train_certain = certain_mask(train_certain, as_numpy(train_concepts, np.int64).shape)
    rows = []
    for i in range(n):
        m = slice(None) if test_certain is None else test_certain[i]
        c = test_concepts[i][m]
        base = purity(np.zeros(len(c), dtype=int), c)
        for k in ks:
            for name in train_features:
                Xtr, Xte = as_numpy(train_features[name][i]), as_numpy(test_features[name][i])
                vn = VirtualNeurons(n_clusters=k, random_state=random_state, n_init=n_init).fit(Xtr)
                assigned = vn.predict(Xte)[m]
                row = dict(neuron=neurons[i], method=name, k=int(k), purity_neuron=base,
                           purity_random=random_assignment_purity(
                               assigned, c, seed=[random_state, neurons[i], int(k)])
                           if len(c) else float("nan"),
                           purity_virtual=purity(assigned, c))
                if train_concepts is not None:
                    mt = slice(None) if train_certain is None else train_certain[i]
                    row["purity_train"] = purity(vn.labels_[mt],
                                                 as_numpy(train_concepts[i], np.int64)[mt])
                rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# inspection and ablations (chapters beyond the paper)
# --------------------------------------------------------------------------------------------
def cluster_composition(labels, concepts, concept_names=None) -> pd.DataFrame:
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
    labels = np.asarray(labels).reshape(-1)
    c = as_numpy(concepts, np.int64).reshape(-1)
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


# --------------------------------------------------------------------------------------------
# the paper's numbers beside a build's
# --------------------------------------------------------------------------------------------
def comparability(profile: dict, paper_model: str, build_model: str) -> str:
    """``"yes"`` when a build number is defined as the paper's, else the reason it is not.

    The paper's numbers come from timm's pretrained ImageNet weights, ImageNet val and CLIP
    ViT-B/32 (pretrained) on the crops; a build number is comparable only with the same model,
    data and judge.
    """
    reasons = []
    if build_model != paper_model:
        reasons.append(f"another model ({build_model}; the paper: {paper_model})")
    if str(profile["dataset"]).lower() not in ("imagenet", "imagefolder") or not profile["pretrained"]:
        reasons.append("other data or weights (the controlled benchmark, or random weights)")
    if profile["embedder"] != "clip" or not profile["embedder_pretrained"]:
        reasons.append(f"another judge ({profile['embedder_label']} instead of CLIP)")
    return "yes" if not reasons else "not comparable: " + "; ".join(reasons)


#: the start of each reason :func:`comparability` gives -> its word in :func:`comparability_word`
_REASON_WORDS = {"another model": "model", "other data or weights": "data", "another judge": "judge"}


def comparability_word(text: str) -> str:
    """The short form of a :func:`comparability` text, for a table cell: ``"yes"``, or ``"no: "``
    and the words of the reasons (``"no: model, judge"``). A text it does not know is an error."""
    if text == "yes":
        return "yes"
    if not text.startswith("not comparable: "):
        raise ValueError(f"not a comparability text: {text!r} (accepted: 'yes' or 'not comparable: ...')")
    words = []
    starts = "|".join(map(re.escape, _REASON_WORDS))  # a reason may hold "; " in its brackets
    for reason in re.split(f"; (?={starts})", text.removeprefix("not comparable: ")):
        word = next((w for start, w in _REASON_WORDS.items() if reason.startswith(start)), None)
        if word is None:
            raise ValueError(f"unknown comparability reason {reason!r} (known: {', '.join(_REASON_WORDS)})")
        words.append(word)
    return "no: " + ", ".join(words)


def results_table(paper: dict, profile: dict, comparisons: dict, correlations: dict,
                  embeddings: dict, strong: dict, *, names: dict, k: int = 2) -> dict:
    """The paper's reported numbers beside the same quantities of this build, like with like.

    Each paper number belongs to a model (``paper[...]["model"]``); it is set beside the build's
    number of that model when the build evaluated it, else of the build's first model, and the
    ``comparable`` column says whether the two are defined the same way (:func:`comparability`).

    Parameters
    ----------
    paper : dict
        :func:`paper_numbers`.
    profile : dict
        The build's profile (data, weights, judge).
    comparisons, correlations, embeddings, strong : dict
        Per evaluated model: its :func:`compare_clusterings` and :func:`correlation_table`
        frames, its embeddings in CLIP's role (``Tensor[n_neurons, n_ref, d]``) and its strongly
        polysemantic neurons.
    names : dict
        The paper's method name -> this build's method name.
    k : int
        Number of clusters compared (the paper: 2).

    Returns
    -------
    dict
        ``table`` (DataFrame ``quantity, method, paper, paper model, this build, build model,
        comparable``), ``means`` (mean intra, inter and gap per method at ``k``, per model) and
        ``n_strong`` (per model).
    """
    models = list(comparisons)
    pick = lambda m: m if m in comparisons else models[0]  # noqa: E731
    means = {m: c[c.k == k].groupby("method")[["intra", "inter", "gap"]].mean()
             for m, c in comparisons.items()}
    rows = []

    def add(quantity, method, paper_value, entry, value_of):
        model = pick(entry["model"])
        rows.append([quantity, method, paper_value, entry["model"], value_of(model), model,
                     comparability(profile, entry["model"], model)])

    eq5 = paper["eq5_k2"]
    for paper_name, ours in names.items():
        p = eq5["methods"][paper_name]
        add("Eq. 5 intra / inter, k = 2", paper_name, f"{p['intra']:.2f} / {p['inter']:.2f}", eq5,
            lambda m: f"{means[m].loc[ours, 'intra']:.3f} / {means[m].loc[ours, 'inter']:.3f}")
    add("Eq. 5, all pairs", "-", f"{eq5['all_pairs']:.2f}", eq5,
        lambda m: f"{np.mean([pairwise_distances_upper(e).mean() for e in embeddings[m]]):.3f}")
    sp = paper["strongly_polysemantic_gap"]
    add("strongly polysemantic neurons", "-", str(sp["n"]), sp, lambda m: str(len(strong[m])))
    for paper_name, ours in names.items():
        def strong_gap(m, ours=ours):
            c = comparisons[m]
            g = c[(c.k == k) & c.neuron.isin(strong[m]) & (c.method == ours)].gap.mean()
            return f"{g:.3f} (n = {len(strong[m])})"
        add("mean gap, strongly polysemantic neurons", paper_name,
            f"{sp['methods'][paper_name]:.3f}", sp, strong_gap)
    dc = paper["distance_correlation"]
    for paper_name, ours in names.items():
        add("correlation with CLIP-role distances", paper_name, f"{dc['methods'][paper_name]:.2f}",
            dc, lambda m, ours=ours: f"{correlations[m].set_index('method')['mean'].get(ours, float('nan')):.2f}")
    table = pd.DataFrame(rows, columns=["quantity", "method", "paper", "paper model", "this build",
                                        "build model", "comparable"])
    return dict(table=table, means=means, n_strong={m: len(v) for m, v in strong.items()})


def paper_numbers() -> dict:
    """The numbers the paper reports (``data/paper_numbers.yaml``), with the setting of each."""
    return yaml.safe_load((DATA_DIR / "paper_numbers.yaml").read_text())


def paper_gaps(paper: dict, key: str = "eq5_k2") -> dict:
    """The paper's gap ``inter - intra`` (Eq. 5) of each method: ``{method: gap}``.

    ``paper``: :func:`paper_numbers`; ``key`` the reported Eq. 5 entry (``methods``: method ->
    ``intra``, ``inter``).
    """
    if key not in paper:
        raise ValueError(f"the paper's numbers have no entry {key!r}; entries: {', '.join(paper)}")
    return {m: v["inter"] - v["intra"] for m, v in paper[key]["methods"].items()}
