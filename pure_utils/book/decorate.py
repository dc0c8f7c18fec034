"""What the build adds to each executed chapter, and the book's execution page.

Every executed chapter is read before it is run: its code cells are folded behind a toggle
(tag ``hide-input``), its parameters are shown as a small box of the chapter's knobs, and a
"rerun" box gives the exact commands that reproduce it, the parameters it ran with, how long it
took, on what machine and with which library version, with a link to download the executed
notebook. :func:`execution_page` lists every chapter of a build the same way (as the execution
statistics page of QuantEcon's books does).
"""
from __future__ import annotations

import ast
import datetime
import json
import shlex
import subprocess
from pathlib import Path

import papermill

from .. import __version__
from .._machine import machine_info
from ..paths import ROOT

__all__ = ["run_record", "decorate", "execution_page", "typed_parameters", "rerun_commands"]


def typed_parameters(notebook: Path) -> dict:
    """The notebook's ``parameters`` cell, each default as the Python value it assigns.

    ``papermill.inspect_notebook`` gives every default as the source text of its expression
    (``k = 2`` has the default ``"2"``); quoting that text again turns numbers into strings.
    Here ``default`` is the value (``2``, ``[1, 2]``, ``True``, ``"offline"``) and
    ``source`` keeps papermill's text.

    Returns
    -------
    dict
        ``{name: {"name", "default", "source", "inferred_type_name", "help"}}`` in the cell's order.

    Raises
    ------
    ValueError
        naming the notebook and the parameter whose default is not a Python literal (a
        rerun command could not pass it back).
    """
    declared = papermill.inspect_notebook(str(notebook))
    out = {}
    for name, spec in declared.items():
        text = spec.get("default")
        try:
            value = ast.literal_eval(text) if isinstance(text, str) else text
        except (ValueError, SyntaxError):
            raise ValueError(f"{notebook}: parameter {name!r} = {text!r} is not a Python literal "
                             "(a number, string, bool, None, list, tuple or dict)") from None
        out[name] = {**spec, "default": value, "source": text}
    return out


def rerun_commands(name: str, profile: str, params: dict) -> tuple[str, str]:
    """The papermill and ``python -m pure_utils.book run`` command lines of a chapter.

    Parameters
    ----------
    name : str
        The notebook's name (``notebooks/<name>.ipynb``).
    profile : str
        The profile's name (``smoke``) or the path of its YAML file.
    params : dict
        The chapter's own parameters with their typed values; each becomes one
        ``-y '{"name": value}'`` (JSON is YAML, so types survive: ``2`` stays an int).

    Returns
    -------
    (str, str)
        The papermill line and the ``book run`` line, shell-quoted. The papermill line passes
        only names the notebook's parameters cell declares (``profile`` and its knobs), so
        papermill runs it without a warning.
    """
    profile = str(profile)
    own = "".join(f" -y {shlex.quote(json.dumps({n: v}))}" for n, v in params.items())
    nb, out = shlex.quote(f"notebooks/{name}.ipynb"), shlex.quote(f"{name}.ipynb")
    return (f"papermill {nb} {out} -p profile {shlex.quote(profile)}{own}",
            f"python -m pure_utils.book run {nb} {out} -f {shlex.quote(profile)}{own}")


