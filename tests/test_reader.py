"""The commands a reader copies from the book run as printed.

Every executed chapter's rerun box, and every ``papermill`` / ``python -m pure_utils.book``
command of README.md and book/reproduce.md, is parsed back by the tool that would run it
(papermill's own command line, the book's own command line) and checked against the notebooks'
declared parameters and the profile keys, without running a notebook.
"""
import json
import re
import shlex
from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from papermill import cli as papermill_cli

from pure_utils.book import cli
from pure_utils.book import build as book
from pure_utils.book import decorate
from pure_utils.paths import ROOT

TYPED = {"k": 2, "rate": 0.5, "neurons": [3, 1], "flag": True, "label": "two words", "off": None,
         "layers": {"a": 1}}


def _typed_notebook(path: Path) -> None:
    p = new_code_cell('profile = "offline"  # profile\nk = 2  # clusters\nrate = 0.5  # a float\n'
                      'neurons = [3, 1]  # a list\nflag = True  # a bool\nlabel = "two words"  # text\n'
                      'off = None  # nothing\nlayers = {"a": 1}  # a mapping')
    p.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[new_markdown_cell("# T"), p, new_code_cell("x = 1")])
    nb.metadata["kernelspec"] = {"name": book.KERNEL_NAME, "display_name": "pure", "language": "python"}
    nbformat.write(nb, path)


def _bash_commands(text: str) -> list[str]:
    """The command lines of the ```bash blocks of a Markdown text (continuations joined)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def _papermill_parameters(argv: list[str], monkeypatch) -> dict:
    """What papermill's own command line would inject for ``papermill ARGS``."""
    seen = {}
    monkeypatch.setattr(papermill_cli, "execute_notebook",
                        lambda **kw: seen.update(kw["parameters"]))
    papermill_cli.papermill.main(argv, prog_name="papermill", standalone_mode=False)
    return seen


def _book_parameters(argv: list[str], monkeypatch, tmp_path) -> dict:
    """What ``python -m pure_utils.book ARGS`` would run each notebook with: ``{name: params}``."""
    seen = {}

    def run_notebooks(profile, *, only=None, overrides=None, **kw):
        chapters = [c for c in book.chapters() if not only or c.name in only]
        seen.update(book.resolve_parameters(chapters, book.read_profile(profile), overrides,
                                            profile_name=profile))

    fakes = {"execute": lambda src, out, params, **kw: seen.update({Path(src).stem: params}) or 0.0,
             "run_notebooks": run_notebooks,
             "build_html": lambda *a, **k: tmp_path / "index.html",
             "check_pages": lambda *a, **k: []}
    for name, fake in fakes.items():  # the command line calls the names it imported from build
        for module in (book, cli):
            monkeypatch.setattr(module, name, fake, raising=module is book)
    if argv[0] == "run":
        argv = [argv[0], argv[1], str(tmp_path / "out.ipynb"), *argv[3:]]
    code = cli.main(argv)
    assert code == 0, f"python -m pure_utils.book {shlex.join(argv)} exits {code}"
    return seen


def _rerun_lines(nb: dict) -> list[str]:
    box = next(c for c in nb["cells"] if "pure-rerun" in c["metadata"].get("tags", []))
    return _bash_commands(box["source"])


def test_typed_parameters_are_the_values_the_cell_assigns(tmp_path):
    _typed_notebook(tmp_path / "t.ipynb")
    declared = decorate.typed_parameters(tmp_path / "t.ipynb")
    assert {k: v["default"] for k, v in declared.items() if k != "profile"} == TYPED
    assert declared["k"]["source"] == "2" and type(declared["k"]["default"]) is int
    bad = tmp_path / "bad.ipynb"
    nb = nbformat.read(tmp_path / "t.ipynb", as_version=4)
    nb.cells[1].source = "profile = 'offline'  # p\nk = len('ab')  # computed"
    nbformat.write(nb, bad)
    with pytest.raises(ValueError, match="'k'.*not a Python literal"):
        decorate.typed_parameters(bad)


def test_rerun_box_commands_parse_back_to_typed_parameters(tmp_path, monkeypatch):
    _typed_notebook(tmp_path / "t.ipynb")
    record = decorate.run_record({"profile": "smoke", **TYPED}, 3.0)
    nb = decorate.decorate(json.loads((tmp_path / "t.ipynb").read_text()), tmp_path / "t.ipynb", record)
    lines = _rerun_lines(nb)
    assert [line.split()[0] for line in lines] == ["papermill", "python"]
    monkeypatch.chdir(ROOT)  # the box's paths are from the repository root
    injected = _papermill_parameters(shlex.split(lines[0])[1:], monkeypatch)
    for name, value in TYPED.items():
        assert injected[name] == value and type(injected[name]) is type(value), name
    assert injected["profile"] == "smoke" and set(injected) == {"profile", *TYPED}  # no warning
    argv = shlex.split(lines[1])
    assert argv[:4] == ["python", "-m", "pure_utils.book", "run"] and argv[argv.index("-f") + 1] == "smoke"
    overrides = cli._parse_overrides(type("A", (), {"yaml": [a for i, a in enumerate(argv)
                                                              if argv[i - 1] == "-y"]})())
    assert overrides == TYPED and all(type(overrides[k]) is type(v) for k, v in TYPED.items())


