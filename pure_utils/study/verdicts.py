"""The chapters' verdicts: finished sentences whose words the numbers choose, and the
multiplicity rule.

The sentences the book states about a result are written here rather than in a notebook, so
that the words chosen in each case are tested: an interval above, below or around zero, a
p-value below or above the Bonferroni cut, a model below the accuracy bar, a profile with or
without ground truth. Each function takes the library's tables (:mod:`pure_utils.study.tables`,
:mod:`pure_utils.study.family`, :func:`pure_utils.study.setting.evaluate`) and returns the text a
notebook glues; the notebooks only call, display and glue.
"""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from ..metrics import ground_truth_scores, paired_difference
from .report import difference_sentence, interval, judgeable
from .tables import ACTIVATIONS, BASELINE_LABELS, cluster_composition
from ..shapes.train import polysemantic_record

__all__ = [
    "ATTRIBUTION_NAMES", "bonferroni_threshold", "family_verdict", "accuracy_sentence",
    "planted_sentence", "predictor_label", "predictor_list", "predictor_sentence",
    "differences_sentence", "model_differences", "correlation_sentence", "strong_rule",
    "example_description", "polysemantic_units_sentence", "kind_sentence", "pixel_rule_sentence",
    "lrp_sentence", "card_sentence", "ground_truth_note", "virtual_neuron_names",
    "ablation_score_sentence", "choose_k_sentence", "mix_sentence", "composition_sentence",
    "circuit_sentence", "test_phase_sentence", "split_sentence", "upper_bound_clause",
    "width_sentence", "polysemantic_fractions", "polysemantic_medians_sentence", "band_sentence",
]

#: The attributions' names in prose (any other is written as it is named in the profile).
ATTRIBUTION_NAMES = {"gxa": "Gradient x Activation"}


# --------------------------------------------------------------------------------------------
# multiplicity: many models compared at once
# --------------------------------------------------------------------------------------------
def bonferroni_threshold(level: float, n_tests: int) -> float:
    """The Bonferroni cut for ``n_tests`` comparisons at a family-wise error of ``1 - level``.

    Each of ``n_tests`` intervals with coverage ``level`` errs with probability ``1 - level``,
    so about ``n_tests * (1 - level)`` of them exclude zero by chance alone when no difference
    exists. A p-value below ``(1 - level) / n_tests`` keeps the chance of *any* false "higher"
    among them at most ``1 - level``.

    Parameters
    ----------
    level : float
        Coverage of each interval, in (0, 1) (the profile's ``ci_level``, 0.95).
    n_tests : int
        Number of comparisons (models), at least 0.

    Returns
    -------
    float
        ``(1 - level) / n_tests``; NaN when nothing is compared (``n_tests == 0``).
    """
    if not 0 < level < 1:
        raise ValueError(f"level={level!r}: a coverage between 0 and 1 (e.g. 0.95)")
    if int(n_tests) != n_tests or n_tests < 0:
        raise ValueError(f"n_tests={n_tests!r}: the number of comparisons, an integer >= 0")
    return (1 - level) / n_tests if n_tests else float("nan")


def _listed(names: list) -> str:
    return f" ({', '.join(names)})" if names else ""


def family_verdict(pairs: pd.DataFrame, attribution: str, level: float, *, k=2) -> str:
    """The family chapter's verdict: in how many models PURE beats the activations, and whether
    any advantage survives the number of models compared.

    Parameters
    ----------
    pairs : pandas.DataFrame
        ``pairs`` of :func:`pure_utils.study.family.family_comparison`: one row per model,
        attribution and ``k`` with ``model, a, k, p_value, word``.
    attribution : str
        The profile's attribution; its rows (``a == "PURE (<attribution>)"``) are judged.
    level : float
        Coverage of each model's interval (the profile's ``ci_level``).
    k : int or str
        The number of virtual neurons judged (the chapter: 2).

    Returns
    -------
    str
        How many models are detectably higher, lower and not different (each named); when
        some are higher, how many would be so by chance alone and how many remain below the
        Bonferroni cut (:func:`bonferroni_threshold`, Wilcoxon p); when none remains, that the
        paper's claim is not confirmed on these networks.
    """
    main = pairs[(pairs.k == k) & (pairs.a == f"PURE ({attribution})")]
    if "b" in main:  # the paper's baseline, the averaged activations
        main = main[main.b == ACTIVATIONS]
    higher = main[main.word == "higher"].model.tolist()
    lower = main[main.word == "lower"].model.tolist()
    name = ATTRIBUTION_NAMES.get(attribution, attribution)
    verdict = ", ".join([
        f"With k = {k} and {name}, PURE's ARI is detectably higher than the averaged activations' in "
        f"{len(higher)} of {len(main)} models" + _listed(higher),
        f"detectably lower in {len(lower)}" + _listed(lower),
        f"and not detectably different in {len(main) - len(higher) - len(lower)}"]) + "."
    # each model's interval has `level` coverage: with many models some "higher" arise by chance
    cut = bonferroni_threshold(level, len(main))
    kept = main[(main.word == "higher") & (main.p_value < cut)].model.tolist()
    if higher:
        verdict += (f" With {len(main)} models compared, about {len(main) * (1 - level):.1f} would "
                    f"show a difference by chance alone if there were none; after a Bonferroni "
                    f"correction (Wilcoxon p below {cut:.3g}) {len(kept)} of the {len(higher)} "
                    f"remain" + (f" ({', '.join(kept)})." if kept else "."))
    if not kept:
        verdict += (" No setting of this family gives PURE an advantage that the data can detect "
                    "once the number of models is taken into account: on these networks the "
                    "paper's claim that circuits separate features better than activations is "
                    "not confirmed.")
    return verdict


