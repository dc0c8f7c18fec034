"""Training the shipped models (pure_utils.shapes.train) and their cards."""
import contextlib
import hashlib
import io
import json

import pytest
import torch
from safetensors.torch import load_file

from pure_utils import load_model
from pure_utils.shapes.ground_truth import layer_polysemanticity
from pure_utils.models import DEFAULT_MODELS, build_resnet
from pure_utils.shapes.dataset import SyntheticShapes
from pure_utils.shapes.generator import GENERATOR_VERSION, SyntheticConfig
from pure_utils.shapes.train import DEFAULT_ARCHITECTURES, evaluate_accuracy, main, train_default_model

# ---------------------------------------------------------------------------------------------
# shipped models and training


@pytest.fixture(scope="session")  # once per worker: `make test` hands out single tests
def tiny_all(tmp_path_factory):
    """One tiny training of every default model, one at a time, as ``--model all`` runs it: the
    folder and what the command printed (several tests read these runs instead of training again)."""
    out = tmp_path_factory.mktemp("tiny-all")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["--tiny", "--model", "all", "--out", str(out), "--no-progress"])
    return out, printed.getvalue()


@pytest.mark.parametrize("name", list(DEFAULT_MODELS))
def test_shipped_model_reaches_its_card_accuracy(name):
    path = DEFAULT_MODELS[name]
    card = json.loads(path.read_text())
    assert path.with_suffix(".safetensors").stat().st_size <= 10 * 2**20
    assert card["generator_version"] == GENERATOR_VERSION
    assert card["accuracy"]["value"] >= 0.9
    model = load_model(name)
    check = card["accuracy_check"]
    cfg = SyntheticConfig(**card["dataset"]["config"])
    ds = SyntheticShapes(check["split"], n=check["n"], seed=check["seed"], config=cfg)
    acc = evaluate_accuracy(model, ds)
    assert abs(acc - check["value"]) <= 0.01, (acc, check)
    assert model.layer4[-1].conv1.in_channels > 0  # a real timm ResNet with layer4


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DEFAULT_MODELS))
def test_shipped_model_card_states_one_run_under_30_minutes_and_polysemantic_layer4(name):
    card = json.loads(DEFAULT_MODELS[name].read_text())
    # one training run, from scratch, by the command the Makefile's `models` target runs
    assert card["warm_start"] is None
    assert card["training_time_total_s"] == card["training_time_s"] <= 30 * 60
    makefile = (DEFAULT_MODELS[name].parents[2] / "Makefile").read_text()
    recipe = makefile.split("\nmodels:", 1)[1].split("\n\n", 1)[0]
    assert card["command"].replace("python -m", "$(PY) -m") in recipe
    # at least 30 % of layer4 polysemantic by ground truth, and the card's count is reproduced
    stated = card["layer4_polysemantic"]
    assert stated["fraction"] >= 0.3
    model = load_model(name)
    ds = SyntheticShapes(stated["split"], n=stated["n"], seed=stated["seed"],
                         config=SyntheticConfig(**card["dataset"]["config"]))
    # a card states the rule it was counted by: cards from before the uncertainty band have no
    # "band" and are reproduced without it (the band relabels the stored retentions only)
    again = layer_polysemanticity(model, ds, stated["layer"], n_ref=stated["n_ref"],
                                  min_share=stated["min_share"], band=stated.get("band", 0.0))
    assert again["neurons"] == stated["neurons"]


