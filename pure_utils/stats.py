"""Tests that can detect a difference, and what they can detect at the number of units at hand.

A comparison of PURE with a baseline is paired over units (the same neurons scored by both):
per unit one difference ``d_i = a_i - b_i``. With few units a test cannot reach a small p-value
whatever the data: the sign-flip test and the exact Wilcoxon signed-rank test over ``n``
non-zero differences reach at best ``2 / 2^n`` (0.0625 at ``n = 5``). This module says so
(:func:`smallest_reachable_p`), tests the mean difference without dropping ties
(:func:`sign_flip_test`, :func:`stratified_sign_flip_test` for units nested in models) and gives
the smallest true difference a comparison of this size would detect
(:func:`minimum_detectable_difference`).

Ties. A unit whose two scores are equal (``|d_i| <= 1e-12``: floating-point noise of two equal
scores) is a tie. The Wilcoxon test (scipy's default ``zero_method="wilcox"``) drops ties and
reports on the other units only; ``zero_method="zsplit"`` ranks them, half on each side, which
moves its p towards 1. The sign-flip tests keep them: the statistic is the mean over all units,
ties included (what is tested is the effect reported, pulled towards 0 by the ties). Flipping
the sign of a tie leaves the mean unchanged, so the p-value itself is decided by the non-tied
units, and so is the smallest p the test can reach: ``n_tied`` is reported beside it.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import norm

from ._arrays import as_numpy

__all__ = ["sign_flip_test", "stratified_sign_flip_test", "smallest_reachable_p",
           "minimum_detectable_difference", "TIE", "EXACT_MAX", "TESTS"]

#: A difference within this distance of 0 is a tie (two equal scores).
TIE = 1e-12
#: Up to this many non-tied differences the sign-flip test enumerates every sign pattern.
EXACT_MAX = 16
#: Monte Carlo draws of the sign-flip test beyond ``EXACT_MAX`` when ``n_perm`` is not given.
DEFAULT_N_PERM = 10_000
#: scipy's Wilcoxon signed-rank test (``method="auto"``) is exact up to this many non-zero
#: differences and uses the normal approximation beyond.
WILCOXON_EXACT_MAX = 50
#: The tests :func:`smallest_reachable_p` knows.
TESTS = ("sign_flip", "wilcoxon")


def _differences(values, what: str = "differences") -> np.ndarray:
    """``ndarray[n]`` of float64; empty or non-finite input is refused."""
    d = np.asarray(as_numpy(values), dtype=np.float64).reshape(-1)
    if d.size == 0:
        raise ValueError(f"{what} is empty; give at least one paired difference")
    bad = np.flatnonzero(~np.isfinite(d))
    if bad.size:
        raise ValueError(f"{what} holds {bad.size} non-finite values (first at position "
                         f"{bad[0]}: {d[bad[0]]}); drop the units without a score first")
    return d


def _check_n_perm(n_perm) -> None:
    if n_perm is not None and (isinstance(n_perm, bool) or not isinstance(n_perm, (int, np.integer))
                               or n_perm < 1):
        raise ValueError(f"n_perm={n_perm!r}: give None (exact up to {EXACT_MAX} non-tied "
                         "differences) or a number of Monte Carlo draws >= 1")


def _flip_p(d: np.ndarray, weights: np.ndarray, n_perm, seed: int) -> dict:
    """Two-sided sign-flip p of ``sum_i w_i d_i`` with ties (``|d| <= TIE``) as zeros.

    Exact when ``n_perm`` is None and at most ``EXACT_MAX`` differences are not tied, or when the
    ``2^m`` patterns of the ``m`` non-tied differences are no more than ``n_perm``; else
    ``n_perm`` (default ``DEFAULT_N_PERM``) Monte Carlo draws, ``p = (1 + hits) / (1 + draws)``.
    A tie's sign changes nothing: the ``2^n`` patterns of all units are ``2^(n-m)`` copies of the
    ``2^m`` patterns of the non-tied ones, so enumerating those gives the p of all ``2^n``.
    """
    _check_n_perm(n_perm)
    tied = np.abs(d) <= TIE
    wd = (weights * d)[~tied]
    m = wd.size
    observed = abs(wd.sum())
    tol = 1e-10 * np.abs(wd).sum()          # rounding of sums of the same terms in other orders
    exact = m <= EXACT_MAX if n_perm is None else m < 63 and 2 ** m <= n_perm
    if exact:
        bits = (np.arange(2 ** m)[:, None] >> np.arange(m)) & 1
        null = (1 - 2 * bits) @ wd
        p, draws = float(np.mean(np.abs(null) >= observed - tol)), 2 ** m
    else:
        draws = DEFAULT_N_PERM if n_perm is None else int(n_perm)
        rng, hits, done = np.random.default_rng(seed), 0, 0
        chunk = max(1, (1 << 20) // max(m, 1))
        while done < draws:
            size = min(chunk, draws - done)
            signs = 1 - 2 * rng.integers(0, 2, size=(size, m))
            hits += int(np.sum(np.abs(signs @ wd) >= observed - tol))
            done += size
        p = (1 + hits) / (1 + draws)
    floor = smallest_reachable_p(m, "sign_flip")
    return {"p": float(p), "n_tied": int(tied.sum()), "exact": bool(exact), "n_perm": int(draws),
            "min_p": floor if exact else max(floor, 1 / (1 + draws))}


def sign_flip_test(differences, *, n_perm: int | None = None, seed: int = 0) -> dict:
    """Paired sign-flip permutation test of the mean difference, ties kept.

    Under the null hypothesis each unit's difference is as likely to have either sign (the two
    methods are exchangeable on every unit); the test compares ``|mean(d)|`` with its
    distribution over random sign flips of the units. Ties (``|d_i| <= 1e-12``) stay in the mean.

    Parameters
    ----------
    differences : array-like[n]
        Paired differences ``a_i - b_i``, all finite (drop units without a score first).
    n_perm : int, optional
        None (default): every one of the ``2^m`` sign patterns of the ``m`` non-tied differences
        when ``m <= 16``, else 10 000 Monte Carlo draws. An int: exact when ``2^m <= n_perm``,
        else ``n_perm`` Monte Carlo draws.
    seed : int
        Seed of the Monte Carlo draws.

    Returns
    -------
    dict
        ``p`` (two-sided; exact: the share of patterns with ``|mean| >= |observed mean|``; Monte
        Carlo: ``(1 + hits) / (1 + n_perm)``), ``statistic`` (the mean difference), ``n`` (units),
        ``n_tied`` (ties), ``min_p`` (the smallest p this test can give here: ``2 / 2^(n -
        n_tied)``, and at least ``1 / (1 + n_perm)`` by Monte Carlo), ``exact`` (bool),
        ``n_perm`` (patterns enumerated or draws).
    """
    d = _differences(differences)
    out = _flip_p(d, np.full(d.size, 1.0 / d.size), n_perm, seed)
    return {"p": out.pop("p"), "statistic": float(d.mean()), "n": int(d.size), **out}


def stratified_sign_flip_test(differences_by_group: dict, *, n_perm: int | None = 10_000,
                              seed: int = 0) -> dict:
    """Sign-flip test of units nested in groups (e.g. the units of several models).

    The statistic is the mean of the group means, ``(1/G) sum_g mean_{i in g} d_i``: every model
    counts once, so that a model with many units does not speak for the whole family (the
    question is whether PURE differs across models); with equal group sizes it is the mean over
    all units. Signs are flipped unit by unit, each unit within its own group, so the null
    hypothesis is that in every group each unit's difference is as likely to have either sign.
    Ties (``|d| <= 1e-12``) stay in their group's mean.

    Parameters
    ----------
    differences_by_group : dict of str -> array-like[n_g]
        Paired differences per group, all finite; every group holds at least one unit.
    n_perm : int, optional
        Monte Carlo draws (default 10 000); exact enumeration when the ``2^m`` patterns of the
        ``m`` non-tied units are no more (None: exact up to ``m = 16``, as :func:`sign_flip_test`).
    seed : int
        Seed of the Monte Carlo draws.

    Returns
    -------
    dict
        ``p`` (two-sided), ``statistic`` (mean of the group means), ``group_means`` (dict),
        ``n`` (units), ``n_groups``, ``n_tied``, ``min_p``, ``exact``, ``n_perm`` as in
        :func:`sign_flip_test`. With one group, the p of :func:`sign_flip_test`.
    """
    if not isinstance(differences_by_group, dict) or not differences_by_group:
        raise ValueError("differences_by_group must be a non-empty dict of group name -> "
                         f"differences, got {type(differences_by_group).__name__} "
                         f"{differences_by_group!r:.80}")
    groups = {g: _differences(v, f"the differences of group {g!r}")
              for g, v in differences_by_group.items()}
    d = np.concatenate(list(groups.values()))
    weights = np.concatenate([np.full(v.size, 1.0 / (len(groups) * v.size)) for v in groups.values()])
    out = _flip_p(d, weights, n_perm, seed)
    means = {g: float(v.mean()) for g, v in groups.items()}
    return {"p": out.pop("p"), "statistic": float(np.mean(list(means.values()))),
            "group_means": means, "n": int(d.size), "n_groups": len(groups), **out}


def smallest_reachable_p(n: int, test: str = "sign_flip") -> float:
    """The smallest two-sided p-value a test can give with ``n`` non-tied paired differences.

    Whatever the data, a test over few units cannot reach a small p: a p above 0.05 at ``n = 5``
    says nothing about a difference. The most extreme data (every difference of one sign) reach:

    - ``"sign_flip"``: ``2 / 2^n`` - one sign pattern and its mirror out of ``2^n``
      (:func:`sign_flip_test` exact; by Monte Carlo also at least ``1 / (1 + n_perm)``);
    - ``"wilcoxon"``: scipy's signed-rank test as :func:`pure_utils.metrics.paired_difference`
      runs it (ties dropped, so ``n`` counts the non-zero differences): exact ``2 / 2^n`` up to
      ``n = 50``, beyond that its normal approximation ``2 (1 - Phi(z))`` with
      ``z = (n (n + 1) / 4) / sqrt(n (n + 1) (2 n + 1) / 24)``.

    Parameters
    ----------
    n : int
        Non-tied differences, ``>= 0`` (0 and 1: no test can go below 1).
    test : {"sign_flip", "wilcoxon"}

    Returns
    -------
    float in (0, 1]
        E.g. 1, 0.5, 0.25, 0.125, 0.0625 for ``n = 1..5``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n={n!r}: give a number of differences >= 0")
    if test not in TESTS:
        raise ValueError(f"test={test!r} not known; accepted: {', '.join(TESTS)}")
    if n <= 1:
        return 1.0
    if test == "sign_flip" or n <= WILCOXON_EXACT_MAX:
        return float(2.0 ** (1 - int(n)))
    z = (n * (n + 1) / 4) / np.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    return float(2 * norm.sf(z))


