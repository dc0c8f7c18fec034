"""Tests of pure_utils.circuits against independent computations.

Gradient x Activation is compared with a brute-force computation (whole model, autograd from
the input, one sample at a time); LRP with relevance conservation on bias-free models.
"""
import re

import pytest
import torch

from pure_utils.data import GeneratedImages
from pure_utils.cache import Cache
from pure_utils.circuits import (ATTRIBUTIONS, MIN_CONSERVATION, activation_vectors, circuit_attributions,
                                 lrp_conservation)
from pure_utils.models import load_model, randomize_batchnorm
from pure_utils.layers import forward_until
from pure_utils.references import mine_references
from brute import gxa_of_map

SIZE = 48  # layer4 maps of 2x2: spatial sums and maxima still matter


def random_model(name):
    # module fixtures are built before the per-test seed: seed here, so that the weights do not
    # depend on which tests ran before (some draws leave a neuron with a near-zero attribution
    # sum, where normalising amplifies float32 rounding of different batch sizes)
    torch.manual_seed(0)
    return randomize_batchnorm(load_model(name), seed=0)


@pytest.fixture(scope="module")
def r18():
    return random_model("resnet18")


@pytest.fixture(scope="module")
def r50():
    return random_model("resnet50")


@pytest.fixture(scope="module")
def data():
    return GeneratedImages(8, size=SIZE, seed=1)


@pytest.fixture(scope="module")
def refs18(r18, data):
    return mine_references(r18, data, "layer4", n_ref=3, progress=False)


def brute_force_gxa(model, dataset, index, layer, lower, k):
    """Eq. 3 with a full forward and autograd from the input, for one sample."""
    return gxa_of_map(model, dataset[index][0], layer, lower, k)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_gxa_equals_brute_force(name, r18, r50, data):
    model = r18 if name == "resnet18" else r50
    refs = mine_references(model, data, "layer4", n_ref=3, batch_size=4, progress=False)
    neurons = [0, 17]
    # batch_size 4 < distinct images: several forward batches, shared images, several slots
    R = circuit_attributions(model, data, refs, "layer4", "layer3", neurons=neurons,
                             batch_size=4, progress=False)
    assert R.shape == (2, 3, model.layer3[-1].conv1.in_channels)
    for j, k in enumerate(neurons):
        for r, i in enumerate(refs.indices[k].tolist()):
            expected = brute_force_gxa(model, data, i, "layer4", "layer3", k)
            assert (R[j, r] - expected).abs().max() <= 1e-5
    assert torch.allclose(R.abs().sum(-1), torch.ones(2, 3), atol=1e-5)


def test_fuller_circuit_dead_neuron_and_index_references(data):
    model = random_model("resnet18")
    dead = 7
    with torch.no_grad():  # the last residual branch drives channel 7 far below zero
        model.layer4[-1].bn2.bias[dead] = -1e4
    refs = mine_references(model, data, "layer4", n_ref=2, progress=False)
    assert refs.values[dead].max() == 0
    R = circuit_attributions(model, data, refs, "layer4", ["layer2", "layer3"],
                             neurons=[3, dead], batch_size=3, progress=False)
    assert R.shape == (2, 2, 128 + 256)
    assert torch.isfinite(R).all() and R[1].abs().sum() == 0
    for r, i in enumerate(refs.indices[3].tolist()):
        assert (R[0, r, :128] - brute_force_gxa(model, data, i, "layer4", "layer2", 3)).abs().max() <= 1e-5
        assert (R[0, r, 128:] - brute_force_gxa(model, data, i, "layer4", "layer3", 3)).abs().max() <= 1e-5
    # the test phase: arbitrary samples given as an index tensor, same vectors
    new = circuit_attributions(model, data, refs.indices[3][None], "layer4", "layer3", neurons=[3],
                               batch_size=1, progress=False)
    assert torch.allclose(new[0], R[0, :, 128:], atol=1e-6)


def test_activation_vectors_brute_force(r18, data, refs18):
    refs = refs18
    F = activation_vectors(r18, data, refs, "layer4", neurons=[2, 9], batch_size=2, progress=False)
    assert F.shape == (2, 3, 512)
    with torch.no_grad():
        for j, k in enumerate([2, 9]):
            for r, i in enumerate(refs.indices[k].tolist()):
                a = r18.forward_features(data[i][0][None])[0]
                assert torch.allclose(F[j, r], a.clamp(min=0).mean((1, 2)), atol=1e-5)


