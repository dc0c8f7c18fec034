"""Tests of pure_utils.references: streaming top-k reference samples against brute force, the
identity references carry, non-finite activations and unreadable files."""
import json
import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pure_utils.cache import Cache
from pure_utils.models import build_resnet, randomize_batchnorm
from pure_utils.references import References, forward_until, mine_references


class TensorImages:
    """A minimal dataset following the pure_utils protocol, over a fixed image tensor."""

    def __init__(self, x, name="t"):
        self.x = x
        self.fingerprint = f"{name}-{tuple(x.shape)}"

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], 0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_batchnorm(build_resnet("basic", channels=(8, 8, 16, 16), stem_width=8), 0).eval()


def brute_force(model, ds, layer, n_ref):
    """Top-n_ref per channel from all activations at once, ties by lower index (numpy)."""
    with torch.no_grad():
        act = forward_until(model, torch.stack([ds[i][0] for i in range(len(ds))]), layer)
    a = act.flatten(2).numpy()  # [N, C, hw]
    vals = a.max(2)
    flat = a.argmax(2)  # first maximum = row-major order
    n, c = vals.shape
    idx = np.zeros((c, n_ref), dtype=np.int64)
    for ch in range(c):
        order = sorted(range(n), key=lambda i: (-vals[i, ch], i))[:n_ref]
        idx[ch] = order
    w = act.shape[-1]
    pos = np.stack([flat // w, flat % w], -1)  # [N, C, 2]
    cols = np.arange(c)[:, None]
    return idx, vals[idx, cols], pos[idx, cols], tuple(act.shape[2:])


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_matches_brute_force_topk(model, batch_size):
    ds = TensorImages(torch.randn(23, 3, 40, 40))
    refs = mine_references(model, ds, "layer3", n_ref=5, batch_size=batch_size, progress=False)
    idx, vals, pos, size = brute_force(model, ds, "layer3", 5)
    assert isinstance(refs, References) and refs.layer == "layer3"
    assert refs.indices.shape == (16, 5) and refs.n_ref == 5
    assert np.array_equal(refs.indices.numpy(), idx)
    assert np.allclose(refs.values.numpy(), vals, atol=1e-6)
    assert np.array_equal(refs.positions.numpy(), pos)
    assert refs.map_size == size and refs.input_size == (40, 40)


def test_ties_broken_by_lower_index(model):
    base = torch.randn(4, 3, 32, 32)
    # every image appears three times, at indices i, i + 4, i + 8: exact ties across batches
    ds = TensorImages(torch.cat([base, base, base]))
    refs = mine_references(model, ds, "layer2", n_ref=12, batch_size=5, progress=False)
    idx, _, _, _ = brute_force(model, ds, "layer2", 12)
    assert np.array_equal(refs.indices.numpy(), idx)
    # and within a group of equal values the indices ascend
    v, i = refs.values, refs.indices
    same = v[:, 1:] == v[:, :-1]
    assert (i[:, 1:][same] > i[:, :-1][same]).all()


def test_positions_first_in_row_major_order():
    # a model whose map is constant: every position ties, so the argmax must be (0, 0)
    model = nn.Sequential(nn.Conv2d(3, 2, 1, bias=True), nn.AdaptiveAvgPool2d(4), nn.Identity())
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([1.0, -1.0]))
    ds = TensorImages(torch.randn(5, 3, 8, 8))
    refs = mine_references(model, ds, "2", n_ref=3, progress=False)
    assert refs.positions.abs().sum() == 0 and refs.map_size == (4, 4)
    assert refs.indices[0].tolist() == [0, 1, 2]  # all equal -> lowest indices


def test_generic_model_and_subset_head(model):
    seq = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    ds = TensorImages(torch.randn(10, 3, 12, 12))
    refs = mine_references(seq, ds, "2", n_ref=4, batch_size=3, progress=False)
    idx, vals, pos, _ = brute_force(seq, ds, "2", 4)
    assert np.array_equal(refs.indices.numpy(), idx)
    sub = refs.subset([3, 1])
    assert sub.channels.tolist() == [3, 1]
    assert torch.equal(sub.indices[0], refs.indices[3])
    assert torch.equal(sub.rows([1]), torch.tensor([1]))
    assert refs.head(2).indices.shape == (4, 2)
    with pytest.raises(ValueError, match="neuron index 2"):
        sub.rows([2])


def test_bad_input(model):
    ds = TensorImages(torch.randn(3, 3, 16, 16))
    with pytest.raises(ValueError, match="layer 'layer9' not found; layers: conv1"):
        mine_references(model, ds, "layer9", n_ref=2, progress=False)
    with pytest.raises(ValueError, match="n_ref=4"):
        mine_references(model, ds, "layer4", n_ref=4, progress=False)
    with pytest.raises(ValueError, match="n_ref=0"):
        mine_references(model, ds, "layer4", n_ref=0, progress=False)


def test_cache_reuses_and_recomputes_on_key_change(model, tmp_path):
    ds = TensorImages(torch.randn(6, 3, 24, 24))
    cache = Cache(tmp_path)
    calls = []
    handle = model.layer1.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        a = mine_references(model, ds, "layer3", n_ref=3, cache=cache, progress=False)
        n_first = len(calls)
        b = mine_references(model, ds, "layer3", n_ref=3, cache=cache, progress=False)
        assert len(calls) == n_first  # loaded, not recomputed
        assert torch.equal(a.indices, b.indices) and torch.equal(a.positions, b.positions)
        assert a.map_size == b.map_size and b.layer == "layer3"
        mine_references(model, ds, "layer3", n_ref=2, cache=cache, progress=False)
        assert len(calls) > n_first  # other parameters: another key
    finally:
        handle.remove()
    assert len(list(tmp_path.glob("references-*.safetensors"))) == 2


# --- identity: references remember what they were mined on ---------------------------------
from pure_utils.circuits import activation_vectors, circuit_attributions  # noqa: E402
from pure_utils.crops import feature_heatmaps, reference_images  # noqa: E402
from pure_utils.data import GeneratedImages, ImageFolderDataset, UnreadableImageError  # noqa: E402
from pure_utils.models import model_fingerprint  # noqa: E402


def _stages(model, ds, refs, **kw):
    """Every public stage that takes references, on (model, ds)."""
    return {
        "circuit_attributions": lambda: circuit_attributions(model, ds, refs, "layer3", "layer2",
                                                             neurons=[0], progress=False, **kw),
        "activation_vectors": lambda: activation_vectors(model, ds, refs, "layer3", neurons=[0],
                                                           progress=False, **kw),
        "feature_heatmaps": lambda: feature_heatmaps(model, ds, refs, "layer3", [0], progress=False),
        "reference_images": lambda: reference_images(ds, refs, 0),
    }


def test_references_carry_and_check_their_identity(model, tmp_path):
    ds = GeneratedImages(6, size=32, seed=0)
    refs = mine_references(model, ds, "layer3", n_ref=2, cache=Cache(tmp_path), progress=False)
    assert refs.model_fingerprint == model_fingerprint(model)
    assert refs.dataset_fingerprint == ds.fingerprint and refs.input_size == (32, 32)
    meta = json.loads(next(tmp_path.glob("references-*.json")).read_text())
    assert meta["model_fingerprint"] == refs.model_fingerprint
    assert meta["dataset_fingerprint"] == ds.fingerprint
    # loaded from the cache: the same identity
    again = mine_references(model, ds, "layer3", n_ref=2, cache=Cache(tmp_path), progress=False)
    assert (again.model_fingerprint, again.dataset_fingerprint) == (refs.model_fingerprint, ds.fingerprint)
    for name, run in _stages(model, ds, refs).items():  # the right model and data: accepted
        run()
    # another dataset of the same length, images and size: every stage refuses it, naming both
    other = GeneratedImages(6, size=32, seed=1)
    for name, run in _stages(model, other, refs).items():
        with pytest.raises(ValueError, match=rf"mined on dataset '{ds.fingerprint}', but the dataset "
                                             rf"given is '{other.fingerprint}'"):
            run()
    # another model with as many channels
    torch.manual_seed(1)
    twin = randomize_batchnorm(build_resnet("basic", channels=(8, 8, 16, 16), stem_width=8), 1).eval()
    for name, run in _stages(twin, ds, refs).items():
        if name == "reference_images":
            continue  # takes no model
        with pytest.raises(ValueError, match=rf"mined on model ResNet \(.*{refs.model_fingerprint}"
                                             rf".*\), but the model given is ResNet "
                                             rf"\(.*{model_fingerprint(twin)}.*\)"):
            run()


def test_references_of_another_input_size_are_refused_without_fingerprints(model):
    small = TensorImages(torch.randn(5, 3, 32, 32))
    del small.fingerprint  # a dataset without a fingerprint: the input size is what is left
    refs = mine_references(model, small, "layer3", n_ref=2, progress=False)
    assert refs.dataset_fingerprint is None and refs.input_size == (32, 32)
    large = TensorImages(torch.randn(5, 3, 48, 48))
    del large.fingerprint
    with pytest.raises(ValueError, match=r"inputs of size \(32, 32\), but the dataset given has "
                                         r"inputs of size \(48, 48\)"):
        circuit_attributions(model, large, refs, "layer3", "layer2", neurons=[0], progress=False)


def test_references_built_by_hand_are_not_checked(model):
    ds = GeneratedImages(4, size=32)
    hand = References(indices=torch.tensor([[1, 0]] * 16), values=torch.ones(16, 2),
                      positions=torch.zeros(16, 2, 2, dtype=torch.long), map_size=(2, 2),
                      input_size=(0, 0), layer="layer3")
    R = circuit_attributions(model, ds, hand, "layer3", "layer2", neurons=[2], progress=False)
    mined_like = circuit_attributions(model, ds, torch.tensor([[1, 0]]), "layer3", "layer2",
                                      neurons=[2], progress=False)
    assert torch.equal(R, mined_like)


def test_float_indices_and_empty_neurons_are_refused(model):
    ds = GeneratedImages(4, size=32)
    with pytest.raises(ValueError, match="dtype torch.float32; give integer dataset indices"):
        circuit_attributions(model, ds, torch.tensor([[1.7, 0.0]]), "layer3", "layer2", neurons=[2],
                             progress=False)
    refs = mine_references(model, ds, "layer3", n_ref=2, progress=False)
    for run in (lambda: circuit_attributions(model, ds, refs, "layer3", "layer2", neurons=[],
                                             progress=False),
                lambda: activation_vectors(model, ds, refs, "layer3", neurons=[], progress=False),
                lambda: circuit_attributions(model, ds, refs.subset([]), "layer3", "layer2",
                                             progress=False)):
        with pytest.raises(ValueError, match="neurons is empty; give at least one channel of layer 'layer3'"):
            run()


# --- non-finite activations: never ranked --------------------------------------------------
def _with_bad(n, bad, value, size=32):
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3))
    for i in bad:
        x[i, 0, 5, 5] = value
    return TensorImages(x, name=f"bad{value}")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_activations_raise_naming_the_indices(model, value):
    ds = _with_bad(9, [2, 7], value)
    with pytest.raises(ValueError, match=r"not finite \(NaN or inf\) on dataset indices 2\b"):
        mine_references(model, ds, "layer3", n_ref=3, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="on_nonfinite='maybe' not known; use one of 'raise', 'skip'"):
        mine_references(model, ds, "layer3", n_ref=3, on_nonfinite="maybe", progress=False)


