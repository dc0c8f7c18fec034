"""Embedders: preprocessing, the tiny random architectures, the attribute reader, errors."""
import inspect

import pytest
import torch

import numpy as np

from pure_utils.embed import CLIP_MEAN, CLIP_STD, load_embedder, preprocess
from pure_utils.shapes.dataset import SyntheticShapes


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


def test_attribute_embedder_reads_areas_of_colours_and_shapes_inside_the_box():
    ds = SyntheticShapes("test", n=1)
    ds.image(0)  # render, then give image 0 a hand-made ground truth
    omap = np.full((96, 96), -1, np.int8)
    omap[0:10, 0:10] = 0                         # a red circle: 100 px
    omap[0:10, 10:15] = 1                        # a red square: 50 px
    omap[50:60, 50:60] = 2                       # a green square, elsewhere
    ds._maps[0] = omap
    ds._objects[0] = [dict(concept=0, shape="circle", colour="red"),
                      dict(concept=1, shape="square", colour="red"),
                      dict(concept=2, shape="square", colour="green")]
    emb = load_embedder("attributes", colours=ds.config.colours, shapes=ds.config.shapes)
    assert emb.input_kind == "boxes" and emb.dim == 4 + 4 + 1
    e = emb.embed([(ds, 0, (0, 0, 20, 20)), (ds, 0, (50, 50, 60, 60)), (ds, 0, (0, 0, 10, 10))])
    cols, shapes = ds.config.colours, ds.config.shapes
    # box 0: 400 px holding 150 red (100 circle, 50 square) and 250 background pixels
    assert e[0, cols.index("red")] == pytest.approx(150 / 400)
    assert e[0, 4 + shapes.index("circle")] == pytest.approx(100 / 400)
    assert e[0, 4 + shapes.index("square")] == pytest.approx(50 / 400)
    assert e[0, -1] == pytest.approx(250 / 400)
    # graded distances: red circle - green square is farther than red circle - red square
    assert e[1, cols.index("green")] == 1 and e[1, 4 + shapes.index("square")] == 1
    red_circle, green_square = e[2], e[1]
    red_square = emb.embed([(ds, 0, (0, 10, 10, 15))])[0]
    assert torch.dist(red_circle, red_square) < torch.dist(red_circle, green_square)
    with pytest.raises(TypeError, match="controlled benchmark"):
        emb.embed([(object(), 0, (0, 0, 1, 1))])


def test_load_embedder_errors():
    with pytest.raises(ValueError, match="embedder 'siglip' not known; embedders: clip"):
        load_embedder("siglip")
    with pytest.raises(ValueError, match="colours= and shapes="):
        load_embedder("attributes")
    assert "pretrained" in inspect.signature(load_embedder).parameters
