"""Tests of pure_utils.canonizers: timm ResNet canonizers keep the model's function; what LRP
is refused on."""
import pytest
import torch
import torchvision
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from zennit.layer import Sum

from pure_utils.canonizers import (ExactMergeBatchNorm, LRPApproximationWarning, TimmResNetCanonizer,
                                   canonizers_for, composite_for, lrp_support)
from pure_utils.models import load_model, randomize_batchnorm


def apply_all(canonizers, model):
    return [inst for c in canonizers for inst in c.apply(model)]


@pytest.mark.parametrize("make", [
    lambda: load_model("resnet18"),
    lambda: load_model("resnet50"),
    # the optional parts of timm blocks: squeeze-excitation and anti-aliasing
    lambda: ResNet(BasicBlock, [1, 1, 1, 1], block_args={"attn_layer": "se"}, aa_layer=torch.nn.AvgPool2d),
    lambda: ResNet(Bottleneck, [1, 1, 1, 1], block_args={"attn_layer": "se"}, stem_type="deep"),
], ids=["resnet18", "resnet50", "basic-se-aa", "bottleneck-se-deep"])
def test_canonizers_keep_outputs_and_are_removable(make):
    torch.manual_seed(0)
    model = randomize_batchnorm(make(), seed=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        state = {k: v.clone() for k, v in model.state_dict().items()}
    canonizers = canonizers_for(model)
    assert any(isinstance(c, TimmResNetCanonizer) for c in canonizers)
    instances = apply_all(canonizers, model)
    try:
        sums = [m for m in model.modules() if isinstance(m, Sum)]
        blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
        assert len(sums) == len(blocks) > 0  # one per residual block
        with torch.no_grad():
            during = model(x)
    finally:
        for inst in reversed(instances):
            inst.remove()
    assert (during - before).abs().max() <= 1e-5 * max(1.0, before.abs().max().item())
    # everything restored: parameters, statistics, eps, forward, no extra modules
    with torch.no_grad():
        assert torch.equal(model(x), before)
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert not any(isinstance(m, Sum) for m in model.modules())
    assert all(m.eps > 0 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_exact_merge_beats_plain_identity_bn():
    """The merged BatchNorm computes the identity exactly (zennit's leaves 1/sqrt(1 + eps))."""
    model = randomize_batchnorm(load_model("resnet18"), seed=0)
    insts = ExactMergeBatchNorm().apply(model)
    try:
        bn = model.layer1[0].bn1
        x = torch.randn(1, bn.num_features, 4, 4)
        with torch.no_grad():
            assert torch.equal(bn(x), x)
    finally:
        for i in insts:
            i.remove()


def test_residual_sum_splits_relevance_instead_of_doubling():
    """Plain gradient through the Sum of one block: the sum's input gradient is 1 per summand."""
    model = randomize_batchnorm(load_model("resnet18"), seed=0)
    block = model.layer2[1]
    insts = TimmResNetCanonizer().apply(block)
    try:
        seen = {}
        block.canonizer_sum.register_forward_hook(lambda m, i, o: seen.__setitem__("in", i[0]))
        x = torch.randn(1, 128, 8, 8)
        with torch.no_grad():
            block(x)
        assert seen["in"].shape == (1, 128, 8, 8, 2)  # branch and shortcut stacked
        assert torch.equal(seen["in"][..., 1], x)  # identity shortcut
    finally:
        for i in insts:
            i.remove()


def test_plain_cnn_gets_only_batchnorm_merge():
    seq = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    assert [type(c) for c in canonizers_for(seq)] == [ExactMergeBatchNorm]


# --- what the canonizers cover ---------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: load_model("resnet18"),
    lambda: load_model("resnet50"),
    lambda: torchvision.models.resnet18(),
    lambda: ResNet(Bottleneck, [1, 1, 1, 1], stem_type="deep"),
    lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(4, 2)),
], ids=["timm-resnet18", "timm-resnet50", "torchvision-resnet18", "timm-deep-stem", "sequential"])
def test_supported_models_have_nothing_missing(make):
    assert lrp_support(make()) == []
    composite_for("epsilon_plus_flat", make())  # no error


@pytest.mark.parametrize("name,expected", [
    ("mobilenetv3_small_050", ["InvertedResidual", "SqueezeExcite", "BatchNormAct2d"]),
    ("convnext_atto", ["ConvNeXtBlock", "LayerNorm2d"]),
])
def test_unsupported_models_are_named_with_what_is_missing(name, expected):
    import timm

    model = timm.create_model(name)
    lines = lrp_support(model)
    for kind in expected:
        assert any(line.startswith(kind + " (") for line in lines), (kind, lines)
    with pytest.raises(ValueError, match=rf"LRP would not be correct on this .*{expected[0]}"):
        composite_for("epsilon_plus_flat", model)
    with pytest.warns(LRPApproximationWarning, match=expected[0]):
        composite_for("epsilon_plus_flat", model, approximate=True)


def test_what_is_missing_depends_on_the_canonizers_and_the_layers():
    model = load_model("resnet18")
    lines = lrp_support(model, [])  # no canonizers at all
    assert lines == ["BatchNorm2d (bn1, layer1.0.bn1, layer1.0.bn2 and 17 more): BatchNorm not "
                     "merged into a preceding linear layer",
                     "BasicBlock (layer1.0, layer1.1, layer2.0 and 5 more): residual addition not "
                     "canonized (no TimmResNetCanonizer)"]
    with pytest.raises(ValueError, match="residual addition not canonized"):
        composite_for("epsilon_plus_flat", model, canonizers=[])
    se = ResNet(BasicBlock, [1, 1, 1, 1], block_args={"attn_layer": "se"})
    assert any(line.startswith("SEModule (layer1.0.se") for line in lrp_support(se))
    # only the part between the layers matters: squeeze-excitation in layer1 only
    se.layer2[0].se = se.layer3[0].se = se.layer4[0].se = torch.nn.Identity()
    assert lrp_support(se, layer="layer4", lower_layer="layer3") == []
    assert lrp_support(se, layer="layer4")  # the heatmap goes down to the input, through layer1
    # a BatchNorm before any convolution is not merged
    first = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Conv2d(3, 4, 3))
    assert lrp_support(first) == ["BatchNorm2d (0): BatchNorm not merged into a preceding linear layer"]
