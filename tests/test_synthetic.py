"""Tests of the controlled benchmark (pure_utils.synthetic) and its shipped models."""
import hashlib
import json
import math
import types

import numpy as np
import pytest
import torch

from pure_utils import load_model
from pure_utils.models import DEFAULT_MODELS
from pure_utils.synthetic import (
    GENERATOR_VERSION,
    SyntheticConfig,
    SyntheticShapes,
    _shape_mask,
    concept_counts,
    concept_shares,
    evaluate_accuracy,
    layer_polysemanticity,
    main,
    polysemantic_by_concepts,
    reference_concepts,
    train_default_model,
)

# ---------------------------------------------------------------------------------------------
# generator


def _digest(ds, indices):
    h = hashlib.sha256()
    for i in indices:
        h.update(ds.pixels(i).tobytes())
        h.update(ds.object_map(i).tobytes())
    return h.hexdigest()


def test_pixels_are_pinned_for_this_generator_version():
    # The same seed must give the same pixels on every machine. If this fails after a change of
    # the generator, bump GENERATOR_VERSION (it enters fingerprints and model cards), retrain the
    # shipped models and update the hash.
    assert GENERATOR_VERSION == "shapes-1"
    ds = SyntheticShapes("test", n=4)
    assert [ds.label(i) for i in range(4)] == [13, 5, 9, 11]
    assert _digest(ds, range(4)) == "be18d5350039020c43760225cbe8af61cef8e2cf4a6c935a882a41be12366c2c"


def test_random_access_and_split_size_do_not_change_pixels():
    a = SyntheticShapes("test", n=12, seed=5)
    b = SyntheticShapes("test", n=40, seed=5)
    order = [11, 3, 7, 0, 11]
    for i in order:  # b renders out of order, a in order below
        b.image(i)
    for i in range(12):
        torch.testing.assert_close(a.image(i), b.image(i), rtol=0, atol=0)
        assert a.annotations(i)["label"] == b.annotations(i)["label"]
    assert not torch.equal(a.image(0), SyntheticShapes("test", n=1, seed=6).image(0))
    assert not torch.equal(a.image(0), SyntheticShapes("train", n=1, seed=5).image(0))
    assert a.fingerprint != b.fingerprint and a.fingerprint.startswith(f"synthetic-{GENERATOR_VERSION}")


def test_images_follow_the_config():
    cfg = SyntheticConfig(n_concepts=9, image_size=64, distractors_min=2, distractors_max=2)
    ds = SyntheticShapes("val", n=20, config=cfg)
    assert len(ds.concept_names) == 9 and ds.n_concepts == 9
    # growing-square order: 9 concepts are 3 shapes x 3 colours
    assert {n.split()[1] for n in ds.concept_names} == {"circle", "square", "triangle"}
    assert {n.split()[0] for n in ds.concept_names} == {"red", "green", "blue"}
    for i in range(20):
        x, y = ds[i]
        assert x.shape == (3, 64, 64)
        ann = ds.annotations(i)
        objs = ann["objects"]
        assert len(objs) == 3 and objs[0]["role"] == "label" and ann["label"] == y == objs[0]["concept"]
        concepts = [o["concept"] for o in objs]
        assert len(set(concepts)) == 3 and all(0 <= c < 9 for c in concepts)
        # the labelled object is the largest
        assert objs[0]["radius"] > max(o["radius"] for o in objs[1:])


def test_normalisation():
    ds = SyntheticShapes("test", n=2)
    x, _ = ds[1]
    torch.testing.assert_close(x * 0.25 + 0.5, ds.image(1))
    assert ds.mean == (0.5,) * 3 and ds.std == (0.25,) * 3 and ds.class_names == ds.concept_names


