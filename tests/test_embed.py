"""Embedders: preprocessing, the tiny random architectures, the ground-truth embedder, errors."""
import inspect

import pytest
import torch

from pure_utils.embed import (CLIP_MEAN, CLIP_STD, GroundTruthEmbedder, load_embedder,
                              preprocess)


def test_preprocess_resizes_shortest_side_and_centre_crops():
    img = torch.zeros(3, 40, 80)
    img[:, :, 20:60] = 1.0                                  # a bright central band, 40 px wide
    out = preprocess(img, resize=20, crop=20, mean=(0, 0, 0), std=(1, 1, 1))
    assert out.shape == (3, 20, 20)
    # 40 x 80 -> 20 x 40; the centre crop keeps columns 10..30 = the bright band (bicubic
    # interpolation softens only its outermost columns)
    assert out[:, :, 2:-2].min() > 0.99 and out.min() > 0.9
    const = torch.full((3, 10, 10), 0.5)
    out = preprocess(const, resize=32, crop=32, mean=CLIP_MEAN, std=CLIP_STD)
    expected = (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out[:, 16, 16], expected, atol=1e-4, rtol=0)
    rgba = torch.cat([torch.zeros(3, 8, 8), torch.zeros(1, 8, 8)])   # transparent -> white
    assert preprocess(rgba, resize=8, crop=8, mean=(0, 0, 0), std=(1, 1, 1)).min() > 0.99
    with pytest.raises(ValueError, match="Tensor\\[3, h, w\\]"):
        preprocess(torch.zeros(8, 8), resize=8, crop=8, mean=(0, 0, 0), std=(1, 1, 1))


@pytest.mark.parametrize("name", ["clip", "dinov2", "open_clip"])
def test_tiny_random_embedders_run_the_real_code_path(name):
    emb = load_embedder(name, pretrained=False, batch_size=2)
    imgs = [torch.rand(3, 30, 50), torch.rand(3, 16, 16), torch.rand(4, 24, 24)]
    out = emb.embed(imgs, progress=False)
    assert out.shape == (3, emb.dim) and torch.isfinite(out).all()
    # batching does not change the result, and the weights are the same on every load
    torch.testing.assert_close(out, emb.embed(imgs, batch_size=1, progress=False), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out, load_embedder(name, pretrained=False).embed(imgs, progress=False),
                               atol=1e-5, rtol=1e-4)
    if name != "open_clip":
        # the embedding is the mean over all tokens of the last hidden state
        x = torch.stack([preprocess(i, resize=emb.resize, crop=emb.crop, mean=emb.mean,
                                    std=emb.std) for i in imgs])
        with torch.no_grad():
            tokens = emb.model(pixel_values=x).last_hidden_state
        torch.testing.assert_close(out, tokens.mean(1), atol=1e-5, rtol=1e-4)


def test_tiny_config_overrides():
    emb = load_embedder("dinov2", pretrained=False, image_size=48, config={"hidden_size": 24})
    assert emb.dim == 24 and emb.crop == 48


@pytest.mark.parametrize("name,repo", [("clip", "openai/clip-vit-base-patch32"),
                                       ("dinov2", "facebook/dinov2-base")])
def test_missing_weights_give_an_actionable_error(name, repo, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        emb = load_embedder(name, pretrained=True)
    except RuntimeError as err:
        msg = str(err)
        assert repo in msg and "huggingface-cli download" in msg
        assert "embedder" in msg and "pretrained" in msg
    else:  # the weights happen to be cached on this machine
        assert emb.pretrained and emb.dim == 768


def test_ground_truth_embedder():
    emb = load_embedder("ground_truth", n_concepts=4)
    assert isinstance(emb, GroundTruthEmbedder) and emb.input_kind == "concepts"
    e = emb.embed(torch.tensor([0, 0, 3, -1]))
    assert e.shape == (4, 5)
    d = torch.cdist(e, e)
    torch.testing.assert_close(d, torch.tensor([[0., 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 1],
                                                [1, 1, 1, 0]]))
    with pytest.raises(ValueError, match="concept ids \\[4\\]"):
        emb.embed([4])
    with pytest.raises(TypeError, match="concept ids, not images"):
        emb.embed([torch.rand(3, 8, 8)])
    noisy = GroundTruthEmbedder(4, noise=0.01).embed([1, 1])
    assert 0 < torch.dist(noisy[0], noisy[1]) < 0.1


def test_load_embedder_errors():
    with pytest.raises(ValueError, match="embedder 'siglip' not known; embedders: clip"):
        load_embedder("siglip")
    with pytest.raises(ValueError, match="n_concepts"):
        load_embedder("ground_truth")
    assert "pretrained" in inspect.signature(load_embedder).parameters
