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

    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert tqdm(range(3), disable=False).disable
    monkeypatch.setenv("TQDM_DISABLE", "")
    bar = tqdm(range(3), disable=False)
    assert not bar.disable                       # a terminal: bars on
    bar.close()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert tqdm(range(3), disable=False).disable  # a log file: no carriage-return bars


# --- the house rules of the package's layout -------------------------------------------------
import ast  # noqa: E402
from pathlib import Path  # noqa: E402

PACKAGE = Path(pure_utils.__file__).parent
#: The flow of data, bottom to top: a module imports only modules before it. The data layer
#: (synthetic, data) sits right above the private helpers.
LAYERS = ["paths", "_machine", "_files", "_arrays", "_progress", "_compat", "_measure", "report",
          "synthetic", "benchmark", "data", "distributed", "cache", "models", "layouts", "stash",
          "canonizers", "references", "circuits", "virtual", "crops", "embed", "pipeline",
          "ground_truth", "grafting", "metrics", "train", "tables", "ablations", "profiles", "experiments",
          "prepare", "family", "visualize", "rendering", "pages", "book", "scale", "bench"]
#: Packages heavy enough to be imported inside the one function that needs them.
HEAVY = {"transformers", "open_clip", "umap", "plotly", "torch", "myst_nb"}


def _modules():
    return {p.stem: p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def _relative_imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            yield node


def test_every_module_has_a_place_in_the_flow():
    assert set(_modules()) == set(LAYERS)


def test_modules_are_small_and_import_only_modules_below_them():
    for name, path in _modules().items():
        text = path.read_text()
        assert len(text.splitlines()) <= 600, f"{name}.py has {len(text.splitlines())} lines"
        for node in _relative_imports(ast.parse(text)):
            target = node.module or ""
            # `from . import x` names a module, or an attribute of the package (__version__)
            targets = [target] if target else [a.name for a in node.names if a.name in LAYERS]
            for t in targets:
                assert LAYERS.index(t) < LAYERS.index(name), f"{name} imports {t}, above it"
            if target:  # `from .x import _private` reaches into another module's internals
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{name} imports private {private} from {target}"


def test_imports_stand_at_the_top_but_for_heavy_packages_with_a_reason():
    for name, path in _modules().items():
        text = path.read_text()
        lines = text.splitlines()
        for fn in ast.walk(ast.parse(text)):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                where = f"{name}.py:{node.lineno}"
                assert not (isinstance(node, ast.ImportFrom) and node.level), \
                    f"{where}: a sibling module imported inside a function"
                top = (node.module if isinstance(node, ast.ImportFrom) else node.names[0].name)
                assert top.split(".")[0] in HEAVY, f"{where}: {top} imported inside a function"
                reason = lines[node.lineno - 1] + lines[node.lineno - 2]
                assert "#" in reason, f"{where}: a function-local import needs its reason"