def accuracy_sentence(overview: pd.DataFrame, bar: float = 0.9) -> str:
    """Whether every model reaches the accuracy bar, or which stay below it.

    ``overview``: one row per model with ``model`` and ``test accuracy`` (a missing accuracy,
    NaN, is not counted as below). Returns ``"every model reaches at least 90% test accuracy"``
    or ``"2 of them stay below 90% test accuracy: a, b"``.
    """
    low = overview[overview["test accuracy"] < bar].model.tolist()
    return (f"every model reaches at least {bar:.0%} test accuracy" if not low else
            f"{len(low)} of them stay below {bar:.0%} test accuracy: {', '.join(low)}")


def planted_sentence(check: pd.DataFrame) -> str:
    """The controls in words: how many planted units the intervention recovers, and on how
    many PURE's split has a larger Eq. 5 gap than the activations' split and than a random one.

    ``check``: :func:`pure_utils.study.family.planted_check` (``recovered``, ``gap PURE``,
    ``gap activations``, ``gap random split``).
    """
    better = int((check["gap PURE"] > check["gap activations"]).sum())
    above_random = int((check["gap PURE"] > check["gap random split"]).sum())
    return (f"The intervention recovers the planted features of {int(check.recovered.sum())} of "
            f"the {len(check)} planted units; PURE's split has a larger gap than the activations' "
            f"split on {better} of them and a larger gap than a random split on {above_random}.")


def predictor_label(name: str) -> str:
    """A predictor's column name in words: ``"off_feature_variance"`` -> ``"off feature variance"``."""
    return name.replace("_", " ")


def predictor_list(predictors: Mapping[str, str]) -> str:
    """``"name: what it measures; ..."`` of :data:`pure_utils.study.family.PREDICTORS`."""
    return "; ".join(f"{predictor_label(k)}: {v}" for k, v in predictors.items())


def predictor_sentence(corr: pd.DataFrame) -> str:
    """Each predictor's Spearman rho with its interval and ``n``, ``"; "``-separated.

    ``corr``: :func:`pure_utils.study.family.predictor_correlations` (``predictor, rho, ci_low,
    ci_high, n``). E.g. ``"circuit separability: rho = 0.31 [0.02, 0.55] (n = 40)."``.
    """
    return "; ".join(f"{predictor_label(r.predictor)}: rho = {interval(r.rho, r.ci_low, r.ci_high)} "
                     f"(n = {r.n})" for _, r in corr.iterrows()) + "."


# --------------------------------------------------------------------------------------------
# paired differences in words
# --------------------------------------------------------------------------------------------
def differences_sentence(pairs: pd.DataFrame, what: str, *, k=2, a: str | None = None,
                         prefix: str = "") -> str:
    """Every paired comparison at ``k`` (of method ``a``, if given) as a sentence, space-joined.

    ``pairs``: :func:`pure_utils.study.tables.paired_table`. Each sentence is ``prefix`` and
    :func:`pure_utils.study.report.difference_sentence` with a full stop; ``""`` when no row
    matches.
    """
    rows = pairs[pairs.k == k] if a is None else pairs[(pairs.k == k) & (pairs.a == a)]
    return " ".join(f"{prefix}{difference_sentence(row, what)}." for _, row in rows.iterrows())


