"""The book build: papermill runs of every notebook in ``_toc.yml``, then Jupyter Book.

``make book`` calls ``python -m pure_utils.book build``. For each chapter of ``_toc.yml`` that
lives under ``book/executed/``, the source notebook ``notebooks/<name>.ipynb`` is executed with
papermill on the chosen profile (``notebooks/profiles/<profile>.yaml``) and the executed copy
is written to ``book/executed/<name>.ipynb``. Jupyter Book then renders the book without
executing anything again, with warnings as errors, so a failing notebook, a missing glue key or
a broken reference fails the build.

A notebook is executed again only when its build key changes: the key hashes the notebook's
source (outputs stripped), its parameters, the library's code and the shipped data.

A notebook that fails leaves its executed copy, traceback included, at a path the error message
names. The command line (``python -m pure_utils.book``) is :mod:`pure_utils.book.cli`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import papermill
from papermill.exceptions import PapermillExecutionError

from . import decorate as pages
from . import site
from .reader import glued_outputs
from .progress import (ENGINE_NAME, CellProgress, duration_text, eta_text, load_times,
                       read_times, record_time)
from ..study import profile as profiles
from .._files import apply_umask
from ..paths import ROOT
from .numbering import finish_pages

KERNEL_NAME = "pure-utils"
EXECUTED_DIR = "book/executed"
#: the execution page, written by every build (listed in _toc.yml, not kept in git)
EXECUTION_PAGE = "book/execution.md"
#: where the executed copies of notebooks that failed during a build are kept (outside the book)
FAILED_DIR = "_build/failed"
NOTEBOOK_DIR = "notebooks"
BUILD_KEY_VERSION = 1


class BookError(RuntimeError):
    """A build step failed; the message says which notebook or page and why."""


@dataclass
class Chapter:
    """One executed notebook of the book."""

    name: str
    source: Path
    output: Path


def _toc_files(entries) -> list[str]:
    files = []
    for entry in entries or []:
        if "file" in entry:
            files.append(entry["file"])
        for key in ("chapters", "sections", "parts"):
            files.extend(_toc_files(entry.get(key)))
    return files


def toc_files(root: Path = ROOT) -> list[str]:
    """Every document of ``_toc.yml`` in order, as written there (no suffix)."""
    try:
        toc = profiles.load_yaml(Path(root) / "_toc.yml")
    except ValueError as err:
        raise BookError(str(err)) from None
    return [toc["root"]] + _toc_files(toc.get("parts")) + _toc_files(toc.get("chapters"))


def chapters(root: Path = ROOT) -> list[Chapter]:
    """The notebooks the book executes, in ``_toc.yml`` order."""
    root = Path(root)
    out = []
    for entry in toc_files(root):
        entry = entry.removesuffix(".ipynb")
        if not entry.startswith(EXECUTED_DIR + "/"):
            continue
        name = entry[len(EXECUTED_DIR) + 1:]
        source = root / NOTEBOOK_DIR / f"{name}.ipynb"
        if not source.exists():
            raise BookError(f"_toc.yml lists {entry!r}, but its source notebook {source} does not exist")
        out.append(Chapter(name, source, root / EXECUTED_DIR / f"{name}.ipynb"))
    return out


def profiles_dir(root: Path = ROOT) -> Path:
    """The profiles of the book at ``root``."""
    return Path(root) / NOTEBOOK_DIR / "profiles"


def read_profile(profile: str, root: Path = ROOT) -> dict:
    """Every key of a profile: its file's values, the defaults for the keys it leaves out
    (:func:`pure_utils.study.profile.load_profile`, checked; ``${VAR}`` left as written, the
    notebooks expand them). ``BookError`` for a bad name, file, key or value."""
    try:
        return profiles.load_profile(profile, expand=False, profiles_dir=profiles_dir(root)).to_dict()
    except ValueError as err:
        raise BookError(str(err)) from None


def schema_keys() -> set[str]:
    """The parameter names a profile may set: the fields of
    :class:`pure_utils.study.profile.Profile`."""
    return profiles.profile_keys()


def declared_parameters(notebook: Path) -> dict:
    """The ``parameters`` cell: ``{name: spec}``, ``spec["default"]`` typed (``decorate.typed_parameters``)."""
    try:
        params = pages.typed_parameters(notebook)
    except ValueError as err:
        raise BookError(str(err)) from None
    if not params:
        raise BookError(f"{notebook}: no cell tagged 'parameters' (every notebook needs one)")
    return params


def resolve_parameters(chapter_list: list[Chapter], profile: dict, overrides: dict | None = None,
                       *, profile_name: str = "offline") -> dict[str, dict]:
    """Parameters injected into each chapter; unknown names are rejected before anything runs.

    Every notebook receives ``profile`` (the profile's name or path) and all of the profile's
    keys (:func:`read_profile`: every key, also those at their default); the notebook builds
    its settings from them (``pure_utils.study.profile.from_parameters``). A key that is not a
    field of :class:`~pure_utils.study.profile.Profile` is an error, as is an override (``-p``)
    that is neither a profile key nor a parameter of every notebook being run, or an override
    of a profile key with a value of the wrong type.
    """
    schema = schema_keys()
    try:  # unknown keys (with the closest known ones) and values of the wrong type
        profiles.Profile.from_dict(profile, source=profile_name)
        checked = profiles.Profile.from_dict({k: v for k, v in (overrides or {}).items()
                                              if k in schema}, source="overrides (-p, -y, -r)")
    except ValueError as err:
        raise BookError(str(err)) from None
    result = {}
    for c in chapter_list:
        declared = declared_parameters(c.source)
        if "profile" not in declared:
            raise BookError(f"{c.source.name}: its parameters cell must declare 'profile'")
        params = {"profile": profile_name, **profile}
        for k, v in (overrides or {}).items():
            if k not in declared and k not in schema:
                raise BookError(
                    f"{c.source.name}: unknown parameter {k!r}; its parameters: "
                    f"{', '.join(sorted(declared))}; profile keys: {', '.join(sorted(schema))}")
            params[k] = checked[k] if k in schema else v  # checked: "false" is False
        result[c.name] = params
    return result


def _hash_files(paths, h) -> None:
    for p in sorted(paths):
        h.update(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p).encode())
        h.update(p.read_bytes())


def library_hash(root: Path = ROOT) -> str:
    """Hash of the library's code and the shipped data (``pure_utils/**.py``, ``data/**``)."""
    root = Path(root)
    h = hashlib.sha256()
    _hash_files([p for p in (root / "pure_utils").rglob("*.py") if "__pycache__" not in p.parts], h)
    data = root / "data"
    if data.exists():
        _hash_files([p for p in data.rglob("*") if p.is_file()], h)
    return h.hexdigest()


def notebook_source_hash(notebook: Path) -> str:
    """Hash of a notebook's cells without outputs or execution counts."""
    nb = json.loads(Path(notebook).read_text())
    cells = [{"type": c["cell_type"], "source": "".join(c["source"]) if isinstance(c["source"], list)
              else c["source"], "tags": c.get("metadata", {}).get("tags", [])} for c in nb["cells"]]
    return hashlib.sha256(json.dumps(cells, sort_keys=True).encode()).hexdigest()


def build_key(chapter: Chapter, params: dict, lib_hash: str) -> str:
    payload = {"v": BUILD_KEY_VERSION, "nb": notebook_source_hash(chapter.source),
               "params": params, "lib": lib_hash}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def stored_key(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())["metadata"].get("pure_build", {}).get("key")
    except (ValueError, KeyError):
        return None


_ENV_LOCK = threading.Lock()
_ENV_DEPTH = 0


@contextlib.contextmanager
def _kernel_env(root: Path, threads: int | None = None):
    """The kernel inherits this process' environment: make the checkout importable, stay
    offline, and draw figures inline (whatever backend the calling process uses). ``threads``:
    the threads each kernel computes on (several notebooks at once share the cores).

    Entered once around several notebooks run at once, the inner entries change nothing (the
    environment is the process', not a thread's)."""
    global _ENV_DEPTH
    with _ENV_LOCK:
        outer = _ENV_DEPTH == 0
        _ENV_DEPTH += 1
        if outer:
            saved = dict(os.environ)
            paths = [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
            os.environ["TQDM_DISABLE"] = "1"  # executed pages show results, not progress bars
            if threads is not None:
                os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        with _ENV_LOCK:
            _ENV_DEPTH -= 1
            if outer:
                os.environ.clear()
                os.environ.update(saved)


def _keep(tmp: str, failed: Path) -> Path | None:
    """Move a partly executed notebook to ``failed`` (``None`` when nothing was written)."""
    if not os.path.getsize(tmp):
        os.unlink(tmp)
        return None
    failed.parent.mkdir(parents=True, exist_ok=True)
    apply_umask(tmp)
    shutil.move(tmp, failed)  # a move, not a rename: _build may lie on another file system
    return failed


def execute(source: Path, output: Path, params: dict, *, key: str | None = None,
            cwd: Path | None = None, kernel_name: str = KERNEL_NAME,
            failed: Path | None = None, on_cell=None) -> float:
    """Run one notebook with papermill; write the executed copy atomically. Returns seconds.

    ``cwd`` is the kernel's working directory (default: the notebook's folder). When a cell
    fails, the executed copy with its traceback is kept at ``failed`` (default:
    ``<output stem>.failed.ipynb`` beside ``output``) and the error names that path; a later
    successful run removes it. ``on_cell(cell_index, cell)`` is called as each cell starts
    (:class:`pure_utils.book.progress.CellProgress`).

    Raises
    ------
    BookError
        naming the notebook, the failing cell's error type and message, and the kept copy.
    """
    output = Path(output)
    failed = Path(failed) if failed is not None else output.with_name(f"{output.stem}.failed.ipynb")
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".ipynb", dir=output.parent, prefix=".tmp-")
    os.close(fd)
    start = time.perf_counter()
    # every profile key is injected, also those a notebook does not declare (as `papermill -f`)
    logging.getLogger("papermill").setLevel(logging.ERROR)
    hook = {} if on_cell is None else {"engine_name": ENGINE_NAME, "on_cell": on_cell}
    try:
        with _kernel_env(ROOT):
            papermill.execute_notebook(
                str(source), tmp, parameters=params, kernel_name=kernel_name,
                cwd=str(cwd or source.parent), progress_bar=False, log_output=False,
                # the kernel's start-up warning (plain TCP on localhost) is noise in build logs
                extra_arguments=["--IPKernelApp.log_level=ERROR"], **hook)
    except PapermillExecutionError as err:
        kept = _keep(tmp, failed)
        raise BookError(f"notebook {source.name} failed in cell {err.exec_count}: "
                        f"{err.ename}: {err.evalue}"
                        + (f"\nthe executed notebook, traceback included: {kept}" if kept else "")) from None
    except Exception as err:  # the kernel died or could not start: keep what ran
        kept = _keep(tmp, failed)
        raise BookError(f"notebook {source.name} did not finish: {type(err).__name__}: {err}"
                        + (f"\nthe partly executed notebook: {kept}" if kept else "")) from None
    except BaseException:
        os.unlink(tmp)
        raise
    nb = json.loads(Path(tmp).read_text())
    record = pages.run_record(params, time.perf_counter() - start, key=key)
    nb["metadata"]["pure_build"] = record
    pages.decorate(nb, source, record)  # code folded, the knobs box and the rerun box
    Path(tmp).write_text(json.dumps(nb, indent=1))
    apply_umask(tmp)  # mkstemp made it private (0600): give it the mode of an ordinary file
    os.replace(tmp, output)
    failed.unlink(missing_ok=True)  # an earlier failure's copy is out of date now
    return time.perf_counter() - start


def _count(n: int) -> str:
    return f"{n} notebook{'' if n == 1 else 's'}"


#: Each chapter's seconds in a cold build of the offline profile on two CPU cores, one notebook
#: at a time: the order of a parallel build (the longest first) on a checkout whose own build
#: has timed nothing yet (``book/executed/.times.json`` is not in git).
CHAPTER_TIMES = "book/chapter_times.json"


def run_order(names: list[str], times: dict[str, float], shipped: dict[str, float]) -> list[str]:
    """``names`` the longest first, so that no long chapter starts last while the others wait:
    by this checkout's last ``times``, else the ``shipped`` ones; a chapter timed by neither
    first of all (it may be long), in the given order among equals."""
    expected = {**shipped, **times}
    return sorted(names, key=lambda n: -expected.get(n, float("inf")))


def run_notebooks(profile: str = "offline", *, only=None, force: bool = False,
                  overrides: dict | None = None, root: Path = ROOT, log=None,
                  cwd: Path | None = None, progress_every: float = 30.0,
                  jobs: int = 1) -> list[str]:
    """Execute the book's notebooks that are out of date. Returns the names executed.

    A failing notebook's executed copy is kept in ``_build/failed/<name>.ipynb``; ``cwd`` is
    the kernels' working directory (default: the notebooks' folder). ``log`` gets one line as
    each chapter starts (how many notebooks are left, an estimate from the last build's times in
    ``book/executed/.times.json``), a line naming the running cell at most every
    ``progress_every`` seconds, and one line as it ends.

    ``jobs`` notebooks run at once, each kernel on its share of the cores (``OMP_NUM_THREADS``),
    the longest first (:func:`run_order`). The chapters share nothing but the cache, and their
    numbers do not depend on the number of threads, so the executed notebooks are those of a
    build one at a time. When one fails no other starts; those running finish, then the first
    error is raised.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise BookError(f"jobs={jobs!r}: give a number of notebooks at once, at least 1")
    log = log or (lambda msg: print(msg, flush=True))
    chapter_list = chapters(root)
    if only:
        names = {c.name for c in chapter_list}
        missing = sorted(set(only) - names)
        if missing:
            raise BookError(f"unknown notebook(s) {missing}; notebooks: {', '.join(sorted(names))}")
        chapter_list = [c for c in chapter_list if c.name in only]
    params = resolve_parameters(chapter_list, read_profile(profile, root), overrides,
                                profile_name=profile)
    lib = library_hash(root)
    todo = []
    for i, c in enumerate(chapter_list, 1):
        key = build_key(c, params[c.name], lib)
        if not force and stored_key(c.output) == key:
            log(f"[{i}/{len(chapter_list)}] {c.name}: up to date")
        else:
            todo.append((f"[{i}/{len(chapter_list)}] {c.name}", c, key))
    executed_dir = Path(root) / EXECUTED_DIR
    times = load_times(executed_dir)
    jobs = min(jobs, max(1, len(todo)))
    if jobs > 1:
        order = run_order([c.name for _, c, _ in todo], times, read_times(Path(root) / CHAPTER_TIMES))
        todo.sort(key=lambda t: order.index(t[1].name))
    log(f"{len(todo)} of {_count(len(chapter_list))} to run"
        + (f", {jobs} at a time" if jobs > 1 else "")
        + f": {eta_text([c.name for _, c, _ in todo], times, jobs)}")
    run = _Run(todo, times, log, executed_dir, jobs, progress_every,
               dict(params=params, cwd=cwd, failed_dir=Path(root) / FAILED_DIR))
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    with _kernel_env(Path(root), threads):
        executed = run.all()
    if (Path(root) / EXECUTION_PAGE).parent.is_dir():
        (Path(root) / EXECUTION_PAGE).write_text(pages.execution_page(
            Path(root) / EXECUTED_DIR, [c.name for c in chapters(root)], set(executed)))
    return executed


class _Run:
    """The notebooks of one build, ``jobs`` at a time, with their start and end lines."""

    def __init__(self, todo, times, log, executed_dir, jobs, progress_every, options):
        self.todo, self.times, self.log, self.dir = todo, times, log, executed_dir
        self.jobs, self.every, self.options = jobs, progress_every, options
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.started, self.executed = 0, []
        self.begin = time.perf_counter()

    def all(self) -> list[str]:
        if self.jobs == 1:
            for item in self.todo:
                self.one(item)
            return self.executed
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="notebook") as pool:
            futures = [pool.submit(self.one, item) for item in self.todo]
            wait(futures)  # after a failure the queued ones return at once (self.stop)
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]
        return self.executed

    def _left(self) -> list[str]:
        """The chapters not finished yet, running ones included."""
        return [c.name for _, c, _ in self.todo if c.name not in self.executed]

    def one(self, item) -> None:
        tag, c, key = item
        if self.stop.is_set():
            return
        with self.lock:
            going = len(self.todo) - self.started
            self.started += 1
            self.log(f"{tag}: starting, {_count(going)} to go, this one included "
                     f"({eta_text(self._left(), self.times, self.jobs)})")
        cells = json.loads(c.source.read_text())["cells"]
        progress = CellProgress(c.name, cells, self.log, interval=self.every).start()
        o = self.options
        try:
            seconds = execute(c.source, c.output, o["params"][c.name], key=key, cwd=o["cwd"],
                              on_cell=progress, failed=o["failed_dir"] / f"{c.name}.ipynb")
        except BaseException:
            self.stop.set()  # before this thread takes the next notebook
            raise
        finally:
            progress.stop()
        with self.lock:
            record_time(self.dir, c.name, seconds)
            self.executed.append(c.name)
            rest = self._left()
            self.log(f"{tag}: done in {duration_text(seconds)} "
                     f"({duration_text(time.perf_counter() - self.begin)} so far, "
                     f"{_count(len(rest))} to go"
                     + (f", {eta_text(rest, self.times, self.jobs)})" if rest else ")"))


def glue_values(executed_dir: Path = ROOT / EXECUTED_DIR) -> dict[str, dict[str, str]]:
    """Every glued value of the executed notebooks: ``{chapter: {key: text}}``.

    The text is what the page shows (the ``text/plain`` of the glued output), so two builds
    whose pages read the same give equal dicts. Hidden files (a notebook being executed, or
    left half-executed by a build that was killed) are no chapter.
    """
    out = {}
    for path in sorted(Path(executed_dir).glob("*.ipynb")):
        if path.name.startswith("."):
            continue
        glued = glued_outputs(json.loads(path.read_text()))
        out[path.stem] = {key: data.get("text/plain", "") for key, data in glued.items()}
    return out


def compare_glue(before: dict, after: dict) -> list[str]:
    """Lines naming every glued value that differs between two :func:`glue_values` results."""
    lines = []
    for chapter in sorted(set(before) | set(after)):
        a, b = before.get(chapter), after.get(chapter)
        if a is None or b is None:
            lines.append(f"{chapter}: only in {'after' if a is None else 'before'}")
            continue
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                lines.append(f"{chapter}.{key}: {a.get(key, '<missing>')} -> {b.get(key, '<missing>')}")
    return lines


def build_html(root: Path = ROOT) -> Path:
    """Render the book with Jupyter Book (warnings are errors). Returns ``index.html``."""
    jb = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or shutil.which("jupyter-book")
    if jb is None:
        raise BookError("jupyter-book is not installed in this environment (pip install 'jupyter-book>=1,<2')")
    cmd = [jb, "build", str(root), "--builder", "html", "-W", "-n", "--keep-going",
           *site.config_arguments(root)]  # the repository buttons, when $PURE_BOOK_REPOSITORY is set
    proc = subprocess.run(cmd, cwd=root)
    if proc.returncode != 0:
        raise BookError(f"jupyter-book build failed (exit {proc.returncode}); see the warnings above")
    index = Path(root) / "_build" / "html" / "index.html"
    if not index.exists():
        raise BookError(f"jupyter-book finished but {index} is missing")
    finish_pages(index.parent)  # the paper's figure numbers per chapter, alt texts (numbering.py)
    return index


def check_pages(root: Path = ROOT) -> list[Path]:
    """Check the built HTML; raises ``BookError`` naming what is wrong.

    - one HTML page per ``_toc.yml`` entry;
    - every executed chapter shows at least one figure (an ``<img>`` or a plotly plot);
    - no glue reference is left unresolved (myst-nb leaves ``pending_glue`` / the raw role);
    - the bibliography page lists the cited works.
    """
    html = Path(root) / "_build" / "html"
    pages = [html / f"{entry.removesuffix('.ipynb').removesuffix('.md')}.html" for entry in toc_files(root)]
    missing = [str(p) for p in pages if not p.exists()]
    if missing:
        raise BookError(f"pages missing after the build: {', '.join(missing)}")
    for page in pages:
        text = page.read_text(errors="replace")
        if "{glue:" in text or "pending_glue" in text:
            raise BookError(f"{page}: an unresolved glue reference is left in the page")
        if f"/{EXECUTED_DIR.split('/')[-1]}/" in page.as_posix() and "<img" not in text and "plotly" not in text:
            raise BookError(f"{page}: an executed chapter without any figure")
    bib = [p for p in pages if p.stem == "bibliography"]
    if bib and "dreyer" not in bib[0].read_text(errors="replace").lower():
        raise BookError(f"{bib[0]}: the bibliography does not list the PURE paper")
    return pages