def test_nonfinite_samples_are_skipped_and_reported(model, tmp_path):
    ds = _with_bad(9, [2, 7], float("nan"))
    with pytest.warns(UserWarning, match=r"2 sample\(s\) left out \(nonfinite\): 2, 7"):
        refs = mine_references(model, ds, "layer3", n_ref=4, batch_size=4, on_nonfinite="skip",
                               cache=Cache(tmp_path), progress=False)
    assert refs.skipped["nonfinite"].tolist() == [2, 7] and refs.skipped["unreadable"].numel() == 0
    assert torch.isfinite(refs.values).all()
    # the ranking of the other samples, by brute force
    keep = [i for i in range(9) if i not in (2, 7)]
    clean = TensorImages(ds.x[keep])
    idx, vals, pos, _ = brute_force(model, clean, "layer3", 4)
    assert np.array_equal(refs.indices.numpy(), np.array(keep)[idx])
    assert np.allclose(refs.values.numpy(), vals, atol=1e-6)
    # a stored "skip" result asked for with the default policy: the clear error, from the cache
    with pytest.raises(ValueError, match=r"dataset indices 2, 7 have non-finite activations"):
        mine_references(model, ds, "layer3", n_ref=4, cache=Cache(tmp_path), progress=False)
    # too few usable samples
    with pytest.raises(ValueError, match=r"only 7 of 9 samples could be ranked .*n_ref=8"):
        mine_references(model, ds, "layer3", n_ref=8, on_nonfinite="skip", progress=False)


