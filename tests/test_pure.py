"""PURE, the estimator: every attribute and method against the free functions it chains and an
independent computation (autograd through the whole model, a brute-force maximum, scikit-learn's
k-means), on tiny random timm models of three families: a ResNet and a ConvNeXt (maps) and a ViT
(tokens: a class token and two register tokens in front of 16 patch tokens)."""
import pickle

import numpy as np
import pytest
import sklearn
import timm
import torch
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.exceptions import NotFittedError

import pure_utils as pu
from pure_utils.circuits import activation_vectors, circuit_attributions
from pure_utils.crops import crop_boxes, feature_heatmaps
from pure_utils.data import GeneratedImages
from pure_utils.models import build_resnet, randomize_batchnorm
from pure_utils.pure import PURE
from pure_utils.references import mine_references
from pure_utils.virtual import VirtualNeurons
from brute import gxa_of_map, outputs_in_graph

NEURONS = [1, 5]
N_REF = 4


def _tiny(family):
    """``(model, input size, layer, lower layer)``: a tiny random model whose every path matters."""
    torch.manual_seed(0)
    if family == "resnet":
        net = build_resnet("basic", channels=(8, 8, 16, 16), stem_width=8, num_classes=4)
        return randomize_batchnorm(net, 0).eval(), 48, "layer4", "layer3"
    if family == "convnext":  # layer scale 1: the random blocks compute something
        net = timm.create_model("convnext_atto", pretrained=False, num_classes=4, ls_init_value=1.0,
                                dims=(8, 16, 16, 16), depths=(1, 1, 1, 1))
        return net.eval(), 64, "stages.3", "stages.2"
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32,
                            patch_size=8, depth=2, reg_tokens=2)
    return net.eval(), 32, "blocks.1", "blocks.0"


@pytest.fixture(scope="module", params=["resnet", "convnext", "vit"])
def fitted(request):
    family = request.param
    model, size, layer, lower = _tiny(family)
    data = GeneratedImages(10, size=size, seed=2)
    pure = PURE(model, layer, lower, n_clusters=2, n_ref=N_REF, batch_size=4, progress=False)
    new = torch.stack([GeneratedImages(3, size=size, seed=9)[i][0] for i in range(3)])
    return family, pure.fit(data, neurons=NEURONS), data, new


def _stack(data, indices):
    return torch.stack([data[int(i)][0] for i in indices])


def _brute_gxa(family, model, x, layer, lower, k):
    """Eq. 3 on one image by autograd through the whole model; for the ViT written out here:
    the initial relevance on the patch tokens, the lower layer summed over all its tokens."""
    if family != "vit":
        return gxa_of_map(model, x, layer, lower, k)
    low, high = outputs_in_graph(model, x[None].clone().requires_grad_(True), [lower, layer])
    seed = torch.zeros_like(high)
    seed[0, 3:, k] = high[0, 3:, k].detach().clamp(min=0)
    (g,) = torch.autograd.grad(high, low, seed)
    r = (g * low)[0].sum(0).detach()
    return r / (r.abs().sum() + 1e-10)


def _brute_max(family, model, x, layer):
    """``[B, C]``: each channel's maximum over the map, or over the ViT's patch tokens."""
    with torch.no_grad():
        (out,) = outputs_in_graph(model, x, [layer])
    out = out.detach()
    return out[:, 3:].amax(1) if family == "vit" else out.flatten(2).amax(2)


# --- the training phase: the free functions' results, kept together -------------------------
def test_fit_keeps_what_the_free_functions_give(fitted):
    family, pure, data, _ = fitted
    model, layer, lower = pure.model, pure.layer, pure.lower_layer
    refs = mine_references(model, data, layer, N_REF, progress=False)
    assert torch.equal(pure.references_.indices, refs.indices)
    assert pure.references_.layout == refs.layout == pure.layout_
    assert pure.neurons_ == NEURONS and pure.circuits_.shape[:2] == (2, N_REF)
    R = circuit_attributions(model, data, refs, layer, lower, neurons=NEURONS, progress=False)
    torch.testing.assert_close(pure.circuits_, R, atol=1e-6, rtol=0)
    for j, k in enumerate(NEURONS):
        by_hand = VirtualNeurons(n_clusters=2, random_state=0).fit(R[j])
        np.testing.assert_allclose(pure.virtual_neurons_[k].cluster_centers_,
                                   by_hand.cluster_centers_, atol=1e-6)
        assert np.array_equal(pure.labels_[k], by_hand.labels_)
    assert set(np.unique(np.concatenate(list(pure.labels_.values())))) <= {0, 1}
    assert pure.circuits_.abs().sum() > 0


