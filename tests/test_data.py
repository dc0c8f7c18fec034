"""Tests of pure_utils.data: load_dataset, ImageFolderDataset, fingerprints, unreadable files."""
import dataclasses
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pure_utils.data import (IMAGENET_MEAN, IMAGENET_STD, GeneratedImages, ImageFolderDataset,
                             UnreadableImageError, iter_images, iter_samples, load_dataset)
from pure_utils.shapes.dataset import SyntheticShapes
from pure_utils.shapes.generator import SyntheticConfig


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


@pytest.fixture
def class_folder(tmp_path):
    """root/b_dog (2 images), root/a_cat (1 image), plus a non-image file that must be skipped."""
    root = tmp_path / "val"
    rng = np.random.default_rng(0)
    _save(root / "b_dog" / "1.png", rng.integers(0, 255, (40, 60, 3)))
    _save(root / "b_dog" / "0.png", rng.integers(0, 255, (50, 30, 3)))
    _save(root / "a_cat" / "x.png", rng.integers(0, 255, (32, 32, 3)))
    (root / "a_cat" / "notes.txt").write_text("not an image")
    return root


def test_class_folders_give_sorted_labels(class_folder):
    ds = load_dataset("imagefolder", root=class_folder, image_size=16, resize=20)
    assert len(ds) == 3
    assert ds.class_names == ["a_cat", "b_dog"]
    assert ds.labels.tolist() == [0, 1, 1]
    assert [p.name for p, _ in ds.samples] == ["x.png", "0.png", "1.png"]
    x, y = ds[2]
    assert x.shape == (3, 16, 16) and y == 1
    img = ds.image(2)
    assert img.min() >= 0 and img.max() <= 1
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(x, (img - mean) / std)
    assert ds.mean == IMAGENET_MEAN and ds.std == IMAGENET_STD


def test_resize_then_center_crop_by_hand(tmp_path):
    # 32 x 16 (w x h) image whose red channel encodes the column: resize=16 keeps it as is,
    # the 8 px centre crop must hold rows 4..11 and columns 12..19.
    arr = np.zeros((16, 32, 3), np.uint8)
    arr[..., 0] = (np.arange(32) * 8)[None, :]
    arr[..., 1] = (np.arange(16) * 16)[:, None]
    _save(tmp_path / "flat" / "a.png", arr)
    ds = ImageFolderDataset(tmp_path / "flat", image_size=8, resize=16)
    img = ds.image(0)
    assert img.shape == (3, 8, 8)
    expected_r = torch.tensor([(12 + j) * 8 for j in range(8)], dtype=torch.float32) / 255
    expected_g = torch.tensor([(4 + i) * 16 for i in range(8)], dtype=torch.float32) / 255
    torch.testing.assert_close(img[0], expected_r.expand(8, 8))
    torch.testing.assert_close(img[1], expected_g[:, None].expand(8, 8))


def test_flat_folder_labels_are_minus_one(tmp_path):
    for k in range(2):
        _save(tmp_path / "imgs" / f"{k}.png", np.full((24, 24, 3), 100 * k))
    ds = load_dataset("imagenet", root=tmp_path / "imgs", image_size=16, resize=16)
    assert ds.labels.tolist() == [-1, -1]
    assert ds.class_names == []
    assert ds[1][1] == -1
    torch.testing.assert_close(ds.image(1), torch.full((3, 16, 16), 100 / 255))


def test_fingerprint_is_stable_and_depends_on_settings(class_folder):
    a = ImageFolderDataset(class_folder, image_size=16, resize=20)
    b = ImageFolderDataset(class_folder, image_size=16, resize=20)
    c = ImageFolderDataset(class_folder, image_size=12, resize=20)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint


def test_missing_folder_explains_how_to_get_imagenet(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("imagenet", root=missing)
    msg = str(err.value)
    assert str(missing) in msg
    assert "dataset_kwargs.root" in msg and "paper.yaml" in msg and "image-net.org" in msg
    with pytest.raises(FileNotFoundError, match="root=None"):
        load_dataset("imagenet", root=None)


def test_empty_folder_and_bad_sizes(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolderDataset(tmp_path / "empty")
    _save(tmp_path / "one" / "a.png", np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="resize"):
        ImageFolderDataset(tmp_path / "one", image_size=32, resize=16)


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError, match="synthetic, imagefolder, imagenet"):
        load_dataset("cifar")


def test_load_synthetic_with_config_dict():
    ds = load_dataset("synthetic", split="val", n=5, seed=3, config=dict(n_concepts=9, image_size=64))
    assert len(ds) == 5 and ds.n_concepts == 9 and ds.image(0).shape == (3, 64, 64)
    assert "val" in ds.fingerprint and "seed3" in ds.fingerprint
    x, y = ds[0]
    assert x.shape == (3, 64, 64) and 0 <= y < 9


# --- fingerprints: they change whenever a tensor would --------------------------------------
def _folder_fp(root, **kw):
    return ImageFolderDataset(root, image_size=16, resize=20, **kw).fingerprint


@pytest.mark.parametrize("mode", ["stat", "content"])
def test_folder_fingerprint_follows_the_files(class_folder, tmp_path, mode):
    fp = _folder_fp(class_folder, fingerprint=mode)
    assert fp == _folder_fp(class_folder, fingerprint=mode)       # equal inputs: equal ids
    ds = ImageFolderDataset(class_folder, image_size=16, resize=20, fingerprint=mode)
    before = ds[1][0]
    # an image replaced in place by another of the same size, same modification time
    target = class_folder / "b_dog" / "0.png"
    st = target.stat()
    _save(target, np.random.default_rng(7).integers(0, 255, (50, 30, 3)))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1))      # any write moves the mtime
    assert not torch.equal(ds[1][0], before)
    assert ds.fingerprint != fp                                     # the same object sees it too
    assert _folder_fp(class_folder, fingerprint=mode) != fp
    # a label change: an image moved to the other class folder
    fp = _folder_fp(class_folder, fingerprint=mode)
    (class_folder / "b_dog" / "1.png").rename(class_folder / "a_cat" / "1.png")
    assert _folder_fp(class_folder, fingerprint=mode) != fp


def test_folder_fingerprint_stat_sees_paths_and_times_content_only_bytes(class_folder, tmp_path):
    copy = tmp_path / "elsewhere" / "val"                           # same basename, same layout
    shutil.copytree(class_folder, copy)
    assert _folder_fp(copy) != _folder_fp(class_folder)             # another folder: other entries
    assert _folder_fp(copy, fingerprint="content") == _folder_fp(class_folder, fingerprint="content")
    stat_fp, content_fp = _folder_fp(copy), _folder_fp(copy, fingerprint="content")
    os.utime(copy / "a_cat" / "x.png", ns=(0, 10**9))              # touched, bytes unchanged
    assert _folder_fp(copy) != stat_fp
    assert _folder_fp(copy, fingerprint="content") == content_fp
    assert stat_fp != content_fp


@pytest.mark.parametrize("knob", [dict(image_size=12), dict(resize=24), dict(mean=(0.5, 0.5, 0.5)),
                                  dict(std=(0.2, 0.2, 0.2))])
def test_folder_fingerprint_sees_every_transform_knob(class_folder, knob):
    settings = dict(image_size=16, resize=20)
    base = ImageFolderDataset(class_folder, **settings)
    other = ImageFolderDataset(class_folder, **{**settings, **knob})
    assert not torch.equal(base[0][0], other[0][0]) or base[0][0].shape != other[0][0].shape
    assert other.fingerprint != base.fingerprint