def zero_biases(model):
    """Remove every bias: BatchNorm shifts and running means, and linear/conv biases."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.bias.zero_()
                m.running_mean.zero_()
            elif getattr(m, "bias", None) is not None and isinstance(m.bias, torch.Tensor):
                m.bias.zero_()
    return model


@pytest.mark.parametrize("name,methods", [
    ("resnet18", ["epsilon_plus_flat", "epsilon_gamma_box"]),
    ("resnet50", ["epsilon_plus_flat"]),
])
def test_lrp_conserves_relevance_without_biases(name, methods, data):
    model = zero_biases(random_model(name))
    refs = mine_references(model, data, "layer4", n_ref=2, progress=False)
    neurons = [1, 4]
    with torch.no_grad():
        act = torch.stack([model.forward_features(data[i][0][None])[0] for i in range(len(data))])
    total = torch.stack([act[refs.indices[k], k].clamp(min=0).sum((1, 2)) for k in neurons])
    assert (total > 0).all()
    for method in methods:
        R = circuit_attributions(model, data, refs, "layer4", "layer3", neurons=neurons,
                                 attribution=method, normalize=False, progress=False)
        rel = (R.sum(-1) - total).abs() / total
        assert rel.max() <= 1e-4, (method, rel)


def test_lrp_batched_slots_equal_single_neuron(r18, data, refs18):
    refs = refs18
    both = circuit_attributions(r18, data, refs, "layer4", "layer3", neurons=[0, 5],
                                attribution="epsilon_plus_flat", batch_size=3, progress=False)
    one = circuit_attributions(r18, data, refs, "layer4", "layer3", neurons=[5],
                               attribution="epsilon_plus_flat", batch_size=1, progress=False)
    assert torch.allclose(both[1], one[0], atol=1e-6)
    # the canonizers are removed afterwards: the model computes what it did before
    assert "canonizer_sum" not in dict(r18.layer4[0].named_children())


def test_bad_input(r18, data, refs18):
    refs = refs18
    call = lambda **kw: circuit_attributions(r18, data, refs, kw.pop("layer", "layer4"),  # noqa: E731
                                            kw.pop("lower", "layer3"), progress=False, **kw)
    with pytest.raises(ValueError, match="layer 'layer9' not found"):
        call(lower="layer9")
    with pytest.raises(ValueError, match="must come before"):
        call(lower="layer4.0")
    with pytest.raises(ValueError, match="neuron index 512 out of range"):
        call(neurons=[512])
    with pytest.raises(ValueError, match="attribution 'lrp' not known; attributions: gxa"):
        call(attribution="lrp")
    with pytest.raises(ValueError, match="mined for layer 'layer4'"):
        call(layer="layer3", lower="layer2")
    assert set(ATTRIBUTIONS) >= {"gxa", "epsilon_plus_flat", "epsilon_alpha2_beta1_flat"}


def test_cache_stores_unnormalised_and_reuses(r18, data, refs18, tmp_path):
    refs = refs18.head(2)
    cache = Cache(tmp_path)
    a = circuit_attributions(r18, data, refs, "layer4", "layer3", neurons=[1], cache=cache, progress=False)
    calls = []
    h = r18.layer1.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        b = circuit_attributions(r18, data, refs, "layer4", "layer3", neurons=[1], cache=cache,
                                 normalize=False, progress=False)
        assert not calls
        circuit_attributions(r18, data, refs, "layer4", "layer3", neurons=[2], cache=cache, progress=False)
        assert calls
    finally:
        h.remove()
    assert torch.allclose(a, b / (b.abs().sum(-1, keepdim=True) + 1e-10))


# --- non-finite attributions: named, never returned ----------------------------------------
def test_nonfinite_attributions_name_neurons_and_samples(r18):
    class WithNaN:
        """Generated images, image 3 with one NaN pixel (no fingerprint: nothing is cached)."""

        def __init__(self):
            self.base = GeneratedImages(5, size=SIZE, seed=2)

        def __len__(self):
            return 5

        def __getitem__(self, i):
            x, y = self.base[i]
            if i == 3:
                x = x.clone()
                x[0, 0, 0] = float("nan")
            return x, y

    ds = WithNaN()
    with pytest.raises(ValueError, match=r"circuit attributions of layer 'layer4' at 'layer3' are not "
                                         r"finite \(NaN or inf\) for neuron 1 on sample 3, neuron 6 "
                                         r"on sample 3"):
        circuit_attributions(r18, ds, torch.tensor([[0, 3]]), "layer4", "layer3", neurons=[1, 6],
                             progress=False)
    with pytest.raises(ValueError, match=r"activations of layer 'layer4' are not finite .* neuron 2 on sample 3"):
        activation_vectors(r18, ds, torch.tensor([[3, 1]]), "layer4", neurons=[2], progress=False)
    # the finite samples alone are fine
    assert torch.isfinite(circuit_attributions(r18, ds, torch.tensor([[0, 1]]), "layer4", "layer3",
                                               neurons=[1], progress=False)).all()


# --- LRP only where the canonizers make it correct -----------------------------------------
UNSUPPORTED = [("mobilenetv3_small_050", "blocks.4", "blocks.3", "InvertedResidual (blocks.4.0"),
               ("convnext_atto", "stages.3", "stages.2", "ConvNeXtBlock (stages.3.blocks.0")]


@pytest.mark.parametrize("name,layer,lower,missing", UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
def test_lrp_on_an_uncovered_architecture_raises_unless_approximate(name, layer, lower, missing):
    import timm

    from pure_utils.canonizers import LRPApproximationWarning

    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    data = GeneratedImages(4, size=64, seed=3)
    refs = mine_references(model, data, layer, n_ref=2, progress=False)
    run = lambda **kw: circuit_attributions(model, data, refs, layer, lower, neurons=[0, 1],  # noqa: E731
                                            attribution="epsilon_plus_flat", normalize=False,
                                            progress=False, **kw)
    with pytest.raises(ValueError, match=rf"LRP would not be correct on this .*{re.escape(missing)}.*"
                                         r"approximate=True"):
        run()
    assert circuit_attributions(model, data, refs, layer, lower, neurons=[0], progress=False).shape[0] == 1
    with pytest.warns(LRPApproximationWarning) as record:
        R = run(approximate=True, min_conservation=0)
    text = "\n".join(str(w.message) for w in record)
    assert missing.split()[0] in text
    # the conservation reported is the one measured independently: relevance / initial relevance
    with torch.no_grad():
        act = torch.stack([forward_until(model, data[i][0][None], layer)[0] for i in range(4)])
    total = torch.stack([act[refs.indices[k], k].clamp(min=0).sum((1, 2)) for k in (0, 1)])
    ratio = R.sum(-1) / total
    assert f"median {ratio.flatten().median():.3f}" in text
    # a bound above the median conservation refuses the vectors, naming it; at the default
    # bound the vectors come back only where at least a tenth of the relevance arrives
    median = float(ratio.flatten().median())
    with pytest.raises(ValueError, match=r"median .*min_conservation=.*attribution='gxa'"):
        run(approximate=True, min_conservation=median + 0.01)
    if median < MIN_CONSERVATION:
        with pytest.raises(ValueError, match=f"min_conservation={MIN_CONSERVATION}"):
            run(approximate=True)
    else:
        with pytest.warns(LRPApproximationWarning):
            torch.testing.assert_close(run(approximate=True), R)
    with pytest.warns(LRPApproximationWarning):
        measured = lrp_conservation(model, data, refs, layer, lower, neurons=[0, 1], approximate=True)
    assert torch.allclose(measured, ratio, rtol=1e-4)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_lrp_conservation_is_one_on_a_covered_resnet_without_biases(name, data):
    model = zero_biases(random_model(name))
    refs = mine_references(model, data, "layer4", n_ref=2, progress=False)
    ratio = lrp_conservation(model, data, refs, "layer4", "layer3", neurons=[1, 4])
    assert ratio.shape == (2, 2)
    assert (ratio - 1).abs().max() <= 1e-4
    # with biases it is reported as it is, not forced to 1
    biased = lrp_conservation(random_model(name), data, mine_references(
        random_model(name), data, "layer4", n_ref=2, progress=False), "layer4", "layer3", neurons=[1, 4])
    assert torch.isfinite(biased).all() and (biased - 1).abs().max() > 1e-3
    with pytest.raises(ValueError, match="give one layer name"):
        lrp_conservation(model, data, refs, "layer4", ["layer2", "layer3"], neurons=[1])


def test_the_layer_comes_from_the_references(r18, data, refs18):
    """References record their layer: the stages take it from them unless it is given."""
    explicit = circuit_attributions(r18, data, refs18, "layer4", "layer3", neurons=[1, 5],
                                    progress=False)
    implicit = circuit_attributions(r18, data, refs18, lower_layer="layer3", neurons=[1, 5],
                                    progress=False)
    assert torch.equal(explicit, implicit)
    assert torch.equal(activation_vectors(r18, data, refs18, "layer4", neurons=[1], progress=False),
                       activation_vectors(r18, data, refs18, neurons=[1], progress=False))
    ratios = lrp_conservation(r18, data, refs18, lower_layer="layer3", neurons=[1])
    assert ratios.shape == (1, refs18.n_ref)
    with pytest.raises(ValueError, match="lower_layer must be given"):
        circuit_attributions(r18, data, refs18, neurons=[1], progress=False)
    with pytest.raises(ValueError, match="layer must be given when references is an index tensor"):
        circuit_attributions(r18, data, torch.tensor([0, 1]), lower_layer="layer3", neurons=[1],
                             progress=False)