def minimum_detectable_difference(differences, *, level: float = 0.95, power: float = 0.8) -> float:
    """The smallest true mean difference this comparison would detect, given its spread.

    Normal approximation of a two-sided test at ``alpha = 1 - level``: a true mean difference of

        mdd = (z_{1 - alpha/2} + z_{power}) * sd / sqrt(n)

    is detected with probability ``power``, where ``sd`` is the sample standard deviation of
    the differences (``ddof=1``). A difference the comparison reports as not detectable may
    still be there when it is below ``mdd``: with 10 units of spread 0.2, ``mdd`` is about 0.18
    (level 0.95, power 0.8). Halving it takes four times the units.

    Parameters
    ----------
    differences : array-like[n]
        Paired differences, all finite.
    level : float
        ``1 - alpha`` in (0, 1), default 0.95 (the bootstrap interval's level).
    power : float
        In (0, 1), default 0.8.

    Returns
    -------
    float
        In the unit of the differences; ``nan`` below 2 units (no spread).
    """
    for name, value in (("level", level), ("power", power)):
        if not 0 < value < 1:
            raise ValueError(f"{name}={value} not in (0, 1)")
    d = _differences(differences)
    if d.size < 2:
        return float("nan")
    z = norm.ppf(1 - (1 - level) / 2) + norm.ppf(power)
    return float(z * d.std(ddof=1) / np.sqrt(d.size))
