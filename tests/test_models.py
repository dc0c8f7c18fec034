"""Tests of pure_utils.models: model loading, layer lookup, BatchNorm randomisation, fingerprints."""
import pytest
import torch

from pure_utils.layers import get_layer, layer_names, layer_order
from pure_utils.models import build_resnet, load_model, model_fingerprint, randomize_batchnorm


def test_load_timm_model_is_frozen_eval_and_named():
    model = load_model("resnet18", num_classes=10)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert model.pure_name == "resnet18"
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="not_a_model"):
        load_model("not_a_model")


def test_layer_lookup_and_error_lists_layers():
    model = build_resnet("basic")
    assert get_layer(model, "layer4") is model.layer4
    assert "layer3.0.conv1" in layer_names(model)
    with pytest.raises(ValueError, match=r"layer 'layer5' not found; layers: conv1, bn1.*layer4"):
        get_layer(model, "layer5")
    a, b = layer_order(model, ["layer3", "layer4"])
    assert a < b


def test_build_resnet_bottleneck_widths():
    model = build_resnet("bottleneck", channels=(8, 8, 8, 8), stem_width=8, num_classes=3)
    out = get_layer(model, "layer4")
    assert out[-1].conv3.out_channels == 32  # expansion 4
    with pytest.raises(ValueError, match="block"):
        build_resnet("dense")


def test_randomize_batchnorm_changes_zero_initialised_bn_and_is_seeded():
    a = randomize_batchnorm(build_resnet("basic"), seed=1)
    b = randomize_batchnorm(build_resnet("basic"), seed=1)
    bn = a.layer1[0].bn2  # zero-initialised by timm
    assert bn.weight.abs().min() > 0.5
    assert torch.equal(bn.running_mean, b.layer1[0].bn2.running_mean)


def test_fingerprint_tracks_weights(tmp_path):
    torch.manual_seed(0)
    model = build_resnet("basic")
    fp = model_fingerprint(model)
    assert fp == model_fingerprint(model)
    with torch.no_grad():
        model.fc.bias[0] += 1
    assert model_fingerprint(model) != fp


def test_checkpoint_safetensors_roundtrip(tmp_path):
    from safetensors.torch import save_file

    src = randomize_batchnorm(load_model("resnet18", num_classes=4), seed=3)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    loaded = load_model("resnet18", num_classes=4, checkpoint=path)
    assert model_fingerprint(loaded) != model_fingerprint(load_model("resnet18", num_classes=4))
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(loaded(x), src(x))
    with pytest.raises(FileNotFoundError):
        load_model("resnet18", checkpoint=tmp_path / "missing.safetensors")


# --- damaged checkpoints and arguments that do not apply ------------------------------------
def test_damaged_safetensors_names_the_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in load_model("resnet18").state_dict().items()}, str(path))
    path.write_bytes(path.read_bytes()[:1000])  # cut short
    with pytest.raises(ValueError, match=rf"checkpoint {path} is not a readable safetensors file"):
        load_model("resnet18", checkpoint=path)


@pytest.mark.parametrize("content", ["cut", "object"])
def test_unreadable_pt_names_the_file_and_never_advises_weights_only_false(tmp_path, content):
    import argparse

    path = tmp_path / "w.pt"
    if content == "cut":
        torch.save(load_model("resnet18").state_dict(), path)
        path.write_bytes(path.read_bytes()[:2000])
    else:  # an object that is not a tensor: refused by weights_only=True
        torch.save({"args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ValueError) as err:
        load_model("resnet18", checkpoint=path)
    text = str(err.value)
    assert f"checkpoint {path} cannot be read as a state dict of tensors" in text
    assert "weights_only" not in text and err.value.__cause__ is None and err.value.__suppress_context__
    with pytest.raises(IsADirectoryError, match="is a folder"):
        load_model("resnet18", checkpoint=tmp_path)


def test_shipped_model_refuses_arguments_it_would_ignore():
    with pytest.raises(ValueError, match=r"shipped model .* 16 classes: pretrained=False and "
                                         r"num_classes=10 apply to timm names only"):
        load_model("synthetic_resnet_basic", num_classes=10)
    with pytest.raises(ValueError, match="pretrained=True"):
        load_model("synthetic_resnet_basic", pretrained=True)
    assert load_model("synthetic_resnet_basic", num_classes=16).fc.out_features == 16  # its own


def test_pretrained_offline_fails_fast_without_cached_weights(monkeypatch, tmp_path):
    import time

    import huggingface_hub
    import timm

    from pure_utils import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty torch hub cache
    called = []
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: called.append(a) or torch.nn.Linear(1, 1))
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"'resnet18\.a1_in1k'.*HF_HUB_OFFLINE.*checkpoint="):
        load_model("resnet18.a1_in1k", pretrained=True)
    assert time.perf_counter() - start < 1 and not called  # no download attempted, no retries
    # weights in the cache (or the hub switched on): timm is asked as before
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / timm.models.get_pretrained_cfg("resnet18.a1_in1k").url.split("/")[-1]
     ).write_bytes(b"")
    load_model("resnet18.a1_in1k", pretrained=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    load_model("resnet18.a1_in1k", pretrained=True)
    assert len(called) == 2 and models._offline() is False
