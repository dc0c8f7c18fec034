"""Tests of pure_utils.cache: keys, round trips, atomic writes, verification on read, recomputation."""
import json
import os
import stat
import warnings
from types import SimpleNamespace

import pytest
import torch

import pure_utils
import pure_utils.cache as cache_mod
from pure_utils.cache import Cache, CacheWarning, TensorSpec, cached, default_cache_dir, resolve_cache


def test_key_is_canonical_and_changes_with_params_and_version(tmp_path, monkeypatch):
    c = Cache(tmp_path)
    k = c.key("references", model="abc", layer="layer4", n_ref=100)
    assert k == c.key("references", n_ref=100, layer="layer4", model="abc")  # order-free
    assert k.startswith("references-") and len(k) == len("references-") + 64
    assert k != c.key("references", model="abc", layer="layer3", n_ref=100)
    assert k != c.key("references", model="abd", layer="layer4", n_ref=100)
    assert k != c.key("circuits", model="abc", layer="layer4", n_ref=100)
    monkeypatch.setattr(pure_utils, "__version__", "999")
    assert k != c.key("references", model="abc", layer="layer4", n_ref=100)
    with pytest.raises(ValueError, match="kind"):
        c.key("a/b")
    with pytest.raises(TypeError, match="JSON"):
        c.key("x", obj=object())


def test_roundtrip_and_get_or_compute(tmp_path):
    c = Cache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"a": torch.arange(6).reshape(2, 3), "b": torch.rand(3, 2).T}

    first = c.get_or_compute("demo", {"n": 1}, compute)
    second = c.get_or_compute("demo", {"n": 1}, compute)
    assert len(calls) == 1
    assert torch.equal(first["a"], second["a"]) and torch.equal(first["b"], second["b"])
    c.get_or_compute("demo", {"n": 2}, compute)
    assert len(calls) == 2
    tensors, meta = c.load(c.key("demo", n=1))
    assert meta["params"] == {"n": 1} and meta["kind"] == "demo"
    assert c.key("demo", n=1) in c


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    c = Cache(tmp_path)
    key = c.key("demo", n=1)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        c.save(key, {"a": torch.ones(3)}, {"x": 1})
    assert list(tmp_path.iterdir()) == []  # no entry and no temporary file
    assert c.load(key) is None


def test_interrupted_entry_counts_as_missing(tmp_path, recwarn):
    c = Cache(tmp_path)
    key = c.key("demo", n=1)
    c.save(key, {"a": torch.ones(3)})
    (tmp_path / f"{key}.json").unlink()  # as if stopped before the metadata was written
    assert c.load(key) is None
    assert not recwarn.list  # an unfinished entry is simply absent
    c.save(key, {"a": torch.ones(3)})
    record = json.loads((tmp_path / f"{key}.json").read_text())["integrity"]
    assert record["key"] == key and record["tensors"] == {"a": {"shape": [3], "dtype": "torch.float32"}}
    (tmp_path / f"{key}.safetensors").write_bytes(b"garbage")
    with pytest.warns(CacheWarning, match=f"{key}.safetensors is not used .checksum mismatch"):
        assert c.load(key) is None


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x40  # inside the last tensor's values: the file still parses
    path.write_bytes(bytes(data))


def test_changed_bytes_are_a_miss_recomputed_and_overwritten(tmp_path):
    c = Cache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(4.0)}

    c.get_or_compute("demo", {"n": 1}, compute)
    path = tmp_path / f"{c.key('demo', n=1)}.safetensors"
    _flip_last_byte(path)
    from safetensors.torch import load_file
    assert not torch.equal(load_file(str(path))["x"], torch.arange(4.0))  # parses, wrong values
    with pytest.warns(CacheWarning, match=str(path)) as record:
        out = c.get_or_compute("demo", {"n": 1}, compute)
    assert len(record) == 1 and len(calls) == 2 and torch.equal(out["x"], torch.arange(4.0))
    assert torch.equal(load_file(str(path))["x"], torch.arange(4.0))  # overwritten
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(c.get_or_compute("demo", {"n": 1}, compute)["x"], torch.arange(4.0))
    assert len(calls) == 2


def test_expected_tensors_shapes_dtypes_and_ranges(tmp_path):
    ds = SimpleNamespace(fingerprint="d")
    stored = {"idx": torch.tensor([[0, 4], [2, 1]]), "v": torch.tensor([1.0, float("nan")])}
    fresh = {"idx": torch.tensor([[0, 1], [2, 1]]), "v": torch.ones(2), "extra": torch.ones(1)}
    cases = [
        ({"extra": TensorSpec()}, "no tensor 'extra'"),
        ({"idx": TensorSpec(shape=(2, 3))}, r"shape \(2, 2\), expected \(2, 3\)"),
        ({"idx": TensorSpec(dtype=torch.int32)}, "dtype torch.int64, expected torch.int32"),
        ({"idx": TensorSpec(low=0, high=4)}, "holds 4, not below 4"),
        ({"idx": TensorSpec(low=1)}, "holds 0, below 1"),
        ({"v": TensorSpec(finite=True)}, "NaN or inf"),
    ]
    for k, (expect, reason) in enumerate(cases):
        c = Cache(tmp_path / str(k))
        cached("demo", c, ds, lambda: stored)
        with pytest.warns(CacheWarning, match=reason):
            out = cached("demo", c, ds, lambda: fresh, expect=expect)
        assert out is fresh
        assert torch.equal(cached("demo", c, ds, lambda: stored)["idx"], fresh["idx"])  # overwritten
    # what matches is used as it is: None accepts any size on an axis
    cached("demo", Cache(tmp_path / "b"), ds, lambda: stored)
    ok = {"idx": TensorSpec((None, 2), torch.int64, low=0, high=5), "v": TensorSpec((2,))}
    assert torch.equal(cached("demo", Cache(tmp_path / "b"), ds, lambda: fresh, expect=ok)["idx"],
                       stored["idx"])


