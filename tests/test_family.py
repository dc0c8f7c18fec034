"""The model family and its comparison (pure_utils.study.family, pure_utils.shapes.train.FAMILY)."""
import json
import shlex

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

import pure_utils as pu
from pure_utils.study import family
from pure_utils.shapes.dataset import SyntheticShapes
from pure_utils.models import shipped_models
from pure_utils.study.profile import load_profile
from pure_utils.shapes.generator import SyntheticConfig
from pure_utils.shapes.train import FAMILY, planted_response


def test_unit_predictors_on_constructed_vectors():
    labels = torch.tensor([0] * 10 + [1] * 10)
    # activations that only encode the feature: nothing varies within a feature
    acts = torch.stack([torch.tensor([1.0, 0.0])] * 10 + [torch.tensor([0.0, 1.0])] * 10)
    noise = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    circuits = acts * 10 + 0.01 * noise
    p = family.unit_predictors(acts, circuits, labels)
    assert p["off_feature_variance"] == pytest.approx(0.0)
    assert p["circuit_separability"] > 0.99
    # activations that vary for other reasons only: all variance is left within the features
    p = family.unit_predictors(noise, noise, labels)
    assert p["off_feature_variance"] > 0.8 and p["circuit_separability"] < 0.2


@pytest.mark.slow
def test_compare_model_agrees_with_a_recomputation_from_the_public_api():
    profile = load_profile("offline", dataset_kwargs={"n": 400}, n_ref=20, attributions=["gxa"],
                           n_boot=200, cache=False)
    run = family.compare_model(profile, "synthetic_resnet_bottleneck")
    s = run["setting"]
    sel = [n for n, f in zip(s.neurons, run["features"].polysemantic(0.2).tolist()) if f]
    assert sel and set(run["units"].neuron) == set(sel)
    model = pu.load_model("synthetic_resnet_bottleneck")
    data = pu.load_dataset("synthetic", split="test", n=400, seed=0)
    refs = pu.mine_references(model, data, "layer4", 20, progress=False).subset(sel)
    truth = pu.shapes.true_features(model, data, refs)
    R = pu.circuit_attributions(model, data, refs, "layer4", "layer3", progress=False)
    A = pu.activation_vectors(model, data, refs, "layer4", progress=False)
    peak = pu.activation_vectors(model, data, refs, "layer4", pooling="peak", progress=False)
    diffs, diffs_peak = [], []
    for i in range(len(sel)):
        # all references are clustered; the ARI compares those outside the uncertainty band
        keep = truth.certain[i].numpy()
        ari = [adjusted_rand_score(truth.labels[i].numpy()[keep],
                                   pu.VirtualNeurons(n_clusters=2).fit(X[i]).labels_[keep])
               for X in (R, A, peak)]
        diffs.append(ari[0] - ari[1])
        diffs_peak.append(ari[0] - ari[2])
    k2 = run["pairs"][run["pairs"].k == 2]
    row = k2[k2.b == "activations (mean)"].iloc[0]
    assert row["mean"] == pytest.approx(np.mean(diffs), abs=1e-9) and row["n"] == len(sel)
    row = k2[k2.b == "activations (peak)"].iloc[0]
    assert row["mean"] == pytest.approx(np.mean(diffs_peak), abs=1e-9)
    assert {"n_tied", "min_p", "p_sign_flip", "mdd"} <= set(k2.columns)
    assert run["units"]["difference PURE (gxa)"].to_numpy() == pytest.approx(diffs)
    assert run["units"]["difference PURE (gxa) - peak"].to_numpy() == pytest.approx(diffs_peak)


def _training_args(command):
    """``(model, other arguments that decide the weights)`` of a training command."""
    words = shlex.split(command.replace("$(PY)", "python"))
    words = words[words.index("pure_utils.shapes.train") + 1:]
    out, model, skip = [], None, None
    for word in words:
        if skip:
            model = word if skip == "--model" else model
            skip = None
        elif word in ("--jobs", "--model"):
            skip = word
        elif word != "--no-progress":
            out.append(word)
    return model, out


def test_training_args_normalise_only_what_does_not_change_weights():
    model, args = _training_args("python -m pure_utils.shapes.train --model family_x --out d --no-progress")
    assert model == "family_x" and args == ["--out", "d"]
    assert _training_args("$(PY) -m pure_utils.shapes.train --model family --jobs 2 --out d") == ("family", args)
    assert _training_args("$(PY) -m pure_utils.shapes.train --model family --epochs 3 --out d")[1] != args