def model_differences(pairs_by_model: Mapping, what: str, *, k=2, a: str | None = None,
                      labels: Mapping | None = None, absent: str | None = None,
                      empty: str = "n/a") -> str:
    """:func:`differences_sentence` of several models, each sentence led by the model.

    Parameters
    ----------
    pairs_by_model : mapping
        Model name -> its :func:`~pure_utils.study.tables.paired_table`, or None where nothing
        was scored.
    what, k, a
        As in :func:`differences_sentence`.
    labels : mapping, optional
        Model -> how its sentences name it (default: the model name).
    absent : str, optional
        Said of a model without pairs (``"m: <absent>"``); None leaves such models out.
    empty : str
        The text when no sentence results.
    """
    lines = []
    for m, pairs in pairs_by_model.items():
        if pairs is None:
            if absent is not None:
                lines.append(f"{m}: {absent}")
            continue
        label = (labels or {}).get(m, m)
        sentence = differences_sentence(pairs, what, k=k, a=a, prefix=f"{label}: ")
        if sentence:
            lines.append(sentence)
    return " ".join(lines) or empty


def correlation_sentence(correlation: pd.DataFrame, *, n_boot: int, level: float,
                         a: str = "PURE", b: str | None = None) -> str:
    """The distance correlation of ``a`` minus that of ``b``, paired over the random groups of
    units (:func:`pure_utils.metrics.paired_difference`), in words.

    ``correlation``: :func:`pure_utils.study.tables.correlation_table` (``method``, ``values``:
    one Pearson r per group). ``b``: one method; None (the default) compares ``a`` with each
    activation baseline of the table (:data:`~pure_utils.study.tables.BASELINE_LABELS`), the
    sentences ``"; "``-joined. E.g. ``"PURE minus activations (mean), Pearson r: 0.05 [0.01,
    0.09] over 30 groups of units (Wilcoxon p = 0.01): PURE is higher"``.
    """
    corr = correlation.set_index("method")
    others = [b] if b is not None else [m for m in BASELINE_LABELS if m in corr.index]
    if not others:
        raise ValueError(f"no activation baseline in the table; methods: {', '.join(corr.index)}")
    rows = [{"a": a, "b": m, **paired_difference(corr.loc[a, "values"], corr.loc[m, "values"],
                                                 n_boot=n_boot, level=level)} for m in others]
    return "; ".join(difference_sentence(row, "Pearson r", units="groups of units") for row in rows)


def strong_rule(profile: Mapping) -> str:
    """What "strongly polysemantic" means in this build: by ground truth where the profile has
    it, else the Eq. 5 gap of the embeddings above ``strong_polysemanticity``."""
    if profile["has_concepts"]:
        return "two or more true features (by intervention)"
    return (f"a polysemanticity (Eq. 5 gap of the {profile['embedder_label']} embeddings) above "
            f"{profile['strong_polysemanticity']}")


# --------------------------------------------------------------------------------------------
# ground truth by intervention
# --------------------------------------------------------------------------------------------
def example_description(features, row: int, neuron: int, min_share: float) -> str:
    """``"#n, whose reference is labelled red and whose true features are red, blue"``: a unit
    and the label of its most activating reference.

    ``features``: :class:`~pure_utils.shapes.ground_truth.TrueFeatures`; ``row`` the unit's
    row in it (``features.rows([neuron])[0]``).
    """
    return (f"#{neuron}, whose reference is labelled "
            f"{features.names[int(features.labels[row, 0])]} and whose true "
            f"features are {', '.join(features.features(min_share)[row])}")


def polysemantic_units_sentence(runs: Mapping, min_share: float) -> str:
    """``"Units with two or more true features: m1: 5 of 32; m2: 7 of 32."``

    ``runs``: model -> :class:`~pure_utils.study.setting.Evaluation` with ground truth (its
    ``features`` and ``setting.neurons``).
    """
    counts = {m: (int(r.features.polysemantic(min_share).sum()), len(r.setting.neurons))
              for m, r in runs.items()}
    return "Units with two or more true features: " + "; ".join(
        f"{m}: {c} of {n}" for m, (c, n) in counts.items()) + "."


def kind_sentence(shares: Mapping[str, float]) -> str:
    """``"colour 40%, shape 10%, ..."`` of :meth:`TrueFeatures.kind_shares`."""
    return ", ".join(f"{k} {v:.0%}" for k, v in shares.items())


