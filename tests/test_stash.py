"""The stash (pure_utils.stash): what mining keeps, in which tier, and attribution from it.

What the stash holds is compared with the reference sets and with the lower layer's output
computed again batch by batch; attribution from the stash with a brute-force Gradient x
Activation (whole model, autograd from the input) and with the engine's re-forward.
"""
import warnings

import pytest
import torch
from torch import nn

from pure_utils.circuits import activation_vectors, circuit_attributions
from pure_utils.data import GeneratedImages
from pure_utils.models import build_resnet, randomize_batchnorm
from pure_utils.layers import forward_until
from pure_utils.references import mine_references
from pure_utils.stash import ActivationStash
from brute import gxa_of_map

N_REF = 3
NEURONS = [0, 4, 7, 20, 31]


def _model():
    torch.manual_seed(0)
    return randomize_batchnorm(build_resnet("bottleneck", channels=(8, 8, 16, 8), stem_width=8),
                               0).eval()


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def data():
    return GeneratedImages(30, size=48, seed=2)


@pytest.fixture(scope="module")
def mined(model, data, tmp_path_factory):
    record = 64 * 3 * 3 * 4  # bytes of one layer3 output: 64 channels, 3x3
    stash = ActivationStash("layer3", memory_bytes=5 * record, disk_bytes=40 * record,
                            folder=tmp_path_factory.mktemp("spill"))
    refs = mine_references(model, data, "layer4", N_REF, batch_size=4, progress=False,
                           stash=stash)
    return refs, stash


def _record_size(model, data):
    out = forward_until(model, data[0][0][None], "layer3")
    return out[0].numel() * out.element_size()


def test_the_stash_holds_the_reference_images_in_both_tiers(model, data, mined):
    refs, stash = mined
    assert stash.stats["record_bytes"] == _record_size(model, data)
    assert set(stash.held()) == set(refs.indices.flatten().tolist())
    assert stash.stats["memory"] == 5 and stash.stats["disk"] == len(stash) - 5
    assert stash.stats["dropped"] == 0 and stash.stats["evicted"] > 0
    # every record is the lower layer's output of its image, computed in its mining batch
    for start in range(0, len(data), 4):
        batch = [i for i in range(start, min(len(data), start + 4))]
        x = torch.stack([data[i][0] for i in batch])
        with torch.no_grad():
            low = forward_until(model, x, "layer3")
        held = [j for j, i in enumerate(batch) if i in stash]
        if held:
            assert torch.equal(stash.fetch([batch[j] for j in held]), low[held])


def test_the_tiers_respect_their_room_and_the_rest_is_dropped(model, data):
    record = _record_size(model, data)
    stash = ActivationStash("layer3", memory_bytes=2 * record + 7, disk_bytes=3 * record)
    refs = mine_references(model, data, "layer4", N_REF, batch_size=4, progress=False,
                           stash=stash)
    assert (stash.stats["memory"], stash.stats["disk"]) == (2, 3)
    assert stash.stats["dropped"] > 0
    assert set(stash.held()) <= set(refs.indices.flatten().tolist())


def brute_force_gxa(model, x, k):
    """Eq. 3 for one image: the whole model, autograd from the input."""
    return gxa_of_map(model, x, "layer4", "layer3", k)


def test_attribution_from_the_stash_equals_brute_force_and_the_re_forward(model, data, mined):
    refs, stash = mined
    kw = dict(neurons=NEURONS, batch_size=4, progress=False)
    kept = circuit_attributions(model, data, refs, "layer4", "layer3", stash=stash, **kw)
    again = circuit_attributions(model, data, refs, "layer4", "layer3", **kw)
    for j, k in enumerate(NEURONS):
        for r, i in enumerate(refs.indices[k].tolist()):
            assert (kept[j, r] - brute_force_gxa(model, data[i][0], k)).abs().max() <= 1e-5
    # the re-forward computes the lower layer in other batches: equal up to float rounding
    assert (kept - again).abs().max() <= 1e-6
    feats = activation_vectors(model, data, refs, "layer4", stash=stash, **kw)
    assert (feats - activation_vectors(model, data, refs, "layer4", **kw)).abs().max() <= 1e-6


