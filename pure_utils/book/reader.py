"""A rerun that shows its results: glued numbers and figures put back into the text.

The chapters keep their numbers and figures out of sight (glued with ``display=False``) and name
them in their Markdown (``{glue:text}`` roles, ``{glue:figure}`` directives), which Jupyter Book
fills in. Opened in Jupyter, a notebook executed by papermill therefore shows neither. For a
rerun (``python -m pure_utils.book run``, ``... show``), :func:`reader_notebook` writes the values
into the Markdown cells and attaches every glued image to the cell that shows it, with its
caption ("Figure 2: ..."; references to it read the same), and :func:`notebook_html` renders that
copy as one standalone HTML page (images inlined, no network; equations through the MathJax
copy of the book when the checkout has it). The book's own executed copies are left as they are.
"""
from __future__ import annotations

import ast
import copy
import html
import json
import re
from pathlib import Path

from markdown_it import MarkdownIt  # markdown-it-py and its plugins: installed with Jupyter Book
from mdit_py_plugins.dollarmath import dollarmath_plugin

from .numbering import FIGURE_SCHEMES, figure_label
from ..paths import ROOT

__all__ = ["glued_outputs", "glue_text", "figure_labels", "reader_notebook", "notebook_html",
           "write_reader_copy"]

#: where the book's executed chapters are, as :data:`~pure_utils.book.numbering.FIGURE_SCHEMES` names them
EXECUTED_PAGES = "book/executed"
#: the mime prefix of outputs glued with ``display=False``
RECORD_PREFIX = "application/papermill.record/"
_IMAGES = ("image/png", "image/jpeg", "image/svg+xml")
_ROLE = re.compile(r"\{([a-z:]+)\}`([^`]*)`")
_GLUE_FIGURE = re.compile(r"^(`{3,}|:{3,})\{glue(?::figure)?\}[ \t]*(\S+)[ \t]*\n(.*?)^\1[ \t]*$",
                          re.M | re.S)
_COLON_DIRECTIVE = re.compile(r"^(:{3,})\{([a-z-]+)\}[ \t]*(.*?)\n(.*?)^\1[ \t]*$", re.M | re.S)
_OPTION = re.compile(r"^:([a-z_-]+):[ \t]*(.*)$", re.M)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: the rerun box's link to the book's copy of the chapter: no such file beside a rerun
_DOWNLOAD_LINE = re.compile(r"^\{download\}`[^`]*`[ \t]*\n?", re.M)


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def glued_outputs(nb: dict) -> dict[str, dict]:
    """``{key: {mime: data}}`` of every glued output of an executed notebook (prefix stripped)."""
    out = {}
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            record = o.get("metadata", {}).get("scrapbook", {})
            if "name" in record:
                prefix, data = record.get("mime_prefix", ""), o.get("data", {})
                glued = {k: _text(v) for k, v in data.items() if not (prefix and k.startswith(prefix))}
                # the glued value itself wins over a displayed copy of the same type
                glued.update({k[len(prefix):]: _text(v) for k, v in data.items()
                              if prefix and k.startswith(prefix)})
                out[record["name"]] = glued
    return out


def glue_text(data: dict, fmt: str | None = None) -> str:
    """A glued value as ``{glue:text}`` shows it: ``text/plain`` without a string's quotes,
    formatted with ``fmt`` (``.2f``, ``s``) when one is given."""
    text = data.get("text/plain", "")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if fmt:
        try:
            return format(value, fmt)
        except (TypeError, ValueError):
            pass
    return value if isinstance(value, str) else text


def _other_chapter(path: str, key: str, fmt: str | None, executed_dir: Path) -> str:
    """``{glue:text}`path::key``` from another executed chapter of the book, when it is there."""
    for candidate in (executed_dir / Path(path).name, executed_dir.parent / path):
        if candidate.exists():
            data = glued_outputs(json.loads(candidate.read_text())).get(key)
            if data is not None:
                return glue_text(data, fmt)
    return f"(`{key}` of {Path(path).stem}, not executed here)"


def _glue_role(content: str, glued: dict, executed_dir: Path) -> str:
    path, _, rest = content.rpartition("::")
    key, _, fmt = rest.partition(":")
    if path:
        return _other_chapter(path, key, fmt or None, executed_dir)
    if key not in glued:
        return f"(`{key}`: not glued)"
    return glue_text(glued[key], fmt or None)