def band_sentence(truths: Mapping, min_share: float) -> str:
    """What the uncertainty band of the intervention rule changes, model by model.

    ``truths``: model -> :class:`~pure_utils.shapes.ground_truth.TrueFeatures` (counts from
    :meth:`~pure_utils.shapes.ground_truth.TrueFeatures.band_effect`); empty gives
    ``"n/a (no ground truth)"``.
    """
    parts = []
    for m, t in truths.items():
        e = t.band_effect(min_share)
        parts.append(f"on {m}, {e['n_uncertain']} of {e['n_references']} references "
                     f"({e['n_uncertain'] / max(e['n_references'], 1):.0%}) are uncertain and "
                     f"{e['n_changed']} of {e['n_units']} units have other true features than "
                     "without the band")
    if not parts:
        return "n/a (no ground truth)"
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def pixel_rule_sentence(model_name: str, pixel, truth) -> str:
    """How the pixel rule and the intervention agree on which units are polysemantic.

    ``pixel``, ``truth``: BoolTensor[C] (or arrays) of the same units, by the pixel rule and by
    intervention.
    """
    agree = int((pixel == truth).sum())
    return (f"On {model_name}, the pixel rule calls {int(pixel.sum())} of {len(pixel)} units "
            f"polysemantic and the intervention {int(truth.sum())}; the two agree on {agree} "
            f"units and disagree on {len(pixel) - agree}.")


# --------------------------------------------------------------------------------------------
# other architectures
# --------------------------------------------------------------------------------------------
def lrp_sentence(uncovered: Mapping[str, list]) -> str:
    """Which module types no canonizer covers, model by model, or that the canonizers cover all.

    ``uncovered``: model -> module types (:func:`pure_utils.study.family.models_table`).
    """
    return (" ".join(f"On {m}, no canonizer covers {', '.join(u)}." for m, u in uncovered.items() if u)
            or "The canonizers cover every model of the profile.")


def card_sentence(name: str, card: Mapping | None) -> str:
    """A shipped model's card in one sentence (accuracy, size, training time and machine, its
    polysemantic units), or that the model has no card of this project (``card`` None or empty).
    """
    if not card:
        return f"{name} is a timm model without a card of this project."
    poly = polysemantic_record(card)
    threads = card["training_threads"]
    return (f"The card of {name} (written by `python -m pure_utils.shapes.train`, "
            f"trained by `make models`): {card['accuracy']['value']:.1%} test accuracy on "
            f"{card['accuracy']['n']} images, {card['n_parameters']} parameters, "
            f"{card['training_time_s'] / 60:.0f} minutes of training on {threads} "
            f"CPU thread{'s' if threads > 1 else ''} ({card['machine']['cpu']}), and "
            f"{poly['count']} of the {poly['n_neurons']} channels of {poly['layer']} polysemantic "
            f"by ground truth.")


def ground_truth_note(profile_name: str, has_ground_truth: bool) -> str:
    """``""``, or that the profile has no ground truth and so scores no unit."""
    return "" if has_ground_truth else (f"Profile {profile_name} has no ground truth, so no unit "
                                        "is scored on this page.")


def virtual_neuron_names(labels, features, unit: int) -> list[str]:
    """Each virtual neuron named by the true feature most of its references have (among its
    references outside the uncertainty band, ``TrueFeatures.certain``).

    Parameters
    ----------
    labels : ndarray[n_ref]
        The virtual neuron of each reference of ``unit`` (``VirtualNeurons.labels_``).
    features : TrueFeatures
        The true features of the references (a row for ``unit``).

    Returns
    -------
    list of str
        ``"virtual neuron c (n=...): <feature> <share>"`` for each virtual neuron, in order.
    """
    row = int(features.rows([unit])[0])
    ref_features = pd.Series([features.names[i] for i in features.labels[row].tolist()])
    certain = features.certain[row].numpy()
    out = []
    for c in sorted(set(labels.tolist())):
        shares = ref_features[(labels == c) & certain].value_counts(normalize=True)
        named = f"{shares.index[0]} {shares.iloc[0]:.0%}" if len(shares) else "all uncertain"
        out.append(f"virtual neuron {c} (n={int((labels == c).sum())}): {named}")
    return out


# --------------------------------------------------------------------------------------------
# ablations
# --------------------------------------------------------------------------------------------
def ablation_score_sentence(n_scored: int, has_ground_truth: bool, embedder_label: str) -> str:
    """How every variant of the ablations is scored: ARI against the true features over the
    polysemantic channels, or (without ground truth) the Eq. 5 gap on the embeddings."""
    if has_ground_truth:
        return (f"Every variant is scored by its adjusted Rand index against the true features "
                f"(by intervention), averaged over the {n_scored} channels with two or more of "
                f"them (95% bootstrap intervals, every variant over the same channels); the "
                f"paired difference from the default (PURE: gxa, layer3, k-means) is given beside it.")
    return (f"Without ground truth, every variant is scored by the Eq. 5 gap on {embedder_label} "
            f"embeddings, averaged over the {n_scored} evaluated channels.")