@pytest.mark.parametrize("chapter", book.chapters(), ids=lambda c: c.name)
def test_every_chapters_rerun_line_is_accepted_by_the_cli(chapter, tmp_path, monkeypatch):
    declared = book.declared_parameters(chapter.source)
    own = {k: v["default"] for k, v in declared.items() if k != "profile"}
    assert not any(isinstance(v, str) and re.fullmatch(r"-?[\d.]+", v) for v in own.values()), own
    papermill_line, run_line = decorate.rerun_commands(chapter.name, "smoke", own)
    monkeypatch.chdir(ROOT)
    params = _book_parameters(shlex.split(run_line)[3:], monkeypatch, tmp_path)[chapter.name]
    assert {k: params[k] for k in own} == own and params["profile"] == "smoke"
    injected = _papermill_parameters(shlex.split(papermill_line)[1:], monkeypatch)
    assert {k: injected[k] for k in own} == own and set(injected) == {"profile", *own}


def test_params_command_shows_typed_defaults(capsys):
    assert cli.main(["params"]) == 0
    out = capsys.readouterr().out
    fig1 = json.loads(next(line for line in out.splitlines() if line.startswith("fig1_virtual_neurons:"))
                      .split(":", 1)[1])
    assert fig1["profile"] == "offline" and type(fig1["k"]) is int and type(fig1["n_show"]) is int


# --- the documented commands ------------------------------------------------------------------
DOCS = [ROOT / "README.md", ROOT / "book" / "reproduce.md"]
DOC_COMMANDS = [(doc.name, line) for doc in DOCS for line in _bash_commands(doc.read_text())
                if line.startswith(("python -m pure_utils.book", "papermill "))]


def _type_ok(value, expected) -> bool:
    """``value`` fits a parameter whose default (or offline profile value) is ``expected``."""
    if expected is None or value is None:
        return True
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(expected, bool)
    if isinstance(expected, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(expected))


def _check_types(params: dict, notebook: Path, given: set, profile: str = "offline") -> None:
    """Each given parameter has the type of the notebook's default, else of the profile's value
    (the named profile's, or the offline profile's where that one is null)."""
    declared = {k: v["default"] for k, v in book.declared_parameters(notebook).items()}
    offline, named = book.read_profile("offline"), book.read_profile(profile)
    for name in given:
        expected = (declared[name] if name in declared
                    else named.get(name) if named.get(name) is not None else offline[name])
        assert _type_ok(params[name], expected), (
            f"{notebook.name}: {name} = {params[name]!r} ({type(params[name]).__name__}); "
            f"the default is {expected!r}")


def _given(argv: list[str]) -> set[str]:
    """The parameter names a command line sets with ``-y``, ``-p`` and ``-r``."""
    names = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-p", "-r")}
    for i, a in enumerate(argv[:-1]):
        if a == "-y":
            names |= set(yaml.safe_load(argv[i + 1]) or {})
    return names


def test_the_documents_have_commands_to_check():
    names = {doc for doc, _ in DOC_COMMANDS}
    assert names == {"README.md", "reproduce.md"}
    assert any(line.startswith("papermill") for _, line in DOC_COMMANDS)


@pytest.mark.parametrize("doc,line", DOC_COMMANDS, ids=[f"{d}:{i}" for i, (d, _) in enumerate(DOC_COMMANDS)])
def test_documented_command_is_accepted(doc, line, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = shlex.split(line)
    if argv[0] == "papermill":
        injected = _papermill_parameters(argv[1:], monkeypatch)
        notebook = ROOT / argv[1]
        declared = book.declared_parameters(notebook)
        given = _given(argv)
        assert given, f"{doc}: {line}: no parameter given"
        # papermill warns about every injected name the parameters cell does not declare
        unknown = set(injected) - set(declared)
        assert not unknown, f"{doc}: {line}: papermill warns about {sorted(unknown)}"
        profile = (str(ROOT / argv[argv.index("-f") + 1]) if "-f" in argv
                   else injected.get("profile", "offline"))
        _check_types(injected, notebook, given, profile)
        return
    argv = argv[3:]
    if argv[0] not in ("run", "build", "params"):
        with pytest.raises(SystemExit) as exit_:
            cli.main([argv[0], "--help"])
        assert exit_.value.code == 0
        return
    seen = _book_parameters(argv, monkeypatch, tmp_path)
    given = _given(argv)
    for name, params in seen.items():
        _check_types(params, ROOT / book.NOTEBOOK_DIR / f"{name}.ipynb", given, params["profile"])


def test_the_checks_catch_what_reproduce_md_used_to_say(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    code = cli.main(["run", "notebooks/fig3_polysemanticity.ipynb", str(tmp_path / "o.ipynb"),
                      "-f", "paper", "-p", "neurons", "[1929, 1506]"])
    assert code == 1 and "unknown parameter 'neurons'" in capsys.readouterr().err
    with pytest.raises(AssertionError, match="fig3_neurons"):
        _check_types({"fig3_neurons": "[1929, 1506]"}, ROOT / "notebooks/fig3_polysemanticity.ipynb",
                     {"fig3_neurons"}, "paper")