def test_warm_start_loads_the_weights_and_keeps_the_history(tmp_path, tiny_all):
    name = "synthetic_resnet_bottleneck"
    first = tiny_all[0] / f"{name}.safetensors"  # a tiny run from scratch
    card_a = json.loads(first.with_suffix(".json").read_text())
    # lr 0: the second stage changes no parameter, so its weights must be the loaded ones
    main(["--tiny", "--model", name, "--init", str(first), "--lr", "0",
          "--out", str(tmp_path / "b"), "--no-progress"])
    card_b = json.loads((tmp_path / "b" / f"{name}.json").read_text())
    assert card_b["warm_start"]["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert card_b["warm_start"]["card"] == card_a
    assert card_b["training_time_total_s"] == pytest.approx(
        card_a["training_time_s"] + card_b["training_time_s"], abs=0.11)
    a, b = load_file(str(first)), load_file(str(tmp_path / "b" / f"{name}.safetensors"))
    params = dict(build_resnet(**card_a["architecture"]).named_parameters())
    assert params and all(torch.equal(a[k], b[k]) for k in params)


def test_tiny_training_command_runs_end_to_end(tiny_all):
    tmp_path, printed = tiny_all
    assert "test accuracy" in printed
    card = json.loads((tmp_path / "synthetic_resnet_bottleneck.json").read_text())
    assert card["hyperparameters"]["steps"] == 3 and card["dataset"]["n_train"] == 64
    assert card["generator_version"] == GENERATOR_VERSION and card["seed"] == 0
    assert card["machine"]["cpu_count"] >= 1 and card["machine"]["python"].count(".") == 2
    for key in ("architecture", "accuracy", "training_time_s", "versions", "layer4_polysemantic"):
        assert key in card
    assert card["layer4_polysemantic"]["n_neurons"] == card["architecture"]["channels"][-1] * 4
    # the written card and weights rebuild the model (as load_model does for the shipped ones)
    model = build_resnet(**card["architecture"]).eval()
    model.load_state_dict(load_file(str(tmp_path / "synthetic_resnet_bottleneck.safetensors")))
    x = SyntheticShapes("test", n=2)[0][0][None]
    assert model(x).shape == (1, 16)


def test_bad_training_arguments_raise():
    with pytest.raises(ValueError, match="n_train"):
        train_default_model("synthetic_resnet_basic", n_train=8, batch_size=16, progress=False)
    with pytest.raises(ValueError, match="synthetic_resnet_basic, synthetic_resnet_bottleneck"):
        train_default_model("resnet_huge", progress=False)


@pytest.mark.slow
def test_parallel_training_writes_the_same_weights_as_one_at_a_time(tmp_path, capsys, tiny_all):
    # --jobs 2 trains each model in its own process; the weights must not depend on it
    main(["--tiny", "--model", "all", "--jobs", "2", "--out", str(tmp_path / "par")])
    out = capsys.readouterr().out
    assert f"{len(DEFAULT_ARCHITECTURES)} models, 2 at a time" in out
    for name in DEFAULT_ARCHITECTURES:
        seq, par = (load_file(str(d / f"{name}.safetensors")) for d in (tiny_all[0], tmp_path / "par"))
        assert seq.keys() == par.keys() and all(torch.equal(seq[k], par[k]) for k in seq)
        card = json.loads((tmp_path / "par" / f"{name}.json").read_text())
        # the card names the single-model command that reproduces it
        assert f"--model {name}" in card["command"] and "--jobs" not in card["command"]


def test_member_command_and_bad_jobs():
    from pure_utils.shapes.train import _member_argv
    assert _member_argv(["--model", "family", "--jobs", "2", "--out", "x"], "family_width_16") == \
        ["--model", "family_width_16", "--out", "x", "--no-progress"]
    assert _member_argv(["--model=all", "--jobs=3", "--tiny", "--no-progress"], "a") == \
        ["--model", "a", "--tiny", "--no-progress"]
    with pytest.raises(SystemExit):
        main(["--model", "all", "--jobs", "0"])
# ---------------------------------------------------------------------------------------------
# the shipped model of another architecture family (the chapter "PURE beyond ResNets")
def test_shipped_convnext_card_states_one_run_its_units_and_reaches_its_accuracy():
    from pure_utils.models import shipped_models
    from pure_utils.shapes.train import DEFAULT_ARCHITECTURES, UNITS, polysemantic_record

    name = "synthetic_convnext"
    path = shipped_models()[name]
    card = json.loads(path.read_text())
    assert path.with_suffix(".safetensors").stat().st_size <= 10 * 2**20
    assert card["generator_version"] == GENERATOR_VERSION and card["accuracy"]["value"] >= 0.9
    assert card["architecture"] == DEFAULT_ARCHITECTURES[name]
    assert card["units"] == dict(zip(("layer", "lower_layer"), UNITS[name]))
    assert card["warm_start"] is None
    assert card["training_time_total_s"] == card["training_time_s"] <= 30 * 60
    makefile = (path.parents[2] / "Makefile").read_text()
    recipe = makefile.split("\nmodels:", 1)[1].split("\n\n", 1)[0]
    assert card["command"].replace("python -m", "$(PY) -m") in recipe
    stated = polysemantic_record(card)
    assert stated["layer"] == "stages.3" and stated["n_neurons"] == 32 and stated["fraction"] >= 0.3
    model = load_model(name)
    assert type(model).__name__ == "ConvNeXt" and model.stages[3].blocks[0].conv_dw.out_channels == 32
    check = card["accuracy_check"]
    ds = SyntheticShapes(check["split"], n=check["n"], seed=check["seed"],
                         config=SyntheticConfig(**card["dataset"]["config"]))
    assert abs(evaluate_accuracy(model, ds) - check["value"]) <= 0.01


@pytest.mark.slow
def test_shipped_convnext_polysemantic_units_are_reproduced():
    from pure_utils.shapes.train import polysemantic_record

    model = load_model("synthetic_convnext")
    card = model.pure_card
    stated = polysemantic_record(card)
    ds = SyntheticShapes(stated["split"], n=stated["n"], seed=stated["seed"],
                         config=SyntheticConfig(**card["dataset"]["config"]))
    again = layer_polysemanticity(model, ds, stated["layer"], n_ref=stated["n_ref"],
                                  min_share=stated["min_share"], band=stated.get("band", 0.0))
    assert again["neurons"] == stated["neurons"]


def test_tiny_training_of_another_architecture_writes_a_loadable_card(tiny_all):
    from pure_utils.models import build_model
    from pure_utils.shapes.train import polysemantic_record

    tmp_path = tiny_all[0]  # --model all trains synthetic_convnext as --model synthetic_convnext
    card = json.loads((tmp_path / "synthetic_convnext.json").read_text())
    assert card["units"] == {"layer": "stages.3", "lower_layer": "stages.2"}
    assert "layer4_polysemantic" not in card and polysemantic_record(card)["n_neurons"] == 32
    model = build_model(card["architecture"]).eval()
    model.load_state_dict(load_file(str(tmp_path / "synthetic_convnext.safetensors")))
    assert model(SyntheticShapes("test", n=2)[0][0][None]).shape == (1, 16)
    with pytest.raises(ValueError, match="timm_model='no_such_net' is not a timm model name"):
        build_model({"timm_model": "no_such_net"})
