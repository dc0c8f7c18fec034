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