@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_masks_match_rendered_objects_and_occlusion(noise):
    cfg = SyntheticConfig(noise_std=noise, distractors_min=3, distractors_max=3)
    ds = SyntheticShapes("train", n=30, config=cfg)
    size = cfg.image_size
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    occluded_somewhere = False
    for i in range(30):
        ann = ds.annotations(i)
        objs = ann["objects"]
        img = ds.pixels(i).astype(float) / 255
        # independent geometry: full silhouettes from the stored centre, radius and angle
        full = [_shape_mask(o["shape"], yy - o["center"][0], xx - o["center"][1], o["radius"],
                            round(math.cos(o["angle"]), 9), round(math.sin(o["angle"]), 9))
                for o in objs]
        union = np.zeros((size, size), bool)
        for k in reversed(range(len(objs))):  # objects drawn later cut earlier ones
            expected = full[k] & ~union
            np.testing.assert_array_equal(objs[k]["mask"], expected)
            occluded_somewhere |= bool((full[k] & union).any())
            union |= full[k]
            vis = objs[k]["mask"]
            assert vis.sum() > 0
            err = np.abs(img[vis] - np.array(objs[k]["rgb"]))
            if noise == 0:
                assert err.max() <= 0.5 / 255 + 1e-9
            else:
                assert err.mean() < 2 * noise
        masks = np.stack([o["mask"] for o in objs])
        assert masks.sum(0).max() <= 1  # visible masks are disjoint
        np.testing.assert_array_equal(masks.any(0), ds.object_map(i) >= 0)
        # the labelled object stays mostly visible
        assert objs[0]["mask"].sum() >= 0.7 * full[0].sum()
    assert occluded_somewhere  # the check above did exercise occlusion


def test_bad_knobs_raise():
    for bad, match in [(dict(n_concepts=1), "n_concepts"), (dict(n_concepts=40), "n_concepts"),
                       (dict(image_size=16), "image_size"),
                       (dict(distractor_scale=(0.1, 0.3)), "distractor_scale"),
                       (dict(distractors_min=3, distractors_max=1), "distractors_min"),
                       (dict(n_concepts=3, distractors_max=3), "distractors_max"),
                       (dict(object_scale=(0.3, 0.2)), "object_scale")]:
        with pytest.raises(ValueError, match=match):
            SyntheticConfig(**bad)
    with pytest.raises(ValueError, match="split"):
        SyntheticShapes("holdout")
    with pytest.raises(ValueError, match="n_train"):
        train_default_model("synthetic_resnet_basic", n_train=8, batch_size=16, progress=False)
    with pytest.raises(ValueError, match="synthetic_resnet_basic, synthetic_resnet_bottleneck"):
        train_default_model("resnet_huge", progress=False)
    with pytest.raises(IndexError):
        SyntheticShapes("test", n=3).image(3)


# ---------------------------------------------------------------------------------------------
# ground-truth concepts of reference samples


@pytest.fixture
def hand_built():
    """One 96 px image with a hand-made object map: object 0 (concept 5) fills rows/cols 0..39,
    object 1 (concept 2) rows/cols 50..59, object 2 (concept 7) rows 0..9 x cols 70..95."""
    ds = SyntheticShapes("test", n=1)
    ds.image(0)  # render, then overwrite the ground truth of the cache
    omap = np.full((96, 96), -1, np.int8)
    omap[0:40, 0:40] = 0
    omap[50:60, 50:60] = 1
    omap[0:10, 70:96] = 2
    ds._maps[0] = omap
    ds._objects[0] = [dict(concept=5, role="label"), dict(concept=2, role="distractor"),
                      dict(concept=7, role="distractor")]
    return ds


