"""Eq. 4-5, polysemanticity, distance correlation protocol, ground-truth scores, error bars."""
import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, pdist
from scipy.stats import pearsonr

from pure_utils.metrics import (bootstrap_ci, distance_correlation, distance_matrix,
                                ground_truth_scores, intra_inter, polysemanticity, purity,
                                standard_error, summarize)


def test_distance_matrix_matches_scipy():
    X = np.random.default_rng(0).normal(size=(7, 5))
    D = distance_matrix(torch.tensor(X))
    np.testing.assert_allclose(D, cdist(X, X), atol=1e-10)
    assert np.all(np.diag(D) == 0)


def test_intra_inter_hand_worked():
    # points on a line: 0, 1, 3, 7
    E = np.array([[0.0], [1.0], [3.0], [7.0]])
    D = distance_matrix(E)
    # clusters {0, 1} and {3, 7}: intra pairs |0-1| = 1 and |3-7| = 4 (each counted twice)
    intra, inter = intra_inter(D, [0, 0, 1, 1])
    assert intra == pytest.approx((1 + 4) / 2)
    assert inter == pytest.approx((3 + 7 + 2 + 6) / 4)


def test_intra_inter_singleton_cluster_adds_no_intra_pair():
    D = distance_matrix(np.array([[0.0], [1.0], [3.0], [7.0]]))
    intra, inter = intra_inter(D, [0, 0, 0, 1])
    assert intra == pytest.approx((1 + 3 + 2) / 3)   # only pairs within {0, 1, 3}
    assert inter == pytest.approx((7 + 6 + 4) / 3)
    intra, inter = intra_inter(D, [0, 1, 2, 3])      # all singletons: no intra pair at all
    assert np.isnan(intra) and inter == pytest.approx(D[np.triu_indices(4, 1)].mean())
    intra, inter = intra_inter(D, [0, 0, 0, 0])
    assert np.isnan(inter)


def test_intra_inter_shape_error():
    with pytest.raises(ValueError, match="labels"):
        intra_inter(np.zeros((3, 3)), [0, 1])


def test_polysemanticity_separates_two_blobs_from_one():
    rng = np.random.default_rng(0)
    one = rng.normal(size=(40, 4))
    two = np.concatenate([rng.normal(size=(20, 4)), rng.normal(size=(20, 4)) + 20])
    assert polysemanticity(two) > 15
    assert polysemanticity(one) < 2


def _direct_protocol(ref, cmp_, n_samples, n_subsets, seed):
    """The protocol written out: loops, scipy pdist (pairs i < j) and scipy pearsonr."""
    perm = np.random.default_rng(seed).permutation(len(ref))
    values = []
    for group in np.array_split(perm, n_subsets):
        a, b = [], []
        for i in group:
            a.extend(pdist(ref[i][:n_samples]))
            b.extend(pdist(cmp_[i][:n_samples]))
        values.append(pearsonr(a, b)[0])
    values = np.array(values)
    return values.mean(), values.std(ddof=1) / np.sqrt(n_subsets), values


def test_distance_correlation_matches_direct_computation():
    rng = np.random.default_rng(1)
    n_neurons, n_ref = 45, 60
    ref = rng.normal(size=(n_neurons, n_ref, 8))
    cmp_ = ref[..., :3] + 0.8 * rng.normal(size=(n_neurons, n_ref, 3))   # partly aligned
    out = distance_correlation(torch.tensor(ref), list(cmp_), n_samples=50, n_subsets=30, seed=3)
    mean, sem, values = _direct_protocol(ref, cmp_, 50, 30, 3)
    np.testing.assert_allclose(out["values"], values, rtol=1e-9)
    assert out["mean"] == pytest.approx(mean)
    assert out["sem"] == pytest.approx(sem)
    assert 0.2 < out["mean"] < 0.95


def test_distance_correlation_one_subset_is_pooled_pearson():
    rng = np.random.default_rng(2)
    ref, cmp_ = rng.normal(size=(4, 10, 3)), rng.normal(size=(4, 10, 5))
    out = distance_correlation(ref, cmp_, n_samples=10, n_subsets=1)
    a = np.concatenate([pdist(r) for r in ref])
    b = np.concatenate([pdist(c) for c in cmp_])
    assert out["mean"] == pytest.approx(np.corrcoef(a, b)[0, 1])
    # equal embeddings of different samples are kept (not dropped as "diagonal")
    dup = ref.copy()
    dup[:, 1] = dup[:, 0]
    out = distance_correlation(dup, dup, n_samples=10, n_subsets=1)
    assert out["mean"] == pytest.approx(1.0)