def test_images_without_room_are_run_again_in_the_same_batches(model, data):
    """With a stash too small for all references, held and re-run images mix in one batch."""
    record = _record_size(model, data)
    stash = ActivationStash("layer3", memory_bytes=3 * record)
    refs = mine_references(model, data, "layer4", N_REF, batch_size=4, progress=False,
                           stash=stash)
    assert stash.stats["dropped"] > 0
    kw = dict(neurons=NEURONS, batch_size=8, progress=False)
    kept = circuit_attributions(model, data, refs, "layer4", "layer3", stash=stash, **kw)
    again = circuit_attributions(model, data, refs, "layer4", "layer3", **kw)
    assert (kept - again).abs().max() <= 1e-6


class Detour(nn.Module):
    """layer4 does not receive layer3's output: a ReLU sits between them."""

    def __init__(self, model):
        super().__init__()
        self.body, self.act = model, nn.ReLU()

    def forward(self, x):
        b = self.body
        x = b.maxpool(b.act1(b.bn1(b.conv1(x))))
        x = b.layer3(b.layer2(b.layer1(x)))
        return b.layer4(self.act(x) - 0.1)


def test_a_layer_that_does_not_take_the_lower_output_keeps_nothing_and_stays_exact(data):
    model = Detour(_model()).eval()
    stash = ActivationStash("body.layer3")
    with pytest.warns(UserWarning, match="the stash keeps nothing"):
        refs = mine_references(model, data, "body.layer4", N_REF, batch_size=4, progress=False,
                               stash=stash)
    assert stash.problem and "is not the output of 'body.layer3'" in stash.problem
    assert len(stash) == 0
    kw = dict(neurons=NEURONS, batch_size=4, progress=False)
    with_stash = circuit_attributions(model, data, refs, "body.layer4", "body.layer3",
                                      stash=stash, **kw)
    assert torch.equal(with_stash, circuit_attributions(model, data, refs, "body.layer4",
                                                        "body.layer3", **kw))


def test_lrp_and_several_lower_layers_ignore_the_stash(model, data, mined):
    refs, stash = mined
    kw = dict(neurons=NEURONS[:2], batch_size=4, progress=False)
    for lower, attribution in (("layer3", "epsilon_plus_flat"), (["layer3", "layer2"], "gxa")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = circuit_attributions(model, data, refs, "layer4", lower, stash=stash,
                                     attribution=attribution, **kw)
            b = circuit_attributions(model, data, refs, "layer4", lower,
                                     attribution=attribution, **kw)
        assert torch.equal(a, b)


def test_records_kept_under_autocast_serve_autocast_only(model, data):
    stash = ActivationStash("layer3")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        refs = mine_references(model, data, "layer4", N_REF, batch_size=4, progress=False,
                               stash=stash)
    assert stash.dtype == torch.bfloat16 and len(stash)
    kw = dict(neurons=NEURONS[:2], batch_size=4, progress=False)
    # in full precision the stash is passed over: the model's own fp32 pass
    assert torch.equal(circuit_attributions(model, data, refs, "layer4", "layer3", stash=stash,
                                            **kw),
                       circuit_attributions(model, data, refs, "layer4", "layer3", **kw))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = circuit_attributions(model, data, refs, "layer4", "layer3", stash=stash, **kw)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()


def test_a_stash_of_another_model_or_dataset_is_refused(model, data, mined):
    refs, stash = mined
    other = GeneratedImages(30, size=48, seed=5)
    other_refs = mine_references(model, other, "layer4", N_REF, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="stash was filled while mining"):
        circuit_attributions(model, other, other_refs, "layer4", "layer3", neurons=[0],
                             stash=stash, progress=False)
    with pytest.raises(ValueError, match="ActivationStash"):
        circuit_attributions(model, data, refs, "layer4", "layer3", neurons=[0], stash="yes",
                             progress=False)


def test_bad_arguments_name_what_is_accepted(model, data):
    with pytest.raises(ValueError, match=r"memory_bytes=-1 must be a number of bytes >= 0"):
        ActivationStash("layer3", memory_bytes=-1)
    with pytest.raises(ValueError, match="name of one module"):
        ActivationStash(["layer3"])
    with pytest.raises(ValueError, match="give an ActivationStash or None"):
        mine_references(model, data, "layer4", N_REF, stash=object(), progress=False)
    with pytest.raises(KeyError, match="not held"):
        ActivationStash("layer3").fetch([3])
