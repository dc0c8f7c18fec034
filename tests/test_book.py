"""The book engine: parameter checks, failing notebooks, rebuild keys, page checks, the CLI."""
import json
import os
import stat
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from pure_utils.book import build as book
from pure_utils.book import cli


def _notebook(path: Path, params: str, body: str) -> None:
    p = new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[new_markdown_cell("# A chapter"), p, new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": book.KERNEL_NAME, "display_name": "pure", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def mini_book(tmp_path):
    """A book with two notebooks and one prose page, laid out like the real one."""
    (tmp_path / "notebooks" / "profiles").mkdir(parents=True)
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "intro.md").write_text("# Intro\n")
    _notebook(tmp_path / "notebooks" / "one.ipynb", "profile = 'offline'\nn_ref = 1  # first\nb = 2  # second",
              "c = n_ref + b\nprint(c)")
    _notebook(tmp_path / "notebooks" / "two.ipynb", "profile = 'offline'\nd = 1  # own knob",
              "assert n_ref != 2, 'n_ref changed'")
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n"
        "  - file: book/executed/one\n  - file: book/executed/two\n")
    # profile keys are the fields of pure_utils.study.profile.Profile; these files set a few
    (tmp_path / "notebooks" / "profiles" / "offline.yaml").write_text("n_ref: 1\n")
    (tmp_path / "notebooks" / "profiles" / "p.yaml").write_text("n_ref: 5\n")
    return tmp_path


def test_chapters_follow_the_toc(mini_book):
    names = [c.name for c in book.chapters(mini_book)]
    assert names == ["one", "two"]
    assert book.toc_files(mini_book) == ["book/intro", "book/executed/one", "book/executed/two"]


def test_missing_source_notebook_is_named(mini_book):
    (mini_book / "notebooks" / "two.ipynb").unlink()
    with pytest.raises(book.BookError, match="two.ipynb does not exist"):
        book.chapters(mini_book)


def test_every_notebook_gets_the_whole_profile(mini_book):
    chapters = book.chapters(mini_book)
    params = book.resolve_parameters(chapters, {"n_ref": 5}, profile_name="p")
    assert params == {"one": {"profile": "p", "n_ref": 5}, "two": {"profile": "p", "n_ref": 5}}
    # read_profile gives every key: the file's, the others at their default
    whole = book.read_profile("p", mini_book)
    assert whole["n_ref"] == 5 and whole["name"] == "p" and whole["batch_size"] == 64
    assert set(whole) == book.schema_keys()


def test_unknown_profile_key_is_rejected(mini_book):
    chapters = book.chapters(mini_book)
    with pytest.raises(book.BookError, match=r"profile p: unknown key 'n_refs' \(did you mean 'n_ref'\?\)"):
        book.resolve_parameters(chapters, {"n_ref": 5, "n_refs": 1}, profile_name="p")
    (mini_book / "notebooks" / "profiles" / "p.yaml").write_text("batch_sise: 5\n")
    with pytest.raises(book.BookError, match=r"p.yaml: unknown key 'batch_sise' \(did you mean 'batch_size'"):
        book.read_profile("p", mini_book)


def test_overrides_must_be_declared_or_profile_keys(mini_book):
    chapters = book.chapters(mini_book)
    params = book.resolve_parameters(chapters, {}, overrides={"batch_size": 3})
    assert params["two"] == {"profile": "offline", "batch_size": 3}
    with pytest.raises(book.BookError, match=r"two.ipynb: unknown parameter 'q'; its parameters: d, profile"):
        book.resolve_parameters(chapters[1:], {}, overrides={"q": 3})
    one_only = book.resolve_parameters(chapters[:1], {}, overrides={"b": 9})
    assert one_only["one"]["b"] == 9
    # an override of a profile key is checked against its type before anything runs
    with pytest.raises(book.BookError, match=r"overrides \(-p, -y, -r\): n_ref = 2.5 is a float, "
                                             r"expected an integer"):
        book.resolve_parameters(chapters, {}, overrides={"n_ref": 2.5})
    assert book.resolve_parameters(chapters, {}, overrides={"cache": "false"})["two"]["cache"] is False


