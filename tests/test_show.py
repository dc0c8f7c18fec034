"""A rerun shows its results: the glued numbers and figures of an executed chapter are put into
its text (``book run``, ``book show``), and ``--html`` writes it as one page."""
import base64
import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from pure_utils.book import build as book
from pure_utils.book import cli, reader

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nnot really").decode()
TEXT = ("Gap {glue:text}`gap:.2f` on {glue:text}`model` ({numref}`fig-a`; {cite}`dreyer2024pure`), "
        "{glue:text}`missing`.")
FIGURE = "```{glue:figure} fig-a\n:name: fig-a\n\nCaption with {glue:text}`model`.\n```"


def _glued(name, data):
    prefix = reader.RECORD_PREFIX
    return {"output_type": "display_data", "metadata": {"scrapbook": {"name": name, "mime_prefix": prefix}},
            "data": {prefix + k: v for k, v in data.items()}}


def _executed():
    nb = new_notebook(cells=[new_markdown_cell("# T\n\n" + TEXT), new_code_cell("glue(...)"),
                             new_markdown_cell(FIGURE)])
    nb = json.loads(json.dumps(nb))
    nb["cells"][1]["outputs"] = [_glued("gap", {"text/plain": "0.123456"}),
                           _glued("model", {"text/plain": "'resnet 50'"}),
                           _glued("fig-a", {"text/plain": "<Figure>", "image/png": PNG}),
                           {"output_type": "stream", "name": "stdout", "text": "printed\n"}]
    return nb


def test_reader_copy_puts_values_and_figures_into_the_text(tmp_path):
    nb = _executed()
    out = reader.reader_notebook(nb, executed_dir=tmp_path)
    assert out["cells"][0]["source"] == ("# T\n\nGap 0.12 on resnet 50 (Figure 1; [dreyer2024pure]), "
                                         "(`missing`: not glued).")
    fig = out["cells"][2]
    assert fig["source"] == ("![Figure 1](attachment:fig-a.png)\n\n"
                             "*Figure 1*: Caption with resnet 50.")
    assert fig["attachments"] == {"fig-a.png": {"image/png": PNG}}
    assert nb["cells"][0]["source"].endswith("`missing`."), "the input is not changed"
    nbformat.validate(nbformat.reads(json.dumps(out), as_version=4))
    assert reader.glued_outputs(out).keys() == {"gap", "model", "fig-a"}


def test_html_page_inlines_figures_and_leaves_glue_records_out(tmp_path):
    page = reader.notebook_html(reader.reader_notebook(_executed(), executed_dir=tmp_path), "t",
                                mathjax=tmp_path / "none.js")
    assert f'src="data:image/png;base64,{PNG}"' in page and "Figure 1</em>: Caption with resnet 50." in page
    assert "printed" in page and "&lt;Figure&gt;" not in page and "{glue" not in page


def test_admonitions_of_the_book_read_as_markdown():
    nb = new_notebook(cells=[new_markdown_cell(":::{dropdown} Rerun this chapter\n\nrun it\n\n"
                                               "{download}`Download this executed notebook <t.ipynb>`\n:::\n\n"
                                               ":::{admonition} Knobs\n:class: note\n\nk = 2\n:::")])
    text = reader.reader_notebook(json.loads(json.dumps(nb)))["cells"][0]["source"]
    assert text == ("<details><summary>Rerun this chapter</summary>\n\nrun it\n\n</details>\n\n"
                    "**Knobs**\n\nk = 2")


@pytest.mark.slow
def test_book_run_html_shows_glued_numbers_and_figures(tmp_path, monkeypatch, capsys):
    code = ('from myst_nb import glue\nimport matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n'
            'ax.plot([1, 2])\nglue("fig-a", fig, display=False)\nplt.close(fig)\n'
            'glue("gap", 0.123456, display=False)\nglue("model", "resnet 50", display=False)')
    p = new_code_cell('profile = "offline"  # profile')
    p.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[new_markdown_cell("# T\n\n" + TEXT), p, new_code_cell(code),
                             new_markdown_cell(FIGURE)])
    nb.metadata["kernelspec"] = {"name": book.KERNEL_NAME, "display_name": "pure", "language": "python"}
    nbformat.write(nb, tmp_path / "t.ipynb")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "t.ipynb", "out.ipynb", "--html"]) == 0
    assert "as one page:" in capsys.readouterr().out
    out = json.loads(Path("out.ipynb").read_text())
    assert out["cells"][0]["source"].startswith("# T\n\nGap 0.12 on resnet 50 (Figure 1;")
    figure = next(c for c in out["cells"] if "attachments" in c)
    assert list(figure["attachments"]["fig-a.png"]) == ["image/png"]
    page = Path("out.html").read_text()
    assert "data:image/png;base64," in page and "Caption with resnet 50." in page
    assert cli.main(["show", "out.ipynb"]) == 0  # idempotent: nothing left to substitute
    assert json.loads(Path("out.ipynb").read_text())["cells"][0]["source"] == out["cells"][0]["source"]


def test_figures_are_numbered_as_the_book_numbers_the_chapter(tmp_path):
    nb = _executed()
    nb["cells"].append({"cell_type": "markdown", "metadata": {},
                        "source": FIGURE.replace("fig-a", "fig-b").replace("Caption", "Second")})
    nb["cells"][1]["outputs"].append(_glued("fig-b", {"image/png": PNG}))
    nb["metadata"]["papermill"] = {"input_path": "notebooks/fig3_polysemanticity.ipynb"}
    out = reader.reader_notebook(nb, executed_dir=tmp_path)
    assert "(Figure 3; [dreyer2024pure])" in out["cells"][0]["source"]
    assert out["cells"][2]["source"].endswith("*Figure 3*: Caption with resnet 50.")
    assert out["cells"][3]["source"].startswith("![Figure 3b](attachment:fig-b.png)")
    other = reader.reader_notebook(nb, executed_dir=tmp_path, chapter="setting")
    assert other["cells"][3]["source"].endswith("*Figure S.2*: Second with resnet 50.")