def test_concept_at_hand_example(hand_built):
    ds = hand_built
    assert ds.concept_at(0, (0, 0, 32, 32)) == 5
    # centre cell: object 0 covers 8 x 8 = 64 pixels, object 1 covers 10 x 10 = 100
    assert ds.concept_at(0, (32, 32, 64, 64)) == 2
    assert ds.concept_at(0, (64, 64, 96, 96)) == -1
    assert ds.concept_at(0, (0, 64, 32, 96)) == 7
    # fractional box: pixel centres 39.5 (in) and 40.5 (out) -> rows 30..39 of object 0 only
    assert ds.concept_at(0, (30.0, 30.0, 40.4, 40.4)) == 5
    assert ds.concept_at(0, (39.6, 39.6, 50.4, 50.4)) == -1  # centres 40.5..49.5: a gap
    assert ds.concept_at(0, (39.6, 39.6, 50.6, 50.6)) == 2  # adds pixel (50, 50) of object 1
    # a tie (object 0: pixel (39, 39); object 1: pixel (50, 50)) goes to the object drawn first
    assert ds.concept_at(0, (39, 39, 51, 51)) == 5
    assert ds.concept_at(0, (39, 39, 52, 52)) == 2  # 1 pixel against 4
    grid = ds.concept_grid((3, 3))[0]
    assert grid.tolist() == [[5, 5, 7], [5, 2, -1], [-1, -1, -1]]


def test_reference_concepts_and_polysemanticity(hand_built):
    ds = hand_built
    refs = types.SimpleNamespace(
        indices=torch.tensor([[0, 0, 0, 0, 0], [0, 0, 0, 0, -1]]),
        positions=torch.tensor([[[0, 0], [1, 1], [0, 2], [2, 2], [1, 0]],
                                [[0, 0], [0, 0], [0, 1], [1, 0], [1, 1]]]),
        map_size=(3, 3))
    concepts = reference_concepts(ds, refs)
    assert concepts.tolist() == [[5, 2, 7, -1, 5], [5, 5, 5, 5, -1]]
    shares = concept_shares(concepts, n_concepts=8)
    assert shares.shape == (2, 8)
    torch.testing.assert_close(shares[0, [2, 5, 7]], torch.tensor([0.2, 0.4, 0.2]))
    assert polysemantic_by_concepts(concepts).tolist() == [True, False]
    assert polysemantic_by_concepts(concepts, min_share=0.3).tolist() == [False, False]
    # hand example: 3 concepts at 50/30/20 percent, and one concept alone
    c = torch.tensor([[0] * 5 + [1] * 3 + [2] * 2, [4] * 9 + [-1]])
    assert polysemantic_by_concepts(c).tolist() == [True, False]
    assert concept_counts(c).tolist() == [3, 1]
    assert concept_counts(c, min_share=0.3).tolist() == [2, 1]
    # background (40 %) is never a concept
    assert concept_counts(torch.tensor([[-1] * 4 + [3] * 6])).tolist() == [1]
    with pytest.raises(ValueError, match="min_share"):
        polysemantic_by_concepts(c, min_share=0.7)
    with pytest.raises(ValueError, match="min_share"):
        concept_counts(c, min_share=0)


def test_reference_concepts_match_concept_at_on_real_images():
    ds = SyntheticShapes("test", n=6)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 6, (4, 7), generator=gen)
    pos = torch.randint(0, 4, (4, 7, 2), generator=gen)
    refs = types.SimpleNamespace(indices=idx, positions=pos, map_size=(4, 4))
    concepts = reference_concepts(ds, refs)
    for n in range(4):
        for j in range(7):
            r, c = pos[n, j].tolist()
            assert concepts[n, j] == ds.concept_at(int(idx[n, j]), (r * 24, c * 24, r * 24 + 24, c * 24 + 24))


# ---------------------------------------------------------------------------------------------
# shipped models and training


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