def test_a_notebook_without_profile_parameter_is_rejected(mini_book):
    _notebook(mini_book / "notebooks" / "two.ipynb", "d = 1", "pass")
    with pytest.raises(book.BookError, match="two.ipynb: its parameters cell must declare 'profile'"):
        book.resolve_parameters(book.chapters(mini_book), {})


def test_unknown_profile_name_lists_profiles(mini_book):
    with pytest.raises(book.BookError, match="profile 'nope' not found; profiles: offline, p"):
        book.read_profile("nope", mini_book)


def test_build_key_changes_with_source_and_parameters(mini_book):
    one = book.chapters(mini_book)[0]
    k1 = book.build_key(one, {"a": 1}, "lib")
    assert k1 == book.build_key(one, {"a": 1}, "lib")
    assert k1 != book.build_key(one, {"a": 2}, "lib")
    assert k1 != book.build_key(one, {"a": 1}, "lib2")
    _notebook(one.source, "profile = 'offline'\na = 1  # first\nb = 2  # second", "c = a * b")
    assert k1 != book.build_key(one, {"a": 1}, "lib")


def test_outputs_do_not_change_the_source_hash(mini_book):
    src = mini_book / "notebooks" / "one.ipynb"
    before = book.notebook_source_hash(src)
    nb = json.loads(src.read_text())
    nb["cells"][2]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "3\n"}]
    nb["cells"][2]["execution_count"] = 7
    src.write_text(json.dumps(nb))
    assert book.notebook_source_hash(src) == before


def test_library_hash_sees_code_changes(tmp_path):
    (tmp_path / "pure_utils").mkdir()
    (tmp_path / "pure_utils" / "x.py").write_text("A = 1\n")
    h1 = book.library_hash(tmp_path)
    (tmp_path / "pure_utils" / "x.py").write_text("A = 2\n")
    assert book.library_hash(tmp_path) != h1


