"""The uncertainty band of the intervention rule: labels, shares and scores without threshold noise.

A driver whose colour or shape retention lies within ``RULE["band"]`` of the attribute cut is
labelled "uncertain"; such a reference is no feature of its unit and no score compares it.
"""
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from pure_utils.metrics import ground_truth_scores
from pure_utils.models import build_resnet
from pure_utils.references import mine_references
from pure_utils.shapes import SyntheticShapes
from pure_utils.shapes.generator import SyntheticConfig
from pure_utils.shapes.ground_truth import (RULE, TrueFeatures, attribute_label, feature_names,
                                            true_features)
from pure_utils.study.ablations import choose_k_table, clustering_table
from pure_utils.study.tables import ground_truth_labels, ground_truth_table, heldout_purity
from pure_utils.study.verdicts import band_sentence, virtual_neuron_names

NAMES = feature_names(SyntheticConfig())


def test_the_band_is_part_of_the_rule_and_vocabulary():
    assert RULE["band"] == 0.1 and RULE["attribute"] == 0.5
    assert NAMES[-2:] == ["background", "uncertain"]


@pytest.mark.parametrize("colour, shape, expected", [
    (0.45, 0.9, "uncertain"),     # colour inside [0.4, 0.6)
    (0.05, 0.45, "uncertain"),    # shape inside
    (0.40, 0.9, "uncertain"),     # the band's lower edge belongs to it
    (0.39, 0.9, "red"),           # just below the band: colour matters
    (0.61, 0.9, "object"),        # just above: colour does not matter
    (0.60, 0.9, "object"),        # the upper edge does not belong to the band
    (0.39, 0.2, "red circle"),
    (0.61, 0.2, "circle"),
])
def test_attribute_label_at_the_band_edges(colour, shape, expected):
    assert attribute_label(colour, shape, "red", "circle") == expected


def test_band_zero_is_the_rule_without_the_band():
    assert attribute_label(0.45, 0.9, "red", "circle", band=0) == "red"
    assert attribute_label(0.55, 0.45, "red", "circle", band=0) == "circle"
    assert attribute_label(0.5, 0.9, "red", "circle", band=0) == "object"
    with pytest.raises(ValueError, match="band=-0.1"):
        attribute_label(0.45, 0.9, "red", "circle", band=-0.1)


def _hand_built():
    """Two units, four references each; retentions chosen around the band."""
    colour = torch.tensor([[0.05, 0.45, 0.39, 0.61], [0.45, 0.42, 0.9, 0.05]])
    shape = torch.tensor([[0.9, 0.9, 0.9, 0.9], [0.9, 0.9, 0.45, 0.9]])
    concept = torch.full((2, 4), NAMES.index("red circle"), dtype=torch.long)
    concept[1, 3] = NAMES.index("blue square")
    labels = torch.tensor([[NAMES.index(attribute_label(c, s, n.split()[0], n.split()[1]))
                            for c, s, n in zip(cr.tolist(), sr.tolist(), [NAMES[int(q)] for q in qr])]
                           for cr, sr, qr in zip(colour, shape, concept)])
    z = torch.zeros(2, 4)
    cfg = SyntheticConfig()
    kinds = (["colour"] * len(cfg.colours) + ["shape"] * len(cfg.shapes)
             + ["conjunction"] * (len(cfg.colours) * len(cfg.shapes))
             + ["object", "mixed", "background", "uncertain"])
    assert len(kinds) == len(NAMES)
    return TrueFeatures(labels=labels, names=NAMES, kinds=kinds, responsibility=z,
                             driver=torch.zeros(2, 4, dtype=torch.long), colour_retention=colour,
                             shape_retention=shape, activation=z, channels=torch.tensor([7, 9]),
                             driver_concept=concept)


