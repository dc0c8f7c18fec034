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
