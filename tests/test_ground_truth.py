"""Ground truth of reference samples on the controlled benchmark (pure_utils.shapes.ground_truth)."""
import types

import numpy as np
import pytest
import torch

from pure_utils.cache import Cache
from pure_utils.data import GeneratedImages
from pure_utils.shapes.ground_truth import (concept_at, concept_counts, concept_shares, layer_polysemanticity,
                                     polysemantic_by_concepts, reference_concepts,
                                     true_features)
from pure_utils.models import build_resnet
from pure_utils.references import mine_references
from pure_utils.shapes.dataset import SyntheticShapes
from pure_utils.shapes.generator import counterfactual, draw_scene

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
    assert concept_at(ds, 0, (0, 0, 32, 32)) == 5
    # centre cell: object 0 covers 8 x 8 = 64 pixels, object 1 covers 10 x 10 = 100
    assert concept_at(ds, 0, (32, 32, 64, 64)) == 2
    assert concept_at(ds, 0, (64, 64, 96, 96)) == -1
    assert concept_at(ds, 0, (0, 64, 32, 96)) == 7
    # fractional box: pixel centres 39.5 (in) and 40.5 (out) -> rows 30..39 of object 0 only
    assert concept_at(ds, 0, (30.0, 30.0, 40.4, 40.4)) == 5
    assert concept_at(ds, 0, (39.6, 39.6, 50.4, 50.4)) == -1  # centres 40.5..49.5: a gap
    assert concept_at(ds, 0, (39.6, 39.6, 50.6, 50.6)) == 2  # adds pixel (50, 50) of object 1
    # a tie (object 0: pixel (39, 39); object 1: pixel (50, 50)) goes to the object drawn first
    assert concept_at(ds, 0, (39, 39, 51, 51)) == 5
    assert concept_at(ds, 0, (39, 39, 52, 52)) == 2  # 1 pixel against 4
    cells = types.SimpleNamespace(indices=torch.zeros(1, 9, dtype=torch.long), map_size=(3, 3),
                                  positions=torch.tensor([[[r, c] for r in range(3) for c in range(3)]]))
    assert reference_concepts(ds, cells).view(3, 3).tolist() == [[5, 5, 7], [5, 2, -1], [-1, -1, -1]]


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
            assert concepts[n, j] == concept_at(ds, int(idx[n, j]), (r * 24, c * 24, r * 24 + 24, c * 24 + 24))


def test_layer_polysemanticity_counts_units_with_two_intervention_features():
    # tiny random network; the brute force takes the full activation maps and sorts every
    # channel's spatial maxima for the references; the features come from true_features
    torch.manual_seed(3)
    model = build_resnet(block="basic", layers=[1, 1, 1, 1], channels=[8, 8, 8, 6], stem_width=8,
                         num_classes=16).eval()
    ds = SyntheticShapes("test", n=40, seed=2)
    n_ref, min_share = 10, 0.2
    got = layer_polysemanticity(model, ds, "layer4", n_ref=n_ref, min_share=min_share)

    acts = {}
    hook = model.layer4.register_forward_hook(lambda m, i, o: acts.update(a=o))
    with torch.no_grad():
        model(torch.stack([ds[i][0] for i in range(len(ds))]))
    hook.remove()
    maxima = acts["a"].flatten(2).amax(2)  # [N, C]
    n, c = maxima.shape
    top = []
    for ch in range(c):
        order = sorted(range(n), key=lambda k: -float(maxima[k, ch]))[:n_ref]
        # the top-n_ref set is well defined (no tie at its border), so tie-breaking does not matter
        assert float(maxima[order[-1], ch]) > float(maxima[:, ch].sort(descending=True).values[n_ref])
        top.append(order)
    refs = types.SimpleNamespace(indices=torch.tensor(top), channels=torch.arange(c), layer="layer4")
    feats = true_features(model, ds, refs)
    expected = [ch for ch in range(c) if len(feats.features(min_share)[ch]) >= 2]
    assert got["neurons"] == expected and got["features"] == feats.features(min_share)
    assert got["count"] == len(expected) and got["n_neurons"] == c
    assert got["fraction"] == pytest.approx(len(expected) / c, abs=1e-4)
    assert (got["n_ref"], got["split"], got["n"], got["seed"]) == (n_ref, "test", 40, 2)


