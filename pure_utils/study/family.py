"""The model family: when do circuits beat activations?

The family (:data:`pure_utils.shapes.train.FAMILY`) is one architecture trained with one recipe on
settings of the generator that change how much *unrelated* content varies around the feature a
unit responds to (number and size of distractors, width of ``layer4``, background), plus a
control with planted units. For every model this module scores PURE (each attribution of the
profile) and the activation baseline against the true features by intervention, paired over the
same polysemantic units, and computes per-unit quantities that may predict where PURE gains.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from scipy.stats import ConstantInputWarning, spearmanr
from sklearn.metrics import silhouette_score

from .._arrays import as_numpy
from ..circuits import BASELINES
from ..stats import stratified_sign_flip_test
from ..canonizers import lrp_support
from ..models import read_card
from .profile import Profile, as_profile
from .setting import embed_references, load_setting, true_features_of
from .report import interval
from .tables import (ACTIVATIONS, PURE, RANDOM, compare_clusterings, ground_truth_table,
                     paired_table)
from ..shapes.train import FAMILY

__all__ = ["compare_model", "family_comparison", "unit_predictors", "predictor_correlations",
           "planted_check", "differences_by_model", "overview_table", "models_table",
           "uncovered_modules", "showcase_unit", "pooled_table", "PREDICTORS", "PEAK"]

#: The local baseline beside the paper's averaged one (:data:`pure_utils.circuits.BASELINES`).
PEAK = [name for name, pooling in BASELINES.items() if pooling == "peak"][0]

#: The per-unit predictors (:func:`unit_predictors`), fixed before any result was looked at.
PREDICTORS = {
    "off_feature_variance": "share of the variance of the unit's activation vectors (the whole "
                            "layer, the baseline's features) left within its true features",
    "circuit_separability": "silhouette of the unit's true features among its PURE vectors",
}


def unit_predictors(activations, circuits, labels) -> dict:
    """Quantities of one unit that may predict whether PURE beats the activation baseline.

    Parameters
    ----------
    activations : Tensor[n_ref, C]
        The baseline's vectors of the unit's references.
    circuits : Tensor[n_ref, C_lower]
        PURE's vectors of the same references.
    labels : LongTensor[n_ref]
        Their true features.

    Returns
    -------
    dict
        ``off_feature_variance``: within-feature sum of squares of the activation vectors over
        their total sum of squares (1: the true features explain none of their variation,
        i.e. the activations vary for reasons other than the unit's feature);
        ``circuit_separability``: silhouette of the true features among the PURE vectors
        (1: the features' circuits are far apart; NaN with a single feature).
    """
    A, R = as_numpy(activations), as_numpy(circuits)
    y = as_numpy(labels, np.int64).reshape(-1)
    total = ((A - A.mean(0)) ** 2).sum()
    within = sum(((A[y == g] - A[y == g].mean(0)) ** 2).sum() for g in np.unique(y))
    several = 1 < len(np.unique(y)) < len(y)
    return {"off_feature_variance": float(within / total) if total > 0 else float("nan"),
            "circuit_separability": float(silhouette_score(R, y)) if several else float("nan")}


def compare_model(profile: Profile | dict, model_name: str, *, progress: bool = False) -> dict:
    """One model against its true features: ARI tables, paired differences, unit predictors.

    Scores the units with two or more true features (``polysemantic_min_share``) at ``k = 2``
    and at ``k`` = each unit's number of true features (``"true"``), for every attribution of
    ``profile["attributions"]`` that is correct on the model and the activation baseline. LRP
    is left out of models the canonizers do not cover (e.g. a ConvNeXt; see
    :func:`pure_utils.canonizers.lrp_support`), and ``refused`` says why. The model's layers
    are the profile's, or its own in ``profile["model_layers"]``.

    Returns
    -------
    dict
        ``setting``, ``features`` (:class:`~pure_utils.shapes.ground_truth.TrueFeatures` of all
        evaluated units), ``ground_truth`` (per-unit ARI / NMI), ``pairs`` (PURE minus each
        baseline, averaged and peak activations, paired per ``k``, with what each test can
        detect), ``units`` (per unit: predictors and the ARI difference of each attribution at
        ``k = 2`` from the averaged activations, and ``... - peak`` from the peak ones), ``attributions`` (those scored) and ``refused``
        (attribution -> what LRP would miss on this model).
    """
    p = as_profile(profile)
    s = load_setting(p, model_name=model_name, progress=progress)
    layers = dict(layer=s.profile.layer, lower_layer=s.profile.lower_layer)
    refused = {a: lrp_support(s.model, **layers) for a in p.attributions if a != "gxa"}
    refused = {a: why for a, why in refused.items() if why}
    if p.attribution in refused:
        raise ValueError(f"attribution {p.attribution!r} of profile {p.name!r} is not "
                         f"correct on {model_name}: {'; '.join(refused[p.attribution])}; "
                         "use attribution: gxa")
    truth = true_features_of(s, progress=progress)
    min_share = p.polysemantic_min_share
    sel = torch.nonzero(truth.polysemantic(min_share)).flatten().tolist()
    names = {f"{PURE} ({a})": a for a in p.attributions if a not in refused}
    out = dict(setting=s, features=truth, ground_truth=None, pairs=None, units=None,
               attributions=list(names.values()), refused=refused)
    if not sel:
        return out
    neurons = [s.neurons[i] for i in sel]
    # only the scored (polysemantic) units are attributed: row j of every tensor is unit sel[j]
    feats = {m: s.circuit_attributions(a, neurons=neurons, progress=progress)
             for m, a in names.items()}
    feats[ACTIVATIONS] = s.activation_vectors(neurons=neurons, progress=progress)
    feats[PEAK] = s.activation_vectors(neurons=neurons, pooling="peak", progress=progress)
    kw = dict(random_state=p.random_state, n_init=p.n_init)
    # every reference is clustered; only those outside the uncertainty band are scored
    gt = ground_truth_table(truth.labels[sel], feats, ks=[2, "true"],
                            true_k=truth.counts(min_share)[sel], neurons=neurons,
                            certain=truth.certain[sel], progress=progress, **kw)
    out["ground_truth"] = gt
    out["pairs"] = paired_table(gt, "ari", [(m, b) for m in names for b in (ACTIVATIONS, PEAK)],
                                n_boot=p.n_boot, level=p.ci_level, detection=True)
    k2 = gt[gt.k == 2].pivot(index="neuron", columns="method", values="ari")
    pure = feats[f"{PURE} ({p.attribution})"]
    rows = []
    for j, (i, n) in enumerate(zip(sel, neurons)):
        rows.append({"neuron": n, "n_features": int(truth.counts(min_share)[i]),
                     **unit_predictors(feats[ACTIVATIONS][j], pure[j], truth.labels[i]),
                     **{f"difference {m}": k2.loc[n, m] - k2.loc[n, ACTIVATIONS] for m in names},
                     **{f"difference {m} - peak": k2.loc[n, m] - k2.loc[n, PEAK] for m in names}})
    out["units"] = pd.DataFrame(rows)
    return out


def family_comparison(profile: Profile | dict, names=None, *, progress: bool = False) -> dict:
    """:func:`compare_model` for every model of the family (or ``names``).

    Returns
    -------
    dict
        ``pairs`` (one row per model, attribution and ``k``, with the model's ``knob`` and
        ``level``), ``units`` (one row per unit and model), ``runs`` (the per-model results).
    """
    names = list(FAMILY) if names is None else list(names)
    runs = {m: compare_model(profile, m, progress=progress) for m in names}
    meta = lambda m: dict(model=m, knob=FAMILY.get(m, {}).get("knob", ""),  # noqa: E731
                          level=FAMILY.get(m, {}).get("level", ""),
                          n_units=len(runs[m]["setting"].neurons))
    pairs = pd.concat([r["pairs"].assign(**meta(m)) for m, r in runs.items() if r["pairs"] is not None],
                      ignore_index=True)
    units = pd.concat([r["units"].assign(**meta(m)) for m, r in runs.items() if r["units"] is not None],
                      ignore_index=True)
    return dict(pairs=pairs, units=units, runs=runs)


def predictor_correlations(units: pd.DataFrame, target: str, *, n_boot: int = 1000, seed: int = 0,
                           level: float = 0.95) -> pd.DataFrame:
    """Spearman correlation of each predictor with a per-unit difference, across all units.

    Returns
    -------
    pandas.DataFrame
        ``predictor, rho, ci_low, ci_high`` (bootstrap over units), ``p_value``, ``n``.
    """
    rows = []
    rng = np.random.default_rng(seed)
    for name in PREDICTORS:
        d = units[[name, target]].dropna()
        x, y = d[name].to_numpy(), d[target].to_numpy()
        if len(d) < 3:
            rows.append(dict(predictor=name, rho=float("nan"), ci_low=float("nan"),
                             ci_high=float("nan"), p_value=float("nan"), n=len(d)))
            continue
        rho, p_value = spearmanr(x, y)
        draws = rng.integers(0, len(d), size=(n_boot, len(d)))
        with warnings.catch_warnings():  # a resample of constant values has no rho: NaN, skipped
            warnings.simplefilter("ignore", ConstantInputWarning)
            boot = np.array([spearmanr(x[b], y[b])[0] for b in draws])
        low, high = np.nanquantile(boot, [(1 - level) / 2, 1 - (1 - level) / 2])
        rows.append(dict(predictor=name, rho=float(rho), ci_low=float(low), ci_high=float(high),
                         p_value=float(p_value), n=len(d)))
    return pd.DataFrame(rows)


def planted_check(run: dict, planted: dict, profile: Profile | dict) -> pd.DataFrame:
    """The controls: what the intervention finds on the planted units, and how the splits look.

    Parameters
    ----------
    run : dict
        :func:`compare_model` of the planted model.
    planted : dict
        Its ``planted`` spec (``units``: unit -> planted concepts).

    Returns
    -------
    pandas.DataFrame
        One row per planted unit: the planted concepts, the true features found, whether they
        match, and the Eq. 5 gap (attribute-reader embeddings of the crops) of PURE's split, the
        activations' split and a random split at ``k = 2``.
    """
    s, truth, p = run["setting"], run["features"], as_profile(profile)
    units = [int(u) for u in planted["units"]]
    found = truth.subset(units).features(p.polysemantic_min_share)
    emb = embed_references(s, neurons=units, progress=False)
    pure = s.circuit_attributions(neurons=units, progress=False)
    acts = s.activation_vectors(neurons=units, progress=False)
    gaps = compare_clusterings(emb, {PURE: pure, ACTIVATIONS: acts}, ks=[2], neurons=units,
                               random_state=p.random_state, n_init=p.n_init, progress=False)
    gap = gaps.pivot(index="neuron", columns="method", values="gap")
    rows = []
    for u, f in zip(units, found):
        concepts = planted["units"].get(u, planted["units"].get(str(u)))
        rows.append({"unit": u, "planted": ", ".join(concepts), "found by intervention": ", ".join(f),
                     "recovered": sorted(f) == sorted(concepts),
                     "gap PURE": gap.loc[u, PURE], "gap activations": gap.loc[u, ACTIVATIONS],
                     "gap random split": gap.loc[u, RANDOM]})
    return pd.DataFrame(rows)


def differences_by_model(pairs: pd.DataFrame, *, k=2) -> pd.DataFrame:
    """The paired differences of several models at one ``k``, one row per model.

    ``pairs``: the ``pairs`` of :func:`compare_model` with a ``model`` column. Columns: ``model``,
    ``units`` (the units scored), then one per attribution and baseline (``"gxa - activations
    (mean)"``, ...), in the order they first appear, each ``"mean [low, high] (p P of at least
    M, T tied)"`` (95% bootstrap interval, the sign-flip p that keeps ties, the smallest p the
    test can reach with these units, the tied units), or ``"not scored"``.
    """
    pairs = pairs[pairs.k == k]
    cells = pairs.assign(
        column=[f"{a.removeprefix('PURE (').removesuffix(')')} - {b}" for a, b in zip(pairs.a, pairs.b)],
        cell=[f"{interval(r['mean'], r.ci_low, r.ci_high)} (p {r.p_sign_flip:.2g} of at least "
              f"{r.min_p:.2g}, {int(r.n_tied)} tied)" for _, r in pairs.iterrows()])
    order = list(dict.fromkeys(pairs.model))
    wide = cells.pivot(index="model", columns="column", values="cell").reindex(order)
    wide = wide[list(dict.fromkeys(cells.column))].fillna("not scored")
    wide.insert(0, "units", pairs.groupby("model").n.max().reindex(order))
    return wide.reset_index().rename_axis(columns=None)


def pooled_table(units: pd.DataFrame, attributions, *, n_perm: int = 10_000) -> pd.DataFrame:
    """Across models: each attribution against each baseline, units nested in models.

    A stratified sign-flip test (:func:`pure_utils.stats.stratified_sign_flip_test`) of the
    per-unit ARI differences at ``k = 2``: the statistic is the mean of the models' mean
    differences (every model counts once), signs flipped unit by unit within each model.

    Parameters
    ----------
    units : pandas.DataFrame
        ``units`` of :func:`family_comparison` (``model`` and the ``difference ...`` columns).
    attributions : sequence of str
        The attributions scored (``"gxa"``, ...).

    Returns
    -------
    pandas.DataFrame
        ``a, b, statistic, p, n, n_groups, n_tied, min_p``.
    """
    rows = []
    for a in attributions:
        for b, column in ((ACTIVATIONS, f"difference {PURE} ({a})"),
                          (PEAK, f"difference {PURE} ({a}) - peak")):
            if column not in units:
                continue
            d = units[["model", column]].dropna()
            if d.empty:
                continue
            test = stratified_sign_flip_test({m: g[column].to_numpy() for m, g in d.groupby("model")},
                                             n_perm=n_perm)
            rows.append({"a": f"{PURE} ({a})", "b": b,
                         **{key: test[key] for key in ("statistic", "p", "n", "n_groups", "n_tied",
                                                       "min_p")}})
    return pd.DataFrame(rows)


def overview_table(names, result: dict, min_share: float) -> pd.DataFrame:
    """The family's models, one row each, from their cards and :func:`family_comparison`.

    Parameters
    ----------
    names : sequence of str
        The models, in the order of the rows.
    result : dict
        :func:`family_comparison` of (at least) these models.
    min_share : float
        Share of the references a true feature needs (``polysemantic_min_share``).

    Returns
    -------
    pandas.DataFrame
        ``model, knob, setting`` (:data:`~pure_utils.shapes.train.FAMILY`; ``"-"`` outside it),
        ``images`` (which images it is scored on: its own generator settings), ``units`` (evaluated), ``polysemantic units`` (two or more true features) and ``test
        accuracy`` (the card's).
    """
    rows = []
    for m in names:
        card = read_card(m)
        spec = FAMILY.get(m, {})
        run = result["runs"][m]
        rows.append({"model": m, "knob": spec.get("knob", "-"), "setting": spec.get("level", "-"),
                     "images": run["setting"].images, "units": len(run["setting"].neurons),
                     "polysemantic units": int(run["features"].polysemantic(min_share).sum()),
                     "test accuracy": card["accuracy"]["value"]})
    return pd.DataFrame(rows)


def uncovered_modules(missing: list[str]) -> list[str]:
    """The module types of :func:`~pure_utils.canonizers.lrp_support`'s lines, each once, in
    order (``"LayerNorm2d (stages.3.blocks.0.norm): no LRP rule"`` -> ``"LayerNorm2d"``)."""
    return list(dict.fromkeys(line.split(" (")[0] for line in missing))


def models_table(settings: dict, runs: dict, min_share: float) -> tuple[pd.DataFrame, dict]:
    """The models of the architecture chapter, one row each, and what LRP would miss on each.

    Parameters
    ----------
    settings : dict
        Model name -> its :class:`~pure_utils.study.setting.Setting` (at its own layers).
    runs : dict
        Model name -> :func:`compare_model`; a model not in it (no ground truth) shows ``"n/a"``
        polysemantic units.
    min_share : float
        ``polysemantic_min_share``.

    Returns
    -------
    (pandas.DataFrame, dict)
        ``model, family`` (the model's class), ``parameters, layers, units, polysemantic units,
        test accuracy`` (the card's; NaN without one) and ``LRP`` (``"refused"`` where a
        canonizer is missing, else ``"correct"``); and model -> the module types no canonizer covers
        (:func:`uncovered_modules`, empty where LRP is correct).
    """
    rows, uncovered = [], {}
    for m, s in settings.items():
        card = getattr(s.model, "pure_card", None) or {}
        missing = lrp_support(s.model, layer=s.profile["layer"], lower_layer=s.profile["lower_layer"])
        uncovered[m] = uncovered_modules(missing)
        rows.append({"model": m, "family": type(s.model).__name__,
                     "parameters": sum(p.numel() for p in s.model.parameters()),
                     "layers": f"{s.profile['layer']} from {s.profile['lower_layer']}",
                     "units": len(s.neurons),
                     "polysemantic units": (int(runs[m]["features"].polysemantic(min_share).sum())
                                            if m in runs else "n/a"),
                     "test accuracy": card.get("accuracy", {}).get("value", float("nan")),
                     "LRP": "refused" if missing else "correct"})
    return pd.DataFrame(rows), uncovered


def showcase_unit(truth, order, min_share: float) -> tuple[int, list[str]]:
    """The unit a chapter shows: the first of ``order`` with two or more true features that are
    all objects' attributes (neither ``"background"`` nor ``"mixed"``), else the first of
    ``order``.

    Parameters
    ----------
    truth : TrueFeatures
        The true features of (at least) the units of ``order``.
    order : sequence of int
        Units, most mixed first (:func:`~pure_utils.study.setting.rank_neurons`).
    min_share : float
        ``polysemantic_min_share``.

    Returns
    -------
    (int, list of str)
        The unit and its true features.
    """
    if not len(order):
        raise ValueError("order is empty: no unit to choose from")
    feats = dict(zip(truth.channels.tolist(), truth.features(min_share)))
    named = [n for n in order if len(feats[n]) >= 2 and not {"background", "mixed"} & set(feats[n])]
    unit = int((named or order)[0])
    return unit, feats[unit]