def choose_k_sentence(choice: pd.DataFrame, min_share: float) -> str:
    """How often the silhouette's ``k`` equals the number of true features.

    ``choice``: :func:`pure_utils.study.ablations.choose_k_table`; without its ``true_k``
    column (no ground truth) the sentence says there is nothing to compare with.
    """
    if "true_k" not in choice:
        return "without ground truth there is no true k to compare with."
    agree = float((choice.chosen_k == choice.true_k).mean())
    return (f"the chosen k equals the number of true features with at least {min_share:.0%} of "
            f"the reference samples for {agree:.0%} of the {len(choice)} channels.")


# --------------------------------------------------------------------------------------------
# the paper's figures and appendices
# --------------------------------------------------------------------------------------------
def mix_sentence(shown: list[str]) -> str:
    """How mixed a row of reference samples is: each true feature's count, and how often the
    feature changes from one sample to the next. ``shown``: the samples' features, in order."""
    changes = sum(a != b for a, b in zip(shown, shown[1:]))
    return (f"By their true features the samples shown are "
            f"{', '.join(f'{shown.count(f)} {f}' for f in dict.fromkeys(shown))}; the feature "
            f"changes {changes} times from one sample to the next.")


def composition_sentence(labels, concepts, names) -> str:
    """The largest share of one feature in a virtual neuron, averaged over the virtual
    neurons, against that share in the whole channel.

    ``labels``: ndarray[n_ref], each reference's virtual neuron; ``concepts``: LongTensor[n_ref],
    its true feature (an index into ``names``).
    """
    composition = cluster_composition(labels, concepts, names)
    whole = cluster_composition([0] * len(concepts), concepts, names)
    return (f"On data with ground truth the content of each virtual neuron can be read off "
            f"directly (table below: the true features of each group's samples). The largest "
            f"share of a feature in a virtual neuron is "
            f"{composition.groupby('cluster').share.max().mean():.0%} on average, against "
            f"{whole.share.max():.0%} in the channel as a whole.")


def circuit_sentence(cluster_centers, labels, concepts=None, certain=None) -> str:
    """The two virtual neurons' circuits compared (cosine of their mean vectors; only for two
    virtual neurons), and, with ground truth, the ARI of the split against the true features.

    Parameters
    ----------
    cluster_centers : ndarray[k, C_lower]
        ``VirtualNeurons.cluster_centers_``.
    labels : ndarray[n_ref]
        ``VirtualNeurons.labels_``.
    concepts : LongTensor[n_ref], optional
        The references' true features; None leaves the ARI out.
    certain : BoolTensor[n_ref], optional
        The references whose truth is certain (``TrueFeatures.certain``): the ARI compares
        only those (all references were clustered).
    """
    import torch  # heavy: the cosine as the chapter has always computed it

    centres = torch.as_tensor(cluster_centers)
    k = len(centres)
    match = (f" Against the channel's true features (by intervention; see the chapter on ground "
             f"truth) the groups reach an ARI of {ground_truth_scores(labels, concepts, certain)['ari']:.2f}."
             if concepts is not None else "")
    if k != 2:
        return match
    cosine = float(torch.nn.functional.cosine_similarity(centres[0], centres[1], dim=0))
    return (f"The two virtual neurons' mean vectors have a cosine similarity of {cosine:.2f} "
            f"(1: the same circuit, 0: circuits on disjoint channels).") + match


def test_phase_sentence(purity) -> str:
    """The test phase's purity after assignment, for a random assignment and for the channel.

    ``purity``: a row of :func:`pure_utils.study.tables.heldout_purity` (``purity_virtual``,
    ``purity_random``, ``purity_neuron``).
    """
    return (f"Against the true features of the held-out samples, the purity (the share of the most "
            f"frequent feature in each group, averaged over samples) is {purity.purity_virtual:.0%} "
            f"after the assignment, {purity.purity_random:.0%} for a random assignment of the same "
            f"group sizes and {purity.purity_neuron:.0%} for the channel as a whole; "
            f"the chapter on ground truth compares them over all channels.")


#: A gap that rounds to this or less (in absolute value) is "about 0": the split finds nothing.
NO_SPLIT_GAP = 0.005


