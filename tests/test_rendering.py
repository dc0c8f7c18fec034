"""What a reader sees: the checks of rendered pages, on constructed HTML (no browser needed)."""
import subprocess
import sys

from pure_utils.book.browser import page_problems

GOOD = """<html><body><main>
<p>The gap <mjx-container>rho</mjx-container> is <span class="math"><mjx-container>x</mjx-container></span> small.</p>
<details class="hide above-input"><summary>show</summary><div class="cell_input"><pre>x = 1</pre></div></details>
<figure><img src="a.png"/><figcaption><span class="caption-number">Fig. 2 </span>A caption.</figcaption></figure>
<img id="abc-thumb" src=""/>
<details><summary>Rerun this chapter</summary><pre>papermill ...</pre></details>
<table><thead><tr><th>method</th><th>ARI</th></tr></thead><tbody><tr><td>PURE</td><td>0.634 [0.51, 0.72]</td></tr>
<tr><td>parameters</td><td>1234567</td></tr></tbody></table>
</main></body></html>"""


def test_a_good_page_has_no_problem():
    assert page_problems(GOOD, executed=True) == []


def test_each_thing_a_reader_would_see_wrong_is_found():
    cases = {
        "raw TeX": GOOD.replace("<mjx-container>rho</mjx-container>", "\\(\\rho\\)"),
        "not rendered": GOOD.replace("<mjx-container>rho</mjx-container>", "").replace(
            "<mjx-container>x</mjx-container>", ""),
        "code visible": GOOD.replace('<details class="hide above-input"><summary>show</summary>', "<div>")
                            .replace("</pre></div></details>", "</pre></div></div>"),
        "numbered caption": GOOD.replace('<span class="caption-number">Fig. 2 </span>', ""),
        "rerun box": GOOD.replace("Rerun this chapter", "Run"),
        "index column": GOOD.replace("<th>method</th>", "<th></th><th>method</th>"),
        "significant digits": GOOD.replace("0.634", "0.63412"),
        "stderr": GOOD.replace("</main>", '<div class="output stderr">TqdmWarning: ...</div></main>'),
    }
    for what, html in cases.items():
        problems = page_problems(html, executed=True)
        assert any(what in p for p in problems), (what, problems)
    # prose pages need no toggle, caption or rerun box
    prose = GOOD.replace("Rerun this chapter", "Run").replace('<span class="caption-number">Fig. 2 </span>', "")
    assert page_problems(prose, executed=False) == []


def test_only_the_article_is_checked_not_the_theme_header_around_it():
    # the theme's header holds icons (e.g. the Binder logo of the launch button) without captions
    header = '<div class="bd-header-article"><img src="_static/images/logo_binder.svg"/></div>'
    page = GOOD.replace("<main>", "<main>" + header + "<article>").replace("</main>", "</article></main>")
    assert page_problems(page, executed=True) == []
    bare = page.replace('<span class="caption-number">Fig. 2 </span>', "")
    assert any("numbered caption" in p for p in page_problems(bare, executed=True))


