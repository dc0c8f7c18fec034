"""The README's crops and grids run as written, on a tiny random ResNet and generated images."""
import re

import matplotlib
import torch

import pure_utils as pu
from pure_utils.data import GeneratedImages
from pure_utils.models import build_resnet, randomize_batchnorm
from pure_utils.paths import ROOT

matplotlib.use("Agg")


def _crops_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return next(b for b in blocks if "display_crops" in b)


def test_the_readme_crops_and_grids_run(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = randomize_batchnorm(build_resnet("basic", channels=(8, 8, 16, 16), stem_width=8,
                                             num_classes=4), 0).eval()
    data = GeneratedImages(10, size=48, seed=2)
    pure = pu.PURE(model, "layer4", "layer3", n_clusters=2, n_ref=6, batch_size=5, progress=False)
    pure.fit(data, neurons=[5])
    monkeypatch.chdir(tmp_path)
    namespace = {"pu": pu, "pure": pure, "data": data}
    exec(compile(_crops_block().replace("1929", "5"), "README.md", "exec"), namespace)
    assert namespace["hm"].shape == (6, 48, 48) and len(namespace["crops"]) == 6
    assert all(c.shape[0] == 4 for c in namespace["shown"])  # RGBA display crops
    assert (tmp_path / "neuron_5.png").stat().st_size > 0 and (tmp_path / "crops_5.png").exists()