# --- unreadable image files: named, skipped on request, work kept ----------------------------
@pytest.fixture
def folder_with_bad_image(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    root.mkdir()
    for k in range(10):
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(root / f"{k:02d}.png")
    bad = root / "06.png"
    bad.write_bytes(bad.read_bytes()[:80])
    return root, bad


def test_unreadable_image_stops_mining_naming_it_and_the_work_is_kept(model, folder_with_bad_image,
                                                                      tmp_path):
    root, bad = folder_with_bad_image
    ds = ImageFolderDataset(root, image_size=32, resize=36)
    cache = Cache(tmp_path / "cache")
    with pytest.raises(UnreadableImageError, match=rf"{bad} \(index 6\) cannot be read.*"
                                                   r"on_unreadable='skip'.*the 4 samples before it"):
        mine_references(model, ds, "layer3", n_ref=3, batch_size=4, cache=cache, progress=False)
    assert list(cache.root.glob("references-partial-*.json"))
    # the next run continues after the 4 kept samples: 6 images are read, not 10
    seen = []
    handle = model.conv1.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    try:
        with pytest.warns(UserWarning, match=rf"left out \(unreadable\): 6 \({bad}\)"):
            refs = mine_references(model, ds, "layer3", n_ref=3, batch_size=4, cache=cache,
                                   on_unreadable="skip", progress=False)
    finally:
        handle.remove()
    assert sum(seen) == 5  # images 4, 5, 7, 8, 9
    # the checkpoint now holds the complete pass: a file was left out, which may be deleted
    (partial,) = cache.root.glob("references-partial-*.json")
    assert int(cache.load(partial.stem)[0]["next"]) == 10
    assert refs.skipped["unreadable"].tolist() == [6]
    # the same result as one uninterrupted run
    with pytest.warns(UserWarning):
        fresh = mine_references(model, ds, "layer3", n_ref=3, batch_size=3, on_unreadable="skip",
                                progress=False)
    assert torch.equal(refs.indices, fresh.indices) and torch.equal(refs.positions, fresh.positions)
    assert torch.allclose(refs.values, fresh.values, atol=1e-6)
    assert 6 not in refs.indices.flatten().tolist()


# --- cache entries are verified against the dataset ----------------------------------------
def test_cached_indices_out_of_range_are_recomputed(model, tmp_path):
    from pure_utils.cache import CacheWarning

    ds = GeneratedImages(6, size=32)
    cache = Cache(tmp_path)
    refs = mine_references(model, ds, "layer3", n_ref=2, cache=cache, progress=False)
    (meta_path,) = tmp_path.glob("references-*.json")
    key = meta_path.stem
    tensors, meta = cache.load(key)
    forged = dict(tensors, indices=tensors["indices"] + 6)  # a well-formed entry, wrong values
    cache.save(key, forged, {k: v for k, v in meta.items() if k != "integrity"})
    with pytest.warns(CacheWarning, match=rf"{key}.safetensors is not used .*holds \d+, not below 6"):
        again = mine_references(model, ds, "layer3", n_ref=2, cache=cache, progress=False)
    assert torch.equal(again.indices, refs.indices)
    assert torch.equal(cache.load(key)[0]["indices"], refs.indices)  # overwritten
    # an entry without one of its tensors (it parses, it has a checksum): recomputed too
    cache.save(key, {k: v for k, v in tensors.items() if k != "positions"},
               {k: v for k, v in meta.items() if k != "integrity"})
    with pytest.warns(CacheWarning, match="no tensor 'positions'"):
        again = mine_references(model, ds, "layer3", n_ref=2, cache=cache, progress=False)
    assert torch.equal(again.positions, refs.positions)


def test_changed_image_folder_is_mined_again(model, tmp_path):
    from PIL import Image

    root = tmp_path / "val"
    root.mkdir()
    rng = np.random.default_rng(1)
    for k in range(5):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"{k}.png")
    cache = Cache(tmp_path / "cache")
    first = mine_references(model, ImageFolderDataset(root, image_size=32, resize=32), "layer3",
                            n_ref=2, cache=cache, progress=False)
    # every image replaced in place: the old references would be stale
    for k in range(5):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"{k}.png")
        os.utime(root / f"{k}.png", ns=(0, 10**9 * (k + 1)))
    ds = ImageFolderDataset(root, image_size=32, resize=32)
    second = mine_references(model, ds, "layer3", n_ref=2, cache=cache, progress=False)
    idx, vals, _, _ = brute_force(model, ds, "layer3", 2)
    assert np.array_equal(second.indices.numpy(), idx)
    assert not torch.allclose(first.values, second.values)
    assert len(list(cache.root.glob("references-*.json"))) == 2


