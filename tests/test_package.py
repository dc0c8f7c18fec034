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
#: The five jobs, each a folder; a group imports only from groups before it (book and perf both
#: stand on study, neither on the other): engine <- shapes <- study <- book, perf.
GROUPS = {"engine": 0, "shapes": 1, "study": 2, "book": 3, "perf": 3}
#: The flow of data inside the engine, bottom to top: a module imports only modules before it.
ENGINE = ["paths", "_machine", "_files", "_arrays", "_progress", "_images", "registry", "data", "disjoint", "distributed",
          "cache", "models", "layers", "stash", "canonizers", "checkpoints", "references", "circuits", "virtual",
          "embed", "crops", "pure", "stats", "metrics", "visualize"]
#: Packages heavy enough to be imported inside the one function that needs them.
HEAVY = {"transformers", "open_clip", "umap", "plotly", "torch", "myst_nb"}
#: Lines of code (blank lines, comments and the docstring not counted) a function may have.
MAX_FUNCTION_LINES = 80


def _modules():
    """dotted name under the package (``"circuits"``, ``"shapes.train"``) -> path"""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts == ["__init__"]:
            continue
        out[".".join(parts)] = path
    return out


def _group(name: str) -> str:
    head = name.split(".")[0]
    return head if head in GROUPS and head != "engine" and "." in name else "engine"


def _imports(name: str, path: Path):
    """(line, target module, imported names) of every relative import of module ``name``"""
    package = name.split(".")[:-1] if not path.name == "__init__.py" else name.split(".")
    modules = _modules()
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.ImportFrom) and node.level >= 1):
            continue
        base = package[:len(package) - (node.level - 1)]
        if node.module:
            target = ".".join(base + node.module.split("."))
            yield node.lineno, target, [a.name for a in node.names]
        else:  # `from . import x`: modules, or attributes of the package (__version__)
            for a in node.names:
                target = ".".join(base + [a.name])
                if target in modules:
                    yield node.lineno, target, []


def test_every_engine_module_has_a_place_in_the_flow():
    engine = {n for n in _modules() if _group(n) == "engine" and "." not in n}
    assert engine == set(ENGINE)
    for name in _modules():
        assert name.split(".")[0] in GROUPS or "." not in name, f"{name}: a folder outside the groups"


def test_groups_and_engine_modules_import_only_what_stands_below_them():
    for name, path in _modules().items():
        for line, target, names in _imports(name, path):
            where = f"{name}:{line}"
            if target not in _modules() and target.split(".")[0] in GROUPS:
                continue  # a sub-package itself (its __init__)
            a, b = _group(name), _group(target)
            assert GROUPS[b] <= GROUPS[a], f"{where} imports {target} ({b} stands above {a})"
            assert not (GROUPS[b] == GROUPS[a] and a != b), f"{where}: {a} imports {b}"
            if a == b == "engine":
                assert ENGINE.index(target) < ENGINE.index(name), f"{where} imports {target}, above it"
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{where} imports private {private} from {target}"


def test_imports_inside_a_group_form_no_circle():
    graph = {n: {t for _, t, _ in _imports(n, p) if t in _modules()} for n, p in _modules().items()}
    state = {}

    def visit(n, path):
        if state.get(n) == "open":
            raise AssertionError("import circle: " + " -> ".join(path + [n]))
        if state.get(n) == "done":
            return
        state[n] = "open"
        for t in graph[n]:
            visit(t, path + [n])
        state[n] = "done"

    for n in graph:
        visit(n, [])


def _code_lines(lines, fn) -> int:
    doc = fn.body[0] if fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(
        getattr(fn.body[0], "value", None), ast.Constant) and isinstance(fn.body[0].value.value, str) else None
    skip = set(range(doc.lineno, doc.end_lineno + 1)) if doc else set()
    return sum(1 for i in range(fn.lineno, fn.end_lineno + 1)
               if i not in skip and lines[i - 1].strip() and not lines[i - 1].strip().startswith("#"))


def test_functions_are_short():
    long = []
    for name, path in _modules().items():
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _code_lines(lines, fn)
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{fn.name} ({n} lines of code)")
    assert not long, f"functions longer than {MAX_FUNCTION_LINES} lines of code: " + ", ".join(long)


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


