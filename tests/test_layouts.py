"""Layouts: every stage reads CNN maps and ViT tokens alike, checked per architecture family.

Tiny timm models of each family with random weights (ResNet, ConvNeXt, EfficientNet, RegNet,
ViT, and Swin, whose stages are channels last) are run through mining, circuits, the activation baseline and heatmaps; each result is
compared with an independent computation (a brute-force top-k over all activations, autograd
from the input through the whole model), whose layout conversion is written out here, not taken
from the library.
"""
import re

import numpy as np
import pytest
import timm
import torch

from pure_utils.canonizers import lrp_support
from pure_utils.cache import Cache, cache_entry
from pure_utils.circuits import BASELINES, _indices_digest, activation_vectors, circuit_attributions
from pure_utils.crops import crop_boxes, feature_heatmaps
from pure_utils.data import GeneratedImages
from pure_utils.layers import Layout, forward_until, layer_layout, layout_key, patch_map
from pure_utils.models import build_resnet, randomize_batchnorm
from pure_utils.references import mine_references
from pure_utils.virtual import VirtualNeurons
from brute import outputs_in_graph


def _make(family):
    """``(model, input size, layer, lower layer)`` of a tiny random model of ``family``."""
    torch.manual_seed(0)
    if family == "resnet":
        model = build_resnet("basic", channels=(8, 8, 16, 16), stem_width=8, num_classes=4)
        return randomize_batchnorm(model, 0).eval(), 48, "layer4", "layer3"
    if family == "convnext":  # layer scale 1: the random blocks compute something
        model = timm.create_model("convnext_atto", pretrained=False, num_classes=4, dims=(8, 16, 16, 16),
                                  depths=(1, 1, 1, 1), ls_init_value=1.0)
        return model.eval(), 64, "stages.3", "stages.2"
    if family == "efficientnet":
        return randomize_batchnorm(timm.create_model("tinynet_e", pretrained=False, num_classes=4),
                                   0).eval(), 64, "blocks.3", "blocks.2"
    if family == "regnet":
        return randomize_batchnorm(timm.create_model("regnetx_002", pretrained=False, num_classes=4),
                                   0).eval(), 64, "s3", "s2"
    if family == "vit":  # a class token and two register tokens in front of 16 patch tokens
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32,
                                  patch_size=8, depth=2, reg_tokens=2)
        return model.eval(), 32, "blocks.1", "blocks.0"
    if family == "swin":  # stages of [B, H, W, C]
        model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=4,
                                  img_size=56, depths=(1, 1), num_heads=(1, 2), embed_dim=16)
        return model.eval(), 56, "layers.1", "layers.0"
    raise ValueError(family)


FAMILIES = ["resnet", "convnext", "efficientnet", "regnet", "vit", "swin"]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    model, size, layer, lower = _make(request.param)
    return request.param, model, GeneratedImages(9, size=size, seed=2), layer, lower


def _unit_view(family, out, tokens="patches"):
    """``[B, C, positions]`` of the studied layer, written out per family: CNN maps flattened
    row-major, ViT tokens transposed with the 3 prefix tokens dropped (or kept with "all")."""
    if family == "vit":
        return (out[:, 3:] if tokens == "patches" else out).permute(0, 2, 1)
    if family == "swin":
        out = out.permute(0, 3, 1, 2)
    return out.reshape(out.shape[0], out.shape[1], -1)


def _lower_sum(family, t):
    """Sum over every position of the lower layer: ``[B, C]`` (all tokens for a ViT)."""
    return t.sum(1) if family == "vit" else t.sum((1, 2)) if family == "swin" else t.sum((2, 3))


