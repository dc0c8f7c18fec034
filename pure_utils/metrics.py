"""Scores of (virtual) neurons: Eq. 4-5 distances, polysemanticity, distance correlation,
agreement with ground truth, summaries with error bars, and paired comparisons of two methods.

Conventions: arrays may be torch tensors or NumPy arrays; results are NumPy / Python floats.
Standard errors are ``std / sqrt(n)`` with the sample standard deviation (``ddof=1``).
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from scipy.stats import wilcoxon
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from ._arrays import as_numpy
from .stats import TIE, minimum_detectable_difference, sign_flip_test, smallest_reachable_p
from .virtual import VirtualNeurons

__all__ = ["distance_matrix", "intra_inter", "polysemanticity", "kmeans_labels",
           "pairwise_distances_upper", "distance_correlation", "ground_truth_scores",
           "purity", "bootstrap_ci", "standard_error", "summarize", "paired_difference",
           "random_assignment_purity", "PAIRED_KEYS", "DETECTION_KEYS"]

#: The keys of :func:`paired_difference` that paired tables show.
PAIRED_KEYS = ("mean", "ci_low", "ci_high", "p_value", "n", "n_excluded", "word")
#: Its further keys: what the comparison can detect (ties, the smallest reachable p, a test
#: that keeps ties, the minimum detectable difference).
DETECTION_KEYS = ("n_tied", "min_p", "p_sign_flip", "p_zsplit", "mdd")


def distance_matrix(embeddings) -> np.ndarray:
    """Eq. 4: Euclidean distances between all pairs of embeddings.

    Parameters
    ----------
    embeddings : Tensor or ndarray[n, d]

    Returns
    -------
    ndarray[n, n]
        ``D[i, j] = ||e_i - e_j||_2`` (exactly 0 on the diagonal, symmetric).
    """
    E = as_numpy(embeddings)
    if E.ndim != 2:
        raise ValueError(f"embeddings need shape [n, d], got {E.shape}")
    sq = (E * E).sum(1)
    D = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2 * E @ E.T, 0, None))
    # the Gram trick loses precision for near-identical points: exact zeros where equal
    np.fill_diagonal(D, 0.0)
    D = (D + D.T) / 2
    return D


def intra_inter(D, labels) -> tuple[float, float]:
    """Eq. 5: mean distance within clusters (pairs ``i != j``) and between clusters.

    A cluster with a single member contributes no intra-cluster pair. Without any intra
    (inter) pair the value is ``nan``.

    Parameters
    ----------
    D : ndarray[n, n]
        Distance matrix (Eq. 4).
    labels : array-like[n]
        Cluster index of each sample.

    Returns
    -------
    (intra, inter) : tuple of float
    """
    D = as_numpy(D)
    labels = np.asarray(labels).reshape(-1)
    if D.ndim != 2 or D.shape[0] != D.shape[1] or D.shape[0] != labels.shape[0]:
        raise ValueError(f"D of shape {D.shape} does not match {labels.shape[0]} labels")
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    n_intra, n_inter = (same & off).sum(), (~same).sum()
    intra = D[same & off].sum() / n_intra if n_intra else float("nan")
    inter = D[~same].sum() / n_inter if n_inter else float("nan")
    return float(intra), float(inter)


def kmeans_labels(X, n_clusters: int = 2, *, random_state: int = 0, n_init: int = 10) -> np.ndarray:
    """k-means labels of the rows of ``X`` (scikit-learn, as in the reference pipeline).

    Uses :class:`pure_utils.virtual.VirtualNeurons` so that the clustering of the evaluation is
    the one of the method.

    Parameters
    ----------
    X : Tensor or ndarray[n, d]
    n_clusters : int
        ``k`` (at most ``n``).

    Returns
    -------
    ndarray[n] of int
    """
    X = as_numpy(X)
    if not 1 <= n_clusters <= X.shape[0]:
        raise ValueError(f"n_clusters={n_clusters} not in 1..{X.shape[0]} (number of samples)")
    vn = VirtualNeurons(n_clusters=n_clusters, random_state=random_state, n_init=n_init)
    with warnings.catch_warnings():
        # embeddings with repeated rows (the ground-truth embedder gives one vector per concept)
        # can hold fewer distinct points than k: k-means then leaves clusters empty and warns,
        # and the labels are still the right answer for Eq. 5
        warnings.simplefilter("ignore", ConvergenceWarning)
        return np.asarray(vn.fit(X).labels_)


def polysemanticity(embeddings, random_state: int = 0, *, n_init: int = 10) -> float:
    """A neuron's polysemanticity: ``rho_inter - rho_intra`` of k-means (k=2) on its embeddings.

    Parameters
    ----------
    embeddings : Tensor or ndarray[n_ref, d]
        Embeddings (CLIP role) of the neuron's feature visualisations.

    Returns
    -------
    float
        Large values: two well separated groups of visualisations.
    """
    E = as_numpy(embeddings)
    labels = kmeans_labels(E, 2, random_state=random_state, n_init=n_init)
    intra, inter = intra_inter(distance_matrix(E), labels)
    return inter - intra


def pairwise_distances_upper(X) -> np.ndarray:
    """Euclidean distances of all pairs ``i < j`` of the rows of ``X``: ``ndarray[n (n - 1) / 2]``."""
    D = distance_matrix(X)
    return D[np.triu_indices(D.shape[0], k=1)]


def distance_correlation(reference, compared, *, n_samples: int = 50, n_subsets: int = 30,
                         seed: int = 0) -> dict:
    """Correlation of pairwise distances in two spaces (Fig. 4 bottom, reference protocol).

    Per neuron, the distances of all pairs ``i < j`` of its first ``n_samples`` reference
    samples are computed in the reference space (CLIP role) and in the compared space (PURE
    attributions, activations, DINOv2 embeddings). The neurons are split at random (seeded)
    into ``n_subsets`` groups; per group the distances of its neurons are pooled and their
    Pearson correlation computed. The diagonal (zero distance of a sample to itself) is left
    out by taking only pairs ``i < j``; equal embeddings of different samples count.

    Parameters
    ----------
    reference : sequence of Tensor/ndarray[n_ref, d], or array[n_neurons, n_ref, d]
        Reference-space embeddings per neuron.
    compared : same layout, ``[n_neurons, n_ref, d']``
        Compared-space vectors of the same samples in the same order.
    n_samples : int
        Reference samples per neuron (the first, i.e. most activating, ones). Default 50.
    n_subsets : int
        Random groups of neurons (default 30); at most the number of neurons.
    seed : int
        Seed of the split.

    Returns
    -------
    dict
        ``mean`` and ``sem`` (``std / sqrt(n_subsets)``) of the per-group correlations,
        ``values`` (ndarray[n_subsets]; ``nan`` where a group's distances are constant),
        ``groups`` (list of neuron-position arrays).
    """
    ref = [as_numpy(r) for r in reference]
    cmp_ = [as_numpy(c) for c in compared]
    n = len(ref)
    if len(cmp_) != n:
        raise ValueError(f"{n} neurons in reference but {len(cmp_)} in compared")
    if not 1 <= n_subsets <= n:
        raise ValueError(f"n_subsets={n_subsets} not in 1..{n} (number of neurons)")
    if n_samples < 2:
        raise ValueError(f"n_samples={n_samples} must be >= 2 (pairs are needed)")
    for i, (r, c) in enumerate(zip(ref, cmp_)):
        if r.shape[0] < n_samples or c.shape[0] < n_samples:
            raise ValueError(f"neuron at position {i} has {min(r.shape[0], c.shape[0])} samples, "
                             f"fewer than n_samples={n_samples}")
    d_ref = [pairwise_distances_upper(r[:n_samples]) for r in ref]
    d_cmp = [pairwise_distances_upper(c[:n_samples]) for c in cmp_]
    groups = np.array_split(np.random.default_rng(seed).permutation(n), n_subsets)
    values = []
    for g in groups:
        a = np.concatenate([d_ref[i] for i in g])
        b = np.concatenate([d_cmp[i] for i in g])
        if a.std() == 0 or b.std() == 0:
            values.append(float("nan"))
        else:
            values.append(float(np.corrcoef(a, b)[0, 1]))
    values = np.asarray(values)
    return {"mean": float(np.nanmean(values)) if np.isfinite(values).any() else float("nan"),
            "sem": standard_error(values), "values": values, "groups": groups}


def ground_truth_scores(labels_pred, concepts, certain=None) -> dict:
    """Agreement of a clustering of reference samples with their ground-truth concepts.

    Adjusted Rand index (0: chance, 1: identical partitions) and normalised mutual information
    (arithmetic normalisation, scikit-learn's default). The background (concept ``-1``) is a
    class of its own.

    Parameters
    ----------
    labels_pred : array-like[n_ref] or [n_neurons, n_ref]
        Cluster (virtual neuron) of each reference sample.
    concepts : array-like of the same shape
        Ground-truth concept of each reference sample.
    certain : bool array-like of the same shape, optional
        The references whose truth is certain (``TrueFeatures.certain``). Only those are
        compared: the clustering was made on all references, but a reference inside the
        uncertainty band has no truth to agree with. A neuron without a certain reference
        scores NaN. Default: all references.

    Returns
    -------
    dict
        ``{"ari": ..., "nmi": ...}``: floats for one neuron, ``ndarray[n_neurons]`` otherwise.
    """
    pred = np.asarray(as_numpy(labels_pred, np.int64))
    true = np.asarray(as_numpy(concepts, np.int64))
    if pred.shape != true.shape or pred.ndim not in (1, 2):
        raise ValueError(f"labels_pred {pred.shape} and concepts {true.shape} need the same shape "
                         "[n_ref] or [n_neurons, n_ref]")
    keep = (np.ones(true.shape, dtype=bool) if certain is None
            else np.asarray(as_numpy(certain)).astype(bool))
    if keep.shape != true.shape:
        raise ValueError(f"certain {keep.shape} must have the shape of concepts {true.shape}")

    def one(t, p, m):
        if not m.any():
            return float("nan"), float("nan")
        return (float(adjusted_rand_score(t[m], p[m])),
                float(normalized_mutual_info_score(t[m], p[m])))

    if pred.ndim == 1:
        ari, nmi = one(true, pred, keep)
        return {"ari": ari, "nmi": nmi}
    scores = np.array([one(t, p, m) for t, p, m in zip(true, pred, keep)]).reshape(-1, 2)
    return {"ari": scores[:, 0], "nmi": scores[:, 1]}


def purity(labels_pred, concepts) -> float:
    """Purity: fraction of samples whose concept is the most frequent one of their cluster.

    Parameters
    ----------
    labels_pred, concepts : array-like[n]

    Returns
    -------
    float in (0, 1]; ``nan`` for ``n = 0``.
    """
    pred = np.asarray(labels_pred).reshape(-1)
    true = np.asarray(as_numpy(concepts, np.int64)).reshape(-1)
    if pred.shape != true.shape:
        raise ValueError(f"{pred.shape[0]} labels but {true.shape[0]} concepts")
    if pred.size == 0:
        return float("nan")
    hits = 0
    for c in np.unique(pred):
        _, counts = np.unique(true[pred == c], return_counts=True)
        hits += counts.max()
    return float(hits / pred.size)


def standard_error(values) -> float:
    """``std / sqrt(n)`` of the finite values (sample std, ``ddof=1``); ``nan`` for ``n < 2``."""
    v = as_numpy(values).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return float("nan")
    return float(v.std(ddof=1) / np.sqrt(v.size))


def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (``nan`` values dropped).

    Parameters
    ----------
    values : array-like[n]
    n_boot : int
        Bootstrap resamples.
    seed : int
        Seed of the resampling.
    level : float
        Coverage in (0, 1), default 0.95.

    Returns
    -------
    (low, high) : tuple of float; ``(nan, nan)`` without finite values.
    """
    if not 0 < level < 1:
        raise ValueError(f"level={level} not in (0, 1)")
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot} must be >= 1")
    v = as_numpy(values).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def summarize(values, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean, standard error, bootstrap interval and count of the finite values.

    Returns
    -------
    dict with keys ``mean``, ``sem``, ``ci_low``, ``ci_high``, ``n``.
    """
    v = as_numpy(values).reshape(-1)
    v = v[np.isfinite(v)]
    low, high = bootstrap_ci(v, n_boot=n_boot, seed=seed, level=level)
    return {"mean": float(v.mean()) if v.size else float("nan"), "sem": standard_error(v),
            "ci_low": low, "ci_high": high, "n": int(v.size)}


def paired_difference(a, b, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """A paired comparison of two methods over the same neurons: ``a - b`` per neuron.

    Only neurons where both values are finite are compared; how many were left out is
    reported, never hidden.

    Parameters
    ----------
    a, b : array-like[n]
        One value per neuron for each method, the same neurons in the same order.
    n_boot, seed, level
        Percentile bootstrap of the mean difference (see :func:`bootstrap_ci`).

    Returns
    -------
    dict
        ``mean`` (mean difference), ``ci_low``, ``ci_high`` (bootstrap interval of the mean),
        ``p_value`` (two-sided Wilcoxon signed-rank test; 1 when every difference is 0, NaN
        below 2 neurons), ``n`` (neurons compared), ``n_excluded`` (neurons with a NaN in either
        method) and ``word``: ``"higher"`` when the interval lies above 0, ``"lower"`` when it lies
        below, else ``"no detectable difference"``. Then what the comparison can detect
        (:mod:`pure_utils.stats`; NaN below 2 neurons): ``n_tied`` (differences within 1e-12 of
        0, which the Wilcoxon test drops), ``min_p`` (the smallest p its Wilcoxon test can reach
        with this many non-zero differences), ``p_sign_flip`` (two-sided sign-flip test of the
        mean, ties kept, Monte Carlo seeded by ``seed`` beyond 16 non-tied differences),
        ``p_zsplit`` (Wilcoxon with ties split between the signs, ``zero_method="zsplit"``) and
        ``mdd`` (the minimum detectable difference at ``level`` with power 0.8).
    """
    a, b = as_numpy(a).reshape(-1), as_numpy(b).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"{a.size} values against {b.size}: a paired comparison needs the same neurons")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    low, high = bootstrap_ci(d, n_boot=n_boot, seed=seed, level=level)
    if d.size < 2:
        p = float("nan")
    elif not np.any(d != 0):
        p = 1.0
    else:
        p = float(wilcoxon(d).pvalue)
    word = ("higher" if low > 0 else "lower" if high < 0 else "no detectable difference")
    return {"mean": float(d.mean()) if d.size else float("nan"), "ci_low": low, "ci_high": high,
            "p_value": p, "n": int(d.size), "n_excluded": int((~keep).sum()), "word": word,
            **_detection(d, seed=seed, level=level)}


def _detection(d: np.ndarray, *, seed: int, level: float) -> dict:
    """The :data:`DETECTION_KEYS` of :func:`paired_difference` for finite differences ``d``."""
    nan = float("nan")
    if d.size < 2:
        return {"n_tied": int((np.abs(d) <= TIE).sum()), "min_p": nan, "p_sign_flip": nan,
                "p_zsplit": nan, "mdd": nan}
    zsplit = float(wilcoxon(d, zero_method="zsplit").pvalue) if np.any(d != 0) else 1.0
    return {"n_tied": int((np.abs(d) <= TIE).sum()),
            "min_p": smallest_reachable_p(int(np.count_nonzero(d)), "wilcoxon"),
            "p_sign_flip": sign_flip_test(d, seed=seed)["p"], "p_zsplit": zsplit,
            "mdd": minimum_detectable_difference(d, level=level)}


def random_assignment_purity(labels_pred, concepts, *, n_draws: int = 200, seed: int = 0) -> float:
    """Expected purity of a random assignment with the same cluster sizes as ``labels_pred``.

    The chance level of a test phase: the assigned cluster labels are shuffled over the
    samples ``n_draws`` times (seeded) and the purity (:func:`purity`) averaged.
    """
    pred = np.asarray(labels_pred).reshape(-1)
    rng = np.random.default_rng(seed)
    return float(np.mean([purity(rng.permutation(pred), concepts) for _ in range(n_draws)]))