def test_folder_fingerprint_mode_and_vanished_file(class_folder):
    with pytest.raises(ValueError, match="fingerprint='sha1' not known; use one of 'stat', 'content'"):
        ImageFolderDataset(class_folder, fingerprint="sha1")
    ds = ImageFolderDataset(class_folder, image_size=16, resize=20)
    (class_folder / "a_cat" / "x.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"x.png \(index 0\) is gone"):
        ds.fingerprint


#: one changed value per parameter of SyntheticShapes and per field of SyntheticConfig
_CONFIG_CHANGES = dict(n_concepts=9, image_size=64, object_scale=(0.2, 0.27),
                       distractor_scale=(0.07, 0.1), distractors_min=0, distractors_max=2,
                       noise_std=0.05, colour_jitter=0.1, background_contrast=2.0,
                       scene="two_objects")
#: the fields that apply to the two-object scene, changed from it
_SCENE_CHANGES = dict(second_scale=(0.2, 0.22), extra_colours=("magenta",))
_SYNTHETIC_KNOBS = {"split": dict(split="val"), "n": dict(n=7), "seed": dict(seed=1),
                    "mean": dict(mean=(0.4, 0.5, 0.5)), "std": dict(std=(0.25, 0.3, 0.25)),
                    **{f"config.{k}": dict(config=SyntheticConfig(**{k: v}))
                       for k, v in _CONFIG_CHANGES.items()}}


def test_every_config_field_has_a_knob_test():
    assert set(_CONFIG_CHANGES) | set(_SCENE_CHANGES) == {f.name for f in dataclasses.fields(SyntheticConfig)}


@pytest.mark.parametrize("field, value", list(_SCENE_CHANGES.items()), ids=list(_SCENE_CHANGES))
def test_synthetic_fingerprint_sees_the_two_object_knobs(field, value):
    a = SyntheticShapes("test", n=6, config=SyntheticConfig(scene="two_objects"))
    b = SyntheticShapes("test", n=6, config=SyntheticConfig(scene="two_objects", **{field: value}))
    assert any(not torch.equal(a[i][0], b[i][0]) for i in range(6))
    assert b.fingerprint != a.fingerprint


@pytest.mark.parametrize("knob", list(_SYNTHETIC_KNOBS.values()), ids=list(_SYNTHETIC_KNOBS))
def test_synthetic_fingerprint_sees_every_knob_that_changes_a_tensor(knob):
    base = dict(split="test", n=6, seed=0)
    a, b = SyntheticShapes(**base), SyntheticShapes(**{**base, **knob})
    assert SyntheticShapes(**base).fingerprint == a.fingerprint
    changed = len(a) != len(b) or any(a[i][0].shape != b[i][0].shape or not torch.equal(a[i][0], b[i][0])
                                      for i in range(min(len(a), len(b))))
    assert changed                               # the knob does change what the dataset returns
    assert b.fingerprint != a.fingerprint


@pytest.mark.parametrize("knob", [dict(n=5), dict(size=24), dict(seed=2), dict(mean=(0.5, 0.5, 0.5)),
                                  dict(std=(0.5, 0.5, 0.5))])
def test_generated_fingerprint_sees_every_knob(knob):
    a = GeneratedImages(4, size=16, seed=1)
    b = GeneratedImages(**{"n": 4, "size": 16, "seed": 1, **{k: v for k, v in knob.items()
                                                             if k in ("n", "size", "seed")}})
    for k in ("mean", "std"):
        if k in knob:
            setattr(b, k, knob[k])
    assert GeneratedImages(4, size=16, seed=1).fingerprint == a.fingerprint
    assert b.fingerprint != a.fingerprint


# --- unreadable images ----------------------------------------------------------------------
def test_unreadable_image_is_named(class_folder):
    bad = class_folder / "b_dog" / "0.png"
    bad.write_bytes(bad.read_bytes()[:60])                      # cut short
    ds = ImageFolderDataset(class_folder, image_size=16, resize=20)
    with pytest.raises(UnreadableImageError, match=rf"image {bad} \(index 1\) cannot be read"):
        ds[1]
    with pytest.raises(UnreadableImageError, match=str(bad)):
        list(iter_samples(ds, 2))
    for workers in (0, 1):
        batches = list(iter_samples(ds, 2, num_workers=workers, skip_unreadable=True))
        assert [b[0] for b in batches] == [[0], [2]]
        assert [i for b in batches for i, _ in b[2]] == [1]
        assert str(bad) in batches[0][2][0][1]
        torch.testing.assert_close(batches[1][1][0], ds[2][0])


# --- reading ahead ---------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_iter_images_gives_the_batches_asked_for_in_order(workers):
    ds = GeneratedImages(9, size=16, seed=3)
    batches = [[4, 1], [8], [0, 2, 7]]
    got = list(iter_images(ds, batches, workers))
    assert len(got) == 3
    for b, x in zip(batches, got):
        assert torch.equal(x, torch.stack([ds[i][0] for i in b]))


def test_iter_samples_reads_a_range_and_stacks_in_the_workers():
    ds = GeneratedImages(10, size=16, seed=3)
    for workers in (0, 1):
        got = list(iter_samples(ds, 3, num_workers=workers, start=2, stop=8))
        assert [b[0] for b in got] == [[2, 3, 4], [5, 6, 7]]
        assert torch.equal(got[1][1], torch.stack([ds[i][0] for i in (5, 6, 7)]))


def test_mining_and_test_parts_of_an_image_folder_are_disjoint(tmp_path):
    from PIL import Image

    from pure_utils.data import DatasetPart, shared_images

    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / f"class{c}").mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
                tmp_path / f"class{c}" / f"{i}.png")
    kw = dict(root=tmp_path, image_size=16, resize=16, test_share=0.2, part_seed=1)
    mining = load_dataset("imagefolder", part="mining", **kw)
    test = load_dataset("imagefolder", part="test", **kw)
    assert isinstance(mining, DatasetPart) and (len(mining), len(test)) == (24, 6)
    assert not set(mining.indices) & set(test.indices)
    assert sorted(mining.indices + test.indices) == list(range(30))
    assert shared_images(mining, test) == 0 and shared_images(mining, mining) == 24
    whole = load_dataset("imagefolder", **{k: v for k, v in kw.items() if k not in ("test_share", "part_seed")})
    assert shared_images(test, whole) == 6
    # a part reads the images of its source indices, and its fingerprint says which part it is
    assert torch.equal(test[2][0], whole[test.indices[2]][0])
    assert mining.fingerprint != test.fingerprint != whole.fingerprint
    other_seed = load_dataset("imagefolder", part="test", **{**kw, "part_seed": 2})
    assert other_seed.indices != test.indices and other_seed.fingerprint != test.fingerprint
    with pytest.raises(ValueError, match="part='train' not known"):
        load_dataset("imagefolder", part="train", **kw)


