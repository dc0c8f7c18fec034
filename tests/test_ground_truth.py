"""Ground truth of reference samples on the controlled benchmark (pure_utils.ground_truth)."""
import types

import numpy as np
import pytest
import torch

from pure_utils.ground_truth import (concept_at, concept_counts, concept_shares, layer_polysemanticity,
                                     polysemantic_by_concepts, reference_concepts)
from pure_utils.models import build_resnet
from pure_utils.synthetic import SyntheticShapes

# ---------------------------------------------------------------------------------------------
# ground-truth concepts of reference samples


@pytest.fixture
def hand_built():
    """One 96 px image with a hand-made object map: object 0 (concept 5) fills rows/cols 0..39,
    object 1 (concept 2) rows/cols 50..59, object 2 (concept 7) rows 0..9 x cols 70..95."""
    ds = SyntheticShapes("test", n=1)
    ds.image(0)  # render, then overwrite the ground truth of the cache
    omap = np.full((96, 96), -1, np.int8)
    omap[0:40, 0:40] = 0
    omap[50:60, 50:60] = 1
    omap[0:10, 70:96] = 2
    ds._maps[0] = omap
    ds._objects[0] = [dict(concept=5, role="label"), dict(concept=2, role="distractor"),
                      dict(concept=7, role="distractor")]
    return ds


def test_concept_at_hand_example(hand_built):
    ds = hand_built
    assert concept_at(ds, 0, (0, 0, 32, 32)) == 5
    # centre cell: object 0 covers 8 x 8 = 64 pixels, object 1 covers 10 x 10 = 100
    assert concept_at(ds, 0, (32, 32, 64, 64)) == 2
    assert concept_at(ds, 0, (64, 64, 96, 96)) == -1
    assert concept_at(ds, 0, (0, 64, 32, 96)) == 7
    # fractional box: pixel centres 39.5 (in) and 40.5 (out) -> rows 30..39 of object 0 only
    assert concept_at(ds, 0, (30.0, 30.0, 40.4, 40.4)) == 5
    assert concept_at(ds, 0, (39.6, 39.6, 50.4, 50.4)) == -1  # centres 40.5..49.5: a gap
    assert concept_at(ds, 0, (39.6, 39.6, 50.6, 50.6)) == 2  # adds pixel (50, 50) of object 1
    # a tie (object 0: pixel (39, 39); object 1: pixel (50, 50)) goes to the object drawn first
    assert concept_at(ds, 0, (39, 39, 51, 51)) == 5
    assert concept_at(ds, 0, (39, 39, 52, 52)) == 2  # 1 pixel against 4
    cells = types.SimpleNamespace(indices=torch.zeros(1, 9, dtype=torch.long), map_size=(3, 3),
                                  positions=torch.tensor([[[r, c] for r in range(3) for c in range(3)]]))
    assert reference_concepts(ds, cells).view(3, 3).tolist() == [[5, 5, 7], [5, 2, -1], [-1, -1, -1]]


def test_reference_concepts_and_polysemanticity(hand_built):
    ds = hand_built
    refs = types.SimpleNamespace(
        indices=torch.tensor([[0, 0, 0, 0, 0], [0, 0, 0, 0, -1]]),
        positions=torch.tensor([[[0, 0], [1, 1], [0, 2], [2, 2], [1, 0]],
                                [[0, 0], [0, 0], [0, 1], [1, 0], [1, 1]]]),
        map_size=(3, 3))
    concepts = reference_concepts(ds, refs)
    assert concepts.tolist() == [[5, 2, 7, -1, 5], [5, 5, 5, 5, -1]]
    shares = concept_shares(concepts, n_concepts=8)
    assert shares.shape == (2, 8)
    torch.testing.assert_close(shares[0, [2, 5, 7]], torch.tensor([0.2, 0.4, 0.2]))
    assert polysemantic_by_concepts(concepts).tolist() == [True, False]
    assert polysemantic_by_concepts(concepts, min_share=0.3).tolist() == [False, False]
    # hand example: 3 concepts at 50/30/20 percent, and one concept alone
    c = torch.tensor([[0] * 5 + [1] * 3 + [2] * 2, [4] * 9 + [-1]])
    assert polysemantic_by_concepts(c).tolist() == [True, False]
    assert concept_counts(c).tolist() == [3, 1]
    assert concept_counts(c, min_share=0.3).tolist() == [2, 1]
    # background (40 %) is never a concept
    assert concept_counts(torch.tensor([[-1] * 4 + [3] * 6])).tolist() == [1]
    with pytest.raises(ValueError, match="min_share"):
        polysemantic_by_concepts(c, min_share=0.7)
    with pytest.raises(ValueError, match="min_share"):
        concept_counts(c, min_share=0)


def test_reference_concepts_match_concept_at_on_real_images():
    ds = SyntheticShapes("test", n=6)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 6, (4, 7), generator=gen)
    pos = torch.randint(0, 4, (4, 7, 2), generator=gen)
    refs = types.SimpleNamespace(indices=idx, positions=pos, map_size=(4, 4))
    concepts = reference_concepts(ds, refs)
    for n in range(4):
        for j in range(7):
            r, c = pos[n, j].tolist()
            assert concepts[n, j] == concept_at(ds, int(idx[n, j]), (r * 24, c * 24, r * 24 + 24, c * 24 + 24))


def test_layer_polysemanticity_matches_brute_force():
    # tiny random network; the brute force takes the full activation maps, sorts every channel's
    # spatial maxima, looks up the object under each argmax cell with concept_at and counts shares
    torch.manual_seed(3)
    model = build_resnet(block="basic", layers=[1, 1, 1, 1], channels=[8, 8, 8, 6], stem_width=8,
                         num_classes=16).eval()
    ds = SyntheticShapes("test", n=40, seed=2)
    n_ref, min_share = 10, 0.2
    got = layer_polysemanticity(model, ds, "layer4", n_ref=n_ref, min_share=min_share)

    acts = {}
    model.layer4.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    with torch.no_grad():
        model(torch.stack([ds[i][0] for i in range(len(ds))]))
    a = acts["a"]  # [N, C, h, w]
    n, c, h, w = a.shape
    flat = a.flatten(2)
    expected = []
    for ch in range(c):
        maxima, where = flat[:, ch].max(dim=1)
        order = sorted(range(n), key=lambda k: -float(maxima[k]))[:n_ref]
        # the top-n_ref set is well defined (no tie at its border), so tie-breaking does not matter
        assert float(maxima[order[-1]]) > float(maxima.sort(descending=True).values[n_ref])
        counts = {}
        for k in order:
            r, col = divmod(int(where[k]), w)
            box = (r * 96 / h, col * 96 / w, (r + 1) * 96 / h, (col + 1) * 96 / w)
            concept = concept_at(ds, k, box)
            if concept >= 0:
                counts[concept] = counts.get(concept, 0) + 1
        if sum(v >= min_share * n_ref for v in counts.values()) >= 2:
            expected.append(ch)
    assert got["neurons"] == expected
    assert got["count"] == len(expected) and got["n_neurons"] == c
    assert got["fraction"] == pytest.approx(len(expected) / c, abs=1e-4)
    assert (got["n_ref"], got["split"], got["n"], got["seed"]) == (n_ref, "test", 40, 2)