def _commit(root: Path = ROOT) -> str:
    """The checkout's commit (with ``+changes`` when the tree differs from it), or ``unknown``."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, text=True,
                              capture_output=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               text=True, capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def run_record(params: dict, seconds: float, *, key: str | None = None) -> dict:
    """What an executed notebook records about its run (``metadata.pure_build``)."""
    info = machine_info(params.get("device") if params.get("device") not in (None, "auto") else None)
    return {"key": key, "parameters": params, "seconds": round(seconds, 1),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "version": __version__, "commit": _commit(),
            "machine": {"cpu_count": info["cpu_count"], "cpu": info["cpu"], "gpu": info.get("gpu")}}


def _machine_text(machine: dict) -> str:
    text = f"{machine['cpu_count']} CPU cores ({machine['cpu']})"
    return text + (f", {machine['gpu']}" if machine.get("gpu") else "")


def _markdown_cell(text: str, tag: str) -> dict:
    return {"cell_type": "markdown", "id": tag, "metadata": {"tags": [tag]},
            "source": text.strip("\n")}


def decorate(nb: dict, source: Path, record: dict) -> dict:
    """Fold the code of an executed notebook and add its parameters box and rerun box.

    Parameters
    ----------
    nb : dict
        The executed notebook (nbformat JSON).
    source : Path
        Its source notebook (``notebooks/<name>.ipynb``).
    record : dict
        :func:`run_record` of the run.

    Returns
    -------
    dict
        ``nb``, changed in place: every code cell tagged ``hide-input``, and two markdown cells
        after the title: the chapter's knobs and the rerun box.
    """
    params = record["parameters"]
    declared = typed_parameters(source)
    knobs = [(name, params.get(name, spec.get("default")), spec.get("help", ""))
             for name, spec in declared.items() if name != "profile"]
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            tags = cell.setdefault("metadata", {}).setdefault("tags", [])
            if "hide-input" not in tags:
                tags.append("hide-input")
    profile = params.get("profile", "offline")
    rows = "\n".join(f"| `{name}` | `{value}` | {help_text.lstrip('# ')} |"
                     for name, value, help_text in knobs)
    box = (":::{admonition} This chapter's knobs\n:class: note\n\n"
           f"Profile `{profile}`" + ("; the chapter's own parameters:\n\n| parameter | value | meaning |\n"
                                     f"|---|---|---|\n{rows}\n" if knobs else ".\n") + ":::")
    name = source.stem
    papermill_line, run_line = rerun_commands(name, profile, {n: v for n, v, _ in knobs})
    rerun = (":::{dropdown} Rerun this chapter\n\n"
             f"This page ran on profile `{profile}` in {record['seconds']:.0f} s on "
             f"{_machine_text(record['machine'])}, with pure_utils {record['version']} at commit "
             f"`{record['commit']}`, finished {record['finished']}. From the repository root:\n\n"
             "```bash\n"
             f"{papermill_line}\n{run_line}\n"
             "```\n\n"
             f"{{download}}`Download this executed notebook <{name}.ipynb>`\n:::")
    title = next((i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown"), -1)
    nb["cells"][title + 1:title + 1] = [_markdown_cell(rerun, "pure-rerun"),
                                        _markdown_cell(box, "pure-knobs")]
    return nb


def execution_page(executed_dir: Path, names: list, executed_now: set) -> str:
    """The book's execution page: every chapter with its profile, run time, whether this build
    ran it or kept it from an earlier build, library version, commit and machine."""
    lines = ["# How this book was executed", "",
             "Every chapter is an executed notebook. A chapter is run again only when its source, "
             "its parameters, the library's code or the shipped data changed; otherwise the "
             "executed copy of an earlier build is kept (\"kept\" below).", "",
             "| chapter | profile | run time | this build | finished | pure_utils | commit | machine |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        path = Path(executed_dir) / f"{name}.ipynb"
        record = json.loads(path.read_text())["metadata"].get("pure_build", {}) if path.exists() else {}
        if not record.get("seconds") and record.get("seconds") != 0:
            lines.append(f"| {{doc}}`executed/{name}` | - | - | not run | - | - | - | - |")
            continue
        lines.append(
            f"| {{doc}}`executed/{name}` | {record['parameters'].get('profile', '-')} | "
            f"{record['seconds']:.0f} s | {'ran' if name in executed_now else 'kept'} | "
            f"{record['finished']} | {record['version']} | `{record['commit']}` | "
            f"{_machine_text(record['machine'])} |")
    return "\n".join(lines) + "\n"