def _role(match, glued: dict, labels: dict, executed_dir: Path) -> str:
    """The text a reader sees for one MyST role."""
    role, content = match.group(1), match.group(2)
    title, target = content, content
    link = re.fullmatch(r"(.*?)\s*<([^>]+)>", content, re.S)
    if link:
        title, target = link.group(1), link.group(2)
    if role in ("glue", "glue:text"):
        return _glue_role(content, glued, executed_dir)
    if role == "numref":
        name = labels.get(target)
        if link and "%s" in title:
            return title.replace("%s", name.removeprefix("Figure ") if name else target)
        return name or f"figure `{target}`"
    if role == "cite":
        return "[" + ", ".join(k.strip() for k in content.split(",")) + "]"
    if role in ("doc", "download", "ref"):
        return title if link else f"`{Path(target).stem}`"
    return f"`{content}`" if role in ("code", "literal") else content


def _roles(text: str, glued: dict, labels: dict, executed_dir: Path) -> str:
    return _ROLE.sub(lambda m: _role(m, glued, labels, executed_dir), text)


def _figure(match, glued: dict, labels: dict, executed_dir: Path, attachments: dict) -> str:
    """A ``{glue:figure}`` directive as Markdown: the image (attached) and its caption."""
    key, body = match.group(2), match.group(3)
    options = dict(_OPTION.findall(body))
    caption = _roles(_OPTION.sub("", body).strip(), glued, labels, executed_dir)
    number = labels.get(options.get("name", key))
    caption = f"*{number}*: {caption}" if number else caption
    data = glued.get(key)
    if data is None:
        return f"(figure `{key}`: not glued)\n\n{caption}"
    mime = next((m for m in _IMAGES if m in data), None)
    if mime is not None:
        name = f"{key}.{mime.split('/')[1].split('+')[0]}"
        attachments[name] = {mime: data[mime]}
        alt = options.get("alt") or number or key
        return f"![{alt}](attachment:{name})\n\n{caption}"
    if "text/html" in data:
        return f"{data['text/html']}\n\n{caption}"
    return f"```\n{data.get('text/plain', '')}\n```\n\n{caption}"


def _colon_directive(match) -> str:
    """``:::{admonition} Title`` and ``:::{dropdown} Title`` blocks as Jupyter shows them."""
    name, title, body = match.group(2), match.group(3).strip(), _OPTION.sub("", match.group(4)).strip()
    if name == "dropdown":
        return f"<details><summary>{html.escape(title)}</summary>\n\n{body}\n\n</details>"
    return (f"**{title}**\n\n" if title else "") + body


def figure_labels(nb: dict, chapter: str | None = None) -> dict[str, str]:
    """``{label: "Figure 3b"}``: the page's glued figures in their order, numbered as the book
    numbers the chapter ``chapter`` (:func:`pure_utils.book.numbering.figure_label`), else
    "Figure 1", "Figure 2", ..."""
    page = f"{EXECUTED_PAGES}/{chapter}"
    labels = {}
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for m in _GLUE_FIGURE.finditer(_text(cell.get("source", ""))):
                label = dict(_OPTION.findall(m.group(3))).get("name", m.group(2))
                if label not in labels:
                    labels[label] = (figure_label(page, len(labels))
                                     if page in FIGURE_SCHEMES and len(labels) < 26
                                     else f"Figure {len(labels) + 1}")
    return labels


