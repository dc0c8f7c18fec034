"""Figure numbers as the paper has them, set on the built HTML after Jupyter Book wrote it.

Sphinx numbers the figures across the whole book ("Fig. 10" for the paper's Figure 3). This
post-build step renumbers them per chapter, by the scheme of :data:`FIGURE_SCHEMES` (the one
place that says which chapter gets which numbers):

- the paper's figure chapters show the paper's number: "Figure 3"; a second, third ... figure
  of the same chapter gets a letter: "Figure 3b", "Figure 3c";
- the appendix chapters likewise: "Figure A.1", "Figure A.1b", ...;
- every other chapter numbers its own figures from 1 under its own prefix: "Figure S.1",
  "Figure S.2" (the setting), "Figure R.1" (results), "Figure B1.1" (beyond: ground truth) ...

Both the captions (``<span class="caption-number">``) and the cross-references to them
(``{numref}`` links, ``<span class="std std-numref">``) in every page are rewritten, so a
reference always reads like the caption it points to. A figure on a page without a scheme is an
error (:class:`NumberingError`), not left with its book-wide number.

A figure's image whose alt text is its file name (what Sphinx writes for a glued figure) gets
its caption as alt text (:func:`figure_alt_texts`): a screen reader reads the caption, not a hash.
:func:`finish_pages` does both; the build calls it once the HTML is written.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path

import html as htmllib

from bs4 import BeautifulSoup

__all__ = ["FIGURE_SCHEMES", "NumberingError", "figure_label", "page_key", "page_figures",
           "number_figures", "figure_alt_texts", "finish_pages", "plain_math", "citation_roles"]

#: page (path under the HTML root, without ``.html``) -> (prefix, style). ``"paper"``: the
#: first figure is "Figure <prefix>", later ones add a letter ("Figure 3b"); ``"own"``: the
#: figures are "Figure <prefix>1", "Figure <prefix>2", ...
FIGURE_SCHEMES = {
    "book/executed/fig1_virtual_neurons": ("1", "paper"),
    "book/executed/fig2_method": ("2", "paper"),
    "book/executed/fig3_polysemanticity": ("3", "paper"),
    "book/executed/fig4_evaluation": ("4", "paper"),
    "book/executed/appendix_a1_crops": ("A.1", "paper"),
    "book/executed/appendix_a2_examples": ("A.2", "paper"),
    "book/executed/appendix_a4_more": ("A.4", "paper"),
    "book/intro": ("I.", "own"),
    "book/method": ("M.", "own"),
    "book/executed/setting": ("S.", "own"),
    "book/executed/results": ("R.", "own"),
    "book/executed/beyond_ground_truth": ("B1.", "own"),
    "book/executed/beyond_family": ("B2.", "own"),
    "book/executed/beyond_architectures": ("B3.", "own"),
    "book/executed/beyond_ablations": ("B4.", "own"),
    "book/reproduce": ("U1.", "own"),
    "book/execution": ("U2.", "own"),
}

_FIGURE_IMG = re.compile(r'(<figure\b[^>]*\bid="([^"]+)"[^>]*>\s*<img alt=")([^"]*)(")')
_CAPTION = re.compile(r'(<span class="caption-number">)Fig\. (\d+)( </span>)')
_NUMREF = re.compile(r'(<a\b[^>]*?href="([^"]*)"[^>]*>\s*<span class="std std-numref">)Fig\. (\d+)(</span>)')


class NumberingError(ValueError):
    """A figure the scheme cannot number; the message names the page."""


def figure_label(page: str, index: int) -> str:
    """The label of the ``index``-th (0-based) figure of ``page`` (a key of
    :data:`FIGURE_SCHEMES`): ``figure_label("book/executed/fig3_polysemanticity", 1)`` is
    ``"Figure 3b"``; ``figure_label("book/executed/setting", 1)`` is ``"Figure S.2"``."""
    if page not in FIGURE_SCHEMES:
        raise NumberingError(f"no figure numbering for page {page!r}: add it to FIGURE_SCHEMES "
                             f"(pages with one: {', '.join(sorted(FIGURE_SCHEMES))})")
    if index < 0 or index >= 26:
        raise NumberingError(f"figure index {index} of {page!r}: 0 to 25 are numbered")
    prefix, style = FIGURE_SCHEMES[page]
    if style == "paper":
        return f"Figure {prefix}" + ("" if index == 0 else "abcdefghijklmnopqrstuvwxyz"[index])
    return f"Figure {prefix}{index + 1}"


def page_key(html_root: Path, page: Path) -> str:
    """``page``'s key in :data:`FIGURE_SCHEMES`: its path under ``html_root`` without ``.html``."""
    return Path(page).resolve().relative_to(Path(html_root).resolve()).as_posix().removesuffix(".html")


