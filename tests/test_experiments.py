"""A profile's setting and the whole evaluation: the smoke profile end to end."""
import numpy as np
import pytest
import torch

from pure_utils.study import setting as ex
from pure_utils.circuits import BASELINES
from pure_utils.study.setting import evaluate, select_neurons
from pure_utils.study.tables import ACTIVATIONS, ACTIVATIONS_PEAK, BASELINE_LABELS
from pure_utils.metrics import distance_matrix, intra_inter, kmeans_labels


def _clusters(n_ref=40, d=6, seed=0):
    """One neuron's embeddings in two well separated groups (first half / second half)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(2, d, generator=g) * 10
    return (centres.repeat_interleave(n_ref // 2, 0) + 0.1 * torch.randn(n_ref, d, generator=g))[None]


def test_select_neurons():
    assert select_neurons(5) == [0, 1, 2, 3, 4]
    sub = select_neurons(100, 10, seed=1)
    assert sub == sorted(sub) and len(set(sub)) == 10 and sub == select_neurons(100, 10, seed=1)
    with pytest.raises(ValueError, match="n_neurons=0"):
        select_neurons(5, 0)
    # channels that never activate are never chosen; without any, the subset is the old one
    import numpy as np
    old = sorted(int(k) for k in np.random.default_rng(1).choice(100, size=10, replace=False))
    assert sub == old == select_neurons(100, 10, seed=1, exclude=[])
    dead = sub[:3]
    living = select_neurons(100, 10, seed=1, exclude=dead)
    assert len(living) == 10 and not set(living) & set(dead)
    assert select_neurons(5, None, exclude=[1, 3]) == [0, 2, 4]


def test_rank_neurons_orders_by_the_embedding_gap_without_concepts():
    X = _clusters()
    flat = torch.randn(1, X.shape[1], X.shape[2]) * 0.01  # one blob: little to split
    s = ex.Setting(profile={"has_concepts": False, "random_state": 0, "n_init": 10}, model=None, dataset=None, references=None,
                   neurons=[7, 9], device="cpu")
    r = ex.rank_neurons(s, torch.cat([flat, X]))
    assert r.neuron.tolist() == [9, 7]
    assert r.polysemanticity.iloc[0] > r.polysemanticity.iloc[1]
    with pytest.raises(ValueError, match="needs embeddings"):
        ex.rank_neurons(s)


# --- the smoke profile, end to end --------------------------------------------------------------
# session-wide: `make test` hands out single tests, so a module's tests meet on several
# workers; each worker evaluates once
@pytest.fixture(scope="session")
def smoke():
    from pure_utils.study.profile import load_profile

    # the smoke profile at 64 px instead of 224 px and with fewer samples: the same code path
    # (random ResNet-50, tiny random CLIP / DINOv2, crops, every table), within a test's budget
    small = {"config": {"image_size": 64}, "n": 8}
    profile = load_profile("smoke", dataset_kwargs=small, heldout_dataset_kwargs=small, n_ref=4,
                           n_neurons=2, correlation_n_samples=4, n_boot=50)
    return profile, evaluate(profile, progress=False)


def test_smoke_profile_runs_the_whole_evaluation(smoke):
    profile, r = smoke
    s = r.setting
    assert len(s.neurons) == 2 and s.references.n_ref == 4
    t = r.tensors
    assert t["pure"].shape == (2, 4, 1024) and t["activations"].shape == (2, 4, 2048)
    assert t["activations_peak"].shape == (2, 4, 2048)
    assert t["embeddings"].shape[:2] == (2, 4) and t["visual_embeddings"].shape[:2] == (2, 4)
    assert not torch.allclose(t["embeddings"][..., :8], t["visual_embeddings"][..., :8])
    boxes = t["boxes"]
    assert boxes.shape == (2, 4, 4) and (boxes[..., 2] > boxes[..., 0]).all()
    assert boxes.min() >= 0 and boxes[..., 2:].max() <= 64
    methods = {"PURE", ACTIVATIONS, ACTIVATIONS_PEAK, profile["embedder_label"], profile["visual_embedder_label"],
               "random", "ground truth"}
    assert set(r.comparison.method) == methods and set(r.comparison.k) == {2, 3}
    assert set(r.comparison_summary.method) == methods
    # the table's Eq. 5 values agree with a recomputation from the returned tensors
    row = r.comparison[(r.comparison.method == "PURE") & (r.comparison.k == 2)].iloc[0]
    i = s.neurons.index(row.neuron)
    labels = kmeans_labels(t["pure"][i], 2, random_state=0, n_init=profile["n_init"])
    intra, inter = intra_inter(distance_matrix(t["embeddings"][i]), labels)
    assert (row.intra, row.inter) == (pytest.approx(intra), pytest.approx(inter))
    assert set(r.correlation.method) == {"PURE", ACTIVATIONS, ACTIVATIONS_PEAK,
                                         profile["visual_embedder_label"]}
    assert r.divergence.shape[0] == 2 and len(r.polysemanticity) == 2
    assert r.purity is not None and set(r.purity.columns) >= {"purity_neuron", "purity_virtual"}
    if r.ground_truth is not None:
        assert {"PURE (gxa)", "PURE (epsilon_plus_flat)"} <= set(r.ground_truth.method)
        assert r.ground_truth.ari.between(-1, 1).all()


def test_the_labels_of_the_baselines_are_the_names_of_the_engine():
    assert BASELINE_LABELS == tuple(BASELINES) == ("activations (mean)", "activations (peak)")
    assert [BASELINES[b] for b in (ACTIVATIONS, ACTIVATIONS_PEAK)] == ["mean", "peak"]


def test_evaluate_compares_pure_with_both_baselines(smoke):
    """Every paired table of the smoke run holds PURE minus each baseline; the peak features
    are the layer's output at the unit's argmax, by a plain forward pass of the whole model."""
    from brute import outputs_in_graph

    profile, r = smoke
    s, t = r.setting, r.tensors
    for pairs in (r.comparison_pairs, r.ground_truth_pairs):
        if pairs is None:
            continue
        for k in set(pairs.k):
            rows = pairs[pairs.k == k]
            assert sorted(rows.b) == sorted(BASELINE_LABELS * (len(rows) // 2)) and len(rows) >= 2
            assert rows.a.str.startswith("PURE").all()
    assert {ACTIVATIONS, ACTIVATIONS_PEAK} <= set(r.purity_pairs.b)
    assert {"r_activations", "r_peak", "difference_peak"} <= set(r.divergence.columns)
    assert {ACTIVATIONS, ACTIVATIONS_PEAK} <= set(r.purity.method)
    assert not torch.allclose(t["activations"], t["activations_peak"])
    # the engine on its own (no cache) gives the same peak vectors ...
    from pure_utils.circuits import activation_vectors
    again = activation_vectors(s.model, s.dataset, s.references, s.profile.layer, neurons=s.neurons,
                                pooling="peak", device=s.device, progress=False)
    assert torch.allclose(again, t["activations_peak"], atol=1e-5)
    # ... and so does a forward pass of the whole model, the peak found by hand
    s.model.eval()
    with torch.no_grad():
        for j, k in enumerate(s.neurons):
            for r_, i in enumerate(s.references.indices[s.references.rows([k])[0]].tolist()):
                x = s.dataset[i][0][None].to(s.device)
                (act,) = outputs_in_graph(s.model, x, [s.profile.layer])
                flat = act[0].flatten(1).float().cpu()                      # [C, H * W]
                peak = int(np.argmax(flat[k].numpy()))                      # the first maximum
                # one image alone against batches of images: equal to float rounding
                assert torch.allclose(t["activations_peak"][j, r_], flat[:, peak].clamp(min=0),
                                      rtol=1e-3, atol=1e-3)
                assert torch.allclose(t["activations"][j, r_], flat.clamp(min=0).mean(1),
                                      rtol=1e-3, atol=1e-3)
                assert not torch.allclose(t["activations_peak"][j, r_], flat.clamp(min=0).mean(1),
                                          rtol=1e-3, atol=1e-3)


def test_embed_references_reads_the_boxes_of_each_reference():
    from pure_utils.embed import load_embedder
    from pure_utils.references import References
    from pure_utils.shapes.dataset import SyntheticShapes

    ds = SyntheticShapes("test", n=6)
    g = torch.Generator().manual_seed(0)
    refs = References(indices=torch.stack([torch.randperm(6, generator=g) for _ in range(3)]),
                      values=torch.ones(3, 6), positions=torch.randint(0, 3, (3, 6, 2), generator=g),
                      map_size=(3, 3), input_size=(96, 96), layer="layer4")
    setting = ex.Setting(profile={}, model=None, dataset=ds, references=refs, neurons=[0, 2],
                         device="cpu")
    boxes = torch.tensor([0, 0, 48, 48]).expand(2, 6, 4)
    emb = load_embedder("attributes", colours=ds.config.colours, shapes=ds.config.shapes)
    e = ex.embed_references(setting, emb, boxes)
    assert e.shape == (2, 6, emb.dim)
    direct = emb.embed([(ds, int(refs.indices[2, j]), (0, 0, 48, 48)) for j in range(6)])
    assert torch.equal(e[1], direct)
    # shares of one box: colours sum to the object share, as do shapes; with background, 1
    np.testing.assert_allclose(e[..., :4].sum(-1) + e[..., -1], 1, atol=1e-6)
    np.testing.assert_allclose(e[..., 4:8].sum(-1) + e[..., -1], 1, atol=1e-6)
    with pytest.raises(ValueError, match="do not match the references"):
        ex.embed_references(setting, emb, boxes[:, :3])


def test_the_test_phase_refuses_the_reference_set_itself():
    from pure_utils.study.profile import load_profile

    data = {"split": "test", "n": 12, "config": {"image_size": 64}, "part": None}
    same = load_profile("smoke", dataset_kwargs=data, heldout_dataset_kwargs=data, n_ref=4,
                        n_neurons=1)
    setting = ex.load_setting(same, progress=False)
    with pytest.raises(ValueError, match="shares 12 images with the reference set"):
        ex.heldout_references(setting, progress=False)
    parts = load_profile("smoke", n_ref=4, n_neurons=1)  # mining and test parts of one split
    setting = ex.load_setting(parts, progress=False)
    ds, refs = ex.heldout_references(setting, progress=False)
    assert ds.part == "test" and not set(ds.indices) & set(setting.dataset.indices)


def test_reference_crops_of_the_first_references():
    from pure_utils.shapes.dataset import SyntheticShapes
    from pure_utils.references import References

    ds = SyntheticShapes("test", n=6)
    refs = References(indices=torch.tensor([[5, 3, 1, 0]]), values=torch.ones(1, 4),
                      positions=torch.zeros(1, 4, 2, dtype=torch.long), map_size=(3, 3),
                      input_size=(96, 96), layer="layer4")
    setting = ex.Setting(profile={}, model=None, dataset=ds, references=refs, neurons=[0],
                         device="cpu")
    boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 20, 20]])
    crops = ex.reference_crops(setting, 0, boxes)
    assert len(crops) == 2 and crops[1].shape == (3, 15, 15)
    assert torch.equal(crops[0], ds.image(5)[:, :10, :10]) and torch.equal(crops[1], ds.image(3)[:, 5:20, 5:20])
    with pytest.raises(ValueError, match="5 boxes for the 4 reference samples"):
        ex.reference_crops(setting, 0, torch.zeros(5, 4, dtype=torch.long))
# --- a model of another architecture family, at its own layers ----------------------------------
def test_a_model_of_another_family_is_studied_at_its_own_layers_with_lrp_left_out():
    from pure_utils.study import family
    from pure_utils.circuits import circuit_attributions
    from pure_utils.study.profile import load_profile

    small = {"config": {"image_size": 64}, "n": 12}
    profile = load_profile("smoke", dataset_kwargs=small, n_ref=4, n_neurons=3, n_boot=50,
                           cache=False, randomize_batchnorm=False)
    assert ex.model_layers(profile, "synthetic_convnext") == {"layer": "stages.3",
                                                              "lower_layer": "stages.2"}
    assert ex.model_layers(profile, "resnet50") == {}
    run = family.compare_model(profile, "synthetic_convnext")
    s = run["setting"]
    assert (s.profile["layer"], s.profile["lower_layer"]) == ("stages.3", "stages.2")
    assert s.references.layer == "stages.3" and s.references.n_channels == 32
    # LRP is not correct on a ConvNeXt: left out, with what it would miss
    assert run["attributions"] == ["gxa"]
    assert "ConvNeXtBlock (stages.3.blocks.0): own forward" in "\n".join(run["refused"]["epsilon_plus_flat"])
    if run["pairs"] is not None:
        assert set(run["pairs"].a) == {"PURE (gxa)"}
    # the setting's circuits are those of the model's own layers
    R = circuit_attributions(s.model, s.dataset, s.references, "stages.3", "stages.2",
                             neurons=s.neurons, progress=False)
    assert torch.allclose(s.circuit_attributions(progress=False), R)
    with pytest.raises(ValueError, match=r"model_layers.synthetic_convnext sets \['n_ref'\]"):
        ex.model_layers({**profile, "model_layers": {"synthetic_convnext": {"n_ref": 3}}},
                        "synthetic_convnext")
    with pytest.raises(ValueError, match="attribution 'epsilon_plus_flat' .* is not correct on "
                                         "synthetic_convnext"):
        family.compare_model({**profile, "attribution": "epsilon_plus_flat"}, "synthetic_convnext")


def test_the_setting_passes_its_profile_to_heatmaps_crops_and_virtual_neurons(smoke):
    """A chapter calls the setting instead of handing the profile's keys to the free functions:
    each method gives exactly what the free function gives with the keys written out."""
    import dataclasses

    from pure_utils import VirtualNeurons
    from pure_utils.crops import display_crops, feature_heatmaps, reference_images

    profile, r = smoke
    s = r.setting
    # a profile that differs from the defaults in every key the methods read: a method that
    # ignored one would not match
    p = dataclasses.replace(s.profile, composite="epsilon_plus", display_blur_kernel=11,
                            display_threshold=0.3, display_dim_threshold=0.5, display_alpha=0.1,
                            random_state=3, n_init=2, batch_size=3)
    s = dataclasses.replace(s, profile=p)
    n = s.neurons[1]
    heat = s.heatmaps([n], progress=False)
    again = feature_heatmaps(s.model, s.dataset, s.references, p.layer, [n], composite="epsilon_plus",
                             batch_size=3, device=s.device, progress=False)
    torch.testing.assert_close(heat, again)
    assert not torch.allclose(heat, s.heatmaps([n], composite="gradient_x_input", progress=False))
    images = reference_images(s.dataset, s.references, n)
    torch.testing.assert_close(s.reference_images(n), images)
    shown = s.display_crops(n, heat[0])
    expected = display_crops(images, heat[0], blur_kernel=11, threshold=0.3, dim_threshold=0.5,
                             alpha=0.1)
    assert len(shown) == len(expected) and all(torch.equal(a, b) for a, b in zip(shown, expected))
    R = torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    vn = s.virtual_neurons(R, 3)
    ref = VirtualNeurons(n_clusters=3, random_state=3, n_init=2).fit(R)
    assert (vn.n_clusters, vn.random_state, vn.n_init) == (3, 3, 2)
    np.testing.assert_array_equal(vn.labels_, ref.labels_)


def test_a_setting_of_another_model_names_that_model_in_its_profile():
    from pure_utils.study.profile import load_profile

    small = {"config": {"image_size": 64}, "n": 8}
    p = load_profile("smoke", dataset_kwargs=small, n_ref=4, n_neurons=1)
    s = ex.load_setting(p, model_name="resnet18", progress=False)
    assert s.profile.model_name == "resnet18" != p.model_name
    assert s.model_name == "resnet18"