def reader_notebook(nb: dict, *, executed_dir: Path = ROOT / "book" / "executed",
                    chapter: str | None = None) -> dict:
    """A copy of an executed chapter that shows its glued numbers and figures in Jupyter.

    Every Markdown cell gets the values of its ``{glue:text}`` roles (a value of another
    chapter from ``executed_dir`` when the book has it), its ``{glue:figure}`` images as
    attachments with their numbered captions, ``{numref}`` as "Figure n", ``{cite}`` as
    ``[key]`` and the book's admonitions as plain Markdown. Figures are numbered as the book
    numbers chapter ``chapter`` (default: the stem of the notebook papermill ran, when it is a
    chapter of the book: "Figure 3", "Figure 3b"), else "Figure 1", "Figure 2", ... The glued outputs stay, so the
    values are still there for ``glue_values``.
    """
    nb = copy.deepcopy(nb)
    source = nb.get("metadata", {}).get("papermill", {}).get("input_path")
    chapter = chapter or (Path(source).stem if source else None)
    glued, labels = glued_outputs(nb), figure_labels(nb, chapter)
    for cell in nb["cells"]:
        if cell.get("cell_type") != "markdown":
            continue
        attachments = cell.setdefault("attachments", {})
        text = _GLUE_FIGURE.sub(lambda m: _figure(m, glued, labels, Path(executed_dir), attachments),
                                _DOWNLOAD_LINE.sub("", _text(cell["source"])))
        cell["source"] = _COLON_DIRECTIVE.sub(_colon_directive, _roles(text, glued, labels,
                                                                       Path(executed_dir)))
        if not attachments:
            del cell["attachments"]
    nb.setdefault("metadata", {})["pure_reader"] = {"figures": len(labels), "values": len(glued)}
    return nb


def _markdown_renderer():
    def math(content, options):
        left, right = ("\\[", "\\]") if options.get("display_mode") else ("\\(", "\\)")
        return html.escape(f"{left}{content}{right}")
    return MarkdownIt("commonmark", {"html": True}).enable("table").use(dollarmath_plugin,
                                                                       renderer=math)


def _output_html(o: dict) -> str:
    if o.get("output_type") == "stream":
        return f'<pre class="stream">{html.escape(_text(o.get("text", "")))}</pre>'
    if o.get("output_type") == "error":
        trace = _ANSI.sub("", "\n".join(o.get("traceback", [])))
        return f'<pre class="error">{html.escape(trace)}</pre>'
    data = o.get("data", {})
    for mime in _IMAGES[:2]:
        if mime in data:
            return f'<img alt="output" src="data:{mime};base64,{_text(data[mime]).strip()}">'
    if "image/svg+xml" in data:
        return _text(data["image/svg+xml"])
    if "text/html" in data:
        return _text(data["text/html"])
    if "text/plain" in data:
        return f"<pre>{html.escape(_text(data['text/plain']))}</pre>"
    return ""  # a glued value: shown where the text names it


_STYLE = """body{max-width:60rem;margin:2rem auto;padding:0 1rem;font:16px/1.5 system-ui,sans-serif}
img{max-width:100%}pre{overflow-x:auto;background:#f5f5f5;padding:.5rem}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem}
details.code{margin:.5rem 0;color:#444}pre.error{background:#fee}"""


def notebook_html(nb: dict, title: str = "notebook", *, mathjax: Path | None = None) -> str:
    """One standalone HTML page of a notebook (best after :func:`reader_notebook`): Markdown
    rendered with attached images inlined, code folded, outputs shown, glued outputs left out."""
    md, parts = _markdown_renderer(), []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            text = _text(cell.get("source", ""))
            for name, data in cell.get("attachments", {}).items():
                mime, payload = next(iter(data.items()))
                text = text.replace(f"attachment:{name}", f"data:{mime};base64,{_text(payload).strip()}")
            parts.append(md.render(text))
        elif cell.get("cell_type") == "code":
            parts.append(f'<details class="code"><summary>code</summary><pre><code>'
                         f'{html.escape(_text(cell.get("source", "")))}</code></pre></details>')
            parts.extend(_output_html(o) for o in cell.get("outputs", []))
    mathjax = mathjax if mathjax is not None else ROOT / "book" / "_static" / "mathjax" / "tex-svg.js"
    script = f'<script src="{Path(mathjax).resolve().as_uri()}"></script>' if Path(mathjax).exists() else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
            f'</title><style>{_STYLE}</style>{script}</head><body>\n' + "\n".join(parts)
            + "\n</body></html>\n")


def write_reader_copy(path: Path, *, html_page: bool = False) -> list[Path]:
    """Rewrite the executed notebook at ``path`` as :func:`reader_notebook`; with ``html_page``,
    also write :func:`notebook_html` of it to ``path`` with the suffix ``.html``. Returns the
    files written."""
    path = Path(path)
    nb = reader_notebook(json.loads(path.read_text()))
    path.write_text(json.dumps(nb, indent=1))
    written = [path]
    if html_page:
        page = path.with_suffix(".html")
        page.write_text(notebook_html(nb, title=path.stem))
        written.append(page)
    return written