# ---------------------------------------------------------------------------------------------
# ground truth by intervention, on hand-built units with known answers
class ColourUnits(torch.nn.Module):
    """Units that read colours off the input; no training, every answer known by construction.

    Channel 0: red pixels (a red-only detector: its response grows with the red area, whatever
    the shape). Channel 1: red OR blue pixels. Channel 2: fires only when a red object AND a blue
    object are both in the image. The ``layer4`` output is a 3 x 3 map (96 px input).
    """

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.layer4 = torch.nn.Identity()

    def forward(self, x):
        img = x * self.std + self.mean                     # back to pixels in [0, 1]
        r, g, b = img[:, 0], img[:, 1], img[:, 2]
        red = (r - g - 0.4).clamp(min=0)                    # red ~0.35, nothing else > 0
        blue = (b - r - 0.4).clamp(min=0)                   # blue ~0.40
        pool = torch.nn.functional.avg_pool2d
        red_map = pool(red[:, None], 32)[:, 0]              # share of red in each 32 x 32 cell
        blue_map = pool(blue[:, None], 32)[:, 0]
        # a saturating "is there a red (blue) object" gate: 1 as soon as one pixel is clearly red
        present = lambda c: (10 * c.flatten(1).amax(1)).clamp(max=1)  # noqa: E731
        both = (present(red) + present(blue) - 1.5).clamp(min=0)
        both_map = both[:, None, None].expand_as(red_map)
        return self.layer4(torch.stack([red_map, red_map + blue_map, both_map], 1))


@pytest.fixture(scope="module")
def colour_units():
    ds = SyntheticShapes("test", n=300, seed=4)
    model = ColourUnits(ds.mean, ds.std).eval()
    refs = mine_references(model, ds, "layer4", n_ref=20, progress=False)
    return model, ds, refs, true_features(model, ds, refs)


def test_intervention_ground_truth_of_hand_built_units(colour_units):
    model, ds, refs, feats = colour_units
    assert feats.labels.shape == (3, 20) and feats.channels.tolist() == [0, 1, 2]
    # the red detector: one feature, "red", whatever the shape of the red object
    assert feats.features(0.2)[0] == ["red"]
    assert (feats.labels[0] == feats.names.index("red")).all()
    assert not feats.polysemantic(0.2)[0]
    # the red-or-blue unit: two colour features
    assert set(feats.features(0.2)[1]) == {"red", "blue"} and feats.polysemantic(0.2)[1]
    # the unit that needs a red and a blue object together: with one of each, both are
    # necessary ("mixed"); with two red objects only the blue one is (removing one red keeps
    # the other), so the blue object drives it
    kinds = set()
    for slot in range(20):
        colours = [o["colour"] for o in ds.annotations(int(refs.indices[2, slot]))["objects"]]
        n_red, n_blue = colours.count("red"), colours.count("blue")
        name = feats.names[int(feats.labels[2, slot])]
        if n_red == 1 and n_blue == 1:
            assert name == "mixed" and feats.driver[2, slot] == -1
        elif n_red >= 2 and n_blue == 1:
            assert name == "blue"
        kinds.add((min(n_red, 2), min(n_blue, 2)))
    assert (1, 1) in kinds and feats.features(0.2)[2][0] == "mixed"
    # drivers: the red (blue) object, whose removal silences the unit
    for slot in range(20):
        i, j = int(refs.indices[0, slot]), int(feats.driver[0, slot])
        objects = ds.annotations(i)["objects"]
        assert objects[j]["colour"] == "red" and feats.responsibility[0, slot] >= 0.5
        if [o["colour"] for o in objects].count("red") == 1:  # the only red object: all of it
            assert feats.responsibility[0, slot] > 0.99
    # area-matched shape swaps keep a pixel-counting unit's response; colour swaps remove it
    assert (feats.colour_retention[0] < 0.05).all() and (feats.shape_retention[0] > 0.5).all()


