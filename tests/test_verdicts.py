"""The chapters' verdicts (pure_utils.study.verdicts): the words chosen in each case, and the
same text as the notebook code they replace.

Each ``_old_*`` function below is the chapter's former cell code, kept verbatim as the
reference: the book's glued values must not change when the code moved into the library.
"""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import pure_utils as pu
from pure_utils.metrics import ground_truth_scores, paired_difference
from pure_utils.shapes.ground_truth import TrueFeatures
from pure_utils.study import family, tables, verdicts
from pure_utils.study.report import difference_sentence, interval


# --------------------------------------------------------------------------------------------
# inputs: paired tables of several models, hand-built true features
# --------------------------------------------------------------------------------------------
def _model_pairs(effects: dict, n: int = 20, seed: int = 0, attribution: str = "gxa") -> pd.DataFrame:
    """The family's ``pairs``: per model, PURE minus activations from per-unit ARIs whose
    difference has mean ``effect`` (real paired_table: bootstrap interval, Wilcoxon p, word)."""
    rng = np.random.default_rng(seed)
    frames = []
    for m, effect in effects.items():
        base = rng.uniform(0.2, 0.6, n)
        noise = rng.normal(0, 0.05, n)
        rows = [{"neuron": i, "method": meth, "k": k, "ari": v}
                for k in (2, "true") for i in range(n)
                for meth, v in ((f"PURE ({attribution})", base[i] + effect + noise[i]),
                                (tables.ACTIVATIONS, base[i]))]
        gt = pd.DataFrame(rows)
        pairs = tables.paired_table(gt, "ari", [(f"PURE ({attribution})", tables.ACTIVATIONS)], n_boot=300)
        frames.append(pairs.assign(model=m))
    return pd.concat(frames, ignore_index=True)


def _features(labels, names=("red", "blue", "circle", "mixed", "background"), channels=None):
    labels = torch.as_tensor(labels, dtype=torch.long)
    kinds = {"red": "colour", "blue": "colour", "circle": "shape", "mixed": "mixed",
             "background": "background"}
    C, n = labels.shape
    z = torch.zeros(C, n)
    return TrueFeatures(labels=labels, names=list(names), kinds=[kinds[x] for x in names],
                             responsibility=z, driver=torch.zeros(C, n, dtype=torch.long),
                             colour_retention=z, shape_retention=z, activation=z,
                             channels=torch.as_tensor(channels if channels is not None else range(C)))


# --------------------------------------------------------------------------------------------
# the multiplicity rule and the family's verdict
# --------------------------------------------------------------------------------------------
def _old_family_verdict(pairs, P):
    main = pairs[(pairs.k == 2) & (pairs.a == f"PURE ({P['attribution']})")]
    higher, lower = main[main.word == "higher"].model.tolist(), main[main.word == "lower"].model.tolist()
    parts = [f"With k = 2 and Gradient x Activation, PURE's ARI is detectably higher than the "
             f"averaged activations' in {len(higher)} of {len(main)} models" + (f" ({', '.join(higher)})" if higher else ""),
             f"detectably lower in {len(lower)}" + (f" ({', '.join(lower)})" if lower else ""),
             f"and not detectably different in {len(main) - len(higher) - len(lower)}"]
    verdict = ", ".join(parts) + "."
    bonferroni = (1 - P["ci_level"]) / len(main) if len(main) else float("nan")
    kept = main[(main.word == "higher") & (main.p_value < bonferroni)].model.tolist()
    if higher:
        verdict += (f" With {len(main)} models compared, about {len(main) * (1 - P['ci_level']):.1f} would show a "
                    f"difference by chance alone if there were none; after a Bonferroni correction (Wilcoxon p below "
                    f"{bonferroni:.3g}) {len(kept)} of the {len(higher)} remain"
                    + (f" ({', '.join(kept)})." if kept else "."))
    if not kept:
        verdict += (" No setting of this family gives PURE an advantage that the data can detect "
                    "once the number of models is taken into account: "
                    "on these networks the paper's claim that circuits separate features better "
                    "than activations is not confirmed.")
    return verdict


