"""Every shell command that README.md and book/reproduce.md document for a chapter runs, as
written, on the smoke profile (the paper profile needs ImageNet): papermill's line, the book's
`run ... --html`, `show ... --html` and `params`. The rerun boxes' lines run in
test_notebooks.py (every chapter on smoke); test_reader.py checks names and types of all of them.
"""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pure_utils.book import cli

from test_reader import DOC_COMMANDS  # the documents' papermill and book lines, parsed once

ROOT = Path(__file__).resolve().parents[1]


def _documented() -> list[str]:
    """Each documented papermill and ``python -m pure_utils.book`` line once."""
    return list(dict.fromkeys(" ".join(line.split()) for _, line in DOC_COMMANDS))


def _on_smoke(argv: list[str], out: Path) -> list[str]:
    """The same command with the profile named smoke, ``out.ipynb`` in the test's folder and,
    for a run of a notebook, the cache on (``-p cache true``: the smoke runs of the session
    share mined references, as the chapters' runs do)."""
    argv = [str(out) if a == "out.ipynb" else a for a in argv]
    if "-f" in argv:
        argv[argv.index("-f") + 1] = "smoke"
    if "profile" in argv and argv[argv.index("profile") - 1] == "-p":
        argv[argv.index("profile") + 1] = "smoke"
    if argv[0] == "papermill" or argv[3] == "run":
        argv += ["-p", "cache", "true"]
    return argv


def test_the_docs_document_these_commands():
    kinds = {tuple(shlex.split(line)[:4]) if line.startswith("python") else ("papermill",)
             for line in _documented()}
    assert ("papermill",) in kinds
    assert {("python", "-m", "pure_utils.book", k) for k in ("run", "show", "params")} <= kinds


@pytest.mark.slow
def test_every_documented_command_runs_on_smoke(tmp_path, monkeypatch, capsys, smoke_kernel):
    monkeypatch.chdir(ROOT)  # the docs' paths are from the repository root
    lines = _documented()
    # papermill first: `show` reads the notebook papermill executed
    lines.sort(key=lambda line: (not line.startswith("papermill"), " show " not in line))
    for line in lines:
        argv = _on_smoke(shlex.split(line), tmp_path / "out.ipynb")
        if argv[0] == "papermill":
            proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                                  timeout=900)
            assert proc.returncode == 0, proc.stderr[-3000:]
            # papermill warns of every name the notebook does not declare: the documented
            # names are all declared (cache, a profile key, is the test's own addition)
            unknown = set(re.findall(r"unknown parameter: (\w+)", proc.stderr)) - {"cache"}
            assert not unknown, proc.stderr[-2000:]
            nb = json.loads((tmp_path / "out.ipynb").read_text())
            assert not [o for c in nb["cells"] for o in c.get("outputs", [])
                        if o.get("output_type") == "error"]
        else:
            assert cli.main(argv[3:]) == 0, line
            printed = capsys.readouterr().out
            if " params" in line:
                assert "fig3_polysemanticity" in printed
    page = tmp_path / "out.html"
    assert page.exists() and "<img" in page.read_text()  # --html: the figures inlined
