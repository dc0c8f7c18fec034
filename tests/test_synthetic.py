"""The controlled benchmark's generator (pure_utils.shapes.generator): pinned pixels, masks, knobs."""
import hashlib
import math

import numpy as np
import pytest
import torch

from pure_utils.shapes.dataset import SyntheticShapes
from pure_utils.shapes.generator import GENERATOR_VERSION, SHAPE_AREAS, SyntheticConfig, _shape_mask

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
    with pytest.raises(IndexError):
        SyntheticShapes("test", n=3).image(3)


@pytest.mark.parametrize("knobs, n_range, scale", [
    (dict(distractors_min=0, distractors_max=0), (0, 0), (0.07, 0.11)),
    (dict(distractors_min=4, distractors_max=6), (4, 6), (0.07, 0.11)),
    (dict(distractor_scale=(0.13, 0.17)), (1, 3), (0.13, 0.17)),
])
def test_distractor_knobs_change_what_the_masks_show(knobs, n_range, scale):
    ds = SyntheticShapes("train", n=40, seed=3, config=SyntheticConfig(**knobs))
    counts, radii = [], []
    for i in range(len(ds)):
        distractors = [o for o in ds.annotations(i)["objects"] if o["role"] == "distractor"]
        counts.append(len(distractors))
        # the radius read back from the rendered mask through the shape's area, as a fraction
        # of the image; occlusion and the border can only shrink it
        radii += [(o["mask"].sum() / SHAPE_AREAS[o["shape"]]) ** 0.5 / 96 for o in distractors]
    assert min(counts) == n_range[0] and max(counts) == n_range[1]
    if n_range[1]:
        radii = np.array(radii)
        assert radii.max() <= scale[1] + 1.5 / 96             # never above the drawn scale
        assert radii.max() >= scale[1] - 0.02                  # the largest reach it
        assert np.median(radii) >= scale[0] - 0.02             # most are not cut much


def test_background_contrast_scales_the_background_only():
    flat = SyntheticShapes("test", n=3, config=SyntheticConfig(background_contrast=0.0, noise_std=0))
    base = SyntheticShapes("test", n=3, config=SyntheticConfig(noise_std=0))
    strong = SyntheticShapes("test", n=3, config=SyntheticConfig(background_contrast=3.0, noise_std=0))
    for i in range(3):
        bg = base.object_map(i) < 0
        spread = [ds.pixels(i)[bg].astype(float).std(0).mean() for ds in (flat, base, strong)]
        assert spread[0] < 1.0 < spread[1] < spread[2]
        # objects are painted identically whatever the background
        fg = ~bg
        assert (flat.pixels(i)[fg] == base.pixels(i)[fg]).all()
    assert SyntheticConfig().digest() == SyntheticConfig(background_contrast=1.0).digest()
    assert SyntheticConfig().digest() != strong.config.digest()


# ---------------------------------------------------------------------------------------------
# the two-object scene (the paper's mechanism)


def test_default_scene_keeps_its_digest_fingerprint_and_pixels():
    # digest and fingerprint as they were before scenes existed: caches and cards keep their keys
    assert SyntheticConfig().digest() == "d265eef2dd"
    assert SyntheticConfig(scene="natural", extra_colours=()).digest() == "d265eef2dd"
    assert SyntheticShapes("test", n=10).fingerprint == "synthetic-shapes-1-d265eef2dd-seed0-test-n10-7da50b36"
    assert not {"scene", "second_scale", "extra_colours"} & set(SyntheticConfig().to_dict())
    two = SyntheticConfig(scene="two_objects")
    assert two.digest() != SyntheticConfig().digest()
    assert SyntheticConfig(**two.to_dict()) == two and two.second_scale == two.object_scale
    # another scene draws other pixels; the default stays pinned (test above)
    assert not np.array_equal(SyntheticShapes("test", n=1, config=two).pixels(0),
                              SyntheticShapes("test", n=1).pixels(0))


