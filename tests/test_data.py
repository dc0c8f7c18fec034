"""Tests of pure_utils.data: load_dataset and ImageFolderDataset."""
import numpy as np
import pytest
import torch
from PIL import Image

from pure_utils.data import IMAGENET_MEAN, IMAGENET_STD, ImageFolderDataset, load_dataset


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