def test_family_is_shipped_with_cards_written_by_the_family_command():
    makefile = (pu.paths.ROOT / "Makefile").read_text()
    recipe = makefile.split("\nfamily:", 1)[1].split("\n\n", 1)[0]
    recipe_line = next(line for line in recipe.splitlines() if "pure_utils.shapes.train" in line)
    for name, spec in FAMILY.items():
        card_path = shipped_models()[name]
        card = json.loads(card_path.read_text())
        assert card_path.with_suffix(".safetensors").stat().st_size <= 10 * 2**20
        # `--model family` trains every member exactly as `--model <member>` does, and neither
        # `--jobs` nor `--no-progress` changes the weights
        model, args = _training_args(card["command"])
        assert model in (name, "family") and (("family", args) == _training_args(recipe_line)), card["command"]
        assert card["dataset"]["config"] == SyntheticConfig(**spec["config"]).to_dict()
        assert card["architecture"]["channels"][-1] == spec.get("width", 8)
        assert card["layer4_polysemantic"]["n_neurons"] == 4 * spec.get("width", 8)
        assert card["machine"]["cpu_count"] >= 1 and card["accuracy"]["n"] == 3000


def test_family_models_reach_90_percent():
    low = {name: pu.models.read_card(name)["accuracy"]["value"] for name in FAMILY
           if pu.models.read_card(name)["accuracy"]["value"] < 0.9}
    assert not low, f"family models below 90% test accuracy: {low}"


def test_planted_units_respond_as_planted():
    # decided before training: with its concepts a planted unit gives at least half its target,
    # and without them at most half of what it gives with them
    card = pu.models.read_card("family_planted")
    planted = card["planted"]
    model = pu.load_model("family_planted")
    data = SyntheticShapes("test", n=600, seed=0)
    response = planted_response(model, data, planted)
    for unit, r in response.items():
        assert r["n_with"] > 10, unit
        assert r["with_concepts"] >= planted["target"] / 2, (unit, r)
        assert r["without"] <= r["with_concepts"] / 2, (unit, r)


def test_differences_by_model_gives_one_row_per_model():
    import pandas as pd
    pairs = pd.DataFrame({"model": ["m1", "m1", "m2", "m2"],
                          "a": ["PURE (gxa)", "PURE (epsilon_plus_flat)", "PURE (gxa)", "PURE (gxa)"],
                          "b": ["activations (mean)"] * 3 + ["activations (peak)"],
                          "k": [2, 2, 2, 2], "mean": [0.012, -0.03, 0.5, 0.1],
                          "ci_low": [-0.02, -0.07, 0.4, 0.0], "ci_high": [0.05, 0.01, 0.6, 0.2],
                          "p_sign_flip": [0.4632, 0.58, 0.0039, 0.2], "n_tied": [3, 0, 1, 2],
                          "min_p": [0.0002, 0.0001, 0.0039, 0.03],
                          "n": [15, 15, 9, 9]})
    extra = pairs.assign(k="true", mean=9.0)  # another k is left out
    wide = family.differences_by_model(pd.concat([pairs, extra]))
    assert list(wide.columns) == ["model", "units", "gxa - activations (mean)",
                                  "epsilon_plus_flat - activations (mean)", "gxa - activations (peak)"]
    assert wide.model.tolist() == ["m1", "m2"] and wide.units.tolist() == [15, 9]
    assert wide.loc[0, "gxa - activations (mean)"] == "0.01 [-0.02, 0.05] (p 0.46 of at least 0.0002, 3 tied)"
    assert wide.loc[1, "gxa - activations (mean)"] == "0.50 [0.40, 0.60] (p 0.0039 of at least 0.0039, 1 tied)"
    assert wide.loc[1, "epsilon_plus_flat - activations (mean)"] == "not scored"
    assert wide.loc[0, "gxa - activations (peak)"] == "not scored"


def test_pooled_table_is_the_stratified_test_of_the_unit_differences():
    import pandas as pd
    from pure_utils.stats import stratified_sign_flip_test
    rng = np.random.default_rng(0)
    units = pd.DataFrame({"model": ["a"] * 5 + ["b"] * 3,
                          "difference PURE (gxa)": rng.normal(0.3, 0.1, 8),
                          "difference PURE (gxa) - peak": [0.0] * 8})
    table = family.pooled_table(units, ["gxa", "epsilon_plus_flat"], n_perm=2000)
    assert table[["a", "b"]].values.tolist() == [["PURE (gxa)", "activations (mean)"],
                                                 ["PURE (gxa)", "activations (peak)"]]
    d = units["difference PURE (gxa)"].to_numpy()
    expect = stratified_sign_flip_test({"a": d[:5], "b": d[5:]}, n_perm=2000)
    row = table.iloc[0]
    # every model counts once: the mean of the two models' means, not of the eight units
    assert row.statistic == pytest.approx((d[:5].mean() + d[5:].mean()) / 2)
    assert row.p == pytest.approx(expect["p"]) and row.n_groups == 2 and row.n == 8
    assert row.p <= 2 / 2 ** 8 + 1e-12  # every difference positive: the smallest reachable p
    assert table.iloc[1].p == 1.0 and table.iloc[1].n_tied == 8


def _features(labels):
    from pure_utils.shapes.ground_truth import TrueFeatures
    labels = torch.as_tensor(labels, dtype=torch.long)
    z = torch.zeros(labels.shape)
    return TrueFeatures(labels=labels, names=["red", "blue"], kinds=["colour", "colour"],
                             responsibility=z, driver=z.long(), colour_retention=z,
                             shape_retention=z, activation=z, channels=torch.arange(len(labels)))