@pytest.mark.slow
def test_run_skips_unchanged_and_fails_with_notebook_name(mini_book):
    ran = book.run_notebooks("p", root=mini_book, log=lambda m: None)
    assert ran == ["one", "two"]
    out = json.loads((mini_book / "book" / "executed" / "one.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in out["cells"] for o in c.get("outputs", []))
    assert "7" in printed  # n_ref=5 from the profile, b=2 from the notebook
    assert book.run_notebooks("p", root=mini_book, log=lambda m: None) == []
    # a notebook that raises: the build stops, naming the notebook and the error
    with pytest.raises(book.BookError, match=r"notebook two.ipynb failed in cell \d+: AssertionError: n_ref changed"):
        book.run_notebooks("p", root=mini_book, overrides={"n_ref": 2}, only=["two"], log=lambda m: None)
    assert not list((mini_book / "book" / "executed").glob(".tmp-*")), "no half-written notebook left"


def test_check_pages_reports_missing_pages(mini_book):
    html = mini_book / "_build" / "html" / "book"
    (html / "executed").mkdir(parents=True)
    (html / "intro.html").write_text("x")
    (html / "executed" / "one.html").write_text("<img src='a.png'>")
    with pytest.raises(book.BookError, match="two.html"):
        book.check_pages(mini_book)
    (html / "executed" / "two.html").write_text("<p>no figure</p>")
    with pytest.raises(book.BookError, match="two.html: an executed chapter without any figure"):
        book.check_pages(mini_book)
    (html / "executed" / "two.html").write_text("<img src='b.png'> {glue:text}`x`")
    with pytest.raises(book.BookError, match="unresolved glue"):
        book.check_pages(mini_book)
    (html / "executed" / "two.html").write_text("<img src='b.png'>")
    assert len(book.check_pages(mini_book)) == 3


# --- the command line: every bad input gets a clear answer ------------------------------------
def _cli(capsys, *argv):
    code = cli.main(list(map(str, argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def fake_papermill(monkeypatch):
    """papermill without a kernel: records each call; a cell that runs `raise` fails."""
    calls = []

    def execute_notebook(src, out, parameters, kernel_name, cwd, **kw):
        calls.append({"src": src, "out": out, "parameters": parameters, "cwd": cwd})
        nb = json.loads(Path(src).read_text())
        failing = any("raise" in "".join(c["source"]) for c in nb["cells"])
        if failing:
            nb["cells"][-1]["outputs"] = [{"output_type": "error", "ename": "RuntimeError",
                                           "evalue": "boom", "traceback": ["Traceback ...", "boom"]}]
        Path(out).write_text(json.dumps(nb))
        if failing:
            raise book.PapermillExecutionError(cell_index=2, exec_count=2, source="raise",
                                               ename="RuntimeError", evalue="boom", traceback=[])

    monkeypatch.setattr(book.papermill, "execute_notebook", execute_notebook)
    return calls


def test_run_refuses_to_overwrite_its_source(mini_book, capsys, monkeypatch, fake_papermill):
    monkeypatch.chdir(mini_book / "notebooks")
    before = Path("one.ipynb").read_bytes()
    for out in ("one.ipynb", "./one.ipynb", mini_book / "notebooks" / "one.ipynb"):
        code, _, err = _cli(capsys, "run", "one.ipynb", out, "-f", "../notebooks/profiles/p.yaml")
        assert code == 1 and "is the source notebook itself" in err and "Traceback" not in err
    assert Path("one.ipynb").read_bytes() == before and not fake_papermill


def test_run_gives_a_clean_error_for_missing_or_non_notebook_paths(mini_book, capsys, monkeypatch):
    monkeypatch.chdir(mini_book)
    (mini_book / "notes.ipynb").write_text("a: 1\n")
    (mini_book / "list.ipynb").write_text("[1, 2]")
    cases = [("nope.ipynb", f"notebook {mini_book / 'nope.ipynb'} does not exist"),
             ("notebooks", "is a folder, not a notebook"),
             ("notes.ipynb", "is not a Jupyter notebook (.ipynb JSON)"),
             ("list.ipynb", "has no list of 'cells'"),
             ("notebooks/profiles/p.yaml", "is not a Jupyter notebook")]
    for source, message in cases:
        code, _, err = _cli(capsys, "run", source, "out.ipynb")
        assert code == 1 and message in err and "Traceback" not in err, (source, err)
    code, _, err = _cli(capsys, "run", "notebooks/one.ipynb", "notebooks")
    assert code == 1 and "is a folder; give the path of the executed .ipynb file" in err


def test_malformed_profile_names_file_and_line(mini_book, capsys, monkeypatch):
    monkeypatch.chdir(mini_book)
    bad = mini_book / "bad.yaml"
    bad.write_text("a: 1\nb: [1, 2\nc: 3\n")
    code, _, err = _cli(capsys, "run", "notebooks/one.ipynb", "out.ipynb", "-f", "bad.yaml")
    assert code == 1 and f"{bad}, line 3, column 2: malformed YAML" in err and "Traceback" not in err
    with pytest.raises(book.BookError, match=rf"{bad}, line 3"):
        book.read_profile(str(bad), mini_book)
    (mini_book / "_toc.yml").write_text("root: book/intro\nchapters:\n  - file: [a\n")
    with pytest.raises(book.BookError, match=r"_toc.yml, line 4, column 1: malformed YAML"):
        book.chapters(mini_book)


def test_failing_run_keeps_its_executed_notebook(mini_book, capsys, monkeypatch, fake_papermill):
    _notebook(mini_book / "notebooks" / "two.ipynb", "profile = 'offline'\nd = 1", "raise RuntimeError('boom')")
    monkeypatch.chdir(mini_book)
    code, _, err = _cli(capsys, "run", "notebooks/two.ipynb", "out/two.ipynb")
    kept = mini_book / "out" / "two.failed.ipynb"
    assert code == 1 and "failed in cell 2: RuntimeError: boom" in err and str(kept) in err
    outputs = json.loads(kept.read_text())["cells"][-1]["outputs"]
    assert outputs[0]["output_type"] == "error" and outputs[0]["evalue"] == "boom"
    assert not (mini_book / "out" / "two.ipynb").exists()
    assert not list((mini_book / "out").glob(".tmp-*"))
    # in a build, the copy goes to _build/failed, outside the book's pages
    with pytest.raises(book.BookError, match=r"_build/failed/two.ipynb"):
        book.run_notebooks("p", root=mini_book, only=["two"], log=lambda m: None)
    assert (mini_book / "_build" / "failed" / "two.ipynb").exists()
    # fixed: the executed copy appears and the failed one is gone
    _notebook(mini_book / "notebooks" / "two.ipynb", "profile = 'offline'\nd = 1", "pass")
    assert _cli(capsys, "run", "notebooks/two.ipynb", "out/two.ipynb")[0] == 0
    assert (mini_book / "out" / "two.ipynb").exists() and not kept.exists()


def test_run_resolves_paths_from_the_callers_directory(mini_book, capsys, monkeypatch, fake_papermill,
                                                       tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "mine.yaml").write_text("n_ref: 7\n")  # a key of the real profiles: `run` checks them
    monkeypatch.chdir(work)
    old = os.umask(0o022)
    try:
        code, out, err = _cli(capsys, "run", mini_book / "notebooks" / "one.ipynb", "res/one.ipynb",
                              "-f", "mine.yaml")
    finally:
        os.umask(old)
    assert code == 0, err
    (call,) = fake_papermill
    assert call["cwd"] == str(work)                             # the kernel runs where the user is
    assert call["parameters"]["profile"] == str(work / "mine.yaml")  # found from any folder
    assert call["parameters"]["n_ref"] == 7
    result = work / "res" / "one.ipynb"
    assert str(result) in out and stat.S_IMODE(result.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_parameters_are_parsed_as_papermill_does(mini_book, capsys, monkeypatch, fake_papermill):
    from papermill.cli import _resolve_type

    for text in ["012", "no", "yes", "True", "False", "None", "null", "1e3", "-3", "3.", "inf", "nan",
                 " 12 ", "1_000", "0x10", "[1, 2]", "", "off", "1:30"]:
        expected, got = _resolve_type(text), cli.papermill_value(text)
        assert type(got) is type(expected) and (got == expected or got != got), (text, got, expected)
    monkeypatch.chdir(mini_book)
    code, _, err = _cli(capsys, "run", "notebooks/one.ipynb", "o.ipynb", "-p", "n_ref", "012",
                        "-p", "b", "no", "-y", "n_ref: [1, 2]\nb: 3", "-r", "profile", "offline")
    assert code == 0, err
    params = fake_papermill[0]["parameters"]
    assert params["n_ref"] == 12 and params["b"] == "no" and params["profile"] == "offline"
    code, _, err = _cli(capsys, "run", "notebooks/one.ipynb", "o.ipynb", "-y", "[1, 2]")
    assert code == 1 and "must be a YAML mapping" in err
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "papermill" in capsys.readouterr().out.replace("\n", " ")


def test_a_stopped_build_leaves_nothing_read_as_a_chapter(tmp_path):
    """A half-executed notebook (``.tmp-*.ipynb``) is no chapter for ``glue``, and SIGTERM
    unwinds the command line like Ctrl-C, so the executing notebook's file is removed."""
    import signal
    import subprocess
    import sys
    import textwrap

    from pure_utils.book.build import glue_values

    good = {"cells": [{"cell_type": "code", "outputs": [{"metadata": {"scrapbook": {"name": "x"}},
                                                         "data": {"text/plain": "1"}}]}]}
    (tmp_path / "fig1.ipynb").write_text(json.dumps(good))
    (tmp_path / ".tmp-abc.ipynb").write_text("{ half written")
    assert glue_values(tmp_path) == {"fig1": {"x": "1"}}
    code = textwrap.dedent(f"""
        import os, signal, time, pathlib
        from pure_utils.book import cli
        def slow(args):
            tmp = pathlib.Path({str(tmp_path)!r}) / ".tmp-run.ipynb"
            tmp.write_text("{{}}")
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
            except BaseException:
                tmp.unlink()
                raise
        cli._COMMANDS["params"] = slow
        cli.main(["params"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 128 + signal.SIGTERM, out.stderr
    assert not (tmp_path / ".tmp-run.ipynb").exists()


# --- what the build says while it runs ---------------------------------------------------------
def test_eta_is_the_sum_of_the_last_times():
    from pure_utils.book import progress
    times = {"a": 30.0, "b": 90.0}
    assert progress.eta_seconds(["a", "b", "c"], times) == (120.0, 2)
    assert progress.eta_text(["a", "b"], times) == "about 2.0 min by the last build's times"
    assert progress.eta_text(["a", "c"], times) == "about 30 s by the last build's times, 1 never timed"
    assert progress.eta_text(["c"], times) == "no earlier times to estimate from"
    assert progress.duration_text(7200) == "2.0 h"


def test_cell_progress_speaks_at_most_every_interval():
    from pure_utils.book.progress import CellProgress
    now, lines = [0.0], []
    cells = [{"cell_type": "markdown"}] + [{"cell_type": "code"}] * 4
    p = CellProgress("fig3", cells, lines.append, interval=30, clock=lambda: now[0])
    for index, t in [(1, 1), (2, 10), (3, 40), (4, 50)]:
        now[0] = t
        p(index)
    assert lines == ["  fig3: cell 3/4, 40 s"]
    now[0] = 75
    p.tick()  # a long cell is named again
    assert lines[-1] == "  fig3: cell 4/4, 75 s"


def test_build_prints_each_chapter_with_notebooks_to_go_and_eta(mini_book, monkeypatch):
    from pure_utils.book import progress
    seen = []

    def execute_notebook(src, out, parameters, kernel_name, cwd, on_cell=None, **kw):
        nb = json.loads(Path(src).read_text())
        nb["cells"].insert(2, {"cell_type": "code", "source": "# Parameters", "outputs": []})
        for i, cell in enumerate(nb["cells"]):
            on_cell(i, cell, nb["cells"])
        seen.append(kw.get("engine_name"))
        Path(out).write_text(json.dumps(nb))

    monkeypatch.setattr(book.papermill, "execute_notebook", execute_notebook)
    executed = mini_book / "book" / "executed"
    executed.mkdir()
    (executed / progress.TIMES_FILE).write_text(json.dumps({"one": 60.0, "two": 120.0}))
    lines = []
    assert book.run_notebooks("p", root=mini_book, log=lines.append, progress_every=0) == ["one", "two"]
    assert seen == [progress.ENGINE_NAME] * 2
    assert lines[0] == "2 of 2 notebooks to run: about 3.0 min by the last build's times"
    assert lines[1] == ("[1/2] one: starting, 2 notebooks to go, this one included "
                        "(about 3.0 min by the last build's times)")
    assert any(line.startswith("  one: cell 3/3, ") for line in lines)  # papermill's cell counted
    done = next(line for line in lines if line.startswith("[1/2] one: done in"))
    assert done.endswith("1 notebook to go, about 2.0 min by the last build's times)")
    assert lines[-1].startswith("[2/2] two: done in") and lines[-1].endswith("0 notebooks to go)")
    times = progress.load_times(executed)
    assert set(times) == {"one", "two"} and times["one"] < 60
    assert book.glue_values(executed).keys() == {"one", "two"}  # the times file is no chapter
    lines.clear()
    book.run_notebooks("p", root=mini_book, log=lines.append)
    assert lines == ["[1/2] one: up to date", "[2/2] two: up to date",
                     "0 of 2 notebooks to run: nothing left"]


# --- several notebooks at once --------------------------------------------------------------------
def test_the_longest_chapters_run_first_and_the_estimate_counts_the_queues():
    from pure_utils.book import progress
    shipped = {"a": 5.0, "b": 50.0, "c": 20.0}
    assert book.run_order(["a", "b", "c", "d"], {}, shipped) == ["d", "b", "c", "a"]  # d: never timed
    assert book.run_order(["a", "b", "c"], {"a": 90.0}, shipped) == ["a", "b", "c"]  # own times win
    times = {"a": 10.0, "b": 6.0, "c": 5.0, "d": 4.0}
    assert progress.eta_seconds(times, times) == (25.0, 4)
    # two queues, the longest first to the queue free first: a | b, c, then d after a
    assert progress.eta_seconds(times, times, jobs=2) == (14.0, 4)
    assert progress.eta_seconds(["a", "x"], times, jobs=3) == (10.0, 1)


def _third_notebook(root):
    _notebook(root / "notebooks" / "three.ipynb", "profile = 'offline'", "x = 3")
    toc = root / "_toc.yml"
    toc.write_text(toc.read_text() + "  - file: book/executed/three\n")
    (root / book.CHAPTER_TIMES).write_text(json.dumps({"one": 30, "two": 20, "three": 10}))


def test_two_notebooks_run_at_once_each_kernel_on_its_share_of_the_cores(mini_book, monkeypatch):
    import threading
    _third_notebook(mini_book)
    both = threading.Barrier(2, timeout=20)  # passes only when two notebooks run at the same time
    started, threads = [], {}

    def execute_notebook(src, out, parameters, kernel_name, cwd, **kw):
        name = Path(src).stem
        started.append(name)
        threads[name] = os.environ.get("OMP_NUM_THREADS")
        if name in ("one", "two"):
            both.wait()
        Path(out).write_text(Path(src).read_text())

    monkeypatch.setattr(book.papermill, "execute_notebook", execute_notebook)
    monkeypatch.setattr(book.os, "cpu_count", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    lines = []
    done = book.run_notebooks("p", root=mini_book, log=lines.append, jobs=2)
    assert started[:2] in (["one", "two"], ["two", "one"]) and started[2] == "three"
    assert sorted(done) == ["one", "three", "two"]
    assert set(threads.values()) == {"2"} and "OMP_NUM_THREADS" not in os.environ
    assert lines[0] == "3 of 3 notebooks to run, 2 at a time: no earlier times to estimate from"
    assert all((mini_book / "book" / "executed" / f"{n}.ipynb").exists() for n in done)
    # the same notebooks as one at a time: nothing is run again
    assert book.run_notebooks("p", root=mini_book, log=lines.append, jobs=1) == []


def test_a_failing_notebook_stops_the_build_and_no_other_starts(mini_book, monkeypatch):
    import threading
    _third_notebook(mini_book)
    failed, two_runs = threading.Event(), threading.Event()
    started = []

    def execute_notebook(src, out, parameters, kernel_name, cwd, **kw):
        name = Path(src).stem
        started.append(name)
        if name == "one":
            two_runs.wait(20)  # "one" fails while "two" runs
            failed.set()
            raise RuntimeError("the kernel died")
        two_runs.set()
        failed.wait(20)  # "two" runs on while "one" fails, and finishes
        Path(out).write_text(Path(src).read_text())

    monkeypatch.setattr(book.papermill, "execute_notebook", execute_notebook)
    with pytest.raises(book.BookError, match="notebook one.ipynb did not finish: RuntimeError"):
        book.run_notebooks("p", root=mini_book, log=lambda line: None, jobs=2)
    assert sorted(started) == ["one", "two"]  # three never started
    assert (mini_book / "book" / "executed" / "two.ipynb").exists()
    with pytest.raises(book.BookError, match="jobs=0"):
        book.run_notebooks("p", root=mini_book, jobs=0)


def test_jobs_on_the_command_line():
    assert cli._jobs("3") == 3 and cli._jobs("auto") in (1, 2)
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(book.BookError, match="--jobs"):
            cli._jobs(bad)
