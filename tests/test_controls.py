"""The grafted units in three regimes (pure_utils.study.controls) and the chapter's sentences."""
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

import pure_utils as pu
from pure_utils.layers import forward_until
from pure_utils.shapes.dataset import SyntheticShapes
from pure_utils.shapes.generator import SyntheticConfig
from pure_utils.shapes.grafting import concept_split, unseen_colours_config
from pure_utils.study import controls, verdicts


def test_design_is_fixed_and_complete():
    # every colour pair, and six colour-shape pairs sharing neither attribute, each colour and
    # each shape used three times
    seen = controls.SEEN_PAIRS
    assert len(seen) == 12 and len(set(seen)) == 12 and len(controls.UNSEEN_PAIRS) == 11
    conj = [p for p in seen if " " in p[0]]
    for a, b in conj:
        (ca, sa), (cb, sb) = a.split(), b.split()
        assert ca != cb and sa != sb
    words = [w for p in conj for c in p for w in c.split()]
    assert all(words.count(w) == 3 for w in set(words))
    assert controls.REGIMES["R1"]["part"] == controls.REGIMES["R2"]["part"]  # the same units
    shared = controls.DESIGNS["seen"]["shared"]
    assert shared[controls.REGIMES["negative"]["part"]] == [True] * 12
    assert shared[controls.REGIMES["R1"]["part"]] == [False] * 12


def test_design_agreement_by_hand():
    cfg = SyntheticConfig()
    names = pu.shapes.ground_truth.feature_names(cfg)
    ids = [names.index(n) for n in ["red", "red circle", "blue", "circle", "object", "square"]]
    # red: A; red circle: A; blue: B; circle: both A (red circle) and B (blue circle) -> neither;
    # object: neither; square: neither
    share = controls.design_agreement(names, torch.tensor(ids), "red circle", "blue circle", cfg)
    assert share == pytest.approx(3 / 6)
    assert controls.design_agreement(names, torch.tensor(ids[:3]), "red", "blue", cfg) == 1.0


def _layer4_ari(model, ds, pair, n_max=150):
    """Independent: layer4 of a plain forward, averaged, clamped; scikit-learn's k-means."""
    groups = concept_split(ds, *pair)
    rng = np.random.default_rng(0)
    picks = [rng.permutation(groups[k].numpy())[:n_max] for k in ("a", "b")]
    x = torch.stack([ds[int(i)][0] for i in np.concatenate(picks)])
    with torch.no_grad():
        feats = forward_until(model, x, "layer4").clamp_min(0).mean((2, 3)).numpy()
    truth = np.repeat([0, 1], [len(p) for p in picks])
    pred = KMeans(2, n_init=10, random_state=0).fit_predict(feats)
    return adjusted_rand_score(truth, pred)


def test_r3_layer_activations_separate_the_unseen_colours_poorly():
    model = pu.load_model("synthetic_resnet_bottleneck")
    unseen = SyntheticShapes("test", n=600, config=unseen_colours_config())
    r3 = controls.activation_separation(model, unseen, ("magenta", "cyan"), "layer4", n_max=150)
    assert r3 < controls.PASS["precondition_ari"]
    assert r3 == pytest.approx(_layer4_ari(model, unseen, ("magenta", "cyan")), abs=0.05)
    # a unit of R3's design still reads both colours from layer3 (weak thresholds, disjoint sets)
    (record,) = pu.shapes.grafting.design_units(model, "layer4", "layer3", [("magenta", "cyan")],
                                                SyntheticShapes("val", n=600, config=unseen_colours_config()),
                                                **controls.DESIGNS["unseen"]["thresholds"])
    a, b = set(record.channels_a.tolist()), set(record.channels_b.tolist())
    assert a and b and not a & b
    assert set(torch.nonzero(record.weights).flatten().tolist()) == a | b


