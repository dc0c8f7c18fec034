"""The public API: every exported name resolves, and importing the package stays cheap."""
import subprocess
import sys

import pure_utils


def test_every_exported_name_resolves():
    for name in pure_utils.__all__:
        assert getattr(pure_utils, name) is not None, name


def test_import_does_not_load_torch():
    code = "import sys, pure_utils; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_tqdm_disable_overrides_an_explicit_disable(monkeypatch):
    from pure_utils._progress import tqdm

    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert tqdm(range(3), disable=False).disable
    monkeypatch.setenv("TQDM_DISABLE", "")
    bar = tqdm(range(3), disable=False)
    assert not bar.disable
    bar.close()