def test_unwritable_cache_still_returns_the_references(model, tmp_path):
    from pure_utils.cache import CacheWarning

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    ds = GeneratedImages(5, size=32)
    with pytest.warns(CacheWarning, match="could not be written"):
        refs = mine_references(model, ds, "layer3", n_ref=2, cache=Cache(blocker / "cache"),
                               progress=False)
    assert torch.equal(refs.indices, mine_references(model, ds, "layer3", n_ref=2, progress=False).indices)


# --- a model of another structure with the same weights ---------------------------------------
def test_references_refuse_a_model_of_another_structure_naming_both(model):
    import copy

    ds = GeneratedImages(6, size=32, seed=0)
    refs = mine_references(model, ds, "layer3", n_ref=2, progress=False)
    gelu = copy.deepcopy(model)  # the same state_dict, GELU in place of the ReLUs of layer4
    for block in gelu.layer4:
        block.act1, block.act2 = nn.GELU(), nn.GELU()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 gelu.state_dict().values()))
    from pure_utils.cache import model_description

    mined, given = model_description(model), model_description(gelu)
    assert refs.model_description == mined and mined != given
    with pytest.raises(ValueError) as err:
        circuit_attributions(gelu, ds, refs, "layer3", "layer2", neurons=[0], progress=False)
    assert f"mined on model {mined}, but the model given is {given}" in str(err.value)
    assert "they differ in structure (module types or settings))" in str(err.value)


