"""Grafted units (pure_utils.shapes.grafting): a positive and a negative control built into the shipped
bottleneck ResNet, checked against autograd and against the unit recomputed by hand."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pure_utils as pu
from pure_utils.cache import model_fingerprint
from pure_utils.shapes.dataset import SyntheticShapes
from pure_utils.shapes.grafting import (concept_split, graft_unit, parse_concept, selectivity,
                                 unseen_colours_config)
from pure_utils.layers import forward_until
from pure_utils.shapes.generator import SyntheticConfig

from brute import gxa_of_map

A, B = "red", "blue"


@pytest.fixture(scope="module")
def base():
    return pu.load_model("synthetic_resnet_bottleneck"), SyntheticShapes("test", n=160)


@pytest.fixture(scope="module")
def positive(base):
    model, ds = base
    grafted, record = graft_unit(model, "layer4", "layer3", A, B, ds, n_channels=4)
    return grafted, record


@pytest.fixture(scope="module")
def negative(base):
    model, ds = base
    return graft_unit(model, "layer4", "layer3", A, B, ds, shared=True)


def _batch(ds, indices):
    return torch.stack([ds[int(i)][0] for i in indices])


# ---------------------------------------------------------------------------------------------
# concepts and selectivity


def test_concept_split_matches_the_scenes_and_object_maps():
    ds = SyntheticShapes("val", n=40, seed=2)
    got = concept_split(ds, "red", "circle")
    for name, concept in [("red", ("red", None)), ("circle", (None, "circle")),
                          ("green square", ("green", "square"))]:
        assert parse_concept(ds.config, name) == concept
    expect = {"a": [], "b": [], "neither": [], "both": []}
    for i in range(len(ds)):  # independent reading: the scene's objects and the drawn object map
        objects, omap = ds.scene(i).objects, ds.object_map(i)
        visible = [o for k, o in enumerate(objects) if (omap == k).any()]
        red = any(o["colour"] == "red" for o in visible)
        circle = any(o["shape"] == "circle" for o in visible)
        expect["both" if red and circle else "a" if red else "b" if circle else "neither"].append(i)
    assert {k: v.tolist() for k, v in got.items()} == expect
    assert all(len(v) for v in expect.values())  # every group occurs
    sub = concept_split(ds, "red", "circle", indices=[5, 1, 3])
    assert sorted(sum((v.tolist() for v in sub.values()), [])) == [1, 3, 5]
    conj = concept_split(ds, "red circle", "blue")
    for i in conj["a"].tolist():
        assert any(o["colour"] == "red" and o["shape"] == "circle" for o in ds.annotations(i)["objects"])
    for bad, match in [(("purple", "red"), "purple"), (("red", "red"), "both"),
                       (("red square circle", "red"), "not known")]:
        with pytest.raises(ValueError, match=match):
            concept_split(ds, *bad)


def test_selectivity_is_d_prime():
    rng = np.random.default_rng(0)
    values = torch.tensor(rng.normal(size=(30, 4)), dtype=torch.float32)
    values[:, 3] = 2.0  # a constant channel
    pos, neg = torch.arange(12), torch.arange(12, 30)
    v = values.numpy().astype(float)
    a, n = v[:12], v[12:]
    spread = np.sqrt((a.var(0, ddof=1) + n.var(0, ddof=1)) / 2)
    expect = (a.mean(0) - n.mean(0)) / np.where(spread > 0, spread, 1.0)
    assert spread[3] == 0 and expect[3] == 0
    np.testing.assert_allclose(selectivity(values, pos, neg).numpy(), expect, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        selectivity(values, pos[:1], neg)


# ---------------------------------------------------------------------------------------------
# the positive control


def test_positive_graft_reads_two_disjoint_selective_sets(base, positive):
    model, ds = base
    grafted, rec = positive
    a, b = set(rec.channels_a.tolist()), set(rec.channels_b.tolist())
    assert a and b and not a & b and len(a) <= 4 and len(b) <= 4 and rec.unit == 32
    assert all(rec.d_a[c] >= 1.0 and abs(rec.d_b[c]) < 0.5 for c in a)
    assert all(rec.d_b[c] >= 1.0 and abs(rec.d_a[c]) < 0.5 for c in b)
    # the weights are non-zero exactly on A's and B's channels, in the record and in the model
    assert set(torch.nonzero(rec.weights).flatten().tolist()) == a | b
    torch.testing.assert_close(grafted.graft.conv.weight.flatten(), rec.weights)
    # both concepts drive it equally, and it is silent on most images holding neither
    assert rec.mean_a == pytest.approx(1, abs=1e-3) and rec.mean_b == pytest.approx(1, abs=1e-3)
    assert rec.silent >= 0.9 and rec.n_images["a"] >= 2 and rec.n_images["neither"] >= 2
    # the unit recomputed by hand from the original model: ReLU(avg-pool 2 of sum_c w_c A_c + b)
    x = _batch(ds, range(24))
    with torch.no_grad():
        low = forward_until(model, x, "layer3")
        top = forward_until(model, x, "layer4")
        out = forward_until(grafted, x, "layer4")
        hand = F.relu(F.avg_pool2d(torch.einsum("nchw,c->nhw", low, rec.weights)[:, None], 2)
                      + rec.bias)[:, 0]
        assert out.shape == (24, 33, 3, 3)
        torch.testing.assert_close(out[:, :32], top)
        torch.testing.assert_close(out[:, 32], hand, rtol=1e-5, atol=1e-5)
        # the logits are the original's; the original model is untouched; a copy keeps working
        torch.testing.assert_close(grafted(x), model(x))
        assert not hasattr(model, "graft") and not model.layer4._forward_hooks
        torch.testing.assert_close(forward_until(copy.deepcopy(grafted), x, "layer4"), out)
    assert model_fingerprint(grafted) != model_fingerprint(model)


def test_gradient_x_activation_of_the_unit_lives_on_its_channels(base, positive):
    _, ds = base
    grafted, rec = positive
    chosen = torch.zeros(192, dtype=torch.bool)
    chosen[rec.channels_a] = chosen[rec.channels_b] = True
    split = concept_split(ds, A, B)
    share = {"a": [], "b": []}  # share of A's channels in the circuit of each active image
    for group in ("a", "b"):
        candidates = split[group][:16]
        with torch.no_grad():
            act = forward_until(grafted, _batch(ds, candidates), "layer4")[:, rec.unit].amax((1, 2))
        active = candidates[act > 0][:5].tolist()
        assert len(active) >= 3
        for i in active + candidates[act == 0][:1].tolist():  # and one on which it is silent
            r = gxa_of_map(grafted, ds[i][0], "layer4", "layer3", rec.unit)  # autograd, whole model
            assert (r[~chosen] == 0).all()
            if i in active:
                share[group].append(float(r[rec.channels_a].sum() / r.abs().sum()))
            else:
                assert (r == 0).all()
    # images holding only A are attributed mostly to A's channels, those holding only B to B's
    # (B's channels keep a baseline activity on A-images, and A's on B-images: not all of it)
    assert np.mean(share["a"]) > 0.75 and np.mean(share["b"]) < 0.5
    assert np.mean(share["a"]) - np.mean(share["b"]) > 0.3


def test_the_unit_answers_to_its_concepts_on_new_images(positive):
    grafted, rec = positive
    val = SyntheticShapes("val", n=80)
    split = concept_split(val, A, B)

    def unit(x):
        with torch.no_grad():
            return forward_until(grafted, x, "layer4")[:, rec.unit].flatten(1).amax(1)

    on_a, on_b = unit(_batch(val, split["a"])), unit(_batch(val, split["b"]))
    assert (on_a > 0).float().mean() >= 0.3 and (on_b > 0).float().mean() >= 0.3
    # neither-images built by removing every red and blue object from the same scenes
    scenes = [val.scene(i) for i in range(len(val))]
    x = _batch(val, range(len(val)))
    edited = torch.stack([val.render(s, [None if o["colour"] in (A, B) else o for o in s.objects])
                          for s in scenes])
    before, after = unit(x), unit(edited)
    assert (after == 0).float().mean() >= 0.8
    assert after[before > 0].sum() <= 0.2 * before[before > 0].sum()
    assert float(after.mean()) < 0.2 * min(float(on_a.mean()), float(on_b.mean()))


def test_mining_and_circuits_run_on_the_grafted_unit(positive):
    ds = SyntheticShapes("test", n=80)  # mining on fewer images than the graft saw
    grafted, rec = positive
    with pu.ActivationStash("layer3") as stash:
        refs = pu.mine_references(grafted, ds, "layer4", n_ref=10, progress=False, stash=stash)
        assert stash.problem is None and stash.stats["memory"] > 0
        # the stash path runs the layer alone on the kept layer3 outputs: the same circuits
        stashed = pu.circuit_attributions(grafted, ds, refs, "layer4", "layer3",
                                          neurons=[rec.unit], progress=False, stash=stash)
    assert refs.indices.shape == (33, 10)
    split = concept_split(ds, A, B)
    holding = set(torch.cat([split["a"], split["b"], split["both"]]).tolist())
    assert set(refs.indices[rec.unit].tolist()) <= holding  # every reference holds A or B
    R = pu.circuit_attributions(grafted, ds, refs, "layer4", "layer3", neurons=[rec.unit],
                                progress=False)
    assert R.shape == (1, 10, 192)
    torch.testing.assert_close(stashed, R)
    off = torch.ones(192, dtype=torch.bool)
    off[rec.channels_a] = off[rec.channels_b] = False
    assert (R[0][:, off] == 0).all() and (R[0].abs().sum(1) > 0).all()
    for slot in (0, 4, 9):  # the engine against autograd through the whole model
        brute = gxa_of_map(grafted, ds[int(refs.indices[rec.unit, slot])][0], "layer4", "layer3",
                           rec.unit)
        torch.testing.assert_close(R[0, slot], brute, rtol=1e-4, atol=1e-6)
    vn = pu.VirtualNeurons(n_clusters=2).fit(R[0])
    assert vn.labels_.shape == (10,)


# ---------------------------------------------------------------------------------------------
# the negative control


def test_negative_control_reads_the_same_channels(base, negative):
    ds = SyntheticShapes("test", n=80)  # mining on fewer images than the graft saw
    grafted, rec = negative
    assert rec.shared and torch.equal(rec.channels_a, rec.channels_b) and len(rec.channels_a) == 1
    c = int(rec.channels_a[0])
    assert min(float(rec.d_a[c]), float(rec.d_b[c])) >= 1.0
    assert torch.nonzero(rec.weights).flatten().tolist() == [c] and rec.mean_a > 0 and rec.mean_b > 0
    # one channel: every normalised circuit vector is the same, so circuits cannot split A from B
    refs = pu.mine_references(grafted, ds, "layer4", n_ref=8, progress=False)
    R = pu.circuit_attributions(grafted, ds, refs, "layer4", "layer3", neurons=[rec.unit],
                                progress=False)[0]
    expect = torch.zeros(192)
    expect[c] = 1.0
    torch.testing.assert_close(R, expect.expand_as(R), rtol=0, atol=1e-6)
    # more channels: still one set for both concepts
    model, full = base
    _, wide = graft_unit(model, "layer4", "layer3", A, B, full, shared=True, n_channels=3)
    assert torch.equal(wide.channels_a, wide.channels_b) and len(wide.channels_a) >= 2
    assert set(torch.nonzero(wide.weights).flatten().tolist()) == set(wide.channels_a.tolist())
    assert (torch.minimum(wide.d_a, wide.d_b)[wide.channels_a] >= 1.0).all()


# ---------------------------------------------------------------------------------------------
# refusals and the unseen colours


def test_bad_grafts_are_refused(base, positive):
    model, ds = base
    small = SyntheticShapes("test", n=30)
    for kwargs, match in [(dict(layer="layer3", lower_layer="layer4"), "does not come before"),
                          (dict(lower_layer="layer2"), "input of layer 'layer4'"),
                          (dict(min_d=0.5, max_other=0.5), "min_d > max_other"),
                          (dict(quantile=0.0), "quantile"),
                          (dict(min_d=50.0), "no lower channel qualifies for 'red'.*the best: \\d+"),
                          (dict(min_d=50.0, shared=True), "'red' and 'blue' alike"),
                          (dict(concept_a="pink"), "pink")]:
        args = dict(layer="layer4", lower_layer="layer3", concept_a=A, concept_b=B)
        args.update(kwargs)
        with pytest.raises(ValueError, match=match):
            graft_unit(model, args.pop("layer"), args.pop("lower_layer"), args.pop("concept_a"),
                       args.pop("concept_b"), small, **args)
    with pytest.raises(ValueError, match=r"only \d+ images of group"):
        graft_unit(model, "layer4", "layer3", A, B, small, indices=list(range(4)))
    with pytest.raises(ValueError, match="already has"):
        graft_unit(positive[0], "layer4", "layer3", A, B, ds)


def test_unseen_colours_config():
    cfg = unseen_colours_config()
    assert cfg.scene == "two_objects" and cfg.extra_colours == ("magenta", "cyan")
    assert cfg.concept_names == SyntheticConfig().concept_names
    assert unseen_colours_config(colours=["cyan"], second_scale=(0.2, 0.2)).second_scale == (0.2, 0.2)
    ds = SyntheticShapes("test", n=40, config=cfg)
    split = concept_split(ds, "magenta", "cyan")
    assert len(split["a"]) and len(split["b"])
    for i in split["a"].tolist():
        second = ds.annotations(i)["objects"][1]
        assert second["colour"] == "magenta" and second["concept"] == -1
    with pytest.raises(ValueError, match="every colour"):
        unseen_colours_config(SyntheticConfig(n_concepts=36, distractors_max=3))


def test_several_units_in_one_model_are_each_the_unit_grafted_alone(base, positive, negative):
    from pure_utils.shapes.grafting import graft_units
    model, ds = base
    grafted, recs = graft_units(model, "layer4", "layer3", [(A, B), (A, B)], ds, shared=[False, True],
                                n_channels=None)
    # alone: the positive fixture used n_channels=4, so rebuild the positive with the default
    alone_pos = graft_unit(model, "layer4", "layer3", A, B, ds)
    for rec, (one, single) in zip(recs, [alone_pos, negative]):
        torch.testing.assert_close(rec.weights, single.weights)
        assert rec.bias == pytest.approx(single.bias) and rec.shared == single.shared
    assert [r.unit for r in recs] == [32, 33] and "2 units" in grafted.pure_name
    x = _batch(ds, range(16))
    with torch.no_grad():
        out = forward_until(grafted, x, "layer4")
        assert out.shape[1] == 34
        torch.testing.assert_close(out[:, 32], forward_until(alone_pos[0], x, "layer4")[:, 32])
        torch.testing.assert_close(out[:, 33], forward_until(negative[0], x, "layer4")[:, 32])
        torch.testing.assert_close(grafted(x), model(x))
    with pytest.raises(ValueError, match="2 pairs but 1"):
        graft_units(model, "layer4", "layer3", [(A, B), (A, "green")], ds, shared=[True])


# ---------------------------------------------------------------------------------------------
# balance on the tail, and the pair truth


def test_tail_balance_puts_as_many_a_as_b_images_among_the_most_activating(base):
    model, ds = base
    grafted, rec = graft_unit(model, "layer4", "layer3", A, B, ds, n_channels=4, balance="tail",
                              tail=0.25)
    split = concept_split(ds, A, B)
    pool = torch.cat([split["a"], split["b"], split["neither"]])
    with torch.no_grad():  # independent: the grafted model's own unit on the design images
        act = forward_until(grafted, _batch(ds, pool), "layer4")[:, rec.unit].flatten(1).amax(1)
    top = pool[act.argsort(descending=True, stable=True)[:int(np.ceil(0.25 * len(pool)))]]
    n_a, n_b = int(torch.isin(top, split["a"]).sum()), int(torch.isin(top, split["b"]).sum())
    assert n_a + n_b >= 0.8 * len(top)
    # at the bisection's boundary one image of A and one of B can swap places
    assert abs(n_a - n_b) <= 2, (n_a, n_b)
    with pytest.raises(ValueError, match="balance"):
        graft_unit(model, "layer4", "layer3", A, B, ds, balance="median")


def test_pair_truth_matches_edits_made_by_hand(positive):
    grafted, rec = positive
    ds = SyntheticShapes("test", n=60, seed=3)
    refs = pu.mine_references(grafted, ds, "layer4", n_ref=8, progress=False).subset([rec.unit])
    labels, drops = pu.shapes.pair_truth(grafted, ds, refs, [rec])
    assert labels.shape == (1, 8) and drops.shape == (1, 8, 2)

    def unit(x):
        with torch.no_grad():
            return float(forward_until(grafted, x[None], "layer4")[0, rec.unit].max())

    for slot, i in enumerate(refs.indices[0].tolist()):
        scene = ds.scene(i)
        full = unit(ds.render(scene))
        without = [unit(ds.render(scene, [None if o["colour"] == c else o for o in scene.objects]))
                   for c in (A, B)]
        drop = [(full - w) / full for w in without]
        torch.testing.assert_close(drops[0, slot], torch.tensor(drop), rtol=1e-4, atol=1e-5)
        want = (0 if drop[0] >= 0.5 and drop[0] > drop[1] else
                1 if drop[1] >= 0.5 and drop[1] > drop[0] else 2)
        assert int(labels[0, slot]) == want
        if not any(o["colour"] == B for o in scene.objects):  # no B object: never labelled B
            assert drop[1] == 0 and int(labels[0, slot]) != 1
    assert (labels < 2).float().mean() >= 0.5  # the unit reads red and blue: most are decided
    with pytest.raises(ValueError, match="references of units"):
        other = pu.mine_references(grafted, ds, "layer4", n_ref=8, progress=False).subset([0])
        pu.shapes.pair_truth(grafted, ds, other, [rec])
