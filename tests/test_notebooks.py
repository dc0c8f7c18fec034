"""Every chapter of the book runs on the smoke profile through papermill, and keeps the rules.

The smoke profile runs the paper profile's code path (timm ResNet-50, CLIP and DINOv2
architectures) with random weights and tiny data, so these runs need no download.
"""
import json
import re

import pytest

from pure_utils.book import build as book

CHAPTERS = book.chapters()
GLUE_REF = re.compile(r"\{glue:text\}`([^`]+)`")


def _cells(path, kind):
    nb = json.loads(path.read_text())
    return [("".join(c["source"]) if isinstance(c["source"], list) else c["source"], c)
            for c in nb["cells"] if c["cell_type"] == kind]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.name for c in CHAPTERS])
def test_source_notebook_rules(chapter):
    code = _cells(chapter.source, "code")
    assert code, "a chapter has code"
    first_src, first = code[0]
    assert "parameters" in first.get("metadata", {}).get("tags", []), "first code cell is tagged parameters"
    for line in first_src.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line, f"parameter without a comment: {line!r}"
    declared = book.declared_parameters(chapter.source)
    assert "profile" in declared
    # the profile's keys are injected, not declared: a declared one would shadow the profile
    assert not (set(declared) - {"profile"}) & book.schema_keys(), "a notebook knob shadows a profile key"
    for src, cell in code:
        assert not cell.get("outputs"), "outputs are stripped"
        assert not re.search(r"^\s*(def|class) ", src, re.M), "algorithms belong in pure_utils, not notebooks"


@pytest.fixture(scope="module")
def smoke_cache(tmp_path_factory):
    # notebooks of one run share mined references and attributions, as in a real book build
    return tmp_path_factory.mktemp("smoke-cache")


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.name for c in CHAPTERS])
def test_chapter_runs_on_the_smoke_profile(chapter, tmp_path, smoke_cache, monkeypatch):
    monkeypatch.setenv("PURE_CACHE_DIR", str(smoke_cache))
    params = book.resolve_parameters([chapter], book.read_profile("smoke"), {"cache": True},
                                     profile_name="smoke")[chapter.name]
    out = tmp_path / f"{chapter.name}.ipynb"
    book.execute(chapter.source, out, params)
    nb = json.loads(out.read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    glued = {o["metadata"]["scrapbook"]["name"] for c in nb["cells"] for o in c.get("outputs", [])
             if "scrapbook" in o.get("metadata", {})}
    referenced = {m.split(":")[0] for src, _ in _cells(chapter.source, "markdown")
                  for m in GLUE_REF.findall(src) if "::" not in m}
    assert referenced <= glued, f"glue keys used in the text but never glued: {referenced - glued}"
    images = [o for c in nb["cells"] for o in c.get("outputs", [])
              if any(k.endswith("image/png") for k in o.get("data", {}))]
    assert images, "every chapter shows at least one figure"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.name for c in CHAPTERS])
def test_glue_roles_are_where_myst_resolves_them(chapter):
    for src, _ in _cells(chapter.source, "markdown"):
        # a backtick right before {glue: is inline code; a ```{glue:figure} fence line is fine
        prose = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith("```"))
        assert "`{glue:" not in prose, "a glue role inside inline code is never resolved"
        for math in re.findall(r"\$[^$]+\$", src):
            assert "{glue" not in math, f"a glue role inside math is never resolved: {math}"