# --- images read as they are -----------------------------------------------------------------
def _one(tmp_path, img, name="a.png", **save):
    """A flat folder holding one image, read at its own size (no resampling)."""
    folder = tmp_path / f"one-{name}"
    folder.mkdir()
    img.save(folder / name, **save)
    w, h = img.size
    return ImageFolderDataset(folder, image_size=min(w, h), resize=min(w, h)), folder / name


@pytest.mark.parametrize("mode, value, want", [
    ("I;16", 32768, 32768 / 65535),     # 16-bit PNG, mid-grey (today: white)
    ("I;16", 65535, 1.0),
    ("I;16B", 16384, 16384 / 65535),    # big-endian 16 bit (TIFF)
    ("I", 49152, 49152 / 65535),        # 32-bit integer holding 16-bit values
    ("F", 0.25, 0.25),                  # float in [0, 1] (TIFF)
    ("L", 128, 128 / 255),
    ("1", 1, 1.0),
])
def test_every_grey_mode_reads_with_its_true_range(tmp_path, mode, value, want):
    dtypes = {"I;16": np.uint16, "I;16B": ">u2", "I": np.int32, "F": np.float32, "L": np.uint8,
              "1": bool}
    img = Image.fromarray(np.full((4, 4), value, dtypes[mode]))
    assert img.mode == mode
    ds, path = _one(tmp_path, img, "a.tif" if mode in ("I;16B", "I", "F") else "a.png")
    assert Image.open(path).mode == mode  # the file keeps the mode
    x = ds.image(0)
    assert x.shape == (3, 4, 4) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.full((3, 4, 4), want), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode, value, what", [("I", 70000, r"values 70000\.\.70000"),
                                                ("I", -3, r"values -3\.\.-3"),
                                                ("F", 2.5, r"values 2\.5\.\.2\.5"),
                                                ("F", float("nan"), "NaN")])