def test_hand_built_labels_certain_mask_and_shares():
    f = _hand_built()
    named = [[f.names[i] for i in row] for row in f.labels.tolist()]
    assert named == [["red", "uncertain", "red", "object"],
                     ["uncertain", "uncertain", "uncertain", "blue"]]
    assert f.certain.tolist() == [[True, False, True, True], [False, False, False, True]]
    shares = f.shares()
    # unit 7: 3 certain references, 2 red and 1 object; "uncertain" has no share
    assert shares[0, NAMES.index("red")] == pytest.approx(2 / 3)
    assert shares[0, NAMES.index("object")] == pytest.approx(1 / 3)
    assert shares[:, NAMES.index("uncertain")].tolist() == [0.0, 0.0]
    # unit 9: one certain reference, "blue", which is then all of it (3 of 4 are uncertain)
    assert shares[1, NAMES.index("blue")] == pytest.approx(1.0)
    assert f.features(0.2) == [["red", "object"], ["blue"]]
    assert f.counts(0.2).tolist() == [2, 1] and f.polysemantic(0.2).tolist() == [True, False]
    # a unit with no certain reference has shares 0 and no feature
    f.labels[1] = NAMES.index("uncertain")
    assert f.shares()[1].sum() == 0 and f.features(0.2)[1] == [] and f.counts(0.2)[1] == 0


def test_relabel_without_the_band_and_band_effect():
    f = _hand_built()
    old = f.relabel(0)
    assert [[old.names[i] for i in row] for row in old.labels.tolist()] == [
        ["red", "red", "red", "object"], ["red", "red", "circle", "blue"]]
    assert torch.equal(f.relabel(RULE["band"]).labels, f.labels)
    assert old.features(0.2) == [["red", "object"], ["red", "blue", "circle"]]
    effect = f.band_effect(0.2)
    assert effect == dict(n_uncertain=4, n_references=8, n_changed=1, n_units=2)
    sentence = band_sentence({"m": f}, 0.2)
    assert sentence == ("On m, 4 of 8 references (50%) are uncertain and 1 of 2 units have other "
                        "true features than without the band.")
    assert band_sentence({}, 0.2) == "n/a (no ground truth)"
    table = f.table(0.2)
    assert table.n_uncertain.tolist() == [1, 3] and table.features.tolist() == ["red, object", "blue"]


def test_relabel_needs_the_driver_concept():
    f = _hand_built()
    f.driver_concept = None
    with pytest.raises(ValueError, match="driver_concept"):
        f.relabel(0)
    assert f.subset([9]).labels.shape == (1, 4)  # a None field survives subset


def test_relabel_with_band_zero_gives_exactly_the_labels_of_the_old_code_path(monkeypatch):
    torch.manual_seed(3)
    model = build_resnet(block="basic", layers=[1, 1, 1, 1], channels=[8, 8, 8, 6], stem_width=8,
                         num_classes=16).eval()
    ds = SyntheticShapes("test", n=40, seed=2)
    refs = mine_references(model, ds, "layer4", n_ref=10, progress=False)
    banded = true_features(model, ds, refs)
    monkeypatch.setitem(RULE, "band", 0.0)   # the rule as it was before the band
    old = true_features(model, ds, refs)
    assert not (old.labels == old.names.index("uncertain")).any()
    assert (banded.labels != old.labels).any(), "no reference in the band: the test would be empty"
    assert torch.equal(banded.relabel(0.0).labels, old.labels)
    assert torch.equal(old.relabel(0.1).labels, banded.labels)
    for name in ("colour_retention", "shape_retention", "driver", "driver_concept"):
        assert torch.equal(getattr(banded, name).nan_to_num(-7) if name.endswith("retention")
                           else getattr(banded, name),
                           getattr(old, name).nan_to_num(-7) if name.endswith("retention")
                           else getattr(old, name))
    # only references with a driver inside the band change
    changed = banded.labels != old.labels
    assert (banded.labels[changed] == banded.names.index("uncertain")).all()
    inside = ((banded.colour_retention - 0.5).abs() < 0.1) | ((banded.shape_retention - 0.5).abs() < 0.1)
    assert not (changed & ~inside).any()


# --------------------------------------------------------------------------------------------
# scores against the truth compare the certain references only
# --------------------------------------------------------------------------------------------
U = 9  # the "uncertain" id in these toy label rows