def _pairs(words: dict) -> pd.DataFrame:
    rows = []
    for (regime, b), (mean, low, high) in words.items():
        word = "higher" if low > 0 else "lower" if high < 0 else "no detectable difference"
        rows.append(dict(regime=regime, a="PURE (gxa)", b=b, mean=mean, ci_low=low, ci_high=high,
                         n=10, n_tied=1, p_sign_flip=0.01, min_p=0.002, mdd=0.1, word=word))
    return pd.DataFrame(rows)


def _criteria(precondition_met: bool) -> pd.DataFrame:
    return pd.DataFrame([{"criterion": "truth", "value": 0.95, "needed": ">= 0.9", "met": True},
                         {"criterion": "R3 precondition", "value": 0.1 if precondition_met else 0.4,
                          "needed": "< 0.2", "met": precondition_met}])


def test_the_verdict_separates_location_from_circuit():
    mean, peak = "activations (mean)", "activations (peak)"
    location = _pairs({("R2", mean): (0.4, 0.2, 0.6), ("R2", peak): (0.02, -0.1, 0.1),
                       ("R3", peak): (0.01, -0.05, 0.07)})
    text = verdicts.controls_verdict(location, _criteria(True))
    assert "detectably higher than the averaged" in text and "it is location" in text
    assert "no advantage of the circuit over location is detectable" in text
    circuit = _pairs({("R2", mean): (0.4, 0.2, 0.6), ("R2", peak): (0.2, 0.1, 0.3),
                      ("R3", peak): (0.3, 0.1, 0.5)})
    text = verdicts.controls_verdict(circuit, _criteria(True))
    assert "survives against the activations at the unit's peak" in text
    assert "the circuit carries what the activations do not" in text
    text = verdicts.controls_verdict(circuit, _criteria(False))
    assert "R3 cannot test the circuit" in text and "carries" not in text
    pooled = pd.DataFrame([dict(a="PURE (gxa)", b=mean, statistic=0.01, p=0.6, n=40, n_groups=8,
                                n_tied=5, min_p=1e-4)])
    answer = verdicts.answer_sentences(pooled, location, _criteria(True))
    assert "not detectably different from the paper's activation baseline" in answer
    assert "what wins is location, not the circuit" in answer and answer.count(". ") == 1
    assert "Not every control" in verdicts.answer_sentences(pooled, location, _criteria(False))


def test_a_comparison_no_test_could_call_significant_is_not_judged():
    mean, peak = "activations (mean)", "activations (peak)"
    few = _pairs({("R2", mean): (0.57, 0.33, 0.96), ("R2", peak): (0.17, 0.0, 0.33),
                  ("R3", peak): (0.0, 0.0, 0.0)}).assign(n=3, min_p=0.25)
    text = verdicts.controls_verdict(few, _criteria(True))
    # the interval of 3 units excludes 0, but with 3 units no test reaches p < 0.05
    assert "detectably higher" not in text and text.count("not to be judged") == 3
    assert "Too few of R2's units" in text and "too few units are scored to test the circuit" in text
    pooled = pd.DataFrame([dict(a="PURE (gxa)", b=mean, statistic=0.01, p=0.6, n=40, n_groups=8,
                                n_tied=5, min_p=1e-4)])
    assert "too few grafted units are scored" in verdicts.answer_sentences(pooled, few, _criteria(True))


def _fake_scores():
    rows = []
    for regime, n_units, ari in (("R1", 7, 0.9), ("R2", 6, 0.85), ("R3", 3, 0.5), ("negative", 6, 0.1)):
        for u in range(n_units + 1):  # the last unit of each regime is not scored
            for method in ("PURE (gxa)", "activations (mean)", "activations (peak)"):
                rows.append(dict(neuron=2048 + u, method=method, k=2, ari=ari, nmi=ari,
                                 regime=regime, pair=f"a{u} | b{u}", truth="red",
                                 agreement=0.5, labelled=0.95 if regime != "R3" else 0.8,
                                 share_a=0.5 if u < n_units else 0.05, scored=u < n_units))
    return pd.DataFrame(rows)