def test_bonferroni_threshold_against_the_corrected_p_values():
    p = np.random.default_rng(1).uniform(0, 0.02, 200)
    for n in (1, 3, 9):
        cut = verdicts.bonferroni_threshold(0.95, n)
        # Bonferroni as usually written: reject where n * p < alpha
        assert ((p < cut) == (p * n < 0.05)).all()
    assert np.isnan(verdicts.bonferroni_threshold(0.95, 0))
    with pytest.raises(ValueError, match="level=95"):
        verdicts.bonferroni_threshold(95, 3)
    with pytest.raises(ValueError, match="n_tests=-1"):
        verdicts.bonferroni_threshold(0.95, -1)


def test_family_verdict_words_for_each_case():
    P = {"attribution": "gxa", "ci_level": 0.95}
    # a clear gain (p far below 0.05/4), a gain the correction removes, a loss, no difference
    pairs = _model_pairs({"clear": 0.2, "weak": 0.03, "worse": -0.2, "same": 0.0}, n=12, seed=3)
    main = pairs[pairs.k == 2].set_index("model")
    assert main.loc["clear", "word"] == "higher" and main.loc["clear", "p_value"] < 0.05 / 4
    assert main.loc["worse", "word"] == "lower" and main.loc["same", "word"] == "no detectable difference"
    weak = _model_pairs({"weak": 0.03}, n=12, seed=3)
    text = verdicts.family_verdict(pairs, "gxa", 0.95)
    assert text == _old_family_verdict(pairs, P)
    assert "detectably lower in 1 (worse)" in text and "Wilcoxon p below 0.0125" in text
    assert text.count("remain (clear") == 1 and "is not confirmed" not in text
    # only gains that do not survive the correction: the claim is not confirmed
    borderline = pairs[pairs.model.isin(["worse", "same"])].copy()
    borderline = pd.concat([borderline, weak.assign(word="higher", p_value=0.03)], ignore_index=True)
    text = verdicts.family_verdict(borderline, "gxa", 0.95)
    assert text == _old_family_verdict(borderline, P)
    assert "higher than the averaged activations' in 1 of 3 models (weak)" in text
    assert "0 of the 1 remain." in text and text.endswith("is not confirmed.")
    # no gain at all: no multiplicity sentence, the claim not confirmed
    none = pairs[pairs.model.isin(["worse", "same"])]
    text = verdicts.family_verdict(none, "gxa", 0.95)
    assert text == _old_family_verdict(none, P)
    assert "Bonferroni" not in text and "in 0 of 2 models," in text and text.endswith("not confirmed.")
    # only the profile's attribution at k = 2 is judged
    other = _model_pairs({"clear": 0.2}, attribution="epsilon_plus_flat")
    assert verdicts.family_verdict(other, "gxa", 0.95).startswith(
        "With k = 2 and Gradient x Activation, PURE's ARI is detectably higher than the "
        "averaged activations' in 0 of 0 models")
    assert "With k = 2 and epsilon_plus_flat" in verdicts.family_verdict(other, "epsilon_plus_flat", 0.95)


def test_accuracy_sentence_names_the_models_below_the_bar():
    def old(overview):
        low = overview[overview["test accuracy"] < 0.9].model.tolist()
        return ("every model reaches at least 90% test accuracy" if not low else
                f"{len(low)} of them stay below 90% test accuracy: {', '.join(low)}")
    good = pd.DataFrame({"model": ["a", "b"], "test accuracy": [0.95, 0.9]})
    bad = pd.DataFrame({"model": ["a", "b", "c"], "test accuracy": [0.89, 0.99, 0.5]})
    assert verdicts.accuracy_sentence(good) == old(good) == "every model reaches at least 90% test accuracy"
    assert verdicts.accuracy_sentence(bad) == old(bad) == "2 of them stay below 90% test accuracy: a, c"
    assert verdicts.accuracy_sentence(good, bar=0.96).startswith("2 of them stay below 96%")