# --- faults keep the work ------------------------------------------------------------------
class Faulty(TensorImages):
    """Images whose reading raises ``error`` at index ``bad`` (a decoder's error, not OSError)."""

    def __init__(self, x, bad, error):
        super().__init__(x, name=f"faulty-{bad}-{error.__name__}")
        self.bad, self.error = bad, error

    def __getitem__(self, i):
        if i == self.bad:
            raise self.error(f"decoder failed on {i}")
        return super().__getitem__(i)


@pytest.mark.parametrize("error", [ValueError, SyntaxError, EOFError, KeyError])
def test_any_error_reading_an_image_is_an_unreadable_image(model, error):
    ds = Faulty(torch.randn(9, 3, 32, 32), bad=5, error=error)
    with pytest.raises(UnreadableImageError,
                       match=rf"dataset\[5\] cannot be read: {error.__name__}"):
        mine_references(model, ds, "layer3", n_ref=3, batch_size=4, progress=False)
    with pytest.warns(UserWarning, match=r"left out \(unreadable\): 5"):
        refs = mine_references(model, ds, "layer3", n_ref=3, batch_size=4, on_unreadable="skip",
                               progress=False)
    keep = [i for i in range(9) if i != 5]
    idx, vals, _, _ = brute_force(model, TensorImages(ds.x[keep]), "layer3", 3)
    assert np.array_equal(refs.indices.numpy(), np.array(keep)[idx])


def test_a_file_the_decoder_refuses_is_an_unreadable_image(model, tmp_path):
    import struct
    import zlib

    from PIL import Image

    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    for k in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"{k}.png")
    # a valid header declaring 20000 x 20000 pixels: PIL refuses it (DecompressionBombError,
    # which is no OSError)
    png = (root / "3.png").read_bytes()
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    (root / "3.png").write_bytes(png[:8] + chunk + png[33:])
    ds = ImageFolderDataset(root, image_size=32, resize=32)
    with pytest.raises(UnreadableImageError, match=r"3.png \(index 3\) cannot be read: "
                                                   r"DecompressionBombError"):
        ds.image(3)
    with pytest.warns(UserWarning, match=r"left out \(unreadable\): 3"):
        refs = mine_references(model, ds, "layer3", n_ref=2, batch_size=4, on_unreadable="skip",
                               progress=False)
    assert refs.skipped["unreadable"].tolist() == [3]


