"""Tests that can detect: the sign-flip tests against brute-force enumeration and scipy, the
smallest reachable p against the tests themselves, and the minimum detectable difference."""
import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm, permutation_test, wilcoxon

from pure_utils.study import tables
from pure_utils.metrics import DETECTION_KEYS, PAIRED_KEYS, bootstrap_ci, paired_difference
from pure_utils.stats import (minimum_detectable_difference, sign_flip_test, smallest_reachable_p,
                              stratified_sign_flip_test)


def brute_sign_flip(groups):
    """Two-sided p of the mean of group means over all 2^n sign patterns of all units (ties
    included), written out with itertools."""
    sizes = [len(g) for g in groups]
    d = np.concatenate(groups)

    def stat(v):
        parts = np.split(v, np.cumsum(sizes)[:-1])
        return np.mean([p.mean() for p in parts])

    observed = abs(stat(d))
    hits = [abs(stat(np.array(s) * d)) >= observed * (1 - 1e-9)
            for s in itertools.product([1, -1], repeat=d.size)]
    return np.mean(hits)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 11])
def test_exact_sign_flip_equals_brute_force_enumeration(n):
    rng = np.random.default_rng(n)
    d = np.round(rng.normal(0.3, 1.0, size=n), 3)
    d[rng.random(n) < 0.25] = 0.0                      # some ties
    out = sign_flip_test(d)
    assert out["exact"] and out["n"] == n and out["n_tied"] == int((d == 0).sum())
    assert out["p"] == pytest.approx(brute_sign_flip([d]), abs=1e-12)
    assert out["statistic"] == pytest.approx(d.mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_sign_flip_equals_scipy_paired_permutation_test(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=9)
    y = x - rng.normal(0.4, 0.8, size=9)
    ref = permutation_test((x, y), lambda a, b, axis: np.mean(a - b, axis=axis),
                           permutation_type="samples", n_resamples=np.inf, alternative="two-sided")
    assert sign_flip_test(x - y)["p"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_ties_are_kept():
    zeros = sign_flip_test(np.zeros(7))
    assert zeros["p"] == 1.0 and zeros["n_tied"] == 7 and zeros["min_p"] == 1.0
    # n ties and one positive difference: nothing to detect, and the mean counts the ties
    for n in (1, 4, 9):
        d = np.r_[np.zeros(n), 2.0]
        out = sign_flip_test(d)
        assert out["p"] == brute_sign_flip([d]) == 1.0
        assert out["n_tied"] == n and out["statistic"] == pytest.approx(2 / (n + 1))
    # a tie within 1e-12 counts as one
    assert sign_flip_test([1e-13, -1e-13, 0.0, 1.0])["n_tied"] == 3


def test_smallest_reachable_p_is_what_the_tests_give_for_the_most_extreme_data():
    for n in range(1, 11):
        extreme = np.arange(1.0, n + 1)                       # every difference positive
        assert smallest_reachable_p(n, "sign_flip") == brute_sign_flip([extreme])
        assert smallest_reachable_p(n, "sign_flip") == sign_flip_test(extreme)["p"]
        assert smallest_reachable_p(n, "wilcoxon") == pytest.approx(wilcoxon(extreme).pvalue,
                                                                    rel=1e-9)
    for n in (50, 51, 80):                                     # exact, then the normal approximation
        assert smallest_reachable_p(n, "wilcoxon") == pytest.approx(
            wilcoxon(np.arange(1.0, n + 1)).pvalue, rel=1e-6)
    assert smallest_reachable_p(0) == 1.0
    # the test reports the floor of its non-tied differences
    assert sign_flip_test([0.0, 0.0, 1.0, 2.0, -0.5])["min_p"] == smallest_reachable_p(3)
    with pytest.raises(ValueError, match="test='t' not known; accepted: sign_flip, wilcoxon"):
        smallest_reachable_p(4, "t")
    with pytest.raises(ValueError, match="n=-1"):
        smallest_reachable_p(-1)


def test_monte_carlo_is_close_to_exact():
    rng = np.random.default_rng(3)
    d = rng.normal(0.7, 1.0, size=14)
    exact = sign_flip_test(d)
    mc = sign_flip_test(d, n_perm=4000, seed=1)
    assert exact["exact"] and not mc["exact"] and mc["n_perm"] == 4000
    assert 0.01 < exact["p"] < 0.5                                 # a p that sampling can miss
    assert abs(mc["p"] - exact["p"]) < 4 * np.sqrt(exact["p"] * (1 - exact["p"]) / 4000)
    assert mc["min_p"] == max(smallest_reachable_p(14), 1 / 4001)
    assert sign_flip_test(d, n_perm=4000, seed=1)["p"] == mc["p"]   # seeded
    # beyond 16 non-tied differences: Monte Carlo by default, still close to a larger run
    big = rng.normal(0.2, 1.0, size=40)
    default, larger = sign_flip_test(big), sign_flip_test(big, n_perm=100_000, seed=5)
    assert not default["exact"] and default["n_perm"] == 10_000
    assert abs(default["p"] - larger["p"]) < 4 * np.sqrt(larger["p"] * (1 - larger["p"]) / 10_000)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="empty"):
        sign_flip_test([])
    with pytest.raises(ValueError, match="non-finite .* position 1"):
        sign_flip_test([1.0, np.nan])
    with pytest.raises(ValueError, match="n_perm=0"):
        sign_flip_test([1.0, 2.0], n_perm=0)
    with pytest.raises(ValueError, match="non-empty dict"):
        stratified_sign_flip_test({})
    with pytest.raises(ValueError, match="group 'b'"):
        stratified_sign_flip_test({"a": [1.0], "b": []})


@pytest.mark.parametrize("n,n_perm", [(6, None), (12, 10_000), (30, 10_000)])
def test_stratified_with_one_group_is_the_plain_test(n, n_perm):
    d = np.random.default_rng(n).normal(0.3, 1.0, size=n)
    one = stratified_sign_flip_test({"model": d}, n_perm=n_perm, seed=4)
    plain = sign_flip_test(d, n_perm=n_perm, seed=4)
    for key in ("p", "statistic", "n", "n_tied", "min_p", "exact", "n_perm"):
        assert one[key] == pytest.approx(plain[key]), key
    assert one["n_groups"] == 1


def test_stratified_equals_brute_force_over_groups_of_unequal_size():
    rng = np.random.default_rng(7)
    groups = {"a": rng.normal(0.5, 1, size=3), "b": np.r_[0.0, rng.normal(0.5, 1, size=5)],
              "c": rng.normal(-0.2, 1, size=2)}
    out = stratified_sign_flip_test(groups, n_perm=None)
    assert out["exact"] and out["n"] == 11 and out["n_groups"] == 3 and out["n_tied"] == 1
    assert out["p"] == pytest.approx(brute_sign_flip(list(groups.values())), abs=1e-12)
    assert out["statistic"] == pytest.approx(np.mean([g.mean() for g in groups.values()]))
    # a Monte Carlo run agrees with the enumeration
    mc = stratified_sign_flip_test(groups, n_perm=800)                  # 800 < 2^10 patterns
    assert not mc["exact"] and abs(mc["p"] - out["p"]) < 4 * np.sqrt(out["p"] * (1 - out["p"]) / 800)


def test_minimum_detectable_difference_scales_as_one_over_sqrt_n():
    base = np.random.default_rng(0).normal(size=25)
    z = 1.959964 + 0.841621                      # z_0.975 + z_0.8 from a normal table
    values = {}
    for reps in (1, 4, 16):
        d = np.repeat(base, reps)
        m = minimum_detectable_difference(d)
        assert m == pytest.approx(z * d.std(ddof=1) / np.sqrt(d.size), rel=1e-5)
        values[reps] = m * np.sqrt(d.size) / d.std(ddof=1)
    assert values[1] == pytest.approx(values[4]) == pytest.approx(values[16])
    # a lower level, a lower power: a smaller detectable difference
    assert minimum_detectable_difference(base, level=0.9, power=0.5) < minimum_detectable_difference(base)
    assert np.isnan(minimum_detectable_difference([1.0]))
    with pytest.raises(ValueError, match="power=1.2 not in"):
        minimum_detectable_difference(base, power=1.2)


def test_minimum_detectable_difference_is_detected_with_its_power():
    """Simulated: a true mean difference of ``mdd`` (normal differences of known spread) is
    found by a two-sided z-test at 5% in about 80% of the repetitions."""
    rng = np.random.default_rng(1)
    n, sd = 20, 1.0
    x = rng.normal(size=n)
    mdd = minimum_detectable_difference((x - x.mean()) / x.std(ddof=1) * sd)  # spread exactly sd
    d = rng.normal(mdd, sd, size=(4000, n))
    found = np.abs(d.mean(1)) / (sd / np.sqrt(n)) > norm.ppf(0.975)
    assert found.mean() == pytest.approx(0.8, abs=0.03)


def test_paired_difference_keeps_its_values_and_adds_what_it_can_detect():
    rng = np.random.default_rng(2)
    a = rng.normal(size=30)
    b = a - np.where(rng.random(30) < 0.3, 0.0, rng.normal(0.2, 0.3, size=30))  # ties
    b[4] = np.nan
    out = paired_difference(a, b, n_boot=400, seed=3)
    keep = np.isfinite(b)
    d = a[keep] - b[keep]
    # the existing keys, first and unchanged
    assert tuple(out)[:len(PAIRED_KEYS)] == PAIRED_KEYS
    assert (out["ci_low"], out["ci_high"]) == bootstrap_ci(d, n_boot=400, seed=3)
    assert out["p_value"] == wilcoxon(d).pvalue and out["mean"] == d.mean()
    assert out["n"] == 29 and out["n_excluded"] == 1
    # the new keys
    assert set(out) == set(PAIRED_KEYS) | set(DETECTION_KEYS)
    assert out["n_tied"] == int((d == 0).sum()) > 0
    assert out["min_p"] == smallest_reachable_p(int((d != 0).sum()), "wilcoxon")
    assert out["p_sign_flip"] == sign_flip_test(d, seed=3)["p"]
    assert out["p_zsplit"] == wilcoxon(d, zero_method="zsplit").pvalue
    assert out["mdd"] == minimum_detectable_difference(d)
    # five units: no test can go below 1/16, whatever the data
    few = paired_difference([3.0, 4.0, 5.0, 6.0, 7.0], [0.0, 0.0, 0.0, 0.0, 0.0], n_boot=100)
    assert few["min_p"] == few["p_value"] == few["p_sign_flip"] == 2 / 2 ** 5
    same = paired_difference([1.0, 2.0], [1.0, 2.0])
    assert same["p_value"] == same["p_sign_flip"] == same["p_zsplit"] == 1.0 and same["n_tied"] == 2
    lone = paired_difference([1.0], [0.0])
    assert all(np.isnan(lone[k]) for k in ("min_p", "p_sign_flip", "p_zsplit", "mdd"))


def test_paired_table_columns_stay_unless_asked_for():
    rng = np.random.default_rng(1)
    rows = [dict(neuron=n, k=2, method=m, ari=rng.normal()) for n in range(12)
            for m in ("PURE", tables.ACTIVATIONS)]
    frame = pd.DataFrame(rows)
    plain = tables.paired_table(frame, "ari", [("PURE", tables.ACTIVATIONS)], n_boot=100)
    assert list(plain.columns) == ["a", "b", "k", "mean", "ci_low", "ci_high", "p_value", "n",
                                   "n_excluded", "word"]
    more = tables.paired_table(frame, "ari", [("PURE", tables.ACTIVATIONS)], n_boot=100, detection=True)
    assert list(more.columns) == list(plain.columns) + list(DETECTION_KEYS)
    pd.testing.assert_frame_equal(more[plain.columns], plain)