def test_planted_sentence_counts_each_comparison():
    check = pd.DataFrame({"recovered": [True, False, True], "gap PURE": [0.3, 0.1, 0.2],
                          "gap activations": [0.2, 0.2, 0.2], "gap random split": [0.0, 0.0, 0.3]})
    old = (f"The intervention recovers the planted features of "
           f"{int(check.recovered.sum())} of the {len(check)} planted units; PURE's split has a larger "
           f"gap than the activations' split on {int((check['gap PURE'] > check['gap activations']).sum())} "
           f"of them and a larger gap than a random split on "
           f"{int((check['gap PURE'] > check['gap random split']).sum())}.")
    text = verdicts.planted_sentence(check)
    assert text == old
    assert "features of 2 of the 3 planted units" in text and "split on 1 of them" in text
    assert text.endswith("random split on 2.")  # ties (0.2 against 0.2) are not larger


def test_predictor_sentences():
    old_list = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in family.PREDICTORS.items())
    assert verdicts.predictor_list(family.PREDICTORS) == old_list
    assert verdicts.predictor_label("off_feature_variance") == "off feature variance"
    corr = pd.DataFrame({"predictor": list(family.PREDICTORS), "rho": [0.3123, float("nan")],
                         "ci_low": [0.02, float("nan")], "ci_high": [0.55, float("nan")], "n": [40, 2]})
    old = "; ".join(f"{r.predictor.replace('_', ' ')}: rho = {interval(r.rho, r.ci_low, r.ci_high)} (n = {r.n})"
                    for _, r in corr.iterrows()) + "."
    assert verdicts.predictor_sentence(corr) == old == (
        "off feature variance: rho = 0.31 [0.02, 0.55] (n = 40); circuit separability: rho = n/a (n = 2).")


# --------------------------------------------------------------------------------------------
# paired differences in words
# --------------------------------------------------------------------------------------------
def test_difference_sentence_units_is_the_old_replacement():
    row = dict(a="PURE", b="activations (peak)", mean=0.05, ci_low=0.01, ci_high=0.09, n=30, n_excluded=1,
               p_value=0.012, word="higher")
    old = difference_sentence(row, "Pearson r").replace(" neurons", " groups of units")
    assert difference_sentence(row, "Pearson r", units="groups of units") == old
    assert old == ("PURE minus activations (peak), Pearson r: 0.05 [0.01, 0.09] over 30 groups of units, 1 "
                   "left out for a missing value (Wilcoxon p = 0.012): PURE is higher")


@pytest.mark.parametrize("effect, word", [(0.3, "PURE is higher"), (-0.3, "PURE is lower"),
                                          (0.0, "no detectable difference")])
def test_correlation_sentence_pairs_the_groups(effect, word):
    rng = np.random.default_rng(0)
    act = rng.uniform(0.1, 0.5, 30)
    # the peak baseline far above PURE whatever the effect: its sentence always says "lower"
    correlation = pd.DataFrame({"method": ["PURE", tables.ACTIVATIONS, tables.ACTIVATIONS_PEAK],
                                "values": [act + effect + rng.normal(0, 0.01, 30), act, act + 1.0]})
    corr = correlation.set_index("method")
    old = []
    for b in tables.BASELINE_LABELS:
        corr_row = {"a": "PURE", "b": b, **paired_difference(
            corr.loc["PURE", "values"], corr.loc[b, "values"], n_boot=200, level=0.95)}
        old.append(difference_sentence(corr_row, "Pearson r").replace(" neurons", " groups of units"))
    text = verdicts.correlation_sentence(correlation, n_boot=200, level=0.95)
    mean_text, peak_text = text.split("; ")
    assert [mean_text, peak_text] == old and mean_text.endswith(word) and peak_text.endswith("PURE is lower")
    assert mean_text.startswith("PURE minus activations (mean), Pearson r: ") and "over 30 groups of units" in text
    assert peak_text.startswith("PURE minus activations (peak), Pearson r: ")
    # one baseline by name, and a table with the mean one only
    assert verdicts.correlation_sentence(correlation, n_boot=200, level=0.95, b=tables.ACTIVATIONS) == old[0]
    assert verdicts.correlation_sentence(correlation.iloc[:2], n_boot=200, level=0.95) == old[0]
    with pytest.raises(ValueError, match="no activation baseline"):
        verdicts.correlation_sentence(correlation.iloc[:1], n_boot=200, level=0.95)