def test_entry_without_checksum_or_for_another_key_is_a_miss(tmp_path):
    c = Cache(tmp_path)
    key, other = c.key("demo", n=1), c.key("demo", n=2)
    c.save(other, {"a": torch.ones(2)})
    for suffix in (".safetensors", ".json"):  # an entry copied under another key's name
        (tmp_path / f"{key}{suffix}").write_bytes((tmp_path / f"{other}{suffix}").read_bytes())
    with pytest.warns(CacheWarning, match="recorded for key"):
        assert c.load(key) is None
    meta = json.loads((tmp_path / f"{key}.json").read_text())
    del meta["integrity"]  # as written before entries carried a checksum
    (tmp_path / f"{key}.json").write_text(json.dumps(meta))
    with pytest.warns(CacheWarning, match="no checksum"):
        assert c.load(key) is None


def test_unwritable_cache_warns_and_returns_the_result(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    c = Cache(blocker / "cache")  # cannot be created, even by root
    with pytest.warns(CacheWarning, match="could not be written"):
        out = c.get_or_compute("demo", {"n": 1}, lambda: {"x": torch.ones(2)})
    assert torch.equal(out["x"], torch.ones(2))


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        c = Cache(tmp_path)
        key = c.key("demo", n=1)
        c.save(key, {"a": torch.ones(2)})
    finally:
        os.umask(old)
    for suffix in (".safetensors", ".json"):
        assert stat.S_IMODE((tmp_path / f"{key}{suffix}").stat().st_mode) == 0o666 & ~umask


def test_resolve_and_default_dir(tmp_cache):
    assert resolve_cache(None) is None and resolve_cache(False) is None
    assert resolve_cache(True).root == tmp_cache == default_cache_dir()
    c = Cache(tmp_cache)
    assert resolve_cache(c) is c
    assert resolve_cache(str(tmp_cache)).root == tmp_cache
    with pytest.raises(ValueError, match="cache=3"):
        resolve_cache(3)
    with pytest.raises(TypeError):
        Cache(tmp_cache).save(c.key("demo"), {"a": [1, 2]})


# --- a model's identity is its structure and its weights --------------------------------------
def test_fingerprint_covers_the_structure_not_only_the_weights():
    import timm

    from pure_utils.cache import model_description, model_fingerprint

    torch.manual_seed(0)
    plain = timm.create_model("resnet18", pretrained=False)
    weights = plain.state_dict()
    # the same weights in a dilated network (output stride 8: strides become dilations)
    dilated = timm.create_model("resnet18", pretrained=False, output_stride=8)
    dilated.load_state_dict(weights)
    assert dilated.layer4[0].conv1.dilation != plain.layer4[0].conv1.dilation
    # the same weights with GELU in layer4 (no parameters of its own: the state_dict is the same)
    gelu = timm.create_model("resnet18", pretrained=False)
    gelu.load_state_dict(weights)
    for block in gelu.layer4:
        block.act1, block.act2 = torch.nn.GELU(), torch.nn.GELU()
    twin = timm.create_model("resnet18", pretrained=False)
    twin.load_state_dict(weights)
    for other in (dilated, gelu, twin):
        assert other.state_dict().keys() == weights.keys()
        assert all(torch.equal(other.state_dict()[k], v) for k, v in weights.items())
    prints = [model_fingerprint(m) for m in (plain, dilated, gelu)]
    assert len(set(prints)) == 3, prints
    assert model_fingerprint(twin) == prints[0]  # the same structure and weights: the same id
    # the description says whether the structure or the weights differ
    described = [model_description(m) for m in (plain, dilated, twin)]
    assert described[0] == described[2] and described[0] != described[1]
    assert described[0].startswith("ResNet (") and prints[0] in described[0]


# --- a cache entry's key covers the code that computes it --------------------------------------
def test_a_change_of_the_package_code_is_a_miss(tmp_path, monkeypatch):
    c = Cache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"a": torch.arange(3)}

    c.get_or_compute("demo", {"n": 1}, compute)
    c.get_or_compute("demo", {"n": 1}, compute)
    assert len(calls) == 1
    key = c.key("demo", n=1)
    # the attribution code changed, the version did not: another key, computed again
    monkeypatch.setattr(cache_mod, "source_hash", lambda: "0" * 64)
    assert c.key("demo", n=1) != key
    c.get_or_compute("demo", {"n": 1}, compute)
    assert len(calls) == 2


def test_the_source_hash_follows_every_python_file_of_the_package(tmp_path):
    from pure_utils.cache import source_hash

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    (pkg / "notes.txt").write_text("not code")
    first = source_hash(pkg)
    assert first == source_hash(pkg) and len(first) == 64
    (pkg / "notes.txt").write_text("other notes")  # not code: the same hash
    source_hash.cache_clear()
    assert source_hash(pkg) == first
    (pkg / "sub" / "b.py").write_text("y = 3\n")     # a changed line in a sub-package
    source_hash.cache_clear()
    changed = source_hash(pkg)
    assert changed != first
    (pkg / "sub" / "c.py").write_text("")            # a new, empty module
    source_hash.cache_clear()
    assert source_hash(pkg) not in (first, changed)
    # the package's own hash: computed once per process, over its files
    source_hash.cache_clear()
    assert source_hash() == source_hash(os.path.dirname(pure_utils.__file__))