def test_the_pixel_heuristic_disagrees_with_the_intervention(colour_units):
    model, ds, refs, feats = colour_units
    # the old rule names the object under the argmax cell: a red detector on red circles,
    # red squares, ... counts as polysemantic (several shape x colour concepts)
    concepts = reference_concepts(ds, refs)
    assert polysemantic_by_concepts(concepts, 0.2)[0]
    assert not feats.polysemantic(0.2)[0]


def test_true_features_are_cached_and_checked(colour_units, tmp_path):
    model, ds, refs, feats = colour_units
    cache = Cache(tmp_path)
    sub = refs.subset([0]).head(3)
    first = true_features(model, ds, sub, cache=cache)
    calls = []
    h = model.layer4.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        again = true_features(model, ds, sub, cache=cache)
    finally:
        h.remove()
    assert not calls and torch.equal(first.labels, again.labels)
    assert torch.equal(first.labels[0], feats.labels[0, :3])
    with pytest.raises(ValueError, match="cannot re-render"):
        true_features(model, GeneratedImages(4, size=96), sub)


def test_counterfactual_keeps_area_and_appearance():
    ds = SyntheticShapes("test", n=1)
    scene = ds.scene(0)
    obj = scene.objects[0]
    for shape in ("square", "triangle", "cross", "circle"):
        new = counterfactual(obj, shape=shape)
        img, omap = draw_scene(scene, [new] + list(scene.objects[1:]))
        area_new = (omap == 0).sum()
        img0, omap0 = draw_scene(scene, [obj, None, None, None][:len(scene.objects)])
        img1, omap1 = draw_scene(scene, [new, None, None, None][:len(scene.objects)])
        assert abs((omap1 == 0).sum() - (omap0 == 0).sum()) <= 0.08 * (omap0 == 0).sum() + 4
        assert new["rgb"] == obj["rgb"] and new["center"] == obj["center"]
        assert area_new > 0
    blue = counterfactual(obj, colour="blue")
    assert blue["shape"] == obj["shape"] and blue["radius"] == obj["radius"]
    assert blue["rgb"] != obj["rgb"]
    # removing an object shows the background (and what the object hid) underneath
    img, omap = draw_scene(scene, [None] + list(scene.objects[1:]))
    assert not (omap == 0).any()


def test_intervention_ground_truth_on_two_object_scenes():
    from pure_utils.shapes.generator import SyntheticConfig

    cfg = SyntheticConfig(scene="two_objects", extra_colours=("magenta",))
    ds = SyntheticShapes("test", n=120, seed=4, config=cfg)
    model = ColourUnits(ds.mean, ds.std).eval()
    refs = mine_references(model, ds, "layer4", n_ref=15, progress=False)
    feats = true_features(model, ds, refs)
    assert "magenta" in feats.names and "magenta circle" in feats.names
    # channel 0 reads r - g - 0.4 > 0, which red (0.35) and magenta (0.25) pass: one driving
    # object of either colour is labelled by its colour, two redundant ones are "mixed"
    roles = set()
    for slot in range(15):
        objects = ds.annotations(int(refs.indices[0, slot]))["objects"]
        name = feats.names[int(feats.labels[0, slot])]
        passing = [o for o in objects if o["colour"] in ("red", "magenta")]
        if len(passing) == 1:
            driver = objects[int(feats.driver[0, slot])]
            assert name == passing[0]["colour"] and driver is passing[0]
            roles.add(driver["role"])
        else:
            assert name in ("red", "magenta", "mixed")
    assert "second" in roles  # a large second object drives some references
    # a tiny untrained ResNet runs through the same rule on these scenes
    torch.manual_seed(0)
    net = build_resnet(block="basic", layers=[1, 1, 1, 1], channels=[8, 8, 8, 4], stem_width=8,
                       num_classes=16).eval()
    small = SyntheticShapes("test", n=12, seed=4, config=cfg)
    r = mine_references(net, small, "layer4", n_ref=3, progress=False)
    f = true_features(net, small, r)
    assert f.labels.shape == (4, 3) and int(f.labels.min()) >= 0 and int(f.labels.max()) < len(f.names)
    assert ((f.driver >= -1) & (f.driver < 6)).all()