def test_model_differences_match_the_three_chapters_old_loops():
    runs = {"m1": SimpleNamespace(ground_truth_pairs=_model_pairs({"m1": 0.2}, seed=1)),
            "m2": SimpleNamespace(ground_truth_pairs=None),
            "m3": SimpleNamespace(ground_truth_pairs=_model_pairs({"m3": -0.1}, seed=2))}
    pairs = {m: r.ground_truth_pairs for m, r in runs.items()}
    # results.ipynb
    ari = [f"{m}: {difference_sentence(row, 'ARI')}." for m, r in runs.items()
           if r.ground_truth_pairs is not None
           for _, row in r.ground_truth_pairs[r.ground_truth_pairs.k == 2].iterrows()]
    old = " ".join(ari) or "n/a (no ground truth in this profile)."
    text = verdicts.model_differences(pairs, "ARI", k=2, empty="n/a (no ground truth in this profile).")
    assert text == old and "m1: PURE (gxa) minus activations (mean), ARI" in text and "m2" not in text
    assert verdicts.model_differences({}, "ARI", empty="n/a (none).") == "n/a (none)."
    # beyond_ground_truth.ipynb
    lines = []
    for m, r in runs.items():
        if r.ground_truth_pairs is None:
            lines.append(f"{m}: no polysemantic unit to score.")
            continue
        for _, row in r.ground_truth_pairs[r.ground_truth_pairs.k == 2].iterrows():
            lines.append(f"{m}: {difference_sentence(row, 'ARI')}.")
    text = verdicts.model_differences(pairs, "ARI", k=2, absent="no polysemantic unit to score.")
    assert text == " ".join(lines) and "m2: no polysemantic unit to score. m3: " in text
    assert "PURE (gxa) is higher. m2" in text and text.endswith("PURE (gxa) is lower.")
    # beyond_architectures.ipynb: a filtered attribution, labelled models
    both = pd.concat([_model_pairs({"m1": 0.2}, seed=1),
                      _model_pairs({"m1": 0.0}, seed=1, attribution="epsilon_plus_flat")])
    scored = {"m1": {"pairs": both}}
    kind = {"m1": "ResNet", "m2": "ConvNeXt"}
    for has_gt in (True, False):
        lines = []
        for m in ["m1", "m2"]:
            if m not in scored:
                lines.append(f"{m}: no polysemantic unit to score." if has_gt else f"{m}: not scored.")
                continue
            p = scored[m]["pairs"]
            for _, row in p[(p.k == 2) & (p.a == "PURE (gxa)")].iterrows():
                lines.append(f"{m} ({kind[m]}): {difference_sentence(row, 'ARI')}.")
        text = verdicts.model_differences(
            {m: scored[m]["pairs"] if m in scored else None for m in ["m1", "m2"]}, "ARI", k=2,
            a="PURE (gxa)", labels={m: f"{m} ({kind[m]})" for m in kind},
            absent="no polysemantic unit to score." if has_gt else "not scored.", empty="")
        assert text == " ".join(lines) and text.count("m1 (ResNet): ") == 1
        assert "epsilon" not in text