def test_registries_name_builders_lazily_and_list_them_in_errors():
    """One idiom for named things: the engine names the benchmark's builders by path."""
    import pytest

    from pure_utils.data import DATASETS
    from pure_utils.embed import EMBEDDERS
    from pure_utils.registry import Registry

    reg = Registry("thing")
    reg.register("Lazy", "pure_utils.paths:ROOT")
    assert "lazy" in reg and list(reg) == ["lazy"]
    from pure_utils.paths import ROOT
    assert reg.get("LAZY") is ROOT
    with pytest.raises(ValueError, match="thing 'other' not known; things: lazy"):
        reg.get("other")
    with pytest.raises(ValueError, match="'module:attribute'"):
        reg.register("bad", "no_colon")
    assert {"synthetic", "imagefolder", "generated"} <= set(DATASETS)
    assert list(EMBEDDERS) == ["clip", "dinov2", "open_clip", "attributes"]
    assert DATASETS.get("synthetic").__module__ == "pure_utils.shapes.dataset"


def test_sub_packages_import_their_modules_on_first_use():
    import subprocess
    import sys

    import pytest

    code = ("import sys, pure_utils as pu; assert 'pure_utils.study.tables' not in sys.modules; "
            "m = pu.study.tables; print(m.__name__, 'pure_utils.perf.scale' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["pure_utils.study.tables", "False"]
    with pytest.raises(AttributeError, match="module 'pure_utils.study' has no attribute 'nope'"):
        pure_utils.study.nope


# --- the run options: documented once, for the package ------------------------------------------
RUN_OPTIONS = ("batch_size", "device", "cache", "progress", "num_workers")


def _parameter_entries(doc: str) -> list[tuple[list[str], str]]:
    """The entries of a numpydoc ``Parameters`` section: (names, first line of the description)."""
    import inspect
    import re

    lines = inspect.cleandoc(doc).splitlines()
    start = lines.index("Parameters") + 2
    entries = []
    for i in range(start, len(lines)):
        line, after = lines[i], lines[i + 1] if i + 1 < len(lines) else ""
        if line and set(after) == {"-"}:
            break  # the next section
        if re.fullmatch(r"\w+(, \w+)*( : .*)?", line):
            entries.append((line.split(" : ")[0].split(", "),
                            after.strip() if after.startswith(" ") else ""))
    return entries


def _runners():
    """Public functions and classes of the library that take three or more run options."""
    import importlib
    import inspect
    import pkgutil

    found = {}
    for info in pkgutil.walk_packages(pure_utils.__path__, "pure_utils."):
        if any(part.startswith("_") for part in info.name.split(".")) or \
                info.name.split(".")[1] in ("book", "perf"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != info.name:
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or not obj.__doc__:
                continue
            try:
                params = inspect.signature(obj).parameters
            except (TypeError, ValueError):
                continue
            if len(set(params) & set(RUN_OPTIONS)) >= 3 and "Parameters" in obj.__doc__:
                found[f"{info.name}.{name}"] = (obj, [p for p in RUN_OPTIONS if p in params])
    return found


def test_the_run_options_are_documented_once_for_the_package():
    # the package documents each option once ...
    package = _parameter_entries(pure_utils.__doc__.replace("Run options\n-----------",
                                                            "Parameters\n----------"))
    assert [names for names, _ in package] == [[o] for o in RUN_OPTIONS]
    # ... and every stage that takes them names them in one entry that points there
    runners = _runners()
    assert {"pure_utils.references.mine_references", "pure_utils.circuits.circuit_attributions",
            "pure_utils.crops.feature_heatmaps", "pure_utils.pure.PURE"} <= set(runners)
    for name, (obj, options) in runners.items():
        entries = _parameter_entries(obj.__doc__)
        pointing = [(n, first) for n, first in entries if set(n) & set(RUN_OPTIONS)]
        assert len(pointing) == 1, f"{name}: the run options in {len(pointing)} entries, not one"
        names, first = pointing[0]
        assert names == options, f"{name}: the entry names {names}, the signature {options}"
        assert first.startswith("The run options (see :mod:`pure_utils`)"), name


def test_a_stage_that_documents_a_run_option_anew_is_caught():
    def stage(data, *, batch_size=8, device=None, progress=True):
        """A stage.

        Parameters
        ----------
        data : Dataset
        batch_size : int
            Images per pass.
        device, progress
            The run options (see :mod:`pure_utils`).

        Returns
        -------
        None
        """
    entries = _parameter_entries(stage.__doc__)
    assert entries == [(["data"], ""), (["batch_size"], "Images per pass."),
                       (["device", "progress"], "The run options (see :mod:`pure_utils`).")]
    assert len([n for n, _ in entries if set(n) & set(RUN_OPTIONS)]) == 2
