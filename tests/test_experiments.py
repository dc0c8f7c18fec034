"""Evaluation routines on constructed data, and the smoke profile end to end."""
import numpy as np
import pandas as pd
import pytest
import torch

from pure_utils.experiments import (compare_clusterings, correlation_table, divergence_examples,
                                    evaluate, ground_truth_labels, ground_truth_table,
                                    heldout_purity, select_neurons, summarize_frame)
from pure_utils.metrics import distance_correlation, distance_matrix, intra_inter, kmeans_labels


def _blobs(n_neurons=3, n_ref=20, d=4, seed=0):
    """Two well separated groups per neuron (first half / second half)."""
    rng = np.random.default_rng(seed)
    truth = np.repeat([0, 1], n_ref // 2)
    emb = rng.normal(size=(n_neurons, n_ref, d)) + 10 * truth[None, :, None]
    return torch.tensor(emb, dtype=torch.float32), truth


def test_select_neurons():
    assert select_neurons(5) == [0, 1, 2, 3, 4]
    sub = select_neurons(100, 10, seed=1)
    assert sub == sorted(sub) and len(set(sub)) == 10 and sub == select_neurons(100, 10, seed=1)
    with pytest.raises(ValueError, match="n_neurons=0"):
        select_neurons(5, 0)


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


# --- the smoke profile, end to end --------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke():
    from pure_utils.profiles import load_profile

    # the smoke profile at 64 px instead of 224 px and with fewer samples: the same code path
    # (random ResNet-50, tiny random CLIP / DINOv2, crops, every table), within a test's budget
    small = {"config": {"image_size": 64}, "n": 8}
    profile = load_profile("smoke", dataset_kwargs=small, heldout_dataset_kwargs=small, n_ref=4,
                           n_neurons=2, correlation_n_samples=4, n_boot=50)
    return profile, evaluate(profile, progress=False)


def test_smoke_profile_runs_the_whole_evaluation(smoke):
    profile, r = smoke
    s = r.setting
    assert len(s.neurons) == 2 and s.references.n_ref == 4
    t = r.tensors
    assert t["pure"].shape == (2, 4, 1024) and t["activations"].shape == (2, 4, 2048)
    assert t["embeddings"].shape[:2] == (2, 4) and t["visual_embeddings"].shape[:2] == (2, 4)
    assert not torch.allclose(t["embeddings"][..., :8], t["visual_embeddings"][..., :8])
    boxes = t["boxes"]
    assert boxes.shape == (2, 4, 4) and (boxes[..., 2] > boxes[..., 0]).all()
    assert boxes.min() >= 0 and boxes[..., 2:].max() <= 64
    methods = {"PURE", "activations", profile["embedder_label"], profile["visual_embedder_label"],
               "random", "ground truth"}
    assert set(r.comparison.method) == methods and set(r.comparison.k) == {2, 3}
    assert set(r.comparison_summary.method) == methods
    # the table's Eq. 5 values agree with a recomputation from the returned tensors
    row = r.comparison[(r.comparison.method == "PURE") & (r.comparison.k == 2)].iloc[0]
    i = s.neurons.index(row.neuron)
    labels = kmeans_labels(t["pure"][i], 2, random_state=0, n_init=profile["n_init"])
    intra, inter = intra_inter(distance_matrix(t["embeddings"][i]), labels)
    assert (row.intra, row.inter) == (pytest.approx(intra), pytest.approx(inter))
    assert set(r.correlation.method) == {"PURE", "activations", profile["visual_embedder_label"]}
    assert r.divergence.shape[0] == 2 and len(r.polysemanticity) == 2
    assert r.purity is not None and set(r.purity.columns) >= {"purity_neuron", "purity_virtual"}
    if r.ground_truth is not None:
        assert {"PURE (gxa)", "PURE (epsilon_plus_flat)"} <= set(r.ground_truth.method)
        assert r.ground_truth.ari.between(-1, 1).all()


def test_ground_truth_embedder_embeds_reference_concepts():
    from pure_utils.embed import load_embedder
    from pure_utils.experiments import Setting, embed_references
    from pure_utils.references import References
    from pure_utils.synthetic import SyntheticShapes, reference_concepts

    ds = SyntheticShapes("test", n=6)
    g = torch.Generator().manual_seed(0)
    refs = References(indices=torch.stack([torch.randperm(6, generator=g) for _ in range(3)]),
                      values=torch.ones(3, 6), positions=torch.randint(0, 3, (3, 6, 2), generator=g),
                      map_size=(3, 3), input_size=(96, 96), layer="layer4")
    setting = Setting(profile={}, model=None, dataset=ds, references=refs, neurons=[0, 2],
                      device="cpu")
    emb = embed_references(setting, load_embedder("ground_truth", n_concepts=ds.n_concepts))
    concepts = reference_concepts(ds, refs)[[0, 2]]
    assert emb.shape == (2, 6, ds.n_concepts + 1)
    for i in range(2):
        same = (concepts[i][:, None] == concepts[i][None, :]).double()
        np.testing.assert_allclose(distance_matrix(emb[i]), 1 - same, atol=1e-6)