def split_sentence(gaps: pd.Series, *, given: bool = False, random: pd.Series | None = None) -> str:
    """PURE's gaps on the channels shown, in words.

    Parameters
    ----------
    gaps : pandas.Series
        Gap per channel (Eq. 5), indexed by channel, in the order shown.
    given : bool
        The reader named the channels (the profile's ``fig3_neurons``); otherwise the first half
        were ranked most and the rest least polysemantic.
    random : pandas.Series, optional
        The gap of random labels per channel: a channel whose split does no better is named.

    Returns
    -------
    str
        The gaps, how the channels were chosen, each channel whose split finds nothing (a gap of
        about 0, :data:`NO_SPLIT_GAP`) or no more than random labels, and that so few channels
        describe these examples only.
    """
    half = len(gaps) // 2
    chosen = ("the channels the profile names (fig3_neurons), in the order given" if given else
              f"the channels shown, the first {half} ranked most and the last {len(gaps) - half} "
              "least polysemantic")
    text = ("PURE's split gives gaps of " + ", ".join(f"{g:.2f} (#{n})" for n, g in gaps.items())
            + f" for {chosen}")
    nothing = [n for n, g in gaps.items() if abs(g) <= NO_SPLIT_GAP]
    random = random if random is not None else pd.Series(dtype=float)
    weak = [n for n, g in gaps.items() if n not in nothing and n in random.index
            and random[n] == random[n] and g <= random[n]]
    if nothing:
        text += (f"; for {_channels(nothing)} it finds nothing to separate (a gap of about 0: "
                 "the virtual neurons differ from each other no more than their members do)")
    if weak:
        text += (f"; for {_channels(weak)} it separates no more than random labels do ("
                 + ", ".join(f"{random[n]:.2f}" for n in weak) + ")")
    return (text + "; with so few channels the numbers describe these examples only "
            "(Fig. 4 compares all channels).")


def _channels(neurons) -> str:
    names = [f"#{n}" for n in neurons]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def upper_bound_clause(methods) -> str:
    """``", the true features (by intervention) the upper bound"`` when ``"ground truth"`` is
    among the methods compared, else ``""``."""
    return ", the true features (by intervention) the upper bound" if "ground truth" in list(methods) else ""


def width_sentence(rows: list[Mapping], dataset=None) -> str:
    """The width of ``layer4`` of each model, and (with the benchmark's ``dataset``) for how
    many concepts of how many colours and shapes.

    ``rows``: dicts with ``model`` and ``channels of layer4``; ``dataset`` None where the data
    have no concepts.
    """
    return ", ".join(f"{r['channels of layer4']} channels in {r['model']}" for r in rows) + (
        f" for {dataset.n_concepts} concepts built from {len(dataset.config.colours)} colours and "
        f"{len(dataset.config.shapes)} shapes." if dataset is not None else ".")


def polysemantic_fractions(truths: Mapping, min_share: float) -> str:
    """``"m1: 25%; m2: 19%"``: the share of polysemantic units of each model.

    ``truths``: model -> :class:`~pure_utils.shapes.ground_truth.TrueFeatures` of all its
    units; empty gives ``"n/a (no ground truth)"``.
    """
    fractions = {m: float(t.polysemantic(min_share).float().mean()) for m, t in truths.items()}
    return "; ".join(f"{m}: {f:.0%}" for m, f in fractions.items()) or "n/a (no ground truth)"


def polysemantic_medians_sentence(poly: pd.DataFrame, flag, min_share: float, *,
                                  column: str = "polysemantic by ground truth") -> str:
    """The median polysemanticity (Eq. 5 gap) of the channels polysemantic by ground truth
    against the others.

    ``poly``: :func:`~pure_utils.study.tables.polysemanticity_table` with a boolean ``column``;
    ``flag``: BoolTensor[C] of the same channels.
    """
    m = poly.groupby(column).polysemanticity.median()
    return (f"Channels that are polysemantic by ground truth (at least two true "
            f"features, found by intervention, with {min_share:.0%} of the reference "
            f"samples each; {int(flag.sum())} of {len(flag)}) have a median of "
            f"{m.get(True, float('nan')):.2f}, the others {m.get(False, float('nan')):.2f}.")


# --------------------------------------------------------------------------------------------
# the grafted units (pure_utils.study.controls)
# --------------------------------------------------------------------------------------------
def _comparison(pairs: pd.DataFrame, regime: str, a: str, b: str) -> dict | None:
    rows = pairs[(pairs.regime == regime) & (pairs.a == a) & (pairs.b == b)]
    return None if rows.empty else rows.iloc[0].to_dict()