# --- detection --------------------------------------------------------------------------------
def test_layouts_come_from_the_module_types():
    vit, *_ = _make("vit")
    lay = layer_layout(vit, "blocks.1")
    assert (lay.kind, lay.prefix_tokens, lay.tokens, lay.grid, lay.patch_size) == \
        ("tokens", 3, "patches", (4, 4), (8, 8))
    assert layer_layout(vit, "blocks.1.mlp.act").kind == "tokens"
    assert layer_layout(vit, "patch_embed") == Layout("tokens", 0, "patches", (4, 4), (8, 8))
    assert layer_layout(vit, "patch_embed.proj").kind == "map"      # the convolution before flattening
    assert layer_layout(vit, "blocks.1", tokens="all").tokens == "all"
    assert layer_layout(vit, "blocks.1", "map") == Layout("map")   # explicit wins
    conv, *_ = _make("convnext")
    assert layer_layout(conv, "stages.1").kind == "map"
    assert layer_layout(conv, "stages.1.blocks.0.mlp.fc1").kind == "map"  # 1x1 convolutions
    assert layer_layout(conv, "stages.1.blocks.0.norm").kind == "map"     # LayerNorm2d
    torch.manual_seed(0)
    linear_mlp = timm.create_model("convnext_atto", pretrained=False, dims=(8, 16, 16, 16),
                                   depths=(1, 1, 1, 1), conv_mlp=False)
    for name in ("stages.1.blocks.0.mlp.fc1", "stages.1.blocks.0.mlp.act", "stages.1.blocks.0.norm"):
        assert layer_layout(linear_mlp, name).kind == "map_last", name
    assert layer_layout(linear_mlp, "stages.1.blocks.0.conv_dw").kind == "map"
    assert layer_layout(linear_mlp, "stages.1.blocks.0").kind == "map"
    resnet, *_ = _make("resnet")
    assert layer_layout(resnet, "layer4").kind == "map"
    assert layer_layout(resnet, "layer4", {"layer3": "tokens"}).kind == "map"  # other layers' entry
    assert layout_key(Layout(), None) == {} and layout_key(lay) == {"layouts": [str(lay)]}


def test_channels_place_and_grid_are_inverse(tiny):
    family, model, data, layer, _ = tiny
    x = torch.stack([data[i][0] for i in range(2)])
    with torch.no_grad():
        (out,) = outputs_in_graph(model, x, [layer])
    lay = layer_layout(model, layer)
    v = lay.channels(out)
    assert torch.equal(v, _unit_view(family, out))
    back = lay.place(v, out)
    if family == "vit":   # the prefix tokens are not the unit's positions: zero
        assert back[:, :3].abs().sum() == 0 and torch.equal(back[:, 3:], out[:, 3:])
        assert lay.positions_grid(out, x.shape[-2:]) == (4, 4)
    else:
        hw = out.shape[1:3] if family == "swin" else out.shape[2:]
        assert torch.equal(back, out) and lay.positions_grid(out) == tuple(hw)


