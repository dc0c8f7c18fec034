"""Figures: grids, UMAP, the interactive hover view."""
import numpy as np
import pytest
import torch

from pure_utils.visualize import image_grid, interactive_umap, umap_embedding, virtual_neuron_grid


# --- figures -------------------------------------------------------------------------------
def test_figures():
    import matplotlib

    matplotlib.use("Agg")
    imgs = [torch.rand(3, 20, 20) for _ in range(5)] + [torch.rand(4, 12, 12)]
    fig = image_grid(imgs, ncols=4)
    assert fig.axes[0].images[0].get_array().shape[1] == 4 * 66 + 2
    fig = virtual_neuron_grid(imgs, [0, 1, 0, 1, 1, 0], per_cluster=2)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [
        "virtual neuron 0 (n=3)", "virtual neuron 1 (n=3)"]
    coords = np.random.default_rng(0).normal(size=(6, 2))
    html = interactive_umap(coords, imgs, labels=[0, 1, 0, 1, 1, 0],
                            include_plotlyjs=False).to_html()
    # one thumbnail per point (plotly escapes "/" as \u002f), the hover handler, the image slot
    assert html.count("base64,") == 6 and "plotly_hover" in html and "-thumb" in html
    with pytest.raises(ValueError, match="6 points but 2 images"):
        interactive_umap(coords, imgs[:2])
    with pytest.raises(ValueError, match="n >= 3"):
        umap_embedding(np.zeros((2, 4)))


@pytest.mark.slow
def test_umap_embedding():
    # numba compiles UMAP on first use (about 30 s): marked slow
    coords = umap_embedding(np.random.default_rng(0).normal(size=(12, 5)))
    assert coords.shape == (12, 2) and np.isfinite(coords).all()


def test_both_activation_baselines_have_their_own_colour_after_pure():
    import matplotlib.pyplot as plt
    import pandas as pd

    from pure_utils.study.tables import ACTIVATIONS, ACTIVATIONS_PEAK
    from pure_utils.visualize import method_order, method_palette, paired_differences_figure

    names = ["random", ACTIVATIONS_PEAK, "DINOv2", ACTIVATIONS, "PURE"]
    assert method_order(names) == ["PURE", ACTIVATIONS, ACTIVATIONS_PEAK, "DINOv2", "random"]
    colours = method_palette(names)
    assert len(set(colours.values())) == len(names)
    assert method_palette(["activations"])["activations"] == colours[ACTIVATIONS]
    # one series per pair of methods: PURE against each baseline
    pairs = pd.DataFrame([dict(a="PURE (gxa)", b=b, model=m, knob="", mean=0.1, ci_low=0.0, ci_high=0.2)
                          for m in ("m1", "m2") for b in (ACTIVATIONS, ACTIVATIONS_PEAK)])
    fig = paired_differences_figure(pairs, method=("a", "b"))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == [f"PURE (gxa) - {ACTIVATIONS}", f"PURE (gxa) - {ACTIVATIONS_PEAK}"]
    one = paired_differences_figure(pairs)
    assert [t.get_text() for t in one.axes[0].get_legend().get_texts()] == ["PURE (gxa)"]
    plt.close("all")


def test_umap_colours_follow_the_virtual_neuron_and_small_clusters_lie_on_top():
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    from pure_utils.visualize import label_colours, umap_figure

    rng = np.random.default_rng(0)
    coords = rng.normal(size=(40, 2))
    rows = [np.array([0] * 32 + [1] * 8), np.array([1] * 32 + [0] * 8), np.array([1] * 40)]
    fig, axes = plt.subplots(1, 3)
    seen = {}
    for ax, labels in zip(axes, rows):
        umap_figure(coords, labels, ax=ax)
        drawn = {c.get_label(): c for c in ax.collections}
        for name, c in drawn.items():
            seen.setdefault(name, set()).add(tuple(np.round(c.get_facecolor()[0], 4)))
        if len(drawn) > 1:
            counts = {str(v): int((labels == v).sum()) for v in np.unique(labels)}
            large, little = sorted(drawn, key=counts.get, reverse=True)
            assert drawn[little].get_zorder() > drawn[large].get_zorder()
        assert [t.get_text() for t in ax.get_legend().get_texts()] == sorted(drawn)
    assert all(len(colours) == 1 for colours in seen.values()), seen
    assert seen["0"] != seen["1"]
    assert to_rgba(label_colours([1])[1]) == to_rgba(label_colours([0, 1])[1])
    plt.close(fig)