def test_model_differences_say_both_baselines_each_with_its_own_word():
    rng = np.random.default_rng(3)
    base, noise = rng.uniform(0.2, 0.6, 20), rng.normal(0, 0.05, 20)
    values = {"PURE (gxa)": base + 0.2 + noise, tables.ACTIVATIONS: base, tables.ACTIVATIONS_PEAK: base + 0.2}
    gt = pd.DataFrame([{"neuron": i, "method": m, "k": 2, "ari": v[i]} for m, v in values.items()
                       for i in range(20)])
    pairs = tables.paired_table(gt, "ari", pu.study.setting.baseline_pairs("PURE (gxa)"), n_boot=300)
    assert list(pairs.b) == list(tables.BASELINE_LABELS) and list(pairs.word)[0] == "higher"
    text = verdicts.model_differences({"m": pairs}, "ARI", k=2)
    mean_part, peak_part = text.split(" m: ")
    assert mean_part.startswith("m: PURE (gxa) minus activations (mean), ARI: ")
    assert mean_part.endswith("PURE (gxa) is higher.")
    assert peak_part.startswith("PURE (gxa) minus activations (peak), ARI: ")
    # the interval holds 0: no word of direction
    assert peak_part.endswith("no detectable difference.") and list(pairs.word)[1] != "higher"


def test_differences_sentence_of_one_table():
    pairs = _model_pairs({"m": 0.2})
    rows = pairs[pairs.k == 2]
    old = " ".join(f"{difference_sentence(r, 'purity')}." for _, r in rows.iterrows())
    assert verdicts.differences_sentence(pairs, "purity", k=2) == old
    assert verdicts.differences_sentence(pairs, "purity", k=3) == ""


def test_strong_rule_with_and_without_ground_truth():
    P = {"has_concepts": True, "embedder_label": "CLIP", "strong_polysemanticity": 1.5}
    assert verdicts.strong_rule(P) == "two or more true features (by intervention)"
    P["has_concepts"] = False
    assert verdicts.strong_rule(P) == "a polysemanticity (Eq. 5 gap of the CLIP embeddings) above 1.5"


# --------------------------------------------------------------------------------------------
# ground truth by intervention
# --------------------------------------------------------------------------------------------
def test_ground_truth_sentences_match_the_old_cells():
    # unit 7: red and blue half and half; unit 9: all circle
    f = _features([[0] * 5 + [1] * 5, [2] * 10], channels=[7, 9])
    row = int(f.rows([7])[0])
    old = (f"#7, whose reference is labelled {f.names[int(f.labels[row, 0])]} and whose true "
           f"features are {', '.join(f.features(0.2)[row])}")
    assert verdicts.example_description(f, row, 7, 0.2) == old == (
        "#7, whose reference is labelled red and whose true features are red, blue")
    runs = {"a": SimpleNamespace(features=f, setting=SimpleNamespace(neurons=[7, 9])),
            "b": SimpleNamespace(features=_features([[2] * 10]), setting=SimpleNamespace(neurons=[3]))}
    counts = {m: (int(r.features.polysemantic(0.2).sum()), len(r.setting.neurons)) for m, r in runs.items()}
    old = "Units with two or more true features: " + "; ".join(
        f"{m}: {c} of {n}" for m, (c, n) in counts.items()) + "."
    assert verdicts.polysemantic_units_sentence(runs, 0.2) == old == (
        "Units with two or more true features: a: 1 of 2; b: 0 of 1.")
    shares = f.kind_shares()
    assert verdicts.kind_sentence(shares) == ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
    assert verdicts.kind_sentence(shares).startswith("colour 50%, shape 50%")


def test_pixel_rule_sentence_counts_agreement():
    pixel = torch.tensor([True, True, False, False])
    truth = torch.tensor([True, False, False, True])
    agree = int((pixel == truth).sum())
    old = (f"On m, the pixel rule calls {int(pixel.sum())} of "
           f"{len(pixel)} units polysemantic and the intervention {int(truth.sum())}; the two agree "
           f"on {agree} units and disagree on {len(pixel) - agree}.")
    assert verdicts.pixel_rule_sentence("m", pixel, truth) == old
    assert old.endswith("agree on 2 units and disagree on 2.")


