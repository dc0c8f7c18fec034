"""Profiles: a typed, frozen Profile; the shipped YAMLs resolve exactly as before; every bad key
or value fails with a message naming the file, the key, the value and the type expected."""
import dataclasses
import inspect
import json
import re
from pathlib import Path

import pytest
import yaml

from pure_utils.book import cli
from pure_utils.embed import load_embedder
from pure_utils.study.profile import (PROFILE_KEYS, PROFILES_DIR, Profile, ProfileError,
                                      as_profile, check_profile, from_parameters, load_profile,
                                      profile_keys, profile_names, read_profile, profile_device)

#: The profiles as the untyped loader resolved them (every key in every file), dumped before the
#: typed Profile replaced it, with $PURE_IMAGENET_VAL unset.
BEFORE = json.loads((Path(__file__).parent / "data" / "profiles_before.json").read_text())


def _same(a, b, where="") -> None:
    """``a == b`` with the same types all the way down (1 and 1.0, True and 1 differ)."""
    assert type(a) is type(b), (where, a, b)
    if isinstance(a, dict):
        assert set(a) == set(b), (where, sorted(set(a) ^ set(b)))
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _write(tmp_path, text: str, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the shipped profiles resolve as before ------------------------------------------------------
@pytest.mark.parametrize("name", ["offline", "paper", "smoke"])
def test_each_profile_resolves_to_the_dict_of_before(name, monkeypatch):
    monkeypatch.delenv("PURE_IMAGENET_VAL", raising=False)
    assert set(BEFORE[name]) == set(PROFILE_KEYS)
    _same(load_profile(name).to_dict(), BEFORE[name], name)
    # what the book injects into every notebook: every key, ${VAR} as written, whatever is set
    from pure_utils.book import build as book

    monkeypatch.setenv("PURE_IMAGENET_VAL", "/somewhere/val")
    _same(book.read_profile(name), BEFORE[name], name)


@pytest.mark.parametrize("name", ["offline", "paper", "smoke"])
def test_papermill_f_with_only_the_differences_gives_the_same_profile(name, monkeypatch, tmp_path):
    # `papermill -f notebooks/profiles/NAME.yaml` injects the file's keys only; the notebook's
    # `profile` parameter stays at its default, offline, and from_parameters fills in the rest
    monkeypatch.setenv("PURE_IMAGENET_VAL", str(tmp_path))
    injected = yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text())
    p = from_parameters({"profile": "offline", "k": 2, **injected})
    expected = json.loads(json.dumps(BEFORE[name]).replace("${PURE_IMAGENET_VAL}", str(tmp_path)))
    _same(p.to_dict(), expected, name)
    assert p == load_profile(name)
    # `make book --profile NAME` injects every key with the profile's name as base
    _same(from_parameters({"profile": name, **BEFORE[name]}).to_dict(), expected, name)


def test_offline_yaml_writes_out_the_defaults_and_the_others_only_their_differences():
    defaults = Profile().to_dict()
    _same(read_profile("offline"), defaults, "offline.yaml")
    assert Profile() == load_profile("offline")
    for name in ("paper", "smoke"):
        written = read_profile(name)
        same = sorted(k for k, v in written.items() if v == defaults[k])
        assert not same, f"{name}.yaml repeats defaults: {same}"


def test_every_key_has_a_meaning_and_a_type():
    fields = {f.name: f for f in dataclasses.fields(Profile)}
    assert tuple(fields) == PROFILE_KEYS and set(PROFILE_KEYS) == profile_keys()
    for name, f in fields.items():
        assert len(f.metadata.get("doc", "")) > 5, name
    # offline.yaml states every key beside its value (a comment on the line or in its block)
    text = (PROFILES_DIR / "offline.yaml").read_text()
    for name in PROFILE_KEYS:
        assert re.search(rf"^{name}:", text, re.M), name


# --- unknown keys ----------------------------------------------------------------------------
def test_unknown_key_is_refused_with_the_closest_keys(tmp_path):
    f = _write(tmp_path, "n_refs: 50\nlayer: layer4\n")
    with pytest.raises(ProfileError, match=rf"profile {re.escape(str(f))}: unknown key 'n_refs' "
                                           r"\(did you mean 'n_ref'"):
        load_profile(f)
    with pytest.raises(ProfileError, match=r"unknown key 'batch_sise' \(did you mean 'batch_size'"):
        load_profile("smoke", {"batch_sise": 3})
    with pytest.raises(ProfileError, match=r"unknown key 'qqq' \(every key is listed in"):
        Profile.from_dict({"qqq": 1})
    with pytest.raises(TypeError, match="unexpected keyword"):
        Profile(n_refs=3)


