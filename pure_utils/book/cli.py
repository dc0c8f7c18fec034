"""The book's command line, ``python -m pure_utils.book``: one function per sub-command.

::

    python -m pure_utils.book build [--profile offline] [--force] [--only NAME ...] [--no-html]
    python -m pure_utils.book run notebooks/fig3_polysemanticity.ipynb OUT.ipynb \\
        [-f notebooks/profiles/paper.yaml] [-p neuron 12 ...] [-y "neurons: [1, 2]"]
        [--html]
    python -m pure_utils.book show OUT.ipynb [--html]
    python -m pure_utils.book params [--profile offline]
    python -m pure_utils.book screenshots [--page PAGE.html ...] [--out FOLDER]
    python -m pure_utils.book glue [--save FILE.json] [--compare FILE.json]

Parameters are read as papermill reads them (``-p``: ``True``/``False``/``None``, an integer,
a float, else the text as given; ``-y``: YAML; ``-r``: raw text). Every path given on the
command line means what it means in the caller's shell: it is resolved from the caller's
working directory, and the notebooks run there. What the build does: :mod:`pure_utils.book.build`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import yaml
from papermill.iorw import NoDatesSafeLoader

from . import build, reader
from .browser import (INTERACTIVE_PAGE, SCREENSHOT_PAGES, RenderError, check_book,
                      check_rendering, screenshot)
from .build import (EXECUTED_DIR, BookError, Chapter, build_html, chapters, check_pages,
                    compare_glue, declared_parameters, execute, glue_values, read_profile,
                    resolve_parameters, run_notebooks, toc_files)
from .progress import CellProgress
from .reader import write_reader_copy
from ..paths import ROOT

__all__ = ["PARAMETER_HELP", "papermill_value", "main"]


#: How ``-p``, ``-y`` and ``-r`` values are read (papermill's rules); shown by ``--help``.
PARAMETER_HELP = ("Values are read as papermill reads them: -p NAME VALUE gives True, False or "
                  "None for those words, an int when int(VALUE) works (012 -> 12), a float when "
                  "float(VALUE) works (1e-3), else the text as given (no -> 'no'); -y 'YAML' "
                  "sets the names of a YAML mapping (lists, mappings: -y 'neurons: [1, 2]'); "
                  "-r NAME VALUE sets the raw text")


def papermill_value(text: str):
    """A ``-p`` value as ``papermill -p`` reads it (see :data:`PARAMETER_HELP`)."""
    words = {"True": True, "False": False, "None": None}
    if text in words:
        return words[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _parse_overrides(args) -> dict:
    """The parameters of ``-y``, then ``-p``, then ``-r`` (papermill's order of precedence)."""
    out = {}
    for text in getattr(args, "yaml", None) or []:
        try:
            mapping = yaml.load(text, Loader=NoDatesSafeLoader)
        except yaml.YAMLError as err:
            raise BookError(f"-y {text!r} is not valid YAML: {err}") from None
        if not isinstance(mapping, (dict, type(None))):
            raise BookError(f"-y {text!r} must be a YAML mapping (NAME: VALUE), not a "
                            f"{type(mapping).__name__}")
        out.update(mapping or {})
    out.update({k: papermill_value(v) for k, v in getattr(args, "parameter", None) or []})
    out.update(dict(getattr(args, "raw", None) or []))
    return out


def _user_path(path) -> Path:
    """A path from the command line, as the caller's shell means it (absolute)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def _user_profile(profile: str) -> str:
    """A profile name as it is; a profile path made absolute, so the notebooks find it too."""
    text = str(profile)
    path = Path(text).expanduser()
    return str(_user_path(path)) if path.suffix in (".yaml", ".yml") or path.exists() else text


def _notebook_arg(path: Path) -> Path:
    path = _user_path(path)
    if not path.exists():
        raise BookError(f"notebook {path} does not exist")
    if not path.is_file():
        raise BookError(f"{path} is a folder, not a notebook (.ipynb file)")
    try:
        nb = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise BookError(f"{path} is not a Jupyter notebook (.ipynb JSON): {err}") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise BookError(f"{path} is not a Jupyter notebook: it has no list of 'cells'")
    return path


def _output_arg(path: Path, source: Path) -> Path:
    path = _user_path(path)
    if path == source or (path.exists() and path.samefile(source)):
        raise BookError(f"output {path} is the source notebook itself: the executed copy would "
                        "overwrite it; give another output path")
    if path.is_dir():
        raise BookError(f"output {path} is a folder; give the path of the executed .ipynb file")
    return path


def _parameter_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="set a parameter (papermill's -p rules, see below)")
    p.add_argument("-y", "--yaml", action="append", metavar="YAML",
                   help="set parameters from a YAML mapping (as papermill -y)")
    p.add_argument("-r", "--raw", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="set a parameter to the text VALUE (as papermill -r)")


def _parser() -> argparse.ArgumentParser:
    """The command line: ``build``, ``run``, ``screenshots``, ``params`` and ``glue``."""
    parser = argparse.ArgumentParser(prog="python -m pure_utils.book",
                                     description=build.__doc__.split("\n")[0],
                                     epilog="Paths are resolved from the current directory. "
                                     + PARAMETER_HELP)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="execute the notebooks that changed, then build the HTML book",
                       epilog=PARAMETER_HELP)
    b.add_argument("--profile", default=os.environ.get("PROFILE") or "offline",
                   help="profile name or YAML path (default: $PROFILE or offline)")
    b.add_argument("--force", action="store_true", help="execute every notebook again")
    b.add_argument("--only", nargs="+", help="execute only these notebooks")
    b.add_argument("--no-html", action="store_true", help="execute notebooks only")
    b.add_argument("--jobs", default=os.environ.get("BOOK_JOBS") or "auto",
                   help="notebooks run at once, each kernel on its share of the cores (default: "
                        "$BOOK_JOBS or auto: 2 on a machine with two or more cores, else 1)")
    _parameter_options(b)
    r = sub.add_parser("run", help="run one notebook with a profile, parameters checked",
                       epilog="The notebook runs in the current directory, so relative paths in "
                              "parameters mean what they mean here. " + PARAMETER_HELP)
    r.add_argument("notebook", type=Path, help="the source notebook (.ipynb)")
    r.add_argument("output", type=Path, help="where the executed copy goes (not the source)")
    r.add_argument("-f", "--profile", default="offline", help="profile name or YAML path")
    r.add_argument("--html", action="store_true",
                   help="also write OUT with the suffix .html: the chapter as one page, with its "
                        "numbers and figures")
    _parameter_options(r)
    sh = sub.add_parser("show", help="put the glued numbers and figures of an executed notebook "
                                     "(papermill's output) into its text, so Jupyter shows them")
    sh.add_argument("notebook", type=Path, help="an executed notebook, rewritten in place")
    sh.add_argument("--html", action="store_true", help="also write it as one HTML page (.html)")
    sc = sub.add_parser("screenshots", help="render pages of the built book in headless Chromium")
    sc.add_argument("--out", type=Path, default=ROOT / "_build" / "screenshots")
    sc.add_argument("--page", action="append", type=Path,
                    help="an HTML page of the built book (default: the index and a figure page)")
    sc.add_argument("--interactive", help="page whose plotly figure must render "
                    f"(default: _build/html/{INTERACTIVE_PAGE}; '' for none)")
    pp = sub.add_parser("params", help="list each notebook's parameters")
    pp.add_argument("--profile", default="offline")
    g = sub.add_parser("glue", help="save the glued values of the executed notebooks, or compare "
                                    "them with a saved set (exit 1 when any differs)")
    g.add_argument("--save", type=Path, help="write the values to this JSON file")
    g.add_argument("--compare", type=Path, help="compare with the values saved in this JSON file")
    return parser


def _jobs(value: str) -> int:
    """``--jobs``: a whole number >= 1, or ``auto`` (2 where there are two or more cores)."""
    if str(value).strip().lower() == "auto":
        return 2 if (os.cpu_count() or 1) >= 2 else 1
    try:
        jobs = int(value)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise BookError(f"--jobs {value!r}: give a whole number of notebooks at once (at least 1) "
                        "or auto")
    return jobs


def _build_command(args) -> int:
    """``build``: execute the notebooks that changed, then build and check the HTML book."""
    run_notebooks(_user_profile(args.profile), only=args.only, force=args.force,
                  overrides=_parse_overrides(args), cwd=Path.cwd(), jobs=_jobs(args.jobs))
    if not args.no_html:
        index = build_html()
        check_pages()
        print(f"\nThe book is ready: {index}")
    return 0


def _run_command(args) -> int:
    """``run``: one notebook with a profile and parameters, in the current directory."""
    src = _notebook_arg(args.notebook)
    out = _output_arg(args.output, src)
    profile = _user_profile(args.profile)
    c = Chapter(src.stem, src, out)
    params = resolve_parameters([c], read_profile(profile), _parse_overrides(args),
                                profile_name=profile)[c.name]
    print(f"{src.name}: running on profile {params['profile']}", flush=True)
    progress = CellProgress(src.stem, json.loads(src.read_text())["cells"],
                            lambda line: print(line, flush=True)).start()
    try:
        seconds = execute(src, out, params, cwd=Path.cwd(), on_cell=progress)
    finally:
        progress.stop()
    print(f"{src.name}: done in {seconds:.0f} s -> {out}")
    if out.exists():  # its glued numbers and figures, where the text names them
        for path in write_reader_copy(out, html_page=args.html)[1:]:
            print(f"as one page: {path}")
    return 0


def _show_command(args) -> int:
    """``show``: an executed notebook's glued numbers and figures put into its text."""
    path = _notebook_arg(args.notebook)
    nb = json.loads(path.read_text())
    if not reader.glued_outputs(nb) and not any(c.get("outputs") for c in nb["cells"]):
        raise BookError(f"{path} has no outputs: run it first (python -m pure_utils.book run)")
    written = write_reader_copy(path, html_page=args.html)
    print("\n".join(f"-> {p}" for p in written))
    return 0


def _screenshots_command(args) -> int:
    """``screenshots``: render pages of the built book; without ``--page``, check every page as
    a reader sees it, in the light and the dark theme."""
    html = ROOT / "_build" / "html"
    shots = ({p.stem: _user_path(p) for p in args.page} if args.page
             else {Path(p).stem: html / p for p in SCREENSHOT_PAGES})
    inter = (html / INTERACTIVE_PAGE if args.interactive is None
             else _user_path(args.interactive) if args.interactive else None)
    for label, frac in check_rendering(shots, _user_path(args.out), interactive=inter).items():
        print(f"{label}: rendered, {frac:.1%} of pixels in the background colour")
    if inter is not None:
        print(f"interactive figure rendered on {inter}")
    if not args.page:  # the whole book, as a reader sees it
        figure_page = html / SCREENSHOT_PAGES[-1]
        for mode in ("light", "dark"):
            screenshot(figure_page, _user_path(args.out) / f"{figure_page.stem}-{mode}.png",
                       dark=mode == "dark")
        entries = [e.removesuffix(".ipynb").removesuffix(".md") for e in toc_files()]
        problems = check_book(html, [f"{e}.html" for e in entries],
                              {f"{e}.html" for e in entries if e.startswith(EXECUTED_DIR)})
        if problems:
            raise RenderError("pages a reader would see wrong:\n" + "\n".join(
                f"  {page}: {'; '.join(p)}" for page, p in problems.items()))
        print(f"{len(entries)} pages checked: no raw TeX, code folded, figures numbered, "
              "tables without index columns, a rerun box on every chapter, no axe-core "
              "(WCAG 2 A/AA) violation")
    print(f"screenshots in {_user_path(args.out)}")
    return 0


def _glue_command(args) -> int:
    """``glue``: save the glued values, or compare them with a saved set (1 when any differs)."""
    values = glue_values()
    if args.save:
        _user_path(args.save).write_text(json.dumps(values, indent=1, sort_keys=True))
        print(f"{sum(map(len, values.values()))} glued values of {len(values)} chapters "
              f"-> {_user_path(args.save)}")
    if args.compare:
        compare = _user_path(args.compare)
        diff = compare_glue(json.loads(compare.read_text()), values)
        n = sum(map(len, values.values()))
        print("\n".join(diff) or f"all {n} glued values equal to {compare}")
        return 1 if diff else 0
    return 0


def _params_command(args) -> int:
    """``params``: each notebook's own parameters, and the profile's."""
    profile = read_profile(_user_profile(args.profile))  # a bad profile: before any output
    for c in chapters():
        declared = declared_parameters(c.source)
        own = {k: v.get("default") for k, v in declared.items()}
        print(f"{c.name}: {json.dumps(own)}")
    print(f"profile {args.profile}: {json.dumps(profile)}")
    return 0


#: The function of each sub-command.
_COMMANDS = {"build": _build_command, "run": _run_command, "screenshots": _screenshots_command,
             "glue": _glue_command, "params": _params_command, "show": _show_command}


def main(argv=None) -> int:
    """Run a sub-command of ``python -m pure_utils.book``; returns the exit status (1 on an
    error, with its message on stderr)."""
    args = _parser().parse_args(argv)
    # a build stopped by SIGTERM unwinds like Ctrl-C: a half-executed notebook is removed
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        return _COMMANDS[args.cmd](args)
    except (BookError, RenderError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:  # a file that cannot be read or written, a bad JSON file
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(signum, _frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