def _toy():
    """One unit, 12 references in two well separated blobs; truth with two uncertain rows."""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 0.01, (6, 3)), rng.normal(5, 0.01, (6, 3))])
    truth = np.array([0, 0, 0, 0, U, 1, 1, 1, 1, 1, U, 0])
    certain = truth != U
    blobs = np.array([0] * 6 + [1] * 6)
    return torch.tensor(X[None], dtype=torch.float32), truth, certain, blobs


def test_ground_truth_scores_ignore_uncertain_rows():
    _, truth, certain, blobs = _toy()
    got = ground_truth_scores(blobs, truth, certain)
    assert got["ari"] == pytest.approx(adjusted_rand_score(truth[certain], blobs[certain]))
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(truth[certain], blobs[certain]))
    assert got["ari"] != pytest.approx(ground_truth_scores(blobs, truth)["ari"])
    two = ground_truth_scores(np.stack([blobs, blobs]), np.stack([truth, truth]),
                              np.stack([certain, np.zeros(12, bool)]))
    assert two["ari"][0] == pytest.approx(got["ari"]) and np.isnan(two["ari"][1])
    with pytest.raises(ValueError, match="certain"):
        ground_truth_scores(blobs, truth, certain[:5])


def test_ground_truth_table_clusters_all_but_scores_the_certain_references():
    X, truth, certain, blobs = _toy()
    kw = dict(ks=[2], neurons=[4], progress=False)
    masked = ground_truth_table(truth[None], {"m": X}, certain=certain[None], **kw).set_index("method")
    plain = ground_truth_table(truth[None], {"m": X}, **kw).set_index("method")
    assert masked.loc["m", "ari"] == pytest.approx(adjusted_rand_score(truth[certain], blobs[certain]))
    assert plain.loc["m", "ari"] == pytest.approx(adjusted_rand_score(truth, blobs))
    assert masked.loc["m", "ari"] != pytest.approx(plain.loc["m", "ari"])
    # the upper bound ranks the certain truth only: two concepts, so a perfect match
    assert masked.loc["ground truth", "ari"] == pytest.approx(1.0)
    assert plain.loc["ground truth", "ari"] < 1.0
    algo = clustering_table(truth[None], {"m": X}, k=2, neurons=[4], certain=certain[None],
                            progress=False)
    assert algo.ari.iloc[0] == pytest.approx(masked.loc["m", "ari"])


def test_ground_truth_labels_count_certain_references_only():
    truth = np.array([U, U, U, U, 0, 0, 1, 2])
    certain = truth != U
    got = ground_truth_labels(truth, 2, certain)
    assert got[certain].tolist() == [0, 0, 1, 1]   # 0 keeps a cluster, 1 and 2 are "the rest"
    assert set(got.tolist()) <= {0, 1}
    assert ground_truth_labels(truth, 2).tolist()[:4] == [0, 0, 0, 0]  # unmasked: U is the top


def test_choose_k_true_count_and_purity_and_names_leave_uncertain_out():
    X, truth, certain, blobs = _toy()
    truth3 = np.array([0, 0, U, U, U, U, U, 1, 1, 1, U, U])
    with_u = choose_k_table(X, ks=[2, 3], concepts=truth3[None], min_share=0.3, neurons=[4])
    without = choose_k_table(X, ks=[2, 3], concepts=truth3[None], certain=(truth3 != U)[None],
                             min_share=0.3, neurons=[4])
    assert with_u.true_k.iloc[0] == 1 and without.true_k.iloc[0] == 2
    test_truth = np.array([0, U, U, 0, 0, 0, 1, 1, U, U, 1, 0])[None]
    p = heldout_purity({"m": X}, {"m": X}, test_truth, test_certain=test_truth != U,
                       neurons=[4]).iloc[0]
    keep = test_truth[0] != U
    assigned = blobs[keep]
    hits = sum(np.bincount(test_truth[0][keep][assigned == c]).max() for c in (0, 1))
    assert p.purity_virtual == pytest.approx(hits / keep.sum())
    assert p.purity_neuron == pytest.approx(5 / 8)
    f = _hand_built()
    names = virtual_neuron_names(np.array([0, 0, 1, 1]), f, 9)
    assert names == ["virtual neuron 0 (n=2): all uncertain", "virtual neuron 1 (n=2): blue 100%"]