def _said(row: dict | None, baseline: str) -> str:
    """``"detectably higher than the peak activations' (+0.31 [0.14, 0.53], 8 units, ...)"`` and
    the like; a comparison whose test cannot reach p < 0.05 with its units is not judged."""
    if row is None or not row["n"]:
        return f"not comparable with the {baseline} (no scored unit)"
    n = int(row["n"])
    tests = (f", sign-flip p {row['p_sign_flip']:.2g}, smallest reachable {row['min_p']:.2g}"
             if n >= 2 else "")
    numbers = (f"{interval(row['mean'], row['ci_low'], row['ci_high'])}, {n} "
               f"unit{'s' if n != 1 else ''}{tests}")
    if not judgeable(row):
        return (f"not to be judged against the {baseline}' ({numbers}: with so few units that "
                "differ, no test reaches p below 0.05)")
    word = {"higher": "detectably higher than", "lower": "detectably lower than"}.get(
        row["word"], "not detectably different from")
    return f"{word} the {baseline}' ({numbers})"


def criteria_sentence(criteria: pd.DataFrame) -> str:
    """Which of the pass criteria stated before the run were met."""
    failed = criteria[~criteria.met].criterion.tolist()
    if not failed:
        return f"All {len(criteria)} criteria stated before the run are met."
    return (f"{len(criteria) - len(failed)} of the {len(criteria)} criteria stated before the run "
            f"are met; not met: {'; '.join(failed)}. The comparisons below are reported as "
            "measured, on these units.")


def controls_verdict(pairs: pd.DataFrame, criteria: pd.DataFrame, attribution: str = "gxa") -> str:
    """The chapter's verdict from the grafted units: localisation (R2: PURE against the averaged
    and the peak activations) and circuit (R3: PURE against the peak activations, when its
    precondition holds).

    Parameters
    ----------
    pairs : pandas.DataFrame
        :func:`pure_utils.study.controls.regime_pairs`: ``regime, a, b, mean, ci_low, ci_high,
        n, word, p_sign_flip, min_p``.
    criteria : pandas.DataFrame
        :func:`pure_utils.study.controls.criteria_table` (its last row: R3's precondition).
    attribution : str
        The PURE attribution judged.
    """
    a = f"PURE ({attribution})"
    mean1, peak1 = (_comparison(pairs, "R1", a, f"activations ({p})") for p in ("mean", "peak"))
    mean2, peak2 = (_comparison(pairs, "R2", a, f"activations ({p})") for p in ("mean", "peak"))
    peak3 = _comparison(pairs, "R3", a, "activations (peak)")
    text = ""
    if mean1 is not None or peak1 is not None:
        text = (f"On the benchmark as is (R1), where every method was expected near 1, PURE's ARI "
                f"is {_said(mean1, 'averaged activations')} and "
                f"{_said(peak1, 'peak activations')}. ")
    text += (f"Where an unrelated object varies beside the unit's concept (R2), PURE's ARI is "
             f"{_said(mean2, 'averaged activations')} and {_said(peak2, 'peak activations')}.")
    gain = judgeable(mean2) and mean2["word"] == "higher"
    beyond = judgeable(peak2) and peak2["word"] == "higher"
    if not judgeable(mean2) or not judgeable(peak2):
        text += (" Too few of R2's units differ between the methods to say whether PURE's "
                 "advantage is location or circuit.")
    elif gain and not beyond:
        text += (" What PURE gains there over the paper's baseline, the activations at the "
                 "unit's peak gain too: it is location, not the circuit.")
    elif gain and beyond:
        text += (" Part of that gain survives against the activations at the unit's peak: "
                 "there the circuit adds to location.")
    pre = criteria.iloc[-1]
    if not pre.met:
        return text + (f" R3 cannot test the circuit: its precondition failed ({pre.criterion}: "
                       f"{pre.value:.2f}, needed {pre.needed}).")
    text += (f" Where the layer's averaged activations barely tell the two concepts apart "
             f"(R3, ARI {pre.value:.2f}), PURE is {_said(peak3, 'peak activations')}")
    if judgeable(peak3) and peak3["word"] == "higher":
        return text + ": there the circuit carries what the activations do not."
    if not judgeable(peak3):
        return text + ": too few units are scored to test the circuit."
    return text + ": on this model no advantage of the circuit over location is detectable."


def thresholds_text(thresholds: Mapping) -> str:
    """``"d' at least 0.5 for a concept's channels, below 0.3 for the other concept"``."""
    return (f"d' at least {thresholds['min_d']} for a concept's channels, below "
            f"{thresholds['max_other']} for the other concept")