def test_two_object_scene_has_two_large_objects_apart_with_their_sizes():
    cfg = SyntheticConfig(scene="two_objects", second_scale=(0.2, 0.25), distractors_min=0,
                          distractors_max=0, noise_std=0)
    ds = SyntheticShapes("val", n=60, seed=1, config=cfg)
    size = cfg.image_size
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    seconds = set()
    for i in range(len(ds)):
        ann = ds.annotations(i)
        label, second = ann["objects"]
        assert (label["role"], second["role"]) == ("label", "second") and ann["label"] == label["concept"]
        assert second["concept"] != label["concept"] and 0 <= second["concept"] < cfg.n_concepts
        assert second["name"] == ds.concept_names[second["concept"]]
        assert 0.17 * size <= label["radius"] <= 0.27 * size
        assert 0.2 * size <= second["radius"] <= 0.25 * size
        # independent geometry: the full silhouettes never meet, and each is wholly visible
        full = [_shape_mask(o["shape"], yy - o["center"][0], xx - o["center"][1], o["radius"],
                            round(math.cos(o["angle"]), 9), round(math.sin(o["angle"]), 9))
                for o in (label, second)]
        assert not (full[0] & full[1]).any()
        for o, f in zip((label, second), full):
            np.testing.assert_array_equal(o["mask"], f)
            # the area of the drawn shape is that of its radius (pixelisation only)
            assert abs(f.sum() - SHAPE_AREAS[o["shape"]] * o["radius"] ** 2) <= 0.06 * f.sum()
        seconds.add(second["concept"])
    assert len(seconds) >= 8  # the second object's concept varies between images


def test_two_object_scene_keeps_distractors_and_extra_colours():
    cfg = SyntheticConfig(scene="two_objects", extra_colours=("cyan", "magenta"))
    assert cfg.colours == ["red", "green", "blue", "yellow", "magenta", "cyan"]
    assert cfg.concept_names == SyntheticConfig().concept_names  # the classes do not change
    ds = SyntheticShapes("test", n=80, config=cfg)
    extra = 0
    for i in range(len(ds)):
        objs = ds.annotations(i)["objects"]
        assert [o["role"] for o in objs[:2]] == ["label", "second"]
        assert all(o["role"] == "distractor" for o in objs[2:]) and 1 <= len(objs) - 2 <= 3
        concepts = [o["concept"] for o in objs]
        assert len(set(concepts)) == len(concepts)  # distractors differ from both large objects
        if objs[1]["colour"] in ("magenta", "cyan"):
            extra += 1
            assert objs[1]["concept"] == -1 and objs[1]["name"] == f"{objs[1]['colour']} {objs[1]['shape']}"
            assert objs[1]["shape"] in cfg.shapes
        else:
            assert 0 <= objs[1]["concept"] < 16
        assert all(o["colour"] not in ("magenta", "cyan") for o in objs if o["role"] != "second")
        assert ds.label(i) == objs[0]["concept"]
    # 8 of the 23 pairs the second object can take are in an extra colour
    assert 0.15 < extra / len(ds) < 0.6


def test_bad_scene_knobs_raise():
    for bad, match in [(dict(scene="three"), "scene"),
                       (dict(second_scale=(0.2, 0.3)), "two_objects"),
                       (dict(extra_colours=("magenta",)), "two_objects"),
                       (dict(scene="two_objects", second_scale=(0.3, 0.35)), "side by side"),
                       (dict(scene="two_objects", second_scale=(0.2, 0.1)), "second_scale"),
                       (dict(scene="two_objects", extra_colours=("red",)), "magenta, cyan"),
                       (dict(scene="two_objects", extra_colours="magenta"), "sequence"),
                       (dict(scene="two_objects", extra_colours=("pink",)), "pink"),
                       (dict(scene="two_objects", extra_colours=("cyan", "cyan")), "twice"),
                       (dict(scene="two_objects", n_concepts=4, distractors_max=3), "distractors_max")]:
        with pytest.raises(ValueError, match=match):
            SyntheticConfig(**bad)