class FailAt:
    """A forward hook that raises on its ``at``-th call (a fault in the model's forward)."""

    def __init__(self, at):
        self.at, self.calls = at, 0

    def __call__(self, module, inputs, output):
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("injected fault in the forward pass")


def _counting(model):
    seen = []
    return seen, model.conv1.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))


def test_a_fault_in_the_forward_keeps_the_work(model, tmp_path):
    ds = TensorImages(torch.randn(14, 3, 32, 32), name="fault")
    cache = Cache(tmp_path)
    handle = model.layer1.register_forward_hook(FailAt(3))  # the third batch: images 8-11
    try:
        with pytest.raises(RuntimeError, match="injected fault") as err:
            mine_references(model, ds, "layer3", n_ref=3, batch_size=4, cache=cache, progress=False)
    finally:
        handle.remove()
    assert "the 8 samples before it are kept" in " ".join(getattr(err.value, "__notes__", []))
    assert list(tmp_path.glob("references-partial-*.json"))
    seen, handle = _counting(model)
    try:
        refs = mine_references(model, ds, "layer3", n_ref=3, batch_size=4, cache=cache,
                               progress=False)
    finally:
        handle.remove()
    assert sum(seen) == 6  # images 8-13: the first two batches are not run again
    idx, vals, pos, _ = brute_force(model, ds, "layer3", 3)
    assert np.array_equal(refs.indices.numpy(), idx) and np.array_equal(refs.positions.numpy(), pos)
    assert not list(tmp_path.glob("references-partial-*"))


def test_deleting_the_file_that_stopped_mining_keeps_the_work(model, folder_with_bad_image,
                                                               tmp_path):
    root, bad = folder_with_bad_image
    cache = Cache(tmp_path / "cache")
    with pytest.raises(UnreadableImageError, match="the 4 samples before it are kept"):
        mine_references(model, ImageFolderDataset(root, image_size=32, resize=36), "layer3",
                        n_ref=3, batch_size=4, cache=cache, progress=False)
    bad.unlink()  # what a user does with a damaged file; the folder now holds 9 images
    ds = ImageFolderDataset(root, image_size=32, resize=36)
    seen, handle = _counting(model)
    try:
        refs = mine_references(model, ds, "layer3", n_ref=3, batch_size=4, cache=cache,
                               progress=False)
    finally:
        handle.remove()
    assert sum(seen) == 5  # images 4-8 of the new folder; 0-3 are those kept
    fresh = mine_references(model, ds, "layer3", n_ref=3, batch_size=4, progress=False)
    assert torch.equal(refs.indices, fresh.indices) and torch.equal(refs.positions, fresh.positions)
    assert torch.equal(refs.values, fresh.values)


def test_deleting_a_skipped_file_keeps_the_pass(model, folder_with_bad_image, tmp_path):
    root, bad = folder_with_bad_image
    cache = Cache(tmp_path / "cache")
    with pytest.warns(UserWarning, match=r"left out \(unreadable\)"):
        mine_references(model, ImageFolderDataset(root, image_size=32, resize=36), "layer3",
                        n_ref=3, batch_size=4, cache=cache, on_unreadable="skip", progress=False)
    bad.unlink()
    ds = ImageFolderDataset(root, image_size=32, resize=36)
    seen, handle = _counting(model)
    try:
        refs = mine_references(model, ds, "layer3", n_ref=3, batch_size=4, cache=cache,
                               progress=False)
    finally:
        handle.remove()
    assert sum(seen) == 0  # nothing to mine again: the skipped file was never ranked
    assert refs.skipped["unreadable"].numel() == 0  # the new folder has no unreadable file
    fresh = mine_references(model, ds, "layer3", n_ref=3, batch_size=4, progress=False)
    assert torch.equal(refs.indices, fresh.indices) and torch.equal(refs.positions, fresh.positions)
    # other batches (3 images where the damaged file was): the last bits may differ
    torch.testing.assert_close(refs.values, fresh.values, atol=1e-6, rtol=1e-5)
    # a file added before the end is new work: mined from the start (nothing is mapped wrongly)
    (root / "00b.png").write_bytes((root / "03.png").read_bytes())
    ds = ImageFolderDataset(root, image_size=32, resize=36)
    seen, handle = _counting(model)
    try:
        refs = mine_references(model, ds, "layer3", n_ref=3, batch_size=4, cache=cache,
                               progress=False)
    finally:
        handle.remove()
    assert sum(seen) == 10
    fresh = mine_references(model, ds, "layer3", n_ref=3, batch_size=4, progress=False)
    assert torch.equal(refs.indices, fresh.indices)


