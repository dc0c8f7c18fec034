"""Tables of the ablations beyond the paper: clustering algorithms, choosing k, variants.

They share the per-neuron loop of :mod:`pure_utils.study.tables` (:func:`~pure_utils.study.tables.score_rows`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import silhouette_score

from .._arrays import as_numpy
from ..shapes.ground_truth import concept_counts, feature_shares
from ..metrics import kmeans_labels
from .report import interval
from .tables import (certain_mask, check_rows, compare_clusterings, ground_truth_score,
                     ground_truth_table, neuron_ids, paired_table, score_rows, summarize_frame)

__all__ = ["clustering_table", "variant_scores", "choose_k_table", "compare_variants"]


def clustering_table(concepts, features: dict, *, algorithms=("kmeans",), k: int = 2,
                     neurons=None, certain=None, random_state: int = 0, n_init: int = 10,
                     progress: bool = True) -> pd.DataFrame:
    """ARI / NMI against ground truth for several clustering algorithms (ablation).

    Parameters
    ----------
    concepts : LongTensor[n_neurons, n_ref]
    features : dict of str -> Tensor[n_neurons, n_ref, d_m]
    algorithms : sequence of str
        :data:`pure_utils.virtual.ALGORITHMS` names.
    k : int
    certain : BoolTensor[n_neurons, n_ref], optional
        References whose truth is certain (``TrueFeatures.certain``): all are clustered,
        only these are scored. Default: all.

    Returns
    -------
    pandas.DataFrame
        ``neuron, method, algorithm, k, ari, nmi``.
    """
    concepts = as_numpy(concepts, np.int64)
    n = concepts.shape[0]
    neurons = neuron_ids(neurons, n)
    check_rows(features, concepts.shape, "concepts")
    rows = score_rows(concepts.shape, neurons, features,
                       ground_truth_score(concepts, certain_mask(certain, concepts.shape)), ks=[k],
                       algorithms=algorithms, include_random=False, random_state=random_state,
                       n_init=n_init, desc="algorithms", progress=progress)
    return pd.DataFrame(rows, columns=["neuron", "method", "algorithm", "k", "ari", "nmi"])


def variant_scores(features: dict, *, k: int = 2, concepts=None, embeddings=None, neurons=None,
                   certain=None, random_state: int = 0, n_init: int = 10) -> pd.DataFrame:
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
    certain : BoolTensor[n_neurons, n_ref], optional
        With ``concepts``: the references whose truth is certain, the only ones the ARI
        compares (``TrueFeatures.certain``; every reference is clustered).

    Returns
    -------
    pandas.DataFrame
        ``neuron, method, k, score`` (and ``metric``: ``"ARI"`` or ``"gap"``).
    """
    if concepts is not None:
        frame = ground_truth_table(concepts, features, ks=[k], neurons=neurons,
                                   include_random=True, include_ground_truth=False,
                                   certain=certain, random_state=random_state, n_init=n_init,
                                   progress=False)
        return frame.rename(columns={"ari": "score"}).drop(columns="nmi").assign(metric="ARI")
    if embeddings is None:
        raise ValueError("variant_scores needs concepts (ground truth) or embeddings (Eq. 5)")
    frame = compare_clusterings(embeddings, features, ks=[k], neurons=neurons,
                                random_state=random_state, n_init=n_init, progress=False)
    return (frame.rename(columns={"gap": "score"}).drop(columns=["intra", "inter"])
            .assign(metric="gap"))


def choose_k_table(features, *, ks=(2, 3, 4, 5), concepts=None, min_share: float = 0.2,
                   neurons=None, certain=None, random_state: int = 0,
                   n_init: int = 10) -> pd.DataFrame:
    """Pick the number of virtual neurons per neuron by the silhouette of k-means.

    For each neuron, k-means runs for every ``k`` in ``ks`` on its attribution vectors and the
    ``k`` with the largest silhouette score (Euclidean) is chosen. With ground-truth
    ``concepts`` the true count is added: the number of concepts holding at least
    ``min_share`` of the neuron's reference samples (at least 1;
    :func:`pure_utils.shapes.ground_truth.concept_counts`, background is no concept); with
    ``certain`` (``TrueFeatures.certain``) the shares are of the certain references only,
    as in ``TrueFeatures.counts``.

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
    n = len(features)
    true_k = None if concepts is None else _true_counts(concepts, certain, min_share)
    neurons = neuron_ids(neurons, n)
    rows = []
    for i in range(n):
        X = as_numpy(features[i])
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


def _true_counts(concepts, certain, min_share: float) -> torch.Tensor:
    """Concepts with at least ``min_share`` of each neuron's (certain) references, at least 1."""
    if certain is None:
        return concept_counts(concepts, min_share).clamp(min=1)
    c = torch.as_tensor(as_numpy(concepts, np.int64))
    mask = torch.as_tensor(certain_mask(certain, c.shape))
    shares = feature_shares(c + 1, mask, int(c.max()) + 2)[:, 1:]  # -1 (background): no concept
    return (shares >= min_share - 1e-9).sum(1).clamp(min=1)


def compare_variants(frame: pd.DataFrame, value: str, reference: str, *, by=(), n_boot: int = 1000,
                     seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Each variant's mean score and its paired difference from a reference variant.

    Parameters
    ----------
    frame : DataFrame
        Per-neuron scores (``neuron``, ``method``, ``value`` and ``by`` columns), e.g. from
        :func:`variant_scores` or :func:`clustering_table`.
    value : str
        The score (``"score"``, ``"ari"``).
    reference : str
        The method every other method is compared with (e.g. ``"gxa"``).
    by : sequence of str
        Further columns that split the comparison (e.g. ``("algorithm",)``).

    Returns
    -------
    pandas.DataFrame
        ``*by, method, mean`` (with its interval, over the neurons every method has),
        ``difference`` (paired, ``method - reference``, with its interval), ``p_value``, ``n``,
        ``word``.
    """
    summary = summarize_frame(frame, value, by=tuple(by) + ("method",), n_boot=n_boot, seed=seed,
                              level=level)
    others = [m for m in dict.fromkeys(frame.method) if m != reference]
    pairs = paired_table(frame, value, [(m, reference) for m in others], by=tuple(by),
                         n_boot=n_boot, seed=seed, level=level).rename(columns={"a": "method"})
    out = summary.merge(pairs, on=list(by) + ["method"], how="left", suffixes=("", "_d"))
    return pd.DataFrame({
        **{c: out[c] for c in by}, "method": out.method,
        "mean": [interval(r["mean"], r.ci_low, r.ci_high) for _, r in out.iterrows()],
        f"difference from {reference}": [interval(r.mean_d, r.ci_low_d, r.ci_high_d)
                                         if r.method != reference else "-" for _, r in out.iterrows()],
        "p_value": out.p_value, "n": out.n, "word": out.word.fillna("-")})
