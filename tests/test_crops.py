"""Heatmaps (against zennit's own attributor) and crop boxes on constructed heatmaps."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pure_utils.models import build_resnet, randomize_batchnorm
from pure_utils.crops import crop_boxes, display_crops, feature_crops, feature_heatmaps


def _block(H=64, W=64, rows=(10, 20), cols=(30, 50), value=1.0):
    h = torch.zeros(H, W)
    h[rows[0]:rows[1], cols[0]:cols[1]] = value
    return h


# --- crop boxes --------------------------------------------------------------------------
def test_box_of_a_block_is_squared_around_its_centre():
    box = crop_boxes(_block(), blur_kernel=1)            # 10 x 20 block
    assert box.tolist() == [5, 30, 25, 50]               # height grown to 20, centred
    assert crop_boxes(_block(), blur_kernel=1, square=False).tolist() == [10, 30, 20, 50]


def test_threshold_and_sign():
    h = _block(value=-1.0)                               # negative relevance counts (|h|)
    h[60, 60] = 0.01                                     # below 2% of the maximum: ignored
    assert crop_boxes(h, blur_kernel=1).tolist() == [5, 30, 25, 50]
    h[60, 60] = 0.05                                     # above: the box reaches it
    y0, x0, y1, x1 = crop_boxes(h, blur_kernel=1).tolist()
    assert (y0, y1) == (10, 61) and (x0, x1) == (13, 64)   # 51 px square, shifted left


def test_blur_kernel_5_grows_a_point_by_two_pixels():
    h = torch.zeros(64, 64)
    h[30, 30] = 1.0
    # torchvision's sigma for kernel 5 is 1.1; the weight at offset (2, 2) relative to the
    # centre is exp(-8 / (2 * 1.21)) = 0.037 > 0.02, so the whole 5 x 5 kernel is inside
    assert crop_boxes(h).tolist() == [28, 28, 33, 33]


def test_boxes_are_shifted_into_the_image_and_clipped():
    top = crop_boxes(_block(rows=(0, 4), cols=(0, 30)), blur_kernel=1).tolist()
    assert top == [0, 0, 30, 30]                         # squared downwards, not past the top
    corner = crop_boxes(_block(rows=(60, 64), cols=(40, 64)), blur_kernel=1).tolist()
    assert corner == [40, 40, 64, 64]
    wide = crop_boxes(_block(H=20, W=64, rows=(5, 10), cols=(2, 62)), blur_kernel=1).tolist()
    # the 60 px square does not fit 20 rows: clipped to the image, the relevant width is kept
    assert wide == [0, 2, 20, 62]


def test_empty_heatmap_gives_whole_image_and_batches_keep_shape():
    maps = torch.stack([torch.zeros(48, 64), _block(H=48)])
    boxes = crop_boxes(maps.view(2, 1, 48, 64))
    assert boxes.shape == (2, 1, 4) and boxes.dtype == torch.long
    assert boxes[0, 0].tolist() == [0, 0, 48, 64]
    with pytest.raises(ValueError, match="threshold=1.5"):
        crop_boxes(maps, threshold=1.5)


def test_feature_and_display_crops():
    imgs = torch.rand(2, 3, 64, 64)
    maps = torch.stack([_block(), torch.zeros(64, 64)])
    crops = feature_crops(imgs, maps, blur_kernel=1)
    assert crops[0].shape == (3, 20, 20) and crops[1].shape == (3, 64, 64)
    assert torch.equal(crops[0], imgs[0, :, 5:25, 30:50])   # no masking
    disp = display_crops(imgs, maps, blur_kernel=1, threshold=0.01, outline_color=(1, 0, 0))
    d = disp[0]
    assert d.shape[0] == 4 and d.shape[1] == d.shape[2]
    y0, x0 = crop_boxes(maps[0], blur_kernel=1, threshold=0.01)[:2].tolist()
    a = d[3]
    assert a[10 - y0 + 4, 30 - x0 + 5] == 1.0               # inside the region: opaque
    assert torch.allclose(a[0, 0], torch.tensor(0.4))        # outside: dimmed
    assert d[:3, 10 - y0, 35 - x0].tolist() == [1.0, 0.0, 0.0]   # border pixel: outline colour
    assert torch.equal(d[:3, 15 - y0, 40 - x0], imgs[0, :, 15, 40])  # interior untouched
    with pytest.raises(ValueError, match="heatmap size"):
        feature_crops(torch.rand(1, 3, 32, 32), maps[:1])


# --- heatmaps ------------------------------------------------------------------------------
class _Data:
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def __init__(self, n=5, size=64):
        self.x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return (self.x[i] - 0.5) / 0.25, 0

    def image(self, i):
        return self.x[i]


def _references(model, ds, layer):
    acts = []
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: acts.append(o))
    with torch.no_grad():
        model(torch.stack([ds[i][0] for i in range(len(ds))]))
    h.remove()
    a = acts[0]                                              # [n, C, h, w]
    flat = a.flatten(2)
    vals, idx = flat.amax(2).T.sort(1, descending=True)      # [C, n]
    arg = flat.argmax(2).T                                   # [C, n] for each sample
    arg = torch.gather(arg, 1, idx)
    pos = torch.stack([arg // a.shape[3], arg % a.shape[3]], -1)
    return SimpleNamespace(indices=idx, values=vals, positions=pos, map_size=tuple(a.shape[2:]))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = randomize_batchnorm(build_resnet("basic"), 0).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ds = _Data()
    return model, ds


def test_heatmaps_match_zennit_attributor(tiny):
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat

    from pure_utils.canonizers import canonizers_for

    model, ds = tiny
    refs = _references(model, ds, "layer2")
    hm = feature_heatmaps(model, ds, refs, "layer2", [1, 4], n_ref=3, batch_size=2, progress=False)
    assert hm.shape == (2, 3, 64, 64)

    class UpTo(torch.nn.Module):                              # the model cut after layer2
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            m = self.m
            x = m.maxpool(m.act1(m.bn1(m.conv1(x))))
            return m.layer2(m.layer1(x))

    cut = UpTo(model)
    for j, k in enumerate([1, 4]):
        for r in range(3):
            i = int(refs.indices[k, r])
            row, col = refs.positions[k, r].tolist()
            x = ds[i][0].unsqueeze(0)
            with Gradient(cut, EpsilonPlusFlat(canonizers=canonizers_for(model))) as attributor:
                out, rel = attributor(x, lambda o: torch.zeros_like(o).index_put_(
                    (torch.tensor([0]), torch.tensor([k]), torch.tensor([row]), torch.tensor([col])),
                    o[0, k, row, col].reshape(1)))
            torch.testing.assert_close(hm[j, r], rel[0].sum(0), atol=1e-5, rtol=1e-4)
    # relevance stays in the receptive field of the position (layer2: stride 8)
    assert hm.abs().sum() > 0


def test_heatmap_is_local_and_batch_independent(tiny):
    model, ds = tiny
    refs = _references(model, ds, "layer1")                  # 16 x 16 map, stride 4
    a = feature_heatmaps(model, ds, refs, "layer1", [0, 2], batch_size=1, progress=False)
    b = feature_heatmaps(model, ds, refs, "layer1", [0, 2], batch_size=7, progress=False)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    row, col = refs.positions[0, 0].tolist()
    nz = a[0, 0].abs() > 0
    ys, xs = torch.nonzero(nz, as_tuple=True)
    # receptive field of layer1 (7x7/2 conv, 3x3/2 pool, two 3x3 convs): 35 px around 4*pos
    assert ys.min() >= 4 * row - 20 and ys.max() <= 4 * row + 20
    assert xs.min() >= 4 * col - 20 and xs.max() <= 4 * col + 20
    with pytest.raises(ValueError, match="composite"):
        feature_heatmaps(model, ds, refs, "layer1", [0], composite="nope")
    with pytest.raises(ValueError, match="neurons"):
        feature_heatmaps(model, ds, refs, "layer1", [999])


def test_heatmaps_on_an_uncovered_model_raise_unless_approximate():
    import timm

    from pure_utils.canonizers import LRPApproximationWarning

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050").eval()
    ds = _Data(n=3)
    refs = _references(model, ds, "blocks.2")
    with pytest.raises(ValueError, match=r"LRP would not be correct on this MobileNetV3 "
                                         r".*InvertedResidual \(blocks.1.0"):
        feature_heatmaps(model, ds, refs, "blocks.2", [0], progress=False)
    with pytest.warns(LRPApproximationWarning) as record:
        hm = feature_heatmaps(model, ds, refs, "blocks.2", [0, 1], n_ref=2, approximate=True,
                              progress=False)
    # the share of the initial relevance reaching the input, as reported
    init = torch.stack([torch.stack([
        _unit(model, ds, "blocks.2", k, int(refs.indices[k, r]), refs.positions[k, r]) for r in range(2)])
        for k in (0, 1)])
    ratio = hm.flatten(2).sum(2) / init
    text = "\n".join(str(w.message) for w in record)
    assert "InvertedResidual" in text and f"median {ratio.flatten().median():.3f}" in text


def _unit(model, ds, layer, k, i, pos):
    acts = []
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, inp, o: acts.append(o))
    with torch.no_grad():
        model(ds[i][0][None])
    h.remove()
    return acts[0][0, k, pos[0], pos[1]]


def test_nonfinite_heatmaps_name_neurons_and_samples(tiny):
    model, _ = tiny
    ds = _Data(n=3)
    ds.x[1, 0, 0, 0] = float("nan")
    refs = SimpleNamespace(indices=torch.tensor([[0, 1], [1, 2]]),
                           positions=torch.zeros(2, 2, 2, dtype=torch.long), map_size=(2, 2))
    with pytest.raises(ValueError, match=r"heatmaps of layer 'layer4' are not finite \(NaN or inf\) for "
                                         r"neuron 0 on sample 1, neuron 1 on sample 1"):
        feature_heatmaps(model, ds, refs, "layer4", [0, 1], progress=False)


def test_crops_from_boxes_refuses_float_indices():
    from pure_utils.crops import crops_from_boxes

    ds = _Data(n=3)
    boxes = torch.tensor([[0, 0, 8, 8]])
    assert crops_from_boxes(ds, torch.tensor([2]), boxes)[0].shape == (3, 8, 8)
    with pytest.raises(ValueError, match="crop indices have dtype torch.float32"):
        crops_from_boxes(ds, torch.tensor([1.9]), boxes)