def test_overview_table_is_the_chapters_former_loop():
    from types import SimpleNamespace
    names = ["family_planted", "family_width_16", "synthetic_resnet_basic"]
    feats = [_features([[0] * 5 + [1] * 5, [0] * 10]), _features([[0] * 10]), _features([[0] * 5 + [1] * 5] * 3)]
    result = {"runs": {m: {"setting": SimpleNamespace(neurons=list(range(len(f.labels))),
                                                      images=f"test split, {m}"), "features": f}
                       for m, f in zip(names, feats)}}
    rows = []
    for m in names:  # the former cell of beyond_family.ipynb, verbatim
        card = pu.models.read_card(m)
        spec = pu.shapes.train.FAMILY.get(m, {})
        run = result["runs"][m]
        rows.append({"model": m, "knob": spec.get("knob", "-"), "setting": spec.get("level", "-"),
                     "images": run["setting"].images, "units": len(run["setting"].neurons),
                     "polysemantic units": int(run["features"].polysemantic(0.2).sum()),
                     "test accuracy": card["accuracy"]["value"]})
    import pandas as pd
    overview = family.overview_table(names, result, 0.2)
    pd.testing.assert_frame_equal(overview, pd.DataFrame(rows))
    assert overview["polysemantic units"].tolist() == [1, 0, 3]
    assert overview.knob.iloc[2] == "-" and overview.knob.iloc[1] == FAMILY["family_width_16"]["knob"]


def test_models_table_says_where_lrp_is_refused():
    from types import SimpleNamespace
    layers = {"synthetic_resnet_basic": ("layer4", "layer3"), "synthetic_convnext": ("stages.3", "stages.2")}
    settings = {m: SimpleNamespace(model=pu.load_model(m), profile={"layer": a, "lower_layer": b},
                                   neurons=[0, 1, 2]) for m, (a, b) in layers.items()}
    runs = {"synthetic_resnet_basic": {"features": _features([[0] * 5 + [1] * 5, [0] * 10, [1] * 10])}}
    table, uncovered = family.models_table(settings, runs, 0.2)
    assert table.model.tolist() == list(layers) and table.LRP.tolist() == ["correct", "refused"]
    assert table.family.tolist() == ["ResNet", "ConvNeXt"]
    assert table["polysemantic units"].tolist() == [1, "n/a"]
    assert uncovered["synthetic_resnet_basic"] == [] and uncovered["synthetic_convnext"]
    convnext = settings["synthetic_convnext"]
    missing = pu.lrp_support(convnext.model, layer="stages.3", lower_layer="stages.2")
    # the module names, each once, as the chapter's former cell cut them
    assert uncovered["synthetic_convnext"] == list(dict.fromkeys(line.split(" (")[0] for line in missing))
    types = {type(module).__name__ for module in convnext.model.modules()}
    assert set(uncovered["synthetic_convnext"]) <= types and "LayerNorm2d" in uncovered["synthetic_convnext"]
    card = pu.models.read_card("synthetic_convnext")
    assert table["test accuracy"].iloc[1] == card["accuracy"]["value"]
    assert table.parameters.iloc[1] == sum(p.numel() for p in convnext.model.parameters())


def _distractor_counts(dataset):
    """Objects besides the labelled one in every image, read from the annotations."""
    return {len(dataset.annotations(i)["objects"]) - 1 for i in range(len(dataset))}


def test_every_family_member_is_scored_on_its_own_distribution():
    from pure_utils.study.setting import load_setting, model_distribution
    profile = load_profile("offline", dataset_kwargs={"n": 60}, n_ref=4, n_neurons=2, cache=False)
    for name in FAMILY:
        card = json.loads(shipped_models()[name].with_suffix(".json").read_text())
        kwargs, images = model_distribution(profile, name)
        own = SyntheticConfig(**card["dataset"]["config"])
        assert SyntheticConfig(**kwargs.get("config", {})) == own, name
        assert kwargs["split"] == "test" and kwargs["n"] == 60 and "test split" in images
        others = [m for m in FAMILY if SyntheticConfig(**json.loads(shipped_models()[m].with_suffix(
            ".json").read_text())["dataset"]["config"]) != own]
        assert all(model_distribution(profile, m)[0].get("config") != kwargs.get("config")
                   for m in others), name
    # the images themselves, read from the annotations: 0 distractors against 4-6
    few = load_setting(profile, model_name="family_distractors_0", progress=False)
    many = load_setting(profile, model_name="family_distractors_4-6", progress=False)
    assert _distractor_counts(few.dataset) == {0}
    assert _distractor_counts(many.dataset) <= {4, 5, 6} and "distractors_min=4" in many.images
    # switched off, or for a model trained on the defaults: the profile's images
    off = model_distribution(load_profile("offline", own_distribution=False), "family_distractors_0")
    assert "config" not in off[0] and "profile's" in off[1]
    assert "config" not in model_distribution(profile, "synthetic_resnet_bottleneck")[0]