def test_distance_correlation_errors():
    x = np.zeros((3, 10, 2))
    with pytest.raises(ValueError, match="n_subsets=5"):
        distance_correlation(x, x, n_samples=10, n_subsets=5)
    with pytest.raises(ValueError, match="n_samples=50"):
        distance_correlation(x, x, n_samples=50, n_subsets=3)


def test_ground_truth_scores_hand_worked():
    s = ground_truth_scores([0, 0, 1, 1], [5, 5, 7, 7])
    assert s["ari"] == pytest.approx(1.0) and s["nmi"] == pytest.approx(1.0)
    # crossing partition of 4 samples: sum C(n_ij, 2) = 0, rows and columns 2 x C(2, 2) = 2,
    # expected index 2 * 2 / C(4, 2) = 2/3, max index 2 -> ARI = (0 - 2/3) / (2 - 2/3) = -1/2
    s = ground_truth_scores([0, 1, 0, 1], [0, 0, 1, 1])
    assert s["ari"] == pytest.approx(-0.5) and s["nmi"] == pytest.approx(0.0)
    many = ground_truth_scores(np.array([[0, 0, 1, 1], [0, 1, 0, 1]]), torch.tensor([[5, 5, 7, 7], [0, 0, 1, 1]]))
    np.testing.assert_allclose(many["ari"], [1.0, -0.5])
    with pytest.raises(ValueError, match="same shape"):
        ground_truth_scores([0, 1], [0, 1, 2])


def test_purity_hand_worked():
    # cluster 0: concepts 3, 3, 4 -> 2 hits; cluster 1: 4, 4 -> 2 hits; 4 / 5
    assert purity([0, 0, 0, 1, 1], [3, 3, 4, 4, 4]) == pytest.approx(0.8)
    assert purity([0, 0, 0, 0, 0], [3, 3, 4, 4, 4]) == pytest.approx(0.6)


def test_standard_error_is_std_over_sqrt_n():
    assert standard_error([1, 2, 3, 4]) == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    assert np.isnan(standard_error([1.0]))


def test_bootstrap_ci():
    v = np.random.default_rng(0).normal(loc=3, size=400)
    low, high = bootstrap_ci(v, n_boot=2000, seed=0)
    assert low < v.mean() < high
    # for a normal mean the 95% interval is close to mean -+ 1.96 sem
    assert (high - low) == pytest.approx(2 * 1.96 * standard_error(v), rel=0.15)
    assert bootstrap_ci(v, seed=1) == bootstrap_ci(v, seed=1)
    assert bootstrap_ci([2.0, 2.0, np.nan]) == (2.0, 2.0)
    with pytest.raises(ValueError, match="level=1.5"):
        bootstrap_ci(v, level=1.5)
    s = summarize(v)
    assert s["n"] == 400 and s["ci_low"] < s["mean"] < s["ci_high"]


def test_paired_difference_can_fail_and_keeps_count_of_nan():
    from pure_utils.metrics import paired_difference

    rng = np.random.default_rng(0)
    base = rng.normal(size=40)
    clear = paired_difference(base + 0.5 + 0.05 * rng.normal(size=40), base, n_boot=500)
    assert clear["word"] == "higher" and clear["ci_low"] > 0 and clear["p_value"] < 1e-6
    assert clear["mean"] == pytest.approx(0.5, abs=0.05) and clear["n"] == 40
    lower = paired_difference(base - 0.5, base, n_boot=500)
    assert lower["word"] == "lower" and lower["ci_high"] < 0
    # noise around zero: the interval covers 0, and the word says so
    noise = paired_difference(base + rng.normal(size=40), base, n_boot=500)
    assert noise["ci_low"] < 0 < noise["ci_high"] and noise["word"] == "no detectable difference"
    # a NaN in either method removes that neuron from both, and is counted
    a, b = base.copy(), base + 1.0
    a[3] = np.nan
    b[7] = np.nan
    d = paired_difference(a, b, n_boot=200)
    assert d["n"] == 38 and d["n_excluded"] == 2 and d["mean"] == pytest.approx(-1.0)
    assert paired_difference([1.0, 2.0], [1.0, 2.0])["p_value"] == 1.0
    with pytest.raises(ValueError, match="same neurons"):
        paired_difference([1.0, 2.0], [1.0])


def test_random_assignment_purity_is_chance_level():
    from pure_utils.metrics import purity, random_assignment_purity

    concepts = np.repeat([0, 1], 50)
    perfect = concepts.copy()
    assert purity(perfect, concepts) == 1.0
    chance = random_assignment_purity(perfect, concepts, n_draws=300)
    # two equal clusters shuffled over two equal concepts: expected purity a little above 1/2
    assert 0.5 <= chance < 0.6
    assert random_assignment_purity(np.zeros(100, int), concepts) == 0.5  # one cluster: no chance