# --- the test phase -----------------------------------------------------------------------------
def test_predict_on_the_references_reproduces_labels(fitted):
    family, pure, data, _ = fitted
    for j, k in enumerate(NEURONS):
        x = _stack(data, pure.references_.indices[pure.references_.rows([k])[0]])
        torch.testing.assert_close(pure.circuit_vectors(x, k), pure.circuits_[j], atol=1e-5,
                                   rtol=1e-4)
        assert np.array_equal(pure.predict(x, neuron=k), pure.labels_[k]), (family, k)


def test_circuit_vectors_of_new_images_are_eq3_by_autograd(fitted):
    family, pure, data, new = fitted
    k = NEURONS[1]
    R = pure.circuit_vectors(new, k)
    assert R.shape == (3, pure.circuits_.shape[-1])
    for b in range(len(new)):
        expected = _brute_gxa(family, pure.model, new[b], pure.layer, pure.lower_layer, k)
        assert (R[b] - expected).abs().max() <= 2e-5, (family, b)
    # the closest centroid, computed here
    centres = pure.virtual_neurons_[k].cluster_centers_
    closest = ((R.double().numpy()[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(pure.predict(new, k), closest)


def test_an_image_nearest_a_centroid_gets_its_virtual_neuron(fitted):
    family, pure, data, _ = fitted
    k = NEURONS[0]
    row = pure.references_.rows([k])[0]
    vectors, labels = pure.circuits_[0].double().numpy(), pure.labels_[k]
    for c, centre in enumerate(pure.virtual_neurons_[k].cluster_centers_):
        members = np.flatnonzero(labels == c)
        nearest = members[((vectors[members] - centre) ** 2).sum(1).argmin()]
        x = data[int(pure.references_.indices[row, nearest])][0][None]
        assert pure.predict(x, k).tolist() == [c], (family, c)


def test_unit_activations_are_the_maximum_over_the_units_positions(fitted):
    family, pure, data, new = fitted
    expected = _brute_max(family, pure.model, new, pure.layer)
    torch.testing.assert_close(pure.unit_activations(new), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pure.unit_activations(new, neurons=[5, 0]), expected[:, [5, 0]],
                               atol=1e-5, rtol=1e-5)
    # on a neuron's references: the values mining ranked them by
    k = NEURONS[0]
    row = pure.references_.rows([k])[0]
    acts = pure.unit_activations(_stack(data, pure.references_.indices[row]), k)[:, 0]
    torch.testing.assert_close(acts, pure.references_.values[row], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fitted", ["vit"], indirect=True)  # predict and unit_activations: all
def test_virtual_activations_route_the_activation_to_the_predicted_virtual_neuron(fitted):
    family, pure, data, new = fitted
    k = NEURONS[1]
    routed = pure.virtual_activations(new, neuron=k)
    labels = pure.predict(new, k)
    a = _brute_max(family, pure.model, new, pure.layer)[:, k].double().numpy()
    expected = np.zeros((len(new), 2))
    expected[np.arange(len(new)), labels] = a
    np.testing.assert_allclose(routed, expected, atol=1e-5)


@pytest.mark.parametrize("fitted", ["resnet"], indirect=True)  # reading does not depend on it
def test_a_dataset_of_new_images_gives_what_its_tensor_gives(fitted):
    family, pure, data, _ = fitted
    part = GeneratedImages(3, size=48, seed=9)
    x = _stack(part, range(3))
    assert np.array_equal(pure.predict(part, 5), pure.predict(x, 5))
    torch.testing.assert_close(pure.unit_activations(part), pure.unit_activations(x))


# --- the baseline and the crops stage ----------------------------------------------------------
@pytest.mark.parametrize("fitted", ["resnet", "vit"], indirect=True)  # maps and tokens
def test_activation_baseline_is_kmeans_on_activation_vectors(fitted):
    family, pure, data, _ = fitted
    F = activation_vectors(pure.model, data, pure.references_, pure.layer, neurons=NEURONS,
                            progress=False)
    baseline = pure.activation_baseline()
    assert list(baseline) == NEURONS
    for j, k in enumerate(NEURONS):
        km = KMeans(n_clusters=2, n_init=10, random_state=0).fit(F[j].double().numpy())
        assert np.array_equal(baseline[k], km.labels_), (family, k)
    assert list(pure.activation_baseline(neurons=[0])) == [0]  # any channel of the references


@pytest.mark.parametrize("fitted", ["resnet", "vit"], indirect=True)  # LRP; a map over patches
def test_heatmaps_and_crop_boxes_are_the_crops_stage(fitted):
    family, pure, data, _ = fitted
    composite = "epsilon_plus_flat" if family == "resnet" else "gradient_x_input"
    hm = pure.heatmaps(5, composite=composite)
    expected = feature_heatmaps(pure.model, data, pure.references_, pure.layer, [5],
                                composite=composite, progress=False)[0]
    assert hm.shape == (N_REF, *pure.references_.input_size)
    torch.testing.assert_close(hm, expected)
    boxes = pure.crop_boxes(5, heatmaps=hm, threshold=0.1)
    assert torch.equal(boxes, crop_boxes(expected, threshold=0.1))
    if family == "vit":  # the heatmaps computed inside
        assert torch.equal(pure.crop_boxes(5, composite=composite), crop_boxes(expected))


# --- layouts and given references ---------------------------------------------------------------
def test_references_given_keep_their_layout_in_every_stage():
    model, size, layer, lower = _tiny("vit")
    data = GeneratedImages(8, size=size, seed=4)
    every = mine_references(model, data, layer, n_ref=6, tokens="all", progress=False)
    pure = PURE(model, layer, lower, n_ref=4, progress=False).fit(data, [7], references=every)
    assert pure.layout_.tokens == "all" and torch.equal(pure.references_.indices,
                                                        every.indices[:, :4])
    R = circuit_attributions(model, data, every.head(4), layer, lower, neurons=[7], progress=False)
    torch.testing.assert_close(pure.circuits_, R, atol=1e-6, rtol=0)
    x = _stack(data, pure.references_.indices[7])
    assert np.array_equal(pure.predict(x), pure.labels_[7])     # the only neuron fitted
    with torch.no_grad():
        (out,) = outputs_in_graph(model, x, [layer])
    torch.testing.assert_close(pure.unit_activations(x, 7)[:, 0], out[:, :, 7].amax(1))  # all 19
    with pytest.raises(ValueError, match=r"n_ref=8, but the references hold 6 samples per channel"):
        PURE(model, layer, lower, n_ref=8).fit(data, [7], references=every)
    with pytest.raises(ValueError, match=r"references were mined for layer 'blocks.1', not "
                                         r"layer='blocks.1.mlp.act'"):
        PURE(model, "blocks.1.mlp.act", lower, n_ref=4).fit(data, [7], references=every)
    with pytest.raises(ValueError, match=r"were mined with layout tokens .*all tokens\), not "
                                         r"tokens .*patch tokens"):
        PURE(model, layer, lower, n_ref=4, tokens="patches").fit(data, [7], references=every)


@pytest.fixture(scope="module")
def resnet():
    model, size, layer, lower = _tiny("resnet")
    return model, GeneratedImages(6, size=size, seed=1)


def test_lrp_circuits_of_new_images_are_those_of_training(resnet):
    model, data = resnet
    pure = PURE(model, attribution="epsilon_plus_flat", n_ref=3, progress=False).fit(data, [2])
    R = circuit_attributions(model, data, pure.references_, "layer4", "layer3", neurons=[2],
                             attribution="epsilon_plus_flat", progress=False)
    torch.testing.assert_close(pure.circuits_, R)
    x = _stack(data, pure.references_.indices[2])
    torch.testing.assert_close(pure.circuit_vectors(x), R[0], atol=1e-5, rtol=1e-4)
    assert np.array_equal(pure.predict(x), pure.labels_[2])


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(n_clusters=0), r"n_clusters=0 must be an integer >= 1"),
    (dict(n_clusters=2.5), r"n_clusters=2.5 must be an integer >= 1"),
    (dict(n_clusters="2"), r"n_clusters='2' must be an integer >= 1"),
    (dict(n_clusters=5, n_ref=4), r"n_clusters=5 is larger than n_ref=4.*n_clusters in 1..4"),
    (dict(n_ref=0), r"n_ref=0 must be an integer >= 1"),
    (dict(attribution="lrp"), r"attribution='lrp' not known; attributions: gxa, epsilon_plus_flat"),
    (dict(layer="layer5"), r"layer 'layer5' not found; layers: conv1, .*layer4"),
    (dict(lower_layer="fc"), r"lower_layer 'fc' must come before layer 'layer4'"),
    (dict(tokens="cls"), r"tokens='cls' not known; use one of 'patches', 'all'"),
])
def test_bad_parameters_are_refused_in_fit_before_anything_runs(resnet, kwargs, pattern):
    model, data = resnet
    pure = PURE(model, **{"n_ref": 3, **kwargs})  # __init__ only stores
    with pytest.raises(ValueError, match=pattern):
        pure.fit(data, [1])
    assert not hasattr(pure, "references_")


def test_bad_neurons_and_images_are_refused_naming_them(resnet):
    model, data = resnet
    pure = PURE(model, n_ref=3, progress=False)
    x = _stack(data, range(2))
    with pytest.raises(NotFittedError, match=r"This PURE instance is not fitted yet; call "
                                             r"fit\(dataset, neurons=\[\.\.\.\]\) before predict"):
        pure.predict(x, 1)
    for neurons, pattern in (([1, 1], r"names neuron 1 twice"), ([99], r"neuron index 99 out of "
                             r"range for layer 'layer4'; channels: 0..15"), ([], "neurons is empty")):
        with pytest.raises(ValueError, match=pattern):
            pure.fit(data, neurons)
    pure.fit(data, [1, 4])
    with pytest.raises(ValueError, match=r"neuron 2 was not fitted; fitted neurons: 1, 4"):
        pure.predict(x, 2)
    with pytest.raises(ValueError, match=r"predict needs neuron=; fitted neurons: 1, 4"):
        pure.predict(x)
    with pytest.raises(ValueError, match=r"neuron=\[1, 4\]: give one channel \(an int\)"):
        pure.virtual_activations(x, [1, 4])
    for bad, pattern in ((x[0], r"images of shape \(3, 48, 48\): give a Tensor\[B, 3, H, W\]"),
                         (x[:, :1], r"images of shape \(2, 1, 48, 48\)"),
                         (x[:0], r"images of shape \(0, 3, 48, 48\)"),
                         (x[..., :32, :32], r"images of size \(32, 32\), but PURE was fitted on "
                                            r"images of size \(48, 48\)"),
                         ((x * 50).to(torch.uint8), r"images of dtype torch.uint8")):
        with pytest.raises(ValueError, match=pattern):
            pure.predict(bad, 1)
    with pytest.raises(ValueError, match=r"neuron index 16 out of range for layer 'layer4' with "
                                         r"16 channels; accepted: 0..15"):
        pure.unit_activations(x, [16])


# --- the scikit-learn protocol ------------------------------------------------------------------
def test_params_repr_and_clone_as_in_scikit_learn(resnet):
    model, data = resnet
    pure = PURE(model, n_ref=3, n_clusters=3, progress=False)
    params = pure.get_params()
    assert params["model"] is model and params["n_clusters"] == 3 and params["layer"] == "layer4"
    assert pure.set_params(n_clusters=2) is pure and pure.n_clusters == 2
    with pytest.raises(ValueError, match="Invalid parameter 'clusters'"):
        pure.set_params(clusters=2)
    assert repr(pure) == "PURE(model=<ResNet>, n_ref=3, progress=False)"
    with sklearn.config_context(print_changed_only=False):
        assert repr(pure).startswith("PURE(model=<ResNet>, approximate=False, attribution='gxa', "
                                     "batch_size=32, cache=None, device=None, layer='layer4'")
    pure.fit(data, [2])
    twin = clone(pure)
    assert twin.model is model                    # shared, not copied
    assert twin.get_params() == pure.get_params() and not hasattr(twin, "labels_")
    assert np.array_equal(twin.fit(data, [2]).labels_[2], pure.labels_[2])
    again = pickle.loads(pickle.dumps(pure))
    assert np.array_equal(again.predict(_stack(data, range(3))), pure.predict(_stack(data, range(3))))
    assert pu.PURE is PURE
