"""Tests of pure_utils.references: streaming top-k reference samples against brute force."""
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