def page_figures(html: str) -> list[tuple[str, str]]:
    """The numbered figures of a page in document order: ``[(figure id, caption number)]``
    (the caption number as written, e.g. ``"Fig. 10"``, with the trailing space stripped)."""
    soup = BeautifulSoup(html, "html.parser")
    out = []
    for span in soup.select("span.caption-number"):
        holder = span.find_parent(["figure", "div"], id=True) or span.find_parent(id=True)
        if holder is not None and holder.find_parent("table") is None and span.find_parent("table") is None:
            out.append((str(holder.get("id", "")), span.get_text().strip()))
    return out


def _labels(html_root: Path, pages: list[Path]) -> dict[tuple[str, str], str]:
    """(page key, Sphinx's number) -> the scheme's label, for every figure of ``pages``."""
    labels = {}
    for page in pages:
        figures = [(fid, num) for fid, num in page_figures(page.read_text(errors="replace"))
                   if re.fullmatch(r"Fig\. \d+", num)]
        key = page_key(html_root, page)
        for index, (_, number) in enumerate(figures):
            labels[(key, number.removeprefix("Fig. "))] = figure_label(key, index)
    return labels


def _rewrite(html: str, key: str, labels: dict) -> str:
    """``html`` of page ``key`` with its caption numbers and numref link texts relabelled."""
    def caption(m):
        return m.group(1) + labels[(key, m.group(2))] + m.group(3)

    def numref(m):
        target = m.group(2).split("#")[0]
        target_key = (posixpath.normpath(posixpath.join(posixpath.dirname(key), target)).removesuffix(".html")
                      if target else key)
        label = labels.get((target_key, m.group(3)))
        if label is None:
            raise NumberingError(f"{key}.html: a reference to Fig. {m.group(3)} on {target_key} "
                                 "whose figure was not found")
        return m.group(1) + label + m.group(4)

    return _NUMREF.sub(numref, _CAPTION.sub(caption, html))


def number_figures(html_root: Path) -> dict[str, list[str]]:
    """Renumber the figures of the built book under ``html_root`` in place (idempotent).

    Returns
    -------
    dict
        Page key -> its figures' labels in order (pages with figures only).
    """
    html_root = Path(html_root)
    if not html_root.is_dir():
        raise NumberingError(f"{html_root} is not a built book's HTML folder")
    pages = sorted(p for p in html_root.rglob("*.html") if "_static" not in p.parts
                   and "_sources" not in p.parts)
    labels = _labels(html_root, pages)
    for page in pages:
        text = page.read_text(errors="replace")
        new = _rewrite(text, page_key(html_root, page), labels)
        if new != text:
            page.write_text(new)
    out: dict[str, list[str]] = {}
    for (key, _), label in sorted(labels.items(), key=lambda kv: (kv[0][0], int(kv[0][1]))):
        out.setdefault(key, []).append(label)
    return out