# --- types ---------------------------------------------------------------------------------------
def test_boolean_given_as_text_true_or_false_is_converted(tmp_path):
    f = _write(tmp_path, "cache: 'false'\npretrained: 'True'\nhas_concepts: FALSE\n")
    p = load_profile(f)
    assert p.cache is False and p.pretrained is True and p.has_concepts is False
    # papermill -p cache false injects the text "false"
    assert from_parameters({"profile": "smoke", "cache": "false", "randomize_batchnorm": "true"}) \
        .to_dict() == {**load_profile("smoke").to_dict(), "cache": False, "randomize_batchnorm": True}
    for bad in ("'no'", "0", "1", "'yes'", "null"):
        f = _write(tmp_path, f"pretrained: {bad}\n")
        with pytest.raises(ProfileError, match=rf"{re.escape(str(f))}: pretrained = .* expected "
                                               r"true or false \(or the text 'true' / 'false'\)$"):
            load_profile(f)
    # cache: true / false, null, or a folder (a path object is taken as its text)
    assert Profile(cache="false").cache is False and Profile(cache=None).cache is None
    assert Profile(cache="/x/cache").cache == "/x/cache" == Profile(cache=Path("/x/cache")).cache
    with pytest.raises(ProfileError, match=r"cache = 1 is an integer, expected true or false .* "
                                           r"or text or null"):
        Profile(cache=1)


def test_float_for_an_integer_is_refused_and_an_integer_for_a_float_accepted(tmp_path):
    for text in ("2.5", "3.0", "true", "'3'"):
        f = _write(tmp_path, f"n_ref: {text}\n")
        with pytest.raises(ProfileError, match=rf"profile {re.escape(str(f))}: n_ref = "
                                               r".* is .*, expected an integer"):
            load_profile(f)
    p = load_profile(_write(tmp_path, "ci_level: 1\nstrong_polysemanticity: 2\n"))
    assert type(p.ci_level) is float and p.ci_level == 1.0 and p.strong_polysemanticity == 2.0
    with pytest.raises(ProfileError, match=r"ci_level = True is a boolean, expected a number"):
        Profile(ci_level=True)
    assert Profile(n_neurons=None).n_neurons is None and Profile(n_neurons=3).n_neurons == 3
    with pytest.raises(ProfileError, match=r"n_neurons = 3.5 is a float, expected an integer"):
        Profile(n_neurons=3.5)


def test_lists_of_integers_are_checked_element_by_element(tmp_path):
    f = _write(tmp_path, "ks: [2, 2.5, 4]\n")
    with pytest.raises(ProfileError, match=rf"profile {re.escape(str(f))}: ks = \[2, 2.5, 4\]: "
                                           r"ks\[1\] = 2.5 is a float, expected an integer"):
        load_profile(f)
    with pytest.raises(ProfileError, match=r"fig3_neurons\[2\] = 'x' is text, expected an integer"):
        load_profile("paper", fig3_neurons=[1, 2, "x"])
    with pytest.raises(ProfileError, match=r"ks\[0\] = True is a boolean"):
        Profile(ks=[True, 3])
    with pytest.raises(ProfileError, match=r"ks = 3 is an integer, expected a list of integers"):
        Profile(ks=3)
    assert Profile(ks=(2, 3)).ks == [2, 3] and Profile(fig3_neurons=[7]).fig3_neurons == [7]
    assert Profile(lower_layer=["layer2", "layer3"]).lower_layer == ["layer2", "layer3"]
    with pytest.raises(ProfileError, match=r"lower_layer = 3 is an integer, expected text or a "
                                           r"list of texts"):
        Profile(lower_layer=3)