def test_importing_the_package_imports_tqdm_auto_quietly_before_any_dependency():
    # in Jupyter, tqdm.auto warns on its first import; the package imports it first, silenced,
    # so that a dependency importing it later (timm's huggingface_hub) finds it imported
    code = ("import sys; import pure_utils; "
            "print('tqdm.auto' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


# --- figure numbers as the paper has them (pure_utils.book.numbering) ------------------------
import shutil  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from pure_utils.book.browser import figure_problems, layout_problems, probed_page, remove_probe  # noqa: E402
from pure_utils.book.numbering import (FIGURE_SCHEMES, NumberingError, figure_alt_texts,  # noqa: E402
                                       figure_label, finish_pages, number_figures)
from pure_utils.study.report import table_with_notes  # noqa: E402
from pure_utils.study.tables import comparability, comparability_word  # noqa: E402


def _figure(fid, n):
    return (f'<figure class="align-default" id="{fid}"><img alt="a plot" src="../../_images/{fid}.png"/>'
            f'<figcaption><p><span class="caption-number">Fig. {n} </span><span class="caption-text">'
            f'Caption {fid}.</span></p></figcaption></figure>')


def _page(body):
    return f"<html><head></head><body><main><article>{body}</article></main></body></html>"


def _book(tmp_path):
    """A built book in miniature: Sphinx's book-wide numbers, references across pages."""
    ex = tmp_path / "book" / "executed"
    ex.mkdir(parents=True)
    (ex / "setting.html").write_text(_page(_figure("fig-s1", 1) + _figure("fig-s2", 2)))
    (ex / "fig3_polysemanticity.html").write_text(_page(
        _figure("fig-poly", 10) + _figure("fig-poly-b", 11)
        + '<p>See <a class="reference internal" href="#fig-poly-b"><span class="std std-numref">Fig. 11</span></a>'
        ' and <a class="reference internal" href="setting.html#fig-s2"><span class="std std-numref">Fig. 2</span></a>.</p>'))
    (tmp_path / "book" / "intro.html").write_text(_page(
        '<a class="reference internal" href="executed/fig3_polysemanticity.html#fig-poly">'
        '<span class="std std-numref">Fig. 10</span></a>'))
    return tmp_path


def test_labels_follow_the_scheme_of_each_chapter():
    assert [figure_label("book/executed/fig3_polysemanticity", i) for i in range(3)] == [
        "Figure 3", "Figure 3b", "Figure 3c"]
    assert figure_label("book/executed/appendix_a1_crops", 1) == "Figure A.1b"
    assert [figure_label("book/executed/beyond_family", i) for i in range(2)] == ["Figure B2.1", "Figure B2.2"]
    first = [figure_label(p, 0) for p in FIGURE_SCHEMES]
    assert len(set(first)) == len(first)  # no two chapters share a number
    with pytest.raises(NumberingError, match="book/other"):
        figure_label("book/other", 0)


def test_captions_and_references_are_renumbered_on_every_page(tmp_path):
    root = _book(tmp_path)
    labels = number_figures(root)
    assert labels == {"book/executed/fig3_polysemanticity": ["Figure 3", "Figure 3b"],
                      "book/executed/setting": ["Figure S.1", "Figure S.2"]}
    fig3 = (root / "book/executed/fig3_polysemanticity.html").read_text()
    assert '<span class="caption-number">Figure 3 </span>' in fig3
    assert '<span class="caption-number">Figure 3b </span>' in fig3
    assert '"std std-numref">Figure 3b</span>' in fig3 and '"std std-numref">Figure S.2</span>' in fig3
    intro = (root / "book/intro.html").read_text()
    assert '"std std-numref">Figure 3</span>' in intro and "Fig. " not in intro + fig3
    assert figure_problems(fig3, "book/executed/fig3_polysemanticity") == []
    again = {p: p.read_text() for p in root.rglob("*.html")}
    number_figures(root)  # a second run changes nothing
    assert {p: p.read_text() for p in root.rglob("*.html")} == again


def test_a_figure_outside_the_scheme_or_a_dangling_reference_is_an_error(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "new.html").write_text(_page(_figure("fig-x", 1)))
    with pytest.raises(NumberingError, match="book/new"):
        number_figures(tmp_path)
    root = _book(tmp_path / "b")
    (root / "book/intro.html").write_text(_page(
        '<a href="executed/setting.html#x"><span class="std std-numref">Fig. 7</span></a>'))
    with pytest.raises(NumberingError, match="Fig. 7"):
        number_figures(root)


def test_a_figure_image_named_by_its_file_gets_its_caption_as_alt_text(tmp_path):
    root = _book(tmp_path)
    page = root / "book/executed/setting.html"
    page.write_text(page.read_text().replace('alt="a plot"', 'alt="../../_images/fig-s1.png"', 1))
    finish_pages(root)
    text = page.read_text()
    assert 'alt="Figure S.1: Caption fig-s1."' in text and 'alt="a plot"' in text  # a real alt stays
    assert figure_alt_texts(text) == text
    assert figure_problems(text, "book/executed/setting") == []


def test_figure_problems_finds_wrong_numbers_old_references_and_missing_alt_text():
    key = "book/executed/fig3_polysemanticity"
    good = _page(_figure("a", 1).replace("Fig. 1", "Figure 3") + _figure("b", 2).replace("Fig. 2", "Figure 3b"))
    assert figure_problems(good, key) == []
    cases = {"'Figure 3c' where the chapter's scheme says 'Figure 3b'": good.replace("Figure 3b", "Figure 3c"),
             "book-wide number 'Fig. 10'": good.replace("</article>", '<span class="std std-numref">Fig. 10</span></article>'),
             "without alt text": good.replace('alt="a plot"', 'alt="../../_images/a.png"'),
             "without a numbering scheme": None}
    for what, html in cases.items():
        problems = figure_problems(html or good, key if html else "book/unknown")
        assert any(what in p for p in problems), (what, problems)
    assert any("without alt text" in p for p in figure_problems(good.replace(' alt="a plot"', ""), key))
    tex = good.replace(' alt="a plot"', ' alt="ARI at \\(k = 2\\)"')
    assert any("raw TeX" in p for p in figure_problems(tex, key))
    assert not any("raw TeX" in p for p in figure_problems(good.replace(' alt="a plot"', ' alt="cost $5"'), key))


def test_layout_problems_are_read_from_the_probe_result_in_the_dom():
    probe = '<div id="pure-layout-probe" hidden data-problems=\'["a table cell clipped"]\'></div>'
    assert layout_problems(_page("") + probe) == ["a table cell clipped"]
    assert layout_problems(_page("")) == []


# --- the results table: long reasons as numbered notes, the data unchanged -------------------
def test_a_noted_table_shows_short_words_and_each_reason_once_without_changing_the_frame():
    profile = dict(dataset="shapes", pretrained=False, embedder="dino", embedder_pretrained=True,
                   embedder_label="DINO")
    long = [comparability(profile, "resnet50", "resnet18"), comparability(profile, "resnet18", "resnet18"),
            comparability(dict(profile, dataset="imagenet", pretrained=True, embedder="clip"), "r", "r")]
    frame = pd.DataFrame({"quantity": ["a", "b", "c", "d"], "comparable": [long[0], long[1], long[0], long[2]]})
    before = frame.copy()
    shown = table_with_notes(frame, "comparable", comparability_word)
    pd.testing.assert_frame_equal(frame, before)
    assert long[2] == "yes"
    assert list(shown.styler.data["comparable"]) == [
        "no: model, data, judge [1]", "no: data, judge [2]", "no: model, data, judge [1]", "yes"]
    assert shown.notes == long[:2]
    html = shown._repr_html_()
    assert html.startswith('<div class="pure-table-scroll" tabindex="0" role="region"') and html.count("<li>") == 2
    with pytest.raises(ValueError, match="unknown comparability reason"):
        comparability_word("not comparable: the moon")
    with pytest.raises(KeyError, match="nope"):
        table_with_notes(frame, "nope", str)


# --- the layout probe in a real browser --------------------------------------------------------
WIDE = """<!DOCTYPE html><html><head><meta charset="utf-8">
<script>document.documentElement.dataset.theme = localStorage.getItem("theme") || "light";</script>
<style>article { max-width: 600px; } td.cut { overflow: hidden; max-width: 60px; white-space: nowrap; }</style>
</head><body><main><article class="bd-article">
<div style="overflow-x: auto"><table><tr><td style="white-space: nowrap">SCROLLS{x}</td></tr></table></div>
WIDE_TABLE<table><tr><td class="cut">CLIPPED cell text that is long</td></tr></table>
TALL_TABLE
</article></main></body></html>"""


def _chromium():
    if not any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("Chromium is not installed (make screenshots installs it)")


def test_the_probe_finds_a_wide_table_and_a_clipped_cell_at_a_phone_width_in_dark_mode(tmp_path):
    _chromium()
    from pure_utils.book.browser import _view_dom

    wide = '<table class="wide"><tr><td style="white-space: nowrap">WIDE' + "b" * 200 + "</td></tr></table>"
    page = tmp_path / "p.html"
    tall = "<table><tr><td>a</td><td>TALL " + "word " * 300 + "</td></tr></table>"
    page.write_text(WIDE.replace("{x}", "a" * 200).replace("WIDE_TABLE", wide).replace("TALL_TABLE", tall))
    problems = layout_problems(_view_dom(page, 390, "dark", tmp_path / "shots"))
    assert any("px tall" in p and "TALL" in p for p in problems), problems
    assert any("wider than the article column" in p and "table.wide" in p for p in problems), problems
    assert any("table cell clipped" in p for p in problems), problems
    assert not any("SCROLLS" in p for p in problems), problems   # in its own scroll box: fine
    assert (tmp_path / "shots" / "p-390-dark.png").exists()
    assert sorted(q.name for q in tmp_path.iterdir()) == ["p.html", "shots"]  # the probe's files are gone
    page.write_text(WIDE.replace("{x}", "a" * 200).replace("WIDE_TABLE", "").replace('class="cut"', "")
                    .replace("TALL_TABLE", ""))
    assert layout_problems(_view_dom(page, 1280, "light", None)) == []


def test_probed_page_keeps_the_page_and_removes_its_copies(tmp_path):
    page = tmp_path / "p.html"
    page.write_text(_page("x"))
    host = probed_page(page, "dark", 390)
    assert 'width="390"' in host.read_text() and "localStorage.setItem('mode', 'dark')" in (
        tmp_path / ".probe-p.html").read_text()
    remove_probe(host)
    assert [q.name for q in tmp_path.iterdir()] == ["p.html"]
    with pytest.raises(ValueError, match="'dim'"):
        probed_page(page, "dim")


# --- axe-core, the accessibility checker, in the same pages ----------------------------------
import re  # noqa: E402

from pure_utils.book import browser  # noqa: E402
from pure_utils.book.browser import (AXE_IGNORED, AXE_VERSION, RenderError, axe_problems,  # noqa: E402
                                     axe_script)

#: a page with two violations of WCAG 2 A (an image without alt text, a button without a name)
#: and, in the dark theme only, one of AA (text too faint on its background)
AXE_PAGE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>A page</title>
<script>document.documentElement.dataset.theme = localStorage.getItem("theme") || "light";</script>
<style>html[data-theme="dark"] body { background: #111111; color: #eeeeee; }
html[data-theme="dark"] .faint { color: #333333; }</style>
</head><body><main><article class="bd-article"><h1>A page</h1><p>Some text.</p>
<p class="faint">Faint in the dark theme.</p>
<img src="plot.png" class="plot"><button class="go"></button>
</article></main></body></html>"""
FIXED = (AXE_PAGE.replace('class="plot"', 'class="plot" alt="a plot"').replace("></button>", ">Go</button>")
         .replace("color: #333333", "color: #bbbbbb"))
#: a page whose scripts replace axe.run by one that never resolves
HANGS = FIXED.replace("</title>", "</title><script>window.addEventListener('load', function () {"
                      " window.axe.run = function () { return new Promise(function () {}); }; });</script>")


def _axe():
    _chromium()
    try:
        return axe_script()
    except RenderError as err:
        pytest.skip(f"axe-core is not installed (make axe installs it): {err}")


def _rules(problems):
    return sorted(m.group(1) for p in problems for m in [re.match(r"axe: (\S+) \(", p)] if m)


def test_axe_finds_exactly_the_violations_of_a_page_and_none_once_it_is_fixed(tmp_path):
    axe = _axe()
    from pure_utils.book.browser import _view_dom

    page = tmp_path / "p.html"
    page.write_text(AXE_PAGE)
    light = page_problems(_view_dom(page, 1280, "light", None, axe), executed=False)
    assert _rules(light) == ["button-name", "image-alt"] and len(light) == 2, light
    assert any(p.startswith("axe: image-alt (critical), 1 element, e.g. ") and "img" in p for p in light), light
    dark = axe_problems(_view_dom(page, 390, "dark", None, axe))
    assert _rules(dark) == ["button-name", "color-contrast", "image-alt"] and len(dark) == 3, dark
    page.write_text(FIXED)
    for width, theme in [(1280, "light"), (390, "dark")]:
        assert page_problems(_view_dom(page, width, theme, None, axe), executed=False) == []
    page.write_text(HANGS)
    assert axe_problems(_view_dom(page, 1280, "light", None, axe)) == [
        "axe did not finish (its run did not resolve before the page's DOM was read)"]
    assert [q.name for q in tmp_path.iterdir()] == ["p.html"]  # the probe's files are gone


def _marker(state, violations="[]", error=""):
    return _page("") + (f'<div id="pure-axe" hidden data-state="{state}" data-error="{error}" '
                        f"data-violations='{violations}'></div>")


def test_axe_problems_are_read_from_the_marker_in_the_dom(monkeypatch):
    found = ('[{"id": "image-alt", "impact": "critical", "nodes": 2, "target": "img.foo"},'
             ' {"id": "region", "impact": null, "nodes": 1, "target": "div"}]')
    assert axe_problems(_marker("done", found)) == [
        "axe: image-alt (critical), 2 elements, e.g. img.foo", "axe: region (no impact given), 1 element, e.g. div"]
    monkeypatch.setitem(AXE_IGNORED, "region", "a test's reason")
    assert axe_problems(_marker("done", found)) == ["axe: image-alt (critical), 2 elements, e.g. img.foo"]
    assert axe_problems(_marker("done")) == [] and axe_problems(_page("")) == []  # no marker: axe not run
    for state, what in [("waiting", "did not finish"), ("running", "did not finish"), ("missing", "did not load"),
                        ("error", "axe failed: boom")]:
        problems = page_problems(_marker(state, error="boom"), executed=False)
        assert len(problems) == 1 and what in problems[0], (state, problems)


def test_axe_is_pinned_in_the_makefile_found_by_version_and_never_ignores_the_rules_that_matter(tmp_path, monkeypatch):
    makefile = (browser.ROOT / "Makefile").read_text()
    assert re.search(r"^AXE_VERSION := (\S+)$", makefile, re.M).group(1) == AXE_VERSION
    assert not set(AXE_IGNORED) & {"image-alt", "document-title", "html-has-lang", "color-contrast",
                                   "button-name", "link-name", "heading-order"}
    assert all(reason.strip() for reason in AXE_IGNORED.values())
    monkeypatch.setattr(browser, "AXE_DIR", tmp_path)
    with pytest.raises(RenderError, match=f"missing.*npm install --no-save --prefix .cache/axe axe-core@{AXE_VERSION}"):
        axe_script()
    js = tmp_path / "node_modules" / "axe-core" / "axe.min.js"
    js.parent.mkdir(parents=True)
    js.write_text("window.axe = {};")
    (js.parent / "package.json").write_text('{"version": "0.0.1"}')
    with pytest.raises(RenderError, match="version 0.0.1"):
        axe_script()
    (js.parent / "package.json").write_text(f'{{"version": "{AXE_VERSION}"}}')
    assert axe_script() == js


def test_probed_page_injects_axe_and_its_marker_into_the_framed_copy_only(tmp_path):
    page = tmp_path / "p.html"
    page.write_text(_page("x"))
    fake = tmp_path / "axe.js"
    fake.write_text("var s = '</script>'; window.axe = {};")
    host = probed_page(page, "light", 1280, axe=fake)
    framed = (tmp_path / ".probe-p.html").read_text()
    assert framed.count('<div id="pure-axe" hidden data-state="waiting"') == 1 and "&quot;wcag2aa&quot;" in framed
    assert "var s = '<\\/script>'" in framed and "pure-axe" not in host.read_text()
    remove_probe(host)
    host = probed_page(page)  # without axe: neither its script nor its marker
    framed = (tmp_path / ".probe-p.html").read_text()
    assert '<div id="pure-axe" hidden' not in framed and "window.axe" not in framed
    remove_probe(host)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["axe.js", "p.html"]


def test_alt_texts_read_math_as_plain_text():
    from pure_utils.book.numbering import plain_math
    html = ('<figure class="align-default" id="fig-x"><img alt="../_images/x.png" src="x.png"/>'
            '<figcaption><p><span class="caption-number">Figure 2 </span><span class="caption-text">'
            'ARI at <span class="math notranslate nohighlight">\\(k = 2\\)</span> and '
            '<span class="math notranslate nohighlight">\\(L-1 \\times n_{\\mathrm{ref}}\\)</span>'
            '</span></p></figcaption></figure>')
    out = figure_alt_texts(html)
    assert 'alt="Figure 2: ARI at k = 2 and L-1 × nref"' in out and "\\(" not in out.split("src")[0]
    assert plain_math("\\(a \\leq b\\)") == "a ≤ b" and plain_math("$x_i$") == "xi"
    assert plain_math("\\(\\ell\\)") == "ℓ" and plain_math("plain") == "plain"


def test_bibliography_entries_become_list_items():
    from pure_utils.book.numbering import citation_roles
    html = ('<div class="citation-list" role="list"><div class="citation" id="id3" '
            'role="doc-biblioentry"><span class="label">1</span></div></div>')
    out = citation_roles(html)
    assert 'role="listitem"' in out and "doc-biblioentry" not in out and 'role="list"' in out
    assert citation_roles(out) == out
