"""The book engine: parameter checks, failing notebooks, rebuild keys, page checks."""
import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from pure_utils import book


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
    _notebook(tmp_path / "notebooks" / "one.ipynb", "profile = 'offline'\na = 1  # first\nb = 2  # second",
              "c = a + b\nprint(c)")
    _notebook(tmp_path / "notebooks" / "two.ipynb", "profile = 'offline'\nd = 1  # own knob",
              "assert a != 2, 'a changed'")
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n"
        "  - file: book/executed/one\n  - file: book/executed/two\n")
    (tmp_path / "notebooks" / "profiles" / "offline.yaml").write_text("a: 1\nb: 2\n")
    (tmp_path / "notebooks" / "profiles" / "p.yaml").write_text("a: 5\n")
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
    params = book.resolve_parameters(chapters, {"a": 5}, profile_name="p", root=mini_book)
    assert params == {"one": {"profile": "p", "a": 5}, "two": {"profile": "p", "a": 5}}


def test_unknown_profile_key_is_rejected(mini_book):
    chapters = book.chapters(mini_book)
    with pytest.raises(book.BookError, match=r"'zz' unknown; profile keys: a, b"):
        book.resolve_parameters(chapters, {"a": 5, "zz": 1}, root=mini_book)


def test_overrides_must_be_declared_or_profile_keys(mini_book):
    chapters = book.chapters(mini_book)
    params = book.resolve_parameters(chapters, {}, overrides={"b": 3}, root=mini_book)
    assert params["two"] == {"profile": "offline", "b": 3}
    with pytest.raises(book.BookError, match=r"two.ipynb: unknown parameter 'q'; its parameters: d, profile"):
        book.resolve_parameters(chapters[1:], {}, overrides={"q": 3}, root=mini_book)
    one_only = book.resolve_parameters(chapters[:1], {}, overrides={"a": 9}, root=mini_book)
    assert one_only["one"]["a"] == 9


def test_a_notebook_without_profile_parameter_is_rejected(mini_book):
    _notebook(mini_book / "notebooks" / "two.ipynb", "d = 1", "pass")
    with pytest.raises(book.BookError, match="two.ipynb: its parameters cell must declare 'profile'"):
        book.resolve_parameters(book.chapters(mini_book), {}, root=mini_book)


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
    assert "7" in printed  # a=5 from the profile, b=2 from the notebook
    assert book.run_notebooks("p", root=mini_book, log=lambda m: None) == []
    # a notebook that raises: the build stops, naming the notebook and the error
    with pytest.raises(book.BookError, match=r"notebook two.ipynb failed in cell \d+: AssertionError: a changed"):
        book.run_notebooks("p", root=mini_book, overrides={"a": 2}, only=["two"], log=lambda m: None)
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
