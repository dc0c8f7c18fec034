"""Profiles: the shipped YAMLs load, carry the shared keys, and fail with actionable messages."""
import inspect

import pytest

from pure_utils.embed import load_embedder
from pure_utils.study.profile import (REQUIRED_KEYS, check_profile, load_profile, profile_names,
                                 resolve_device)


def test_shipped_profiles():
    assert {"offline", "paper", "smoke"} <= set(profile_names())
    off = load_profile()
    assert off["name"] == "offline" and off["model_name"] == "synthetic_resnet_bottleneck"
    assert off["embedder"] == "attributes" and off["dataset"] == "synthetic"
    paper = load_profile("paper")
    assert paper["model_names"] == ["resnet34.a1_in1k", "resnet50.a1_in1k", "resnet101.a1_in1k"]
    assert paper["embedder"] == "clip" and paper["visual_embedder"] == "dinov2"
    assert paper["pretrained"] and paper["embedder_pretrained"] and paper["n_ref"] == 100
    assert paper["correlation_n_samples"] == 50 and paper["correlation_n_subsets"] == 30
    smoke = load_profile("smoke")
    assert smoke["model_name"] == "resnet50" and not smoke["pretrained"]
    assert not smoke["embedder_pretrained"] and not smoke["visual_embedder_pretrained"]
    for p in (off, paper, smoke):
        assert all(k in p for k in REQUIRED_KEYS)
        # every embedder keyword in a profile is accepted by load_embedder
        params = inspect.signature(load_embedder).parameters
        for role in ("embedder", "visual_embedder"):
            extra = set(p.get(f"{role}_kwargs") or {}) - set(params)
            assert not extra, (p["name"], role, extra)


def test_overrides_env_and_paths(tmp_path, monkeypatch):
    p = load_profile("offline", n_ref=10, dataset_kwargs={"n": 50})
    assert p["n_ref"] == 10 and p["dataset_kwargs"] == {"split": "test", "n": 50, "seed": 0}
    monkeypatch.setenv("PURE_IMAGENET_VAL", str(tmp_path))
    paper = load_profile("paper")
    assert paper["dataset_kwargs"]["root"] == str(tmp_path)
    assert check_profile(paper) is paper
    f = tmp_path / "mine.yaml"
    f.write_text("\n".join(f"{k}: 1" for k in REQUIRED_KEYS if k != "name"))
    assert load_profile(f)["name"] == "mine"
    f.write_text("layer: layer4\n")
    with pytest.raises(ValueError, match="lacks the keys"):
        load_profile(f)


def test_missing_things_are_actionable(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="profile 'nope' not found; profiles: offline"):
        load_profile("nope")
    monkeypatch.delenv("PURE_IMAGENET_VAL", raising=False)
    with pytest.raises(ValueError, match="PURE_IMAGENET_VAL"):
        check_profile(load_profile("paper"))
    nowhere = {"root": str(tmp_path / "nowhere")}
    missing = load_profile("paper", dataset_kwargs=nowhere, heldout_dataset_kwargs=nowhere)
    with pytest.raises(FileNotFoundError, match="does not exist.*image-net.org.*dataset_kwargs.root"):
        check_profile(missing)


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")


def test_every_shipped_profile_sets_every_key():
    # a notebook run with `papermill -f PROFILE.yaml` sees only that file's keys
    from pure_utils.study.profile import profile_keys, profile_names
    import yaml
    from pure_utils.study.profile import PROFILES_DIR

    keys = profile_keys()
    for name in profile_names():
        data = yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text())
        assert set(data) == keys, f"{name}: missing {keys - set(data)}, extra {set(data) - keys}"


def test_from_parameters_injected_keys_replace_the_base():
    from pure_utils.study.profile import from_parameters, load_profile

    smoke = load_profile("smoke")
    # as `papermill -f smoke.yaml -p n_ref 3` leaves the notebook's globals
    ns = {"profile": "offline", "some_local": 1, **smoke}
    ns["n_ref"] = 3
    p = from_parameters(ns)
    assert p["n_ref"] == 3
    assert p["model_name"] == smoke["model_name"]
    # whole values are replaced, not merged: no key of offline's dataset_kwargs survives
    assert p["dataset_kwargs"] == smoke["dataset_kwargs"]
    assert "some_local" not in p
    assert p["name"] == "smoke"
    # only the base named
    assert from_parameters({"profile": "smoke"})["model_name"] == smoke["model_name"]


def test_the_paper_profile_holds_the_papers_choices():
    paper = load_profile("paper")
    assert paper["fig3_model"] == "resnet50.a1_in1k"
    assert paper["fig3_neurons"] == [1929, 1506, 1498, 712]
    assert paper["fig4_model"] == "resnet101.a1_in1k" and paper["fig4_divergence_neuron"] == 1028
    assert paper["strong_polysemanticity"] == 1.5
    assert paper["ks"] == [2, 3, 4, 5] and 2 in paper["ks"]
    assert paper["model_names"] == ["resnet34.a1_in1k", "resnet50.a1_in1k", "resnet101.a1_in1k"]
    # the test phase runs on a part of val that the references never see
    mining, held = paper["dataset_kwargs"], paper["heldout_dataset_kwargs"]
    assert (mining["part"], held["part"]) == ("mining", "test")
    assert mining["test_share"] == held["test_share"] and mining["part_seed"] == held["part_seed"]
    from pure_utils.study.tables import paper_numbers

    numbers = paper_numbers()
    assert numbers["strongly_polysemantic_gap"]["n"] == 187
    assert numbers["distance_correlation"]["model"] == paper["fig4_model"]
    assert numbers["eq5_k2"]["model"] == paper["fig3_model"]
