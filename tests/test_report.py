"""Glue helpers and the ablation routines added for the book's chapters."""
import numpy as np
import pytest
import torch

from pure_utils import experiments as ex
from pure_utils.report import _plain, compare_word


def test_numpy_scalars_become_python_numbers():
    assert type(_plain(np.float64(0.5))) is float
    assert type(_plain(np.int64(3))) is int
    assert _plain("x") == "x"


def test_compare_word():
    assert compare_word(2, 1) == "above"
    assert compare_word(1, 2) == "below"
    assert compare_word(1, 1) == "equal to"
    assert compare_word(float("nan"), 1) == "not comparable with"


def test_cluster_composition_hand_worked():
    labels = [0, 0, 0, 1, 1]
    concepts = [2, 2, 5, 5, -1]
    t = ex.cluster_composition(labels, concepts, ["a", "b", "c", "d", "e", "f"])
    first = t[t.cluster == 0]
    assert first.concept.tolist() == ["c", "f"]
    assert first.share.tolist() == pytest.approx([2 / 3, 1 / 3])
    second = t[t.cluster == 1]
    assert set(second.concept) == {"f", "background"} and second["size"].iloc[0] == 2
    with pytest.raises(ValueError, match="3 labels but 2 concepts"):
        ex.cluster_composition([0, 1, 0], [1, 2])


def _blobs(n_neurons=3, per=20, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 10
    labels = torch.arange(k).repeat_interleave(per)
    X = centres[labels] + 0.1 * torch.randn(n_neurons, k * per, d, generator=g)
    return X, labels.repeat(n_neurons, 1)


def test_choose_k_finds_separated_blobs_and_counts_concepts():
    X, concepts = _blobs(k=3)
    t = ex.choose_k_table(X, ks=[2, 3, 4], concepts=concepts, min_share=0.2)
    assert t.chosen_k.tolist() == [3, 3, 3]
    assert t.true_k.tolist() == [3, 3, 3]
    # background references (-1) count in the total but are no concept
    with_background = concepts.clone()
    with_background[0, :20] = -1
    t = ex.choose_k_table(X, ks=[2, 3, 4], concepts=with_background, min_share=0.2)
    assert t.true_k.tolist() == [2, 3, 3]
    assert (t.silhouette > 0.9).all()
    # k must stay below the number of samples: such k are skipped, not an error
    small = ex.choose_k_table(X[:, :4], ks=[2, 4, 6])
    assert small.silhouette_k4.isna().all() and small.silhouette_k6.isna().all()
    assert (small.chosen_k == 2).all()


def test_clustering_table_scores_every_algorithm_against_truth():
    X, concepts = _blobs(n_neurons=2, k=2)
    t = ex.clustering_table(concepts, {"blobs": X}, algorithms=["kmeans", "agglomerative", "gmm"],
                            k=2, progress=False)
    assert len(t) == 2 * 3
    assert t.ari.tolist() == pytest.approx([1.0] * 6)


def test_variant_scores_uses_ari_with_truth_and_gap_without():
    X, concepts = _blobs(n_neurons=2, k=2)
    noise = torch.randn_like(X)
    with_truth = ex.variant_scores({"good": X, "noise": noise}, k=2, concepts=concepts)
    good = with_truth[with_truth.method == "good"].score
    assert good.tolist() == pytest.approx([1.0, 1.0])
    assert (with_truth.metric == "ARI").all()
    # without truth: Eq. 5 gap on embeddings that are the blobs themselves
    without = ex.variant_scores({"good": X}, k=2, embeddings=X)
    g = without[without.method == "good"].score
    r = without[without.method == "random"].score
    assert (g.to_numpy() > r.to_numpy()).all()
    with pytest.raises(ValueError, match="needs concepts"):
        ex.variant_scores({"good": X}, k=2)


def test_rank_neurons_orders_by_the_embedding_gap_without_concepts():
    X, _ = _blobs(n_neurons=1, k=2)
    flat = torch.randn(1, X.shape[1], X.shape[2]) * 0.01  # one blob: little to split
    s = ex.Setting(profile={"has_concepts": False}, model=None, dataset=None, references=None,
                   neurons=[7, 9], device="cpu")
    r = ex.rank_neurons(s, torch.cat([flat, X]))
    assert r.neuron.tolist() == [9, 7]
    assert r.polysemanticity.iloc[0] > r.polysemanticity.iloc[1]
    with pytest.raises(ValueError, match="needs embeddings"):
        ex.rank_neurons(s)


def test_kmeans_on_repeated_embeddings_gives_labels_without_warnings():
    import warnings

    from pure_utils.metrics import kmeans_labels

    X = np.repeat(np.eye(3)[:2], 5, axis=0)  # two distinct points, k = 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = kmeans_labels(X, 3)
    assert len(set(labels[:5].tolist())) == 1 and labels[0] != labels[5]