# --------------------------------------------------------------------------------------------
# other architectures
# --------------------------------------------------------------------------------------------
def test_lrp_sentence_and_uncovered_modules():
    missing = ["LayerNorm2d (stages.3.downsample.0): no LRP rule", "GELU (stages.3.mlp.act): no LRP rule",
               "LayerNorm2d (stages.3.blocks.0.norm): no LRP rule"]
    assert family.uncovered_modules(missing) == ["LayerNorm2d", "GELU"]
    uncovered = {"resnet": [], "convnext": ["LayerNorm2d", "GELU"]}
    old = (" ".join(f"On {m}, no canonizer covers {', '.join(u)}." for m, u in uncovered.items() if u)
           or "The canonizers cover every model of the profile.")
    assert verdicts.lrp_sentence(uncovered) == old == "On convnext, no canonizer covers LayerNorm2d, GELU."
    assert verdicts.lrp_sentence({"resnet": []}) == "The canonizers cover every model of the profile."


def _old_card_sentence(other, card):
    if card:
        poly = pu.shapes.train.polysemantic_record(card)
        return (f"The card of {other} (written by `python -m pure_utils.shapes.train`, "
                f"trained by `make models`): {card['accuracy']['value']:.1%} test accuracy on "
                f"{card['accuracy']['n']} images, {card['n_parameters']} parameters, "
                f"{card['training_time_s'] / 60:.0f} minutes of training on {card['training_threads']} "
                f"CPU thread{'s' if card['training_threads'] > 1 else ''} ({card['machine']['cpu']}), and {poly['count']} of the "
                f"{poly['n_neurons']} channels of {poly['layer']} polysemantic by ground truth.")
    return f"{other} is a timm model without a card of this project."


def test_card_sentence_on_the_shipped_cards():
    for name in ("synthetic_convnext", "synthetic_resnet_basic"):
        card = pu.models.read_card(name)
        assert verdicts.card_sentence(name, card) == _old_card_sentence(name, card)
    card = pu.models.read_card("synthetic_convnext")
    one, two = dict(card, training_threads=1), dict(card, training_threads=2)
    assert "on 1 CPU thread (" in verdicts.card_sentence("x", one)
    assert "on 2 CPU threads (" in verdicts.card_sentence("x", two) == _old_card_sentence("x", two)
    for missing in (None, {}):
        assert verdicts.card_sentence("vit", missing) == "vit is a timm model without a card of this project."
    assert verdicts.ground_truth_note("paper", False) == "Profile paper has no ground truth, so no unit is scored on this page."
    assert verdicts.ground_truth_note("offline", True) == ""


def test_showcase_unit_prefers_units_with_named_features():
    # unit 3: red and mixed; unit 5: red and blue; unit 8: circle only
    f = _features([[0] * 5 + [3] * 5, [0] * 6 + [1] * 4, [2] * 10], channels=[3, 5, 8])
    assert family.showcase_unit(f, [3, 5, 8], 0.2) == (5, ["red", "blue"])
    assert family.showcase_unit(f, [8, 3], 0.2) == (8, ["circle"])  # none named: the first
    with pytest.raises(ValueError, match="order is empty"):
        family.showcase_unit(f, [], 0.2)


def test_virtual_neuron_names_match_the_old_row_labels():
    f = _features([[0] * 6 + [1] * 4], channels=[4])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 0, 1, 1])
    ref_features = pd.Series([f.names[i] for i in f.labels[int(f.rows([4])[0])].tolist()])
    old = [f"virtual neuron {c} (n={int((labels == c).sum())}): "
           f"{ref_features[labels == c].value_counts(normalize=True).index[0]} "
           f"{ref_features[labels == c].value_counts(normalize=True).iloc[0]:.0%}"
           for c in sorted(set(labels.tolist()))]
    assert verdicts.virtual_neuron_names(labels, f, 4) == old == [
        "virtual neuron 0 (n=5): red 80%", "virtual neuron 1 (n=5): blue 60%"]