# --- every model a user may pass ------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_is_mined_in_its_precision(model, dtype):
    import copy

    low = copy.deepcopy(model).to(dtype)
    ds = TensorImages(torch.randn(8, 3, 32, 32), name="half")
    refs = mine_references(low, ds, "layer3", n_ref=3, batch_size=3, progress=False)
    assert refs.values.dtype == torch.float32
    with torch.no_grad():  # brute force in the model's precision
        act = forward_until(low, ds.x.to(dtype), "layer3").float().flatten(2).amax(2)
    assert torch.equal(refs.values, act.T.gather(1, refs.indices))
    order = sorted(range(8), key=lambda i: (-float(act[i, 0]), i))[:3]
    assert refs.indices[0].tolist() == order
    # attribution in half precision would lose small contributions: refused, saying what to do
    with pytest.raises(ValueError, match=rf"parameters are {dtype}.*model\.float\(\)"):
        circuit_attributions(low, ds, refs, "layer3", "layer2", neurons=[0], progress=False)


def test_a_model_in_train_mode_or_without_gradients_is_mined_as_in_eval_mode(model):
    import copy

    ds = TensorImages(torch.randn(8, 3, 32, 32), name="modes")
    want = mine_references(model, ds, "layer3", n_ref=3, batch_size=3, progress=False)
    training = copy.deepcopy(model).train()
    refs = mine_references(training, ds, "layer3", n_ref=3, batch_size=3, progress=False)
    assert training.training and torch.equal(refs.indices, want.indices)
    assert torch.equal(refs.values, want.values)
    frozen = copy.deepcopy(model).requires_grad_(False)
    refs = mine_references(frozen, ds, "layer3", n_ref=3, batch_size=3, progress=False)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert torch.equal(refs.indices, want.indices)


def test_a_model_without_weights_is_refused_naming_what_to_do(model):
    import copy

    ds = TensorImages(torch.randn(4, 3, 32, 32), name="meta")
    meta = copy.deepcopy(model).to("meta")
    with pytest.raises(ValueError, match=r"'meta' device.*load_state_dict"):
        mine_references(meta, ds, "layer3", n_ref=2, progress=False)


def test_images_of_another_size_in_a_batch_are_named_and_the_work_kept(model, tmp_path):
    class Mixed(TensorImages):
        def __getitem__(self, i):
            x, y = super().__getitem__(i)
            return (torch.zeros(3, 40, 32) if i == 6 else x), y

    ds = Mixed(torch.randn(10, 3, 32, 32), name="mixed")
    with pytest.raises(ValueError, match=r"differ in size: .*dataset\[6\] \(3, 40, 32\).*"
                                         r"the 4 samples before it are kept"):
        mine_references(model, ds, "layer3", n_ref=2, batch_size=4, cache=Cache(tmp_path),
                        progress=False)


def test_dead_channels_are_marked_and_named():
    """Channels whose bias keeps them below zero on every image never activate after the ReLU."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3)
    with torch.no_grad():
        conv.weight.mul_(0.01)
        conv.bias.copy_(torch.tensor([1.0, -50.0, 1.0, -50.0, 0.5, -50.0]))
    model = nn.Sequential()
    model.add_module("conv", conv)
    model.add_module("relu", nn.ReLU())
    ds = TensorImages(torch.rand(9, 3, 12, 12))
    with pytest.warns(UserWarning, match=r"3 of 6 channels never activate.*: 1, 3, 5;"):
        refs = mine_references(model, ds, "relu", n_ref=3, batch_size=4, progress=False)
    with torch.no_grad():  # independent: the maximum over every image and position
        peak = model(torch.stack([ds[i][0] for i in range(len(ds))])).amax(dim=(0, 2, 3))
    assert refs.dead.dtype == torch.long
    assert refs.dead.tolist() == torch.nonzero(peak <= 0).flatten().tolist() == [1, 3, 5]
    assert refs.subset([3, 4]).dead.tolist() == [3]
    with torch.no_grad():
        conv.bias.fill_(1.0)  # every channel positive somewhere: nothing to warn about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        live = mine_references(model, ds, "relu", n_ref=3, batch_size=4, progress=False)
    assert live.dead.numel() == 0