def test_the_error_names_file_key_value_and_type(tmp_path):
    f = _write(tmp_path, "name: mine\nbatch_size: 12.5\n")
    with pytest.raises(ProfileError) as err:
        load_profile(f)
    text = str(err.value)
    assert str(f) in text and "batch_size" in text and "12.5" in text and "an integer" in text
    assert isinstance(err.value, ValueError)
    # an override is named as such
    with pytest.raises(ProfileError, match=r"with the overrides of n_boot: n_boot = 'many' is text"):
        load_profile("offline", n_boot="many")
    # a notebook parameter of the wrong type
    with pytest.raises(ProfileError, match=r"notebook's parameters: n_ref = 2.5 is a float"):
        from_parameters({"profile": "smoke", "n_ref": 2.5})


# --- frozen, and a mapping --------------------------------------------------------------------
def test_a_profile_is_frozen():
    p = load_profile("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.n_ref = 3
    with pytest.raises(TypeError):
        p["n_ref"] = 3
    q = dataclasses.replace(p, n_ref=3)
    assert q.n_ref == 3 and p.n_ref == 6 and q.batch_size == p.batch_size
    with pytest.raises(ProfileError, match="n_ref = 3.5"):
        dataclasses.replace(p, n_ref=3.5)  # replace checks again


def test_a_profile_reads_as_a_mapping():
    p = load_profile("smoke")
    assert p["batch_size"] == p.batch_size == 12 and int(p["batch_size"]) == 12
    assert p.get("n_ref", 1) == 6 and p.get("nope") is None and p.get("nope", 5) == 5
    assert "ks" in p and "nope" not in p and [1] not in p
    assert list(p) == list(PROFILE_KEYS) and len(p) == len(PROFILE_KEYS)
    d = dict(p)
    assert d == p.to_dict() == {**p} == dict(p.items()) and isinstance(d, dict)
    assert dict(p, cache=True)["cache"] is True
    copied = p.to_dict()
    copied["ks"].append(9)
    copied["dataset_kwargs"]["config"]["image_size"] = 1
    assert p.ks == [2, 3] and p.dataset_kwargs["config"]["image_size"] == 64  # a deep copy
    with pytest.raises(KeyError, match="did you mean 'n_ref'"):
        p["n_refs"]
    # a mapping becomes a profile (missing keys at their default); a profile stays itself
    assert as_profile(p) is p and check_profile(p) is p
    q = as_profile({"n_ref": 4, "ks": [2]})
    assert isinstance(q, Profile) and q.n_ref == 4 and q.batch_size == Profile().batch_size
    with pytest.raises(TypeError, match="got list"):
        as_profile([1, 2])



def test_keys_that_travel_together_are_the_keywords_of_their_functions():
    import inspect

    from pure_utils.crops import crop_boxes, display_crops, feature_crops
    from pure_utils.study.tables import summarize_frame
    from pure_utils.virtual import VirtualNeurons

    p = dataclasses.replace(load_profile("smoke"), random_state=4, n_init=3, n_boot=77,
                            ci_level=0.9, crop_blur_kernel=7, crop_threshold=0.1,
                            display_blur_kernel=9, display_threshold=0.2,
                            display_dim_threshold=0.3, display_alpha=0.5)
    assert p.clustering == {"random_state": 4, "n_init": 3}
    assert p.intervals == {"n_boot": 77, "level": 0.9}
    assert p.evaluation_crop == {"blur_kernel": 7, "threshold": 0.1}
    assert p.display_crop == {"blur_kernel": 9, "threshold": 0.2, "dim_threshold": 0.3, "alpha": 0.5}
    # every group is accepted as it is by the functions it is written for
    for group, functions in [(p.clustering, [VirtualNeurons]), (p.intervals, [summarize_frame]),
                             (p.evaluation_crop, [crop_boxes, feature_crops]),
                             (p.display_crop, [display_crops])]:
        for f in functions:
            assert set(group) <= set(inspect.signature(f).parameters), (f.__name__, group)
    # the groups are no keys: the mapping and the YAML files stay as they are
    assert not {"clustering", "intervals", "evaluation_crop", "display_crop"} & set(p)

# --- loading, overrides, environment -------------------------------------------------------------
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
        assert set(p) == profile_keys()
        # every embedder keyword in a profile is accepted by load_embedder
        params = inspect.signature(load_embedder).parameters
        for role in ("embedder", "visual_embedder"):
            extra = set(p.get(f"{role}_kwargs") or {}) - set(params)
            assert not extra, (p["name"], role, extra)


def test_overrides_env_and_paths(tmp_path, monkeypatch):
    p = load_profile("offline", n_ref=10, dataset_kwargs={"n": 50})
    assert p["n_ref"] == 10 and p["dataset_kwargs"] == {"split": "test", "n": 50, "seed": 0}
    assert load_profile("offline", {"n_ref": 10}, batch_size=8).to_dict() == \
        {**Profile().to_dict(), "n_ref": 10, "batch_size": 8}
    monkeypatch.setenv("PURE_IMAGENET_VAL", str(tmp_path))
    paper = load_profile("paper")
    assert paper["dataset_kwargs"]["root"] == str(tmp_path)
    assert check_profile(paper) is paper
    assert load_profile("paper", expand=False).dataset_kwargs["root"] == "${PURE_IMAGENET_VAL}"
    # a file of one key: its name is the file's, every other key the default's
    f = _write(tmp_path, "layer: layer3\n")
    assert load_profile(f).to_dict() == {**Profile().to_dict(), "name": "mine", "layer": "layer3"}
    # a file's mapping replaces the default's as a whole (overrides merge into it)
    f = _write(tmp_path, "dataset_kwargs: {split: val}\n")
    assert load_profile(f).dataset_kwargs == {"split": "val"}


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
    with pytest.raises(ProfileError, match="must hold a mapping of keys, got list"):
        Profile.from_dict([1, 2], source="x")


def test_resolve_device():
    assert profile_device("cpu") == "cpu"
    assert profile_device("auto") in ("cpu", "cuda")


def test_from_parameters_injected_keys_replace_the_base():
    smoke = load_profile("smoke")
    # as `make book --profile smoke -p n_ref 3` leaves the notebook's globals
    ns = {"profile": "offline", "some_local": 1, **smoke}
    ns["n_ref"] = 3
    p = from_parameters(ns)
    assert isinstance(p, Profile) and p["n_ref"] == 3
    assert p["model_name"] == smoke["model_name"]
    # whole values are replaced, not merged: no key of offline's dataset_kwargs survives
    assert p["dataset_kwargs"] == smoke["dataset_kwargs"]
    assert "some_local" not in p
    assert p["name"] == "smoke"
    # only the base named
    assert from_parameters({"profile": "smoke"}) == smoke


def test_params_prints_the_resolved_profile(capsys, monkeypatch):
    from pure_utils.book import build as book

    monkeypatch.setattr(book, "chapters", lambda root=None: [])  # the profile line only
    assert cli.main(["params", "--profile", "paper"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("profile paper: ")
    _same(json.loads(line[len("profile paper: "):]), BEFORE["paper"], "paper")
    assert cli.main(["params", "--profile", "nope"]) == 1


def test_the_paper_profile_holds_the_papers_choices():
    paper = load_profile("paper")
    assert paper["fig3_model"] == "resnet50.a1_in1k"
    assert paper["fig3_neurons"] == [1929, 1506, 1498, 712]
    assert paper["fig4_model"] == "resnet101.a1_in1k" and paper["fig4_divergence_neuron"] == 1028
    assert paper["strong_polysemanticity"] == 1.5
    assert paper["ks"] == [2, 3, 4, 5] and 2 in paper["ks"]
    assert paper["model_names"] == ["resnet34.a1_in1k", "resnet50.a1_in1k", "resnet101.a1_in1k"]
    # the paper's choices that paper.yaml takes from the defaults
    assert (paper.layer, paper.lower_layer, paper.n_ref, paper.n_neurons) == ("layer4", "layer3", 100, None)
    assert paper.attribution == "gxa" and paper.visual_embedder == "dinov2"
    assert (paper.random_state, paper.n_init, paper.correlation_n_samples) == (0, 10, 50)
    # the test phase runs on a part of val that the references never see
    mining, held = paper["dataset_kwargs"], paper["heldout_dataset_kwargs"]
    assert (mining["part"], held["part"]) == ("mining", "test")
    assert mining["test_share"] == held["test_share"] and mining["part_seed"] == held["part_seed"]
    from pure_utils.study.tables import paper_numbers

    numbers = paper_numbers()
    assert numbers["strongly_polysemantic_gap"]["n"] == 187
    assert numbers["distance_correlation"]["model"] == paper["fig4_model"]
    assert numbers["eq5_k2"]["model"] == paper["fig3_model"]