#: TeX commands of the captions and what a screen reader should hear instead.
_TEX_WORDS = {r"\times": "×", r"\leq": "≤", r"\le": "≤", r"\geq": "≥", r"\ge": "≥",
              r"\neq": "≠", r"\approx": "≈", r"\pm": "±", r"\cdot": "·", r"\in": "∈",
              r"\to": "→", r"\rightarrow": "→", r"\ell": "ℓ", r"\%": "%", r"\,": " ",
              r"\ ": " ", r"\;": " "}


def plain_math(tex: str) -> str:
    """Inline TeX as plain text for an alt text: ``\\(k = 2\\)`` -> ``k = 2``,
    ``\\(L-1 \\times n\\)`` -> ``L-1 × n``; other commands lose their backslash
    (``\\mathrm{ARI}`` -> ``ARI``), braces and sub/superscript marks go."""
    text = tex.strip()
    for opening, closing in (("\\(", "\\)"), ("\\[", "\\]"), ("$$", "$$"), ("$", "$")):
        if text.startswith(opening) and text.endswith(closing) and len(text) >= len(opening) + len(closing):
            text = text[len(opening):len(text) - len(closing)]
            break
    for command in sorted(_TEX_WORDS, key=len, reverse=True):
        text = re.sub(re.escape(command) + r"(?![A-Za-z])", _TEX_WORDS[command], text)
    text = re.sub(r"\\(?:mathrm|text|mathbf|mathit|operatorname)\s*", "", text)
    text = re.sub(r"\\([A-Za-z]+)", r"\1", text)
    text = re.sub(r"[\^_](?=\w)", "", re.sub(r"[{}]", "", text))
    return " ".join(text.split())


def _caption_texts(html: str) -> dict[str, str]:
    """Figure id -> its caption's text with its number ("Figure 3: Channels #8 ...")."""
    out = {}
    for figure in BeautifulSoup(html, "html.parser").find_all("figure", id=True):
        caption = figure.find("figcaption")
        if caption is None:
            continue
        for link in caption.select("a.headerlink"):
            link.extract()
        number = caption.select_one(".caption-number")
        label = number.get_text().strip() if number else ""
        if number:
            number.extract()
        for math in caption.select(".math"):
            math.replace_with(plain_math(math.get_text()))
        text = " ".join(caption.get_text(" ").split())
        out[str(figure["id"])] = f"{label}: {text}" if label else text
    return out


def figure_alt_texts(html: str) -> str:
    """``html`` with each figure image's alt text that is empty or a file name (Sphinx writes
    the image's path) replaced by the figure's caption."""
    captions = _caption_texts(html)

    def alt(m):
        old = htmllib.unescape(m.group(3)).strip()
        if old and not re.search(r"\.(png|jpe?g|svg|gif|webp)$", old, re.I):
            return m.group(0)
        text = captions.get(m.group(2))
        return m.group(0) if not text else m.group(1) + htmllib.escape(text, quote=True) + m.group(4)

    return _FIGURE_IMG.sub(alt, html)


def citation_roles(html: str) -> str:
    """``html`` with the bibliography's entries as list items: docutils writes each citation of
    a ``role="list"`` box with the ``doc-biblioentry`` role, deprecated in ARIA and not an item
    of a list, so a screen reader (and axe-core) finds a list without items."""
    return html.replace('role="doc-biblioentry"', 'role="listitem"')


def finish_pages(html_root: Path) -> dict[str, list[str]]:
    """The post-build step: :func:`number_figures`, then :func:`figure_alt_texts` and
    :func:`citation_roles` on every page of ``html_root`` (so the alt texts carry the paper's
    numbers). Returns what
    :func:`number_figures` returns."""
    labels = number_figures(html_root)
    for page in Path(html_root).rglob("*.html"):
        if "_static" in page.parts or "_sources" in page.parts:
            continue
        text = page.read_text(errors="replace")
        new = citation_roles(figure_alt_texts(text))
        if new != text:
            page.write_text(new)
    return labels