def test_values_outside_the_range_of_the_mode_are_refused_naming_file_and_mode(tmp_path, mode,
                                                                               value, what):
    dtypes = {"I": np.int32, "F": np.float32}
    ds, path = _one(tmp_path, Image.fromarray(np.full((4, 4), value, dtypes[mode])), "a.tif")
    with pytest.raises(UnreadableImageError, match=rf"a.tif \(index 0\).*mode '{mode}'.*{what}"):
        ds.image(0)


def test_colour_modes_palette_alpha_and_cmyk(tmp_path):
    from pure_utils.data import BACKGROUND

    bg = torch.tensor(BACKGROUND, dtype=torch.float32) / 255
    # RGBA: an opaque red pixel, a transparent one (whatever colour it hides), a half-opaque blue
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)
    rgba[0, 1] = (0, 255, 0, 0)
    rgba[1, 0] = (0, 0, 255, 128)
    rgba[1, 1] = (10, 20, 30, 255)
    ds, _ = _one(tmp_path, Image.fromarray(rgba, "RGBA"), "rgba.png")
    x = ds.image(0)
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([1.0, 0, 0]))
    torch.testing.assert_close(x[:, 0, 1], bg, atol=1 / 255, rtol=0)
    half = (128 * torch.tensor([0.0, 0, 1]) + (255 - 128) * bg) / 255  # alpha compositing
    torch.testing.assert_close(x[:, 1, 0], half, atol=1.5 / 255, rtol=0)
    # LA: grey with alpha
    la = np.zeros((2, 2, 2), np.uint8)
    la[..., 0], la[..., 1] = 200, 255
    la[1, 1, 1] = 0
    ds, _ = _one(tmp_path, Image.fromarray(la, "LA"), "la.png")
    x = ds.image(0)
    torch.testing.assert_close(x[:, 0, 0], torch.full((3,), 200 / 255))
    torch.testing.assert_close(x[:, 1, 1], bg, atol=1 / 255, rtol=0)
    # a palette image whose entry 1 is transparent
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    ds, path = _one(tmp_path, pal, "p.png", transparency=1)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    x = ds.image(0)
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([1.0, 0, 0]))
    torch.testing.assert_close(x[:, 0, 1], bg, atol=1 / 255, rtol=0)
    # CMYK (no black): R = 255 - C, G = 255 - M, B = 255 - Y
    cmyk = Image.fromarray(np.full((2, 2, 4), (64, 0, 255, 0), np.uint8), "CMYK")
    ds, _ = _one(tmp_path, cmyk, "c.tif")
    torch.testing.assert_close(ds.image(0)[:, 0, 0], torch.tensor([191, 255, 0]) / 255)


def test_exif_orientation_is_applied(tmp_path):
    # stored 8 wide x 4 high, left half red, right half blue; orientation 6: shown turned 90
    # degrees clockwise, 4 wide x 8 high, red on top
    arr = np.zeros((4, 8, 3), np.uint8)
    arr[:, :4, 0] = 255
    arr[:, 4:, 2] = 255
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    folder = tmp_path / "exif"
    folder.mkdir()
    img.save(folder / "a.png", exif=exif.tobytes())
    assert Image.open(folder / "a.png").getexif().get(0x0112) == 6
    x = ImageFolderDataset(folder, image_size=4, resize=4).image(0)  # the 4 x 4 centre
    red, blue = torch.tensor([1.0, 0, 0]), torch.tensor([0, 0, 1.0])
    assert torch.equal(x[:, :2].permute(1, 2, 0), red.expand(2, 4, 3))
    assert torch.equal(x[:, 2:].permute(1, 2, 0), blue.expand(2, 4, 3))
    # as stored (the choice of torchvision's reader): left red, right blue
    x = ImageFolderDataset(folder, image_size=4, resize=4, exif=False).image(0)
    assert torch.equal(x[:, :, :2].permute(1, 2, 0), red.expand(4, 2, 3))


def test_loose_images_beside_class_folders_are_named(class_folder):
    _save(class_folder / "stray.png", np.zeros((8, 8, 3)))
    _save(class_folder / "other.jpg", np.zeros((8, 8, 3)))
    with pytest.warns(UserWarning, match=r"2 image file\(s\) beside the class folders .*"
                                         r"other\.jpg, stray\.png.*not read"):
        ds = ImageFolderDataset(class_folder, image_size=16, resize=20)
    assert len(ds) == 3


