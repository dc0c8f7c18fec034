"""pure_utils.study.prepare: the cache it fills is what the book's stages read."""
from pathlib import Path

import pytest
import torch

from pure_utils.cache import Cache
from pure_utils.study.setting import embed_references, evaluation_boxes, load_embedders, load_setting
from pure_utils.study.prepare import prepare
from pure_utils.study.profile import load_profile


@pytest.fixture
def profile(tmp_path):
    small = {"config": {"image_size": 64}, "n": 8}
    return load_profile("smoke", dataset_kwargs=small, heldout_dataset_kwargs=small, n_ref=4,
                        n_neurons=2, cache=str(tmp_path / "cache"))


def test_the_stages_find_everything_prepare_computed(profile, monkeypatch):
    # the smoke profile's model has random weights: the same seed gives the same model (its
    # weights are part of every key), as the paper profile's pretrained weights do
    torch.manual_seed(0)
    times = prepare(profile, progress=False, log=lambda line: None)
    assert [t["model"] for t in times] == ["resnet50"]
    assert set(times[0]) == {"model", "references", "attributions", "activation features",
                             "crop boxes", "embeddings"}
    saved = []
    original = Cache.save
    monkeypatch.setattr(Cache, "save", lambda self, key, *a, **k: (saved.append(key),
                                                                   original(self, key, *a, **k)))
    torch.manual_seed(0)
    s = load_setting(profile, progress=False)
    s.circuit_attributions(progress=False)
    s.activation_vectors(progress=False)
    boxes = evaluation_boxes(s, progress=False)
    for embedder in load_embedders(s):
        embed_references(s, embedder, boxes, progress=False)
    assert saved == []                   # every artefact came from the cache
    # references, attributions, activation features, boxes and the two embeddings
    assert len(list(Path(profile["cache"]).glob("*.json"))) == 6


def test_without_a_cache_it_says_so(profile):
    lines = []
    assert prepare(dict(profile, cache=False), models=[], log=lines.append) == []
    assert "nothing will be kept for the book" in lines[0]