def test_criteria_count_scored_units_and_the_pair_truth():
    pre = pd.DataFrame({"ARI, averaged activations": [0.1, 0.05]})
    crit = controls.criteria_table({"scores": _fake_scores(), "precondition": pre}).set_index("criterion")
    assert crit.loc["scored units (R1)", "value"] == 7 and crit.loc["scored units (R1)", "met"]
    assert not crit.loc["scored units (R3)", "met"]  # 3 < PASS["min_units"]
    assert crit.loc["pair truth labels A or B (R2), mean share of references", "met"]
    assert not crit.loc["pair truth labels A or B (R3), mean share of references", "met"]
    assert crit.loc["PURE (gxa) mean ARI, R2", "met"] and not crit.loc["PURE (gxa) mean ARI, R3", "met"]
    assert crit.loc["PURE (gxa) mean ARI, negative control", "met"]
    assert crit.index[-1].startswith("R3 precondition")  # the verdicts read it last
    table = controls.unit_table(_fake_scores())
    assert len(table) == 8 + 7 + 4 + 7 and table.scored.sum() == 22
    assert set(table.regime) == {spec["label"] for spec in controls.REGIMES.values()}


def test_the_answer_names_where_the_circuit_beats_location_and_says_when_it_cannot_judge():
    mean, peak = "activations (mean)", "activations (peak)"
    pooled = pd.DataFrame([dict(a="PURE (gxa)", b=mean, statistic=0.01, p=0.6, n=40, n_groups=8,
                                n_tied=5, min_p=1e-4)])
    # R2: a judged gain over the mean; its peak comparison cannot reach p < 0.05; R1 beats peak
    pairs = _pairs({("R1", mean): (0.3, 0.1, 0.6), ("R1", peak): (0.47, 0.2, 0.7),
                    ("R2", mean): (0.46, 0.3, 0.66), ("R2", peak): (0.26, 0.12, 0.41)})
    pairs.loc[(pairs.regime == "R2") & (pairs.b == peak), "min_p"] = 0.0625
    text = verdicts.controls_verdict(pairs, _criteria(True))
    assert text.startswith("On the benchmark as is (R1)") and text.count("detectably higher") == 3
    answer = verdicts.answer_sentences(pooled, pairs, _criteria(True))
    assert "activations at the unit's peak (R1: on the benchmark as is)" in answer and "location alone" in answer
    # without R1's gain over peak, the unjudgeable R2 comparison is said as such
    alone = pairs[pairs.regime == "R2"]
    answer = verdicts.answer_sentences(pooled, alone, _criteria(True))
    assert "cannot be judged" in answer and "location, not the circuit" not in answer
    one = _pairs({("R3", peak): (0.47, 0.47, 0.47)}).assign(n=1, min_p=float("nan"))
    assert "1 unit:" in verdicts.controls_verdict(one, _criteria(True))


def test_the_regime_table_reads_only_what_a_test_could_detect():
    mean = "activations (mean)"
    pairs = _pairs({("R1", mean): (0.34, 0.12, 0.61), ("R2", mean): (0.46, 0.3, 0.66)})
    pairs.loc[pairs.regime == "R1", "min_p"] = 0.125  # 3 of 7 units tied: 2 / 2^4
    pairs = pairs.assign(p_zsplit=0.1)
    table = controls.regime_table(pairs)
    assert table.reading.tolist() == ["too few units to judge", "higher"]


def test_a_silent_unit_is_listed_but_never_scored():
    silent = controls._silent_rows("R2", [type("G", (), dict(unit=4000, concept_a="red",
                                                           concept_b="blue"))()])
    scores = pd.concat([_fake_scores(), silent], ignore_index=True)
    table = controls.unit_table(scores)
    row = table[table.pair == "red | blue"].iloc[0]
    assert row["general rule finds"] == "silent on these images" and not row.scored
    pairs = controls.regime_pairs(scores, {"n_boot": 50, "ci_level": 0.95})
    assert set(pairs.regime) == {"R1", "R2", "R3", "negative"} and (pairs.n[pairs.regime == "R2"] == 6).all()
    summary = controls.score_summary(scores).set_index("regime")
    assert summary.loc[controls.REGIMES["R2"]["label"], "built"] == 8  # 7 listed + the silent one