# --- the test phase refuses images it has seen, in any guise ----------------------------------
def test_test_images_are_compared_with_the_reference_images_by_content(tmp_path):
    from pure_utils.disjoint import check_disjoint

    rng = np.random.default_rng(0)
    ref = tmp_path / "ref"
    for i in range(6):
        _save(ref / f"{i}.png", rng.integers(0, 255, (20, 24, 3)))
    kw = dict(image_size=16, resize=16)
    # another folder of other images: accepted, and the report says how many were compared
    other = tmp_path / "other"
    for i in range(4):
        _save(other / f"{i}.png", rng.integers(0, 255, (20, 24, 3)))
    report = check_disjoint(load_dataset("imagefolder", root=other, **kw),
                            load_dataset("imagefolder", root=ref, **kw))
    assert (report.shared, report.test, report.reference) == (0, 4, 6)
    assert "compared 4 test images with 6 reference images by file content" in str(report)
    # the same folder read with another resize
    with pytest.raises(ValueError, match=r"shares 6 images with the reference set .*by file "
                                         r"content"):
        check_disjoint(load_dataset("imagefolder", root=ref, image_size=16, resize=20),
                       load_dataset("imagefolder", root=ref, **kw))
    # a byte-identical copy under another path
    shutil.copy(ref / "3.png", other / "copy.png")
    with pytest.raises(ValueError, match=r"shares 1 images with the reference set.*copy\.png"
                                         r".*3\.png"):
        check_disjoint(load_dataset("imagefolder", root=other, **kw),
                       load_dataset("imagefolder", root=ref, **kw))
    # duplicates inside one folder, split into the mining and test parts
    dup = tmp_path / "dup"
    for i in range(10):
        _save(dup / f"{i}.png", rng.integers(0, 255, (20, 24, 3)))
    parts = dict(root=dup, test_share=0.3, part_seed=0, **kw)
    test = load_dataset("imagefolder", part="test", **parts)
    mining = load_dataset("imagefolder", part="mining", **parts)
    assert check_disjoint(test, mining).shared == 0
    t, m = test.indices[0], mining.indices[0]
    shutil.copy(dup / f"{t}.png", dup / f"{m}.png")  # the same names: the same split
    test = load_dataset("imagefolder", part="test", **parts)
    mining = load_dataset("imagefolder", part="mining", **parts)
    assert (test.indices[0], mining.indices[0]) == (t, m)
    with pytest.raises(ValueError, match=rf"shares 1 images.*{t}\.png.*{m}\.png"):
        check_disjoint(test, mining)


def test_datasets_without_files_are_compared_by_index():
    from pure_utils.data import DatasetPart
    from pure_utils.disjoint import check_disjoint

    base = GeneratedImages(12, size=8)
    report = check_disjoint(DatasetPart(base, part="test"), DatasetPart(base, part="mining"))
    assert (report.shared, report.test, report.reference) == (0, 1, 11)
    assert "by dataset index" in str(report)
    with pytest.raises(ValueError, match="shares 12 images with the reference set"):
        check_disjoint(base, GeneratedImages(12, size=8))
    # other sources without files: nothing can be compared, and the report says so
    report = check_disjoint(GeneratedImages(4, size=8, seed=1), base)
    assert report.test == report.reference == 0 and "not compared" in str(report)


def test_empty_image_folder_error_describes_that_folder(tmp_path):
    empty = tmp_path / "my photos"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        ImageFolderDataset(empty)
    text = str(err.value)
    assert str(empty) in text and "no class sub-folder; no files" in text and ".png" in text
    assert "ImageNet" not in text and "paper.yaml" not in text
    (empty / "cats").mkdir()
    (empty / "cats" / "a.gif").write_bytes(b"GIF89a")
    (empty / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError) as err:
        ImageFolderDataset(empty)
    text = str(err.value)
    assert "1 class sub-folder(s) without images" in text and ".gif, .txt" in text
    assert "ImageNet" not in text