# --- mining against a brute-force top-k -------------------------------------------------------
def test_mining_equals_brute_force_topk(tiny):
    family, model, data, layer, _ = tiny
    n_ref = 4
    refs = mine_references(model, data, layer, n_ref=n_ref, batch_size=4, progress=False)
    with torch.no_grad():
        (out,) = outputs_in_graph(model, torch.stack([data[i][0] for i in range(len(data))]), [layer])
    a = _unit_view(family, out).detach().numpy()              # [N, C, positions]
    vals, flat = a.max(2), a.argmax(2)
    n, c = vals.shape
    grid = (4, 4) if family == "vit" else tuple(out.shape[1:3] if family == "swin" else out.shape[2:])
    assert refs.indices.shape == (c, n_ref) and refs.map_size == grid
    assert refs.layout == layer_layout(model, layer)
    for ch in range(c):
        order = sorted(range(n), key=lambda i: (-vals[i, ch], i))[:n_ref]
        assert refs.indices[ch].tolist() == order
        np.testing.assert_allclose(refs.values[ch].numpy(), vals[order, ch], rtol=1e-5, atol=1e-6)
        expect = np.stack([flat[order, ch] // grid[1], flat[order, ch] % grid[1]], -1)
        assert refs.positions[ch].tolist() == expect.tolist()


@pytest.mark.parametrize("name,kwargs,size,grid,prefix", [
    ("eva02_tiny_patch14_224", dict(img_size=28, depth=1), 28, (2, 2), 1),
    ("deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=8, depth=1), 32, (4, 4), 2),
    ("beit_base_patch16_224", dict(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2), 32,
     (4, 4), 1)])
def test_other_vision_transformers_mine_over_their_patch_tokens(name, kwargs, size, grid, prefix):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    data = GeneratedImages(6, size=size, seed=3)
    refs = mine_references(model, data, "blocks.0", n_ref=2, progress=False)
    assert refs.map_size == grid and refs.layout.prefix_tokens == prefix
    with torch.no_grad():
        (out,) = outputs_in_graph(model, torch.stack([data[i][0] for i in range(6)]), ["blocks.0"])
    best = out[:, prefix:].amax(1).detach()                     # [N, D]: max over patch tokens
    assert refs.indices.shape == (out.shape[2], 2)
    torch.testing.assert_close(refs.values, best.sort(0, descending=True).values[:2].T)


def test_vit_tokens_are_not_taken_for_channels():
    model, size, layer, _ = _make("vit")
    data = GeneratedImages(5, size=size, seed=1)
    refs = mine_references(model, data, layer, n_ref=2, progress=False)
    # 192 embedding dimensions over a 4 x 4 patch grid, not 19 tokens over one position
    assert refs.indices.shape == (192, 2) and refs.map_size == (4, 4)
    assert "tokens" in repr(refs)
    every = mine_references(model, data, layer, n_ref=2, tokens="all", progress=False)
    assert every.map_size == (1, 19) and every.layout.tokens == "all"
    assert (every.values >= refs.values - 1e-6).all()   # the maximum over more tokens
    mlp = mine_references(model, data, "blocks.1.mlp.act", n_ref=2, progress=False)
    assert mlp.indices.shape == (768, 2)


# --- Gradient x Activation against autograd through the whole model ---------------------------
def brute_force_gxa(family, model, data, index, layer, lower, k, tokens="patches"):
    x = data[index][0][None].clone().requires_grad_(True)
    low, high = outputs_in_graph(model, x, [lower, layer])
    unit = _unit_view(family, high, tokens)[0, k]
    seed = torch.zeros_like(high)
    if family == "vit":
        first = 3 if tokens == "patches" else 0
        seed[0, first:, k] = unit.detach().clamp(min=0)
    elif family == "swin":
        seed[0, ..., k] = unit.detach().clamp(min=0).reshape(high.shape[1:3])
    else:
        seed[0, k] = unit.detach().clamp(min=0).reshape(high.shape[2:])
    (g,) = torch.autograd.grad(high, low, seed)
    r = _lower_sum(family, g * low)[0].detach()
    return r / (r.abs().sum() + 1e-10)


def test_gxa_equals_brute_force(tiny):
    family, model, data, layer, lower = tiny
    refs = mine_references(model, data, layer, n_ref=3, batch_size=4, progress=False)
    neurons = [0, 5]
    R = circuit_attributions(model, data, refs, layer, lower, neurons=neurons, batch_size=2,
                             progress=False)
    for j, k in enumerate(neurons):
        for r, i in enumerate(refs.indices[k].tolist()):
            expected = brute_force_gxa(family, model, data, i, layer, lower, k)
            assert (R[j, r] - expected).abs().max() <= 2e-5, (family, k, i)
    assert R.abs().sum() > 0


def test_vit_mlp_units_all_tokens_and_the_test_phase():
    model, size, layer, lower = _make("vit")
    data = GeneratedImages(8, size=size, seed=4)
    units = "blocks.1.mlp.act"
    refs = mine_references(model, data, units, n_ref=4, progress=False)
    R = circuit_attributions(model, data, refs, units, lower, neurons=[3, 600], batch_size=3,
                             progress=False)
    assert R.shape == (2, 4, 192)
    for j, k in enumerate([3, 600]):
        for r, i in enumerate(refs.indices[k].tolist()):
            assert (R[j, r] - brute_force_gxa("vit", model, data, i, units, lower, k)).abs().max() <= 2e-5
    every = mine_references(model, data, layer, n_ref=3, tokens="all", progress=False)
    Ra = circuit_attributions(model, data, every, layer, lower, neurons=[7], progress=False)
    for r, i in enumerate(every.indices[7].tolist()):
        assert (Ra[0, r] - brute_force_gxa("vit", model, data, i, layer, lower, 7, "all")).abs().max() <= 2e-5
    # virtual neurons, and the test phase on new samples given as an index tensor
    vn = VirtualNeurons(n_clusters=2, random_state=0).fit(R[0])
    new = circuit_attributions(model, data, torch.tensor([[0, 1, 2]]), units, lower, neurons=[3],
                               progress=False)
    again = circuit_attributions(model, data, refs.indices[3][None], units, lower, neurons=[3],
                                 progress=False)
    assert torch.allclose(again[0], R[0], atol=1e-6)
    assert vn.predict(new[0]).shape == (3,)


def test_activation_baseline_is_the_mean_over_patch_tokens():
    model, size, layer, _ = _make("vit")
    data = GeneratedImages(6, size=size, seed=5)
    refs = mine_references(model, data, layer, n_ref=2, progress=False)
    F = activation_vectors(model, data, refs, layer, neurons=[1, 9], progress=False)
    assert F.shape == (2, 2, 192)
    with torch.no_grad():
        for j, k in enumerate([1, 9]):
            for r, i in enumerate(refs.indices[k].tolist()):
                (out,) = outputs_in_graph(model, data[i][0][None], [layer])
                assert torch.allclose(F[j, r], out[0, 3:].clamp(min=0).mean(0), atol=1e-6)


@pytest.mark.parametrize("family", ["resnet", "swin", "vit"])
def test_peak_baseline_is_every_channel_where_the_unit_peaks(family):
    """``pooling="peak"`` against a brute force: the layer by forward_until, one image at a
    time, the unit's first argmax over its positions found by hand, all channels clamped there."""
    model, size, layer, _ = _make(family)
    data = GeneratedImages(6, size=size, seed=5)
    refs = mine_references(model, data, layer, n_ref=3, progress=False)
    units = [1, 6]
    F = activation_vectors(model, data, refs, layer, neurons=units, batch_size=4, pooling="peak",
                            progress=False)
    assert F.shape[:2] == (2, 3)
    with torch.no_grad():
        for j, k in enumerate(units):
            for r, i in enumerate(refs.indices[k].tolist()):
                view = _unit_view(family, forward_until(model, data[i][0][None], layer))[0]
                pos = int(np.argmax(view[k].numpy()))               # numpy: the first maximum
                assert torch.allclose(F[j, r], view[:, pos].clamp(min=0), atol=1e-5)
                # mining found the unit's peak at the same place
                grid_w = refs.map_size[1]
                assert refs.positions[k, r].tolist() == [pos // grid_w, pos % grid_w]
    # the mean stays the default, and an index tensor (a test phase) gives the same peaks
    mean = activation_vectors(model, data, refs, layer, neurons=units, progress=False)
    assert torch.equal(mean, activation_vectors(model, data, refs, layer, neurons=units,
                                                 pooling="mean", progress=False))
    assert not torch.allclose(mean, F)
    again = activation_vectors(model, data, refs.indices[units[1]][None], layer, neurons=[units[1]],
                                pooling="peak", progress=False)
    assert torch.allclose(again[0], F[1], atol=1e-6)


def test_peak_baseline_takes_the_first_position_on_ties_and_refuses_unknown_pooling(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    with torch.no_grad():           # unit 0 is 0.5 everywhere: every position ties
        model[0].weight[0] = 0.0
        model[0].bias[0] = 0.5
    data = GeneratedImages(3, size=8, seed=1)
    refs = torch.tensor([[0, 2], [1, 2]])
    cache = Cache(tmp_path / "cache")
    F = activation_vectors(model, data, refs, "1", neurons=[0, 3], pooling="peak", cache=cache,
                            progress=False)
    with torch.no_grad():
        for r in range(2):
            out = model(data[int(refs[0, r])][0][None])[0]
            assert torch.allclose(F[0, r], out[:, 0, 0], atol=1e-6)          # the first position
            assert not torch.allclose(F[0, r], out[:, -1, -1], atol=1e-3)    # not the last one
            out = model(data[int(refs[1, r])][0][None])[0]
            pos = int(np.argmax(out[3].flatten().numpy()))
            assert torch.allclose(F[1, r], out[:, pos // 8, pos % 8], atol=1e-6)
    # the mean is cached under its own key, not served the peaks (nor the other way round)
    mean = activation_vectors(model, data, refs, "1", neurons=[0, 3], cache=cache, progress=False)
    assert torch.allclose(mean[0, 0], model(data[0][0][None])[0].mean((1, 2)).detach(), atol=1e-6)
    assert torch.equal(F, activation_vectors(model, data, refs, "1", neurons=[0, 3],
                                              pooling="peak", cache=cache, progress=False))
    # the mean's key is the one it had before there was a choice of pooling
    _, key, _ = cache_entry("activation_vectors", cache, data, model=model, layer="1",
                            neurons=[0, 3], refs=_indices_digest([0, 3], refs))
    assert key in cache and len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    assert set(BASELINES.values()) == {"mean", "peak"}
    with pytest.raises(ValueError, match="pooling='max' not known; accepted: mean, peak"):
        activation_vectors(model, data, refs, "1", neurons=[0, 3], pooling="max", progress=False)


# --- feature visualisations: an input-gradient map over patches -------------------------------
@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_gradient_x_input_heatmaps_equal_brute_force(family):
    model, size, layer, _ = _make(family)
    data = GeneratedImages(5, size=size, seed=6)
    refs = mine_references(model, data, layer, n_ref=2, progress=False)
    hm = feature_heatmaps(model, data, refs, layer, [2, 4], composite="gradient_x_input",
                          batch_size=3, progress=False)
    assert hm.shape == (2, 2, size, size)
    for j, k in enumerate([2, 4]):
        for r in range(2):
            i, (row, col) = int(refs.indices[k, r]), refs.positions[k, r].tolist()
            x = data[i][0][None].clone().requires_grad_(True)
            (out,) = outputs_in_graph(model, x, [layer])
            seed = torch.zeros_like(out)
            if family == "vit":
                seed[0, 3 + row * 4 + col, k] = out[0, 3 + row * 4 + col, k].detach()
            else:
                seed[0, k, row, col] = out[0, k, row, col].detach()
            (g,) = torch.autograd.grad(out, x, seed)
            pixels = (g * x)[0].sum(0).detach()
            if family == "vit":  # every 8 x 8 patch holds its mean
                expected = torch.zeros_like(pixels)
                for py in range(4):
                    for px in range(4):
                        block = pixels[8 * py:8 * py + 8, 8 * px:8 * px + 8]
                        expected[8 * py:8 * py + 8, 8 * px:8 * px + 8] = block.mean()
            else:
                expected = pixels
            torch.testing.assert_close(hm[j, r], expected, atol=1e-6, rtol=1e-4)
    if family == "vit":  # boxes cut from the patch map are whole patches
        boxes = crop_boxes(hm, blur_kernel=1, threshold=0.3, square=False)
        assert (boxes % 8 == 0).all()


def test_patch_map_keeps_each_patch_sum():
    rel = torch.randn(2, 20, 16)
    out = patch_map(rel, 8)
    assert torch.allclose(out[:, :16].reshape(2, 2, 8, 2, 8).sum((2, 4)),
                          rel[:, :16].reshape(2, 2, 8, 2, 8).sum((2, 4)), atol=1e-5)
    assert out[:, 16:].abs().sum() == 0  # rows no patch covers


# --- refusals -----------------------------------------------------------------------------------
def test_outputs_a_layout_cannot_read_are_refused_naming_layer_shape_and_layouts():
    model, size, *_ = _make("vit")
    data = GeneratedImages(4, size=size, seed=1)
    # the per-head queries [B, heads, N, head_dim]: no channels over positions
    with pytest.raises(ValueError, match=r"layer 'blocks.0.attn.q_norm' outputs a tensor of shape "
                                         r"\(4, 3, 19, 64\).*accepted: \[B, N, D\] or \[B, C\]"):
        mine_references(model, data, "blocks.0.attn.q_norm", n_ref=1, progress=False)
    with pytest.raises(ValueError, match=r"layer 'blocks.1' outputs a tensor of shape \(4, 19, 192\)"
                                         r".*layout map \[B, C, H, W\]"):
        mine_references(model, data, "blocks.1", n_ref=1, layout="map", progress=False)
    with pytest.raises(ValueError, match=r"layout='grid' for layer 'blocks.1' not known; layouts: "
                                         r"'map' \[B, C, H, W\], 'map_last' \[B, H, W, C\], 'tokens'"):
        mine_references(model, data, "blocks.1", n_ref=1, layout="grid", progress=False)
    with pytest.raises(ValueError, match=r"tokens='cls' not known; use one of 'patches', 'all'"):
        mine_references(model, data, "blocks.1", n_ref=1, tokens="cls", progress=False)
    with pytest.raises(ValueError, match="no patch token left"):
        mine_references(model, data, "blocks.1", n_ref=1, layout=Layout("tokens", prefix_tokens=19),
                        progress=False)
    resnet, size, layer, lower = _make("resnet")
    cnn_data = GeneratedImages(4, size=size, seed=1)
    with pytest.raises(ValueError, match=r"layer 'layer4' outputs a tensor of shape \(4, 16, 2, 2\)"):
        mine_references(resnet, cnn_data, "layer4", n_ref=1, layout="tokens", progress=False)
    refs = mine_references(resnet, cnn_data, layer, n_ref=2, progress=False)
    with pytest.raises(ValueError, match=r"layer 'layer3' outputs a tensor of shape \(\d+, 16, 3, 3\)"):
        circuit_attributions(resnet, cnn_data, refs, layer, lower, neurons=[0],
                             layout={lower: "tokens"}, progress=False)


def test_references_refuse_another_token_set():
    model, size, layer, lower = _make("vit")
    data = GeneratedImages(4, size=size, seed=1)
    every = mine_references(model, data, layer, n_ref=2, tokens="all", progress=False)
    with pytest.raises(ValueError, match=r"were mined with layout tokens .*positions: all tokens\), "
                                         r"not tokens .*positions: patch tokens"):
        circuit_attributions(model, data, every, layer, lower, neurons=[0], tokens="patches",
                             progress=False)


def test_lrp_is_refused_on_a_vit_unless_approximate():
    model, size, layer, lower = _make("vit")
    data = GeneratedImages(4, size=size, seed=1)
    missing = lrp_support(model, layer=layer, lower_layer=lower)
    assert any(line.startswith("Block (blocks.1)") for line in missing)
    assert any(line.startswith("Attention") for line in missing)
    refs = mine_references(model, data, layer, n_ref=2, progress=False)
    pattern = r"LRP would not be correct on this VisionTransformer .*Block \(blocks.1\).*approximate=True"
    with pytest.raises(ValueError, match=pattern):
        circuit_attributions(model, data, refs, layer, lower, neurons=[0],
                             attribution="epsilon_plus_flat", progress=False)
    with pytest.raises(ValueError, match=re.escape("LRP would not be correct on this VisionTransformer")):
        feature_heatmaps(model, data, refs, layer, [0], progress=False)


@pytest.mark.parametrize("name,kw,vectors,others", [
    ("resnet18", {}, ["global_pool", "fc"], {"layer4": "map", "global_pool.pool": "map"}),
    ("convnext_atto", {}, ["head", "head.flatten", "head.pre_logits", "head.fc"],
     {"head.norm": "map", "stages.3": "map"}),
    ("vit_tiny_patch16_224", dict(img_size=32, depth=1), ["fc_norm", "head"], {"norm": "tokens"}),
])
def test_vector_outputs_get_the_vector_layout(name, kw, vectors, others):
    """The layout names what a forward pass shows: every layer detected as "vector" outputs
    ``[B, C]`` (checked by running the model), and read as one position per channel."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5, **kw).eval()
    x = torch.randn(2, 3, 32, 32)
    for layer in vectors:
        lay = layer_layout(model, layer)
        with torch.no_grad():
            out = forward_until(model, x, layer)
        assert lay.kind == "vector" and out.ndim == 2, (layer, lay, tuple(out.shape))
        assert torch.equal(lay.channels(lay.check(out, layer))[:, :, 0], out)
        assert lay.positions_grid(out) == (1, 1) and lay.n_channels(out) == out.shape[1]
    for layer, kind in others.items():
        with torch.no_grad():
            out = forward_until(model, x, layer)
        assert layer_layout(model, layer).kind == kind and out.ndim > 2, layer
    with pytest.raises(ValueError, match=r"\[B, C\]"):  # a vector layout refuses a map
        Layout("vector").check(torch.zeros(1, 3, 2, 2), "layer4")


def test_vector_layout_mines_a_classifier_head_against_brute_force():
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    x = torch.randn(10, 3, 8, 8)

    class Images:
        fingerprint = "vector-test"

        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i], 0

    refs = mine_references(model, Images(), "4", n_ref=3, batch_size=4, progress=False)
    assert refs.layout.kind == "vector" and refs.map_size == (1, 1)
    with torch.no_grad():
        logits = model(x)  # [10, 3]
    top = logits.T.argsort(dim=1, descending=True, stable=True)[:, :3]
    assert torch.equal(refs.indices, top) and torch.allclose(refs.values, logits.T.gather(1, top))
