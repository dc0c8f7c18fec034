"""The streamed crop stages (pure_utils.crops) against the one-call functions they replace."""
import time
import warnings

import pytest
import torch

from pure_utils.crops import crop_boxes, crops_from_boxes, feature_heatmaps
from pure_utils.data import GeneratedImages
from pure_utils.embed import load_embedder
from pure_utils.models import build_resnet, randomize_batchnorm
from pure_utils.crops import embed_boxes, reference_boxes
from pure_utils.references import mine_references

NEURONS = [1, 4, 6, 9, 13]


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    model = randomize_batchnorm(build_resnet("basic", channels=(8, 8, 16, 16), stem_width=8),
                                0).eval()
    data = GeneratedImages(12, size=48, seed=4)
    refs = mine_references(model, data, "layer4", 4, batch_size=6, progress=False)
    return model, data, refs


def test_boxes_are_those_of_the_heatmaps_chunk_by_chunk(setting):
    model, data, refs = setting
    boxes = reference_boxes(model, data, refs, "layer4", NEURONS, chunk_size=2, batch_size=3,
                            progress=False)
    expected = torch.cat([crop_boxes(feature_heatmaps(model, data, refs, "layer4", part,
                                                      batch_size=3, progress=False))
                          for part in (NEURONS[0:2], NEURONS[2:4], NEURONS[4:])])
    assert boxes.dtype == torch.long and torch.equal(boxes, expected)
    # read ahead by a worker process: the same boxes
    assert torch.equal(reference_boxes(model, data, refs, "layer4", NEURONS[:3], chunk_size=2,
                                       batch_size=3, num_workers=1, progress=False),
                       expected[:3])
    assert reference_boxes(model, data, refs, "layer4", [], progress=False).shape == (0, 4, 4)


def test_a_deadline_keeps_the_chunks_done(setting):
    model, data, refs = setting
    boxes = reference_boxes(model, data, refs, "layer4", NEURONS, chunk_size=2, batch_size=3,
                            progress=False, deadline=time.perf_counter())
    full = reference_boxes(model, data, refs, "layer4", NEURONS[:2], chunk_size=2, batch_size=3,
                           progress=False)
    assert torch.equal(boxes, full)   # one chunk, then the deadline had passed
    with pytest.raises(ValueError, match="chunk_size=0 must be >= 1"):
        reference_boxes(model, data, refs, "layer4", NEURONS, chunk_size=0, progress=False)


@pytest.fixture(scope="module")
def embedders():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [load_embedder("clip", pretrained=False, batch_size=4),
                load_embedder("dinov2", pretrained=False, batch_size=4, image_size=28,
                              config={"patch_size": 7})]


def test_embeddings_are_those_of_the_embedders_on_the_crops(setting, embedders):
    _, data, refs = setting
    indices = refs.indices[refs.rows(NEURONS)].reshape(-1)
    gen = torch.Generator().manual_seed(0)
    y0 = torch.randint(0, 20, (len(indices),), generator=gen)
    x0 = torch.randint(0, 20, (len(indices),), generator=gen)
    side = torch.randint(8, 28, (len(indices),), generator=gen)
    boxes = torch.stack([y0, x0, y0 + side, x0 + side], 1)
    crops = crops_from_boxes(data, indices, boxes)
    expected = [e.embed(crops, progress=False) for e in embedders]
    for workers in (0, 2):
        got = embed_boxes(data, indices, boxes, embedders, batch_size=4, num_workers=workers,
                          progress=False)
        assert [tuple(g.shape) for g in got] == [(len(indices), e.dim) for e in embedders]
        for g, e in zip(got, expected):
            assert torch.equal(g, e)
    part = embed_boxes(data, indices, boxes, embedders[:1], batch_size=4, progress=False,
                       deadline=time.perf_counter())
    assert torch.equal(part[0], expected[0][:4])   # one batch, then the deadline had passed


def test_embed_boxes_refuses_what_it_cannot_embed(setting, embedders):
    _, data, _ = setting
    attributes = load_embedder("attributes", colours=["red"], shapes=["disc"])
    with pytest.raises(ValueError, match="does not embed images"):
        embed_boxes(data, torch.tensor([0]), torch.tensor([[0, 0, 8, 8]]), [attributes])
    with pytest.raises(ValueError, match="2 indices but 1 boxes"):
        embed_boxes(data, torch.tensor([0, 1]), torch.tensor([[0, 0, 8, 8]]), embedders)
    with pytest.raises(ValueError, match="integer"):
        embed_boxes(data, torch.tensor([0.0]), torch.tensor([[0, 0, 8, 8]]), embedders)
