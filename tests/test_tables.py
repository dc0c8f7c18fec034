"""The tables of the chapters (pure_utils.study.tables), on constructed data with known answers."""
import numpy as np
import pandas as pd
import pytest
import torch

from pure_utils.study import ablations, tables
from pure_utils.metrics import distance_correlation, distance_matrix, intra_inter, kmeans_labels
from pure_utils.study.tables import (compare_clusterings, correlation_table, divergence_examples,
                               ground_truth_labels, ground_truth_table, heldout_purity,
                               summarize_frame)


def _blobs(n_neurons=3, n_ref=20, d=4, seed=0):
    """Two well separated groups per neuron (first half / second half)."""
    rng = np.random.default_rng(seed)
    truth = np.repeat([0, 1], n_ref // 2)
    emb = rng.normal(size=(n_neurons, n_ref, d)) + 10 * truth[None, :, None]
    return torch.tensor(emb, dtype=torch.float32), truth


def test_ground_truth_labels_hand_worked():
    c = [5, 5, 5, 2, 2, 7, -1]
    assert ground_truth_labels(c, 2).tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert ground_truth_labels(c, 3).tolist() == [0, 0, 0, 1, 1, 2, 2]
    # 4 distinct concepts <= k: kept, ordered by frequency then id (-1 before 7)
    assert ground_truth_labels(torch.tensor(c), 5).tolist() == [0, 0, 0, 1, 1, 3, 2]


def test_compare_clusterings_scores_every_method_by_eq5():
    emb, truth = _blobs()
    noise = torch.randn(3, 20, 6)
    frame = compare_clusterings(emb, {"good": emb, "noise": noise}, ks=(2, 3), neurons=[7, 8, 9],
                                concepts=torch.tensor(np.tile(truth, (3, 1))), progress=False)
    assert list(frame.columns) == ["neuron", "method", "k", "intra", "inter", "gap"]
    assert set(frame.method) == {"good", "noise", "random", "ground truth"}
    assert len(frame) == 3 * 2 * 4 and set(frame.neuron) == {7, 8, 9}
    # an independent computation of Eq. 5 for the true partition
    for i, k in enumerate([7, 8, 9]):
        E = emb[i].numpy()
        same = truth[:, None] == truth[None, :]
        D = np.sqrt(((E[:, None] - E[None]) ** 2).sum(-1))
        intra = D[same & ~np.eye(20, dtype=bool)].mean()
        inter = D[~same].mean()
        for method in ("good", "ground truth"):
            row = frame[(frame.neuron == k) & (frame.method == method) & (frame.k == 2)].iloc[0]
            assert row.intra == pytest.approx(intra, rel=1e-5) and row.inter == pytest.approx(inter, rel=1e-5)
    k2 = frame[frame.k == 2].groupby("method").gap.mean()
    assert k2["good"] > 5 > k2["noise"] and k2["random"] < 2
    with pytest.raises(ValueError, match="features 'bad'"):
        compare_clusterings(emb, {"bad": emb[:2]}, progress=False)


def test_summarize_frame():
    frame = pd.DataFrame({"method": ["a"] * 4 + ["b"] * 2, "k": 2,
                          "gap": [1.0, 2.0, 3.0, 4.0, 5.0, 5.0]})
    s = summarize_frame(frame, n_boot=200).set_index("method")
    assert s.loc["a", "mean"] == pytest.approx(2.5) and s.loc["a", "n"] == 4
    assert s.loc["a", "sem"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    assert s.loc["b", "sem"] == 0 and s.loc["b", "ci_low"] == s.loc["b", "ci_high"] == 5
    with pytest.raises(ValueError, match="column 'ari'"):
        summarize_frame(frame, "ari")


def test_correlation_table_and_divergence():
    rng = np.random.default_rng(0)
    ref = torch.tensor(rng.normal(size=(4, 12, 3)))
    follows = ref * 2                                       # distances scaled: r = 1
    other = torch.tensor(rng.normal(size=(4, 12, 5)))
    table = correlation_table(ref, {"follows": follows, "other": other}, n_samples=10, n_subsets=30)
    assert table.n_subsets.tolist() == [4, 4]              # clamped to the number of neurons
    assert table.loc[0, "mean"] == pytest.approx(1.0)
    direct = distance_correlation(ref, other, n_samples=10, n_subsets=4)
    assert table.loc[1, "mean"] == pytest.approx(direct["mean"])
    # neuron 20: PURE follows the reference, activations do not; neuron 21 the reverse
    pure = [follows[0], other[1]]                          # any sequence of [n_ref, d] works
    acts = [other[0], follows[1]]
    div = divergence_examples(ref[:2], pure, acts, neurons=[20, 21], n_samples=10)
    assert div.neuron.tolist() == [20, 21]
    assert div.loc[0, "r_pure"] == pytest.approx(1.0) and div.loc[1, "r_activations"] == pytest.approx(1.0)
    assert list(div.columns) == ["neuron", "r_pure", "r_activations", "difference"]
    # with the peak baseline: its own r and difference, the order still by the averaged one
    with_peak = divergence_examples(ref[:2], pure, acts, peak=[follows[0], follows[1]], neurons=[20, 21],
                                    n_samples=10)
    pd.testing.assert_frame_equal(with_peak[div.columns], div)
    assert with_peak.r_peak.tolist() == pytest.approx([1.0, 1.0])
    assert with_peak.difference_peak.tolist() == pytest.approx((with_peak.r_pure - 1.0).tolist())


def test_ground_truth_table_bounds():
    concepts = torch.tensor([[3] * 10 + [8] * 10, [1] * 5 + [2] * 15])
    exact = torch.nn.functional.one_hot(concepts).float() * 5 + 0.01 * torch.randn(2, 20, 9)
    noise = torch.randn(2, 20, 9)
    gt = ground_truth_table(concepts, {"exact": exact, "noise": noise}, ks=(2,), neurons=[4, 6],
                            progress=False)
    assert list(gt.columns) == ["neuron", "method", "k", "ari", "nmi"]
    by = gt.set_index(["neuron", "method"])
    for k in (4, 6):
        assert by.loc[(k, "exact"), "ari"] == pytest.approx(1.0)
        assert by.loc[(k, "ground truth"), "ari"] == pytest.approx(1.0)
        assert by.loc[(k, "random"), "ari"] < 0.5
    with pytest.raises(ValueError, match="features 'x'"):
        ground_truth_table(concepts, {"x": exact[:, :5]}, progress=False)


def test_heldout_purity():
    emb, truth = _blobs(n_neurons=2, n_ref=20)
    test_emb, _ = _blobs(n_neurons=2, n_ref=20, seed=1)
    concepts = torch.tensor(np.tile(truth, (2, 1)))
    out = heldout_purity({"PURE": emb}, {"PURE": test_emb}, concepts, train_concepts=concepts,
                            ks=(2,), neurons=[0, 5])
    assert out.purity_neuron.tolist() == [0.5, 0.5]
    assert out.purity_virtual.tolist() == [1.0, 1.0] and out.purity_train.tolist() == [1.0, 1.0]


def _clusters(n_neurons=3, per=20, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 10
    labels = torch.arange(k).repeat_interleave(per)
    X = centres[labels] + 0.1 * torch.randn(n_neurons, k * per, d, generator=g)
    return X, labels.repeat(n_neurons, 1)


def test_cluster_composition_hand_worked():
    labels = [0, 0, 0, 1, 1]
    concepts = [2, 2, 5, 5, -1]
    t = tables.cluster_composition(labels, concepts, ["a", "b", "c", "d", "e", "f"])
    first = t[t.cluster == 0]
    assert first.concept.tolist() == ["c", "f"]
    assert first.share.tolist() == pytest.approx([2 / 3, 1 / 3])
    second = t[t.cluster == 1]
    assert set(second.concept) == {"f", "background"} and second["size"].iloc[0] == 2
    with pytest.raises(ValueError, match="3 labels but 2 concepts"):
        tables.cluster_composition([0, 1, 0], [1, 2])


def test_choose_k_finds_separated_blobs_and_counts_concepts():
    X, concepts = _clusters(k=3)
    t = ablations.choose_k_table(X, ks=[2, 3, 4], concepts=concepts, min_share=0.2)
    assert t.chosen_k.tolist() == [3, 3, 3]
    assert t.true_k.tolist() == [3, 3, 3]
    # background references (-1) count in the total but are no concept
    with_background = concepts.clone()
    with_background[0, :20] = -1
    t = ablations.choose_k_table(X, ks=[2, 3, 4], concepts=with_background, min_share=0.2)
    assert t.true_k.tolist() == [2, 3, 3]
    assert (t.silhouette > 0.9).all()
    # k must stay below the number of samples: such k are skipped, not an error
    small = ablations.choose_k_table(X[:, :4], ks=[2, 4, 6])
    assert small.silhouette_k4.isna().all() and small.silhouette_k6.isna().all()
    assert (small.chosen_k == 2).all()


def test_clustering_table_scores_every_algorithm_against_truth():
    X, concepts = _clusters(n_neurons=2, k=2)
    t = ablations.clustering_table(concepts, {"blobs": X}, algorithms=["kmeans", "agglomerative", "gmm"],
                            k=2, progress=False)
    assert len(t) == 2 * 3
    assert t.ari.tolist() == pytest.approx([1.0] * 6)


def test_variant_scores_uses_ari_with_truth_and_gap_without():
    X, concepts = _clusters(n_neurons=2, k=2)
    noise = torch.randn_like(X)
    with_truth = ablations.variant_scores({"good": X, "noise": noise}, k=2, concepts=concepts)
    good = with_truth[with_truth.method == "good"].score
    assert good.tolist() == pytest.approx([1.0, 1.0])
    assert (with_truth.metric == "ARI").all()
    # without truth: Eq. 5 gap on embeddings that are the blobs themselves
    without = ablations.variant_scores({"good": X}, k=2, embeddings=X)
    g = without[without.method == "good"].score
    r = without[without.method == "random"].score
    assert (g.to_numpy() > r.to_numpy()).all()
    with pytest.raises(ValueError, match="needs concepts"):
        ablations.variant_scores({"good": X}, k=2)


def test_kmeans_on_repeated_embeddings_gives_labels_without_warnings():
    import warnings

    from pure_utils.metrics import kmeans_labels

    X = np.repeat(np.eye(3)[:2], 5, axis=0)  # two distinct points, k = 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = kmeans_labels(X, 3)
    assert len(set(labels[:5].tolist())) == 1 and labels[0] != labels[5]


def test_summaries_use_the_same_neurons_for_every_method_and_count_the_rest():
    frame = pd.DataFrame({"neuron": [1, 2, 3] * 2, "method": ["a"] * 3 + ["b"] * 3, "k": 2,
                          "ari": [1.0, 2.0, 3.0, 10.0, np.nan, 30.0]})
    s = summarize_frame(frame, "ari", n_boot=100).set_index("method")
    # neuron 2 is NaN for b, so a is summarised over neurons 1 and 3 only
    assert s.loc["a", "mean"] == pytest.approx(2.0) and s.loc["a", "n"] == 2
    assert s.loc["b", "mean"] == pytest.approx(20.0) and s.loc["a", "n_excluded"] == 1
    loose = summarize_frame(frame, "ari", common=False, n_boot=100).set_index("method")
    assert loose.loc["a", "n"] == 3


def test_paired_table_reports_each_pair_per_k():
    rng = np.random.default_rng(1)
    rows = []
    for n in range(30):
        base = rng.normal()
        for k in (2, 3):
            rows += [dict(neuron=n, k=k, method="PURE", ari=base + (0.4 if k == 2 else 0)),
                     dict(neuron=n, k=k, method=tables.ACTIVATIONS, ari=base + 0.01 * rng.normal())]
    t = tables.paired_table(pd.DataFrame(rows), "ari", [("PURE", tables.ACTIVATIONS)], n_boot=300)
    by_k = t.set_index("k")
    assert by_k.loc[2, "word"] == "higher" and by_k.loc[2, "mean"] == pytest.approx(0.4, abs=0.01)
    assert by_k.loc[3, "word"] == "no detectable difference"
    assert (t.n == 30).all() and set(t.a) == {"PURE"} and set(t.b) == {"activations (mean)"}
    with pytest.raises(ValueError, match="method 'CLIP' not in the frame"):
        tables.paired_table(pd.DataFrame(rows), "ari", [("PURE", "CLIP")])


def test_heldout_purity_has_a_chance_baseline():
    emb, truth = _blobs(n_neurons=2, n_ref=20)
    test_emb, _ = _blobs(n_neurons=2, n_ref=20, seed=1)
    concepts = torch.tensor(np.tile(truth, (2, 1)))
    out = heldout_purity({"PURE": emb}, {"PURE": test_emb}, concepts, ks=(2,), neurons=[0, 5])
    assert (out.purity_virtual == 1.0).all()
    assert ((out.purity_random > 0.5) & (out.purity_random < 0.65)).all()


def test_paper_gaps_are_inter_minus_intra():
    import yaml
    from pure_utils.paths import DATA_DIR
    from pure_utils.study.tables import paper_gaps, paper_numbers
    raw = yaml.safe_load((DATA_DIR / "paper_numbers.yaml").read_text())["eq5_k2"]["methods"]
    gaps = paper_gaps(paper_numbers())
    assert list(gaps) == list(raw) and "PURE" in gaps
    for m, v in raw.items():
        assert gaps[m] == pytest.approx(float(v["inter"]) - float(v["intra"]), abs=1e-12)
    with pytest.raises(ValueError, match="no entry 'eq5_k3'"):
        paper_gaps(paper_numbers(), "eq5_k3")