# --------------------------------------------------------------------------------------------
# ablations, the figures, the setting
# --------------------------------------------------------------------------------------------
def test_ablation_and_choose_k_sentences():
    assert "averaged over the 7 channels with two or more of them" in verdicts.ablation_score_sentence(7, True, "CLIP")
    assert verdicts.ablation_score_sentence(7, False, "CLIP") == (
        "Without ground truth, every variant is scored by the Eq. 5 gap on CLIP embeddings, "
        "averaged over the 7 evaluated channels.")
    choice = pd.DataFrame({"neuron": [1, 2, 3, 4], "chosen_k": [2, 3, 2, 2], "true_k": [2, 2, 2, 1]})
    agree = float((choice.chosen_k == choice.true_k).mean())
    old = (f"the chosen k equals the number of true features with at least "
           f"{0.2:.0%} of the reference samples for {agree:.0%} of the {len(choice)} channels.")
    assert verdicts.choose_k_sentence(choice, 0.2) == old
    assert "for 50% of the 4 channels" in old
    assert verdicts.choose_k_sentence(choice.drop(columns="true_k"), 0.2) == (
        "without ground truth there is no true k to compare with.")


def test_mix_and_composition_sentences():
    shown = ["red", "red", "blue", "red", "blue", "blue"]
    changes = sum(a != b for a, b in zip(shown, shown[1:]))
    old = (f"By their true features the samples shown are "
           f"{', '.join(f'{shown.count(f)} {f}' for f in dict.fromkeys(shown))}; the feature changes "
           f"{changes} times from one sample to the next.")
    assert verdicts.mix_sentence(shown) == old
    assert "are 3 red, 3 blue; the feature changes 3 times" in old
    labels = np.array([0, 0, 0, 1, 1, 1])
    concepts = torch.tensor([0, 0, 1, 1, 1, 1])
    names = ["red", "blue"]
    composition = tables.cluster_composition(labels, concepts, names)
    whole = tables.cluster_composition([0] * len(concepts), concepts, names)
    old = (f"On data with ground truth the content of each virtual neuron "
           f"can be read off directly (table below: the true features of each group's samples). The "
           f"largest share of a feature in a virtual neuron is "
           f"{composition.groupby('cluster').share.max().mean():.0%} on average, against "
           f"{whole.share.max():.0%} in the channel as a whole.")
    text = verdicts.composition_sentence(labels, concepts, names)
    assert text == old and "is 83% on average, against 67% in the channel" in text  # (2/3 + 1) / 2


def test_circuit_sentence_cosine_and_ari():
    centres = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    labels = np.array([0, 0, 1, 1, 1])
    concepts = torch.tensor([0, 0, 1, 1, 0])

    def old(k, truth):
        c = torch.as_tensor(centres)
        cosine = float(torch.nn.functional.cosine_similarity(c[0], c[1], dim=0)) if k == 2 else float("nan")
        match = (f" Against the channel's true features (by intervention; see the chapter on ground "
                 f"truth) the groups reach an ARI of {ground_truth_scores(labels, truth)['ari']:.2f}."
                 if truth is not None else "")
        return (f"The two virtual neurons' mean vectors have a cosine similarity of "
                f"{cosine:.2f} (1: the same circuit, 0: circuits on disjoint channels)."
                if k == 2 else "") + match
    assert verdicts.circuit_sentence(centres, labels, concepts) == old(2, concepts)
    assert verdicts.circuit_sentence(centres, labels).startswith("The two virtual neurons' mean vectors "
                                                                 "have a cosine similarity of 0.50 ")
    three = np.vstack([centres, centres[:1]])
    assert verdicts.circuit_sentence(three, labels) == ""
    assert verdicts.circuit_sentence(three, labels, concepts).startswith(" Against the channel's")


def test_test_phase_and_split_sentences():
    purity = pd.Series({"purity_virtual": 0.914, "purity_random": 0.55, "purity_neuron": 0.5})
    text = verdicts.test_phase_sentence(purity)
    assert "is 91% after the assignment, 55% for a random assignment" in text and "50% for the channel" in text
    gaps = pd.Series([0.8123, 0.5, 0.01, -0.02, 0.03], index=[11, 4, 7, 2, 9])
    half = len(gaps) // 2
    old = ("PURE's split gives gaps of " + ", ".join(f"{g:.2f} (#{n})" for n, g in gaps.items())
           + f" for the channels shown, the first {half} ranked most and the last {len(gaps) - half} "
           "least polysemantic; with so few channels the numbers describe these examples only "
           "(Fig. 4 compares all channels).")
    assert verdicts.split_sentence(gaps) == old
    assert old.startswith("PURE's split gives gaps of 0.81 (#11), 0.50 (#4)") and "first 2 ranked most and the last 3" in old