def test_layer_polysemanticity_matches_brute_force():
    # tiny random network; the brute force takes the full activation maps, sorts every channel's
    # spatial maxima, looks up the object under each argmax cell with concept_at and counts shares
    from pure_utils.models import build_resnet

    torch.manual_seed(3)
    model = build_resnet(block="basic", layers=[1, 1, 1, 1], channels=[8, 8, 8, 6], stem_width=8,
                         num_classes=16).eval()
    ds = SyntheticShapes("test", n=40, seed=2)
    n_ref, min_share = 10, 0.2
    got = layer_polysemanticity(model, ds, "layer4", n_ref=n_ref, min_share=min_share)

    acts = {}
    model.layer4.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    with torch.no_grad():
        model(torch.stack([ds[i][0] for i in range(len(ds))]))
    a = acts["a"]  # [N, C, h, w]
    n, c, h, w = a.shape
    flat = a.flatten(2)
    expected = []
    for ch in range(c):
        maxima, where = flat[:, ch].max(dim=1)
        order = sorted(range(n), key=lambda k: -float(maxima[k]))[:n_ref]
        # the top-n_ref set is well defined (no tie at its border), so tie-breaking does not matter
        assert float(maxima[order[-1]]) > float(maxima.sort(descending=True).values[n_ref])
        counts = {}
        for k in order:
            r, col = divmod(int(where[k]), w)
            box = (r * 96 / h, col * 96 / w, (r + 1) * 96 / h, (col + 1) * 96 / w)
            concept = ds.concept_at(k, box)
            if concept >= 0:
                counts[concept] = counts.get(concept, 0) + 1
        if sum(v >= min_share * n_ref for v in counts.values()) >= 2:
            expected.append(ch)
    assert got["neurons"] == expected
    assert got["count"] == len(expected) and got["n_neurons"] == c
    assert got["fraction"] == pytest.approx(len(expected) / c, abs=1e-4)
    assert (got["n_ref"], got["split"], got["n"], got["seed"]) == (n_ref, "test", 40, 2)


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
    again = layer_polysemanticity(model, ds, stated["layer"], n_ref=stated["n_ref"],
                                  min_share=stated["min_share"])
    assert again["neurons"] == stated["neurons"]


def test_warm_start_loads_the_weights_and_keeps_the_history(tmp_path):
    from safetensors.torch import load_file

    from pure_utils.models import build_resnet

    name = "synthetic_resnet_bottleneck"
    main(["train", "--tiny", "--model", name, "--out", str(tmp_path / "a"), "--no-progress"])
    first = tmp_path / "a" / f"{name}.safetensors"
    card_a = json.loads(first.with_suffix(".json").read_text())
    # lr 0: the second stage changes no parameter, so its weights must be the loaded ones
    main(["train", "--tiny", "--model", name, "--init", str(first), "--lr", "0",
          "--out", str(tmp_path / "b"), "--no-progress"])
    card_b = json.loads((tmp_path / "b" / f"{name}.json").read_text())
    assert card_b["warm_start"]["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert card_b["warm_start"]["card"] == card_a
    assert card_b["training_time_total_s"] == pytest.approx(
        card_a["training_time_s"] + card_b["training_time_s"], abs=0.11)
    a, b = load_file(str(first)), load_file(str(tmp_path / "b" / f"{name}.safetensors"))
    params = dict(build_resnet(**card_a["architecture"]).named_parameters())
    assert params and all(torch.equal(a[k], b[k]) for k in params)


def test_tiny_training_command_runs_end_to_end(tmp_path, capsys):
    main(["train", "--tiny", "--model", "synthetic_resnet_bottleneck", "--out", str(tmp_path),
          "--no-progress"])
    assert "test accuracy" in capsys.readouterr().out
    card = json.loads((tmp_path / "synthetic_resnet_bottleneck.json").read_text())
    assert card["hyperparameters"]["steps"] == 3 and card["dataset"]["n_train"] == 64
    assert card["generator_version"] == GENERATOR_VERSION and card["seed"] == 0
    assert card["machine"]["cpu_count"] >= 1 and card["machine"]["python"].count(".") == 2
    for key in ("architecture", "accuracy", "training_time_s", "versions", "layer4_polysemantic"):
        assert key in card
    assert card["layer4_polysemantic"]["n_neurons"] == card["architecture"]["channels"][-1] * 4
    # the written card and weights rebuild the model (as load_model does for the shipped ones)
    from safetensors.torch import load_file

    from pure_utils.models import build_resnet

    model = build_resnet(**card["architecture"]).eval()
    model.load_state_dict(load_file(str(tmp_path / "synthetic_resnet_bottleneck.safetensors")))
    x = SyntheticShapes("test", n=2)[0][0][None]
    assert model(x).shape == (1, 16)
