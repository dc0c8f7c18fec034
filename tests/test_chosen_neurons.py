"""Channels a reader names (``fig3_neurons``, ``fig1_neuron`` ...) are checked before any work."""
import pytest

from pure_utils.study import setting as ex
from pure_utils.study.profile import load_profile


def test_check_neurons_names_what_is_wrong():
    kw = dict(layer="layer4", model_name="m", n_channels=32)
    assert ex.check_neurons([0, 31], **kw) == [0, 31] and ex.check_neurons(5, **kw) == [5]
    with pytest.raises(ValueError, match=r"neuron index 99 out of range: layer 'layer4' of m has "
                                         r"32 channels \(0\.\.31\)"):
        ex.check_neurons([0, 99], **kw)
    with pytest.raises(ValueError, match="neuron index -1 out of range"):
        ex.check_neurons([-1], **kw)
    with pytest.raises(ValueError, match="neuron 3 of layer 'layer4' of m never activates"):
        ex.check_neurons([3], dead=[3], **kw)
    with pytest.raises(ValueError, match="neuron 4 of .* is not among the 2 channels the profile evaluates"):
        ex.check_neurons([4], evaluated=[1, 2], **kw)
    with pytest.raises(ValueError, match="'7' is not a channel index"):
        ex.check_neurons(["7"], **kw)


def _small(**more):
    return load_profile("offline", dataset_kwargs={"split": "test", "n": 16, "seed": 0}, n_ref=4,
                        cache=False, **more)


def test_a_channel_the_layer_does_not_have_fails_before_mining(monkeypatch):
    def mine(*a, **k):
        raise AssertionError("mined before the channels were checked")

    monkeypatch.setattr(ex, "mine_references", mine)
    with pytest.raises(ValueError, match=r"neuron index 99 out of range: layer 'layer4' of "
                                         r"synthetic_resnet_bottleneck has 32 channels \(0\.\.31\)"):
        ex.load_setting(_small(), model_name="synthetic_resnet_bottleneck", neurons=[0, 99],
                        progress=False)


def test_a_channel_outside_the_evaluated_subset_is_named():
    p = _small(n_neurons=2, neuron_seed=0)
    setting = ex.load_setting(p, progress=False, neurons=None)
    other = next(k for k in range(32) if k not in setting.neurons and k not in setting.references.dead)
    with pytest.raises(ValueError, match=f"neuron {other} of .* not among the 2 channels"):
        ex.load_setting(p, progress=False, neurons=[other])
    assert ex.load_setting(p, progress=False, neurons=setting.neurons[:1]).neurons == setting.neurons