def pass_list(criteria: Mapping) -> str:
    """The pass criteria of :data:`pure_utils.study.controls.PASS` in words."""
    return (f"the pair truth labels at least {criteria['pair_labelled']:.0%} of a regime's "
            f"references A or B on average, in R1, R2 and R3; every regime scores at least "
            f"{criteria['min_units']} units (with fewer, no sign-flip test reaches p below 0.05); "
            f"PURE (Gradient x Activation) reaches a mean ARI of at least {criteria['pure_ari']} "
            f"in R2 and in R3; the negative control stays at most {criteria['negative_ari']}; "
            f"R3's precondition: the ARI of k-means on the layer's averaged activations, A- "
            f"against B-images, is below {criteria['precondition_ari']} on average over its "
            f"pairs. Reported beside them, as a finding about the book's general rule: whether "
            f"it agrees with the design (names A's or B's part, not both) on at least "
            f"{criteria['truth_agreement']:.0%} of the references. Whatever comes out is the "
            f"chapter's finding.")


def pooled_sentence(pooled: pd.DataFrame) -> str:
    """The stratified test across the family's models, one clause per comparison."""
    if pooled.empty:
        return "no model has a polysemantic unit to compare."
    parts = []
    for _, r in pooled.iterrows():
        word = ("too few units for any test to reach p below 0.05" if r.min_p > 0.05 else
                "no detectable difference" if r.p >= 0.05 else
                "PURE higher" if r.statistic > 0 else "PURE lower")
        parts.append(f"{r.a} minus {r.b}, mean of the model means {r.statistic:+.3f} over "
                     f"{int(r.n)} units of {int(r.n_groups)} models ({int(r.n_tied)} tied), p "
                     f"{r.p:.2g} (smallest reachable {r.min_p:.2g}): {word}")
    return "; ".join(parts) + "."


_REGIME_WORDS = {"R1": "on the benchmark as is", "R2": "beside an unrelated object",
                 "R3": "with colours the network never saw"}


def _where(regimes: list) -> str:
    """``"R1: on the benchmark as is; R2: beside an unrelated object"``."""
    return "; ".join(f"{r}: {_REGIME_WORDS[r]}" for r in regimes)


def answer_sentences(pooled: pd.DataFrame, regime_pairs: pd.DataFrame, criteria: pd.DataFrame,
                     attribution: str = "gxa") -> str:
    """The book's answer in two sentences: the natural images (the family, pooled) and the
    grafted units (what PURE's advantage is made of)."""
    a = f"PURE ({attribution})"
    fam = pooled[(pooled.a == a) & (pooled.b == ACTIVATIONS)]
    if fam.empty:
        first = "On the benchmark's own images no model has a polysemantic unit to compare."
    else:
        r = fam.iloc[0]
        first = ("On the benchmark's own images, across the family, PURE is "
                 + ("not to be judged against" if r.min_p > 0.05 else
                    "not detectably different from" if r.p >= 0.05 else
                    "detectably better than" if r.statistic > 0 else "detectably worse than")
                 + f" the paper's activation baseline (mean difference of the model means "
                 f"{r.statistic:+.3f}, p {r.p:.2g}).")
    mean2 = _comparison(regime_pairs, "R2", a, ACTIVATIONS)
    peaks = {r: _comparison(regime_pairs, r, a, "activations (peak)") for r in ("R1", "R2", "R3")}
    gain = judgeable(mean2) and mean2["word"] == "higher"
    circuit = [r for r, row in peaks.items() if judgeable(row) and row["word"] == "higher"]
    if not judgeable(mean2):
        second = ("Where unrelated content varies beside a unit's concept, too few grafted units "
                  "are scored to judge PURE against either baseline.")
    elif not gain:
        second = ("Where unrelated content varies beside a unit's concept, PURE does not "
                  "detectably beat the averaged activations either.")
    elif circuit:
        second = ("Where unrelated content varies beside a unit's concept, PURE beats the "
                  "averaged activations, and on grafted units whose two concepts have disjoint "
                  f"circuits it also beats the activations at the unit's peak ({_where(circuit)}): "
                  "there the circuit carries what location alone does not.")
    elif not judgeable(peaks["R2"]):
        second = ("Where unrelated content varies beside a unit's concept, PURE beats the "
                  "averaged activations; whether the circuit adds anything to location cannot be "
                  "judged with the grafted units scored.")
    else:
        peak_word = ("do better still" if peaks["R2"]["word"] == "lower"
                     else "are not detectably worse")
        second = ("Where unrelated content varies beside a unit's concept, PURE beats the "
                  f"averaged activations, but the activations at the unit's peak {peak_word}: "
                  "what wins is location, not the circuit.")
    if not criteria.met.all():
        second += " (Not every control passed its criteria; see the chapter.)"
    return f"{first} {second}"