def test_split_sentence_says_when_the_reader_chose_and_when_nothing_splits():
    gaps = pd.Series([0.42, 0.001, 0.1], index=[3, 7, 5])
    text = verdicts.split_sentence(gaps, given=True, random=pd.Series({3: 0.05, 7: 0.0, 5: 0.2}))
    assert text.startswith("PURE's split gives gaps of 0.42 (#3), 0.00 (#7), 0.10 (#5) for the "
                           "channels the profile names (fig3_neurons), in the order given; ")
    assert "ranked" not in text
    assert "for #7 it finds nothing to separate (a gap of about 0" in text
    assert "for #5 it separates no more than random labels do (0.20)" in text
    two = verdicts.split_sentence(pd.Series([0.0, -0.004], index=[1, 2]))
    assert "the first 1 ranked most and the last 1 least" in two
    assert "for #1 and #2 it finds nothing to separate" in two
    assert "random labels" not in verdicts.split_sentence(gaps, random=pd.Series({3: float("nan")}))


def test_upper_bound_clause_and_setting_sentences():
    gap = pd.Series([0.1, 0.5], index=["PURE", "ground truth"])
    assert verdicts.upper_bound_clause(gap.index) == ", the true features (by intervention) the upper bound"
    assert verdicts.upper_bound_clause(["PURE", "random"]) == ""
    rows = [{"model": "a", "channels of layer4": 32}, {"model": "b", "channels of layer4": 64}]
    data = SimpleNamespace(n_concepts=16, config=SimpleNamespace(colours=[1, 2, 3, 4], shapes=[1, 2, 3, 4]))
    assert verdicts.width_sentence(rows, data) == (
        "32 channels in a, 64 channels in b for 16 concepts built from 4 colours and 4 shapes.")
    assert verdicts.width_sentence(rows) == "32 channels in a, 64 channels in b."
    truths = {"a": _features([[0] * 5 + [1] * 5, [2] * 10, [0] * 10, [1] * 10]), "b": _features([[2] * 10])}
    fractions = {m: float(t.polysemantic(0.2).float().mean()) for m, t in truths.items()}
    old = "; ".join(f"{m}: {f:.0%}" for m, f in fractions.items()) or "n/a (no ground truth)"
    assert verdicts.polysemantic_fractions(truths, 0.2) == old == "a: 25%; b: 0%"
    assert verdicts.polysemantic_fractions({}, 0.2) == "n/a (no ground truth)"


def test_polysemantic_medians_sentence():
    flag = torch.tensor([True, False, True, False, False])
    poly = pd.DataFrame({"neuron": range(5), "polysemanticity": [0.5, 0.1, 0.7, 0.2, 0.3],
                         "polysemantic by ground truth": flag.tolist()})
    m = poly.groupby("polysemantic by ground truth").polysemanticity.median()
    old = (f"Channels that are polysemantic by ground truth (at least two true "
           f"features, found by intervention, with {0.2:.0%} of the reference "
           f"samples each; {int(flag.sum())} of {len(flag)}) have a median of "
           f"{m.get(True, float('nan')):.2f}, the others {m.get(False, float('nan')):.2f}.")
    assert verdicts.polysemantic_medians_sentence(poly, flag, 0.2) == old
    assert old.endswith("2 of 5) have a median of 0.60, the others 0.20.")
    none = poly.assign(**{"polysemantic by ground truth": False})
    assert verdicts.polysemantic_medians_sentence(none, torch.zeros(5, dtype=torch.bool), 0.2).endswith(
        "0 of 5) have a median of nan, the others 0.30.")
