"""The rendering check of the built book: its pages in headless Chromium.

A page that renders blank, or an interactive figure whose scripts do not draw it, fails the
check (``python -m pure_utils.book screenshots``, ``make screenshots``).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from bs4 import BeautifulSoup
from PIL import Image

__all__ = ["SCREENSHOT_PAGES", "INTERACTIVE_PAGE", "RenderError", "ensure_chromium", "screenshot",
           "rendered_dom", "blank_fraction", "check_rendering", "page_problems", "check_book"]

#: pages of the built book that the rendering check screenshots, and the page with the
#: interactive (plotly) figure
SCREENSHOT_PAGES = ["book/intro.html", "book/executed/fig3_polysemanticity.html"]
INTERACTIVE_PAGE = "book/executed/fig2_method.html"


class RenderError(RuntimeError):
    """A page does not render; the message names it."""


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--virtual-time-budget=15000"]


def ensure_chromium() -> str:
    """Path of a Chromium binary; installs Debian's ``chromium`` package when missing (as root)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        path = shutil.which("chromium")
        if path:
            return path
    raise RenderError("Chromium is needed for the rendered-page check: install Debian's 'chromium' "
                    "package (apt-get install chromium) or put chromium on PATH")


def screenshot(page: Path, png: Path, *, width: int = 1280, height: int = 1600,
               dark: bool = False) -> Path:
    """Render ``page`` in headless Chromium and save a PNG screenshot (``dark``: with the
    system's dark colour scheme, which the book's theme follows)."""
    chromium = ensure_chromium()
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, *(["--force-dark-mode"] if dark else []),
                        f"--user-data-dir={profile}",
                        f"--window-size={width},{height}", f"--screenshot={png}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=180)
    if not png.exists():
        raise RenderError(f"Chromium wrote no screenshot of {page}")
    return png


def rendered_dom(page: Path) -> str:
    """The page's DOM after its scripts ran in headless Chromium."""
    chromium = ensure_chromium()
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                               page.resolve().as_uri()], check=True, capture_output=True, text=True,
                              timeout=180)
    return proc.stdout


def blank_fraction(png: Path) -> float:
    """Fraction of the screenshot's pixels that equal its most common colour."""
    px = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    _, counts = np.unique(px, axis=0, return_counts=True)
    return float(counts.max() / len(px))


def check_rendering(pages: dict[str, Path], out_dir: Path, *, interactive: Path | None = None,
                    max_blank: float = 0.99) -> dict[str, float]:
    """Screenshot each page and fail if one is blank; check the interactive figure renders.

    Parameters
    ----------
    pages : dict
        Label -> HTML page.
    interactive : Path, optional
        A page with a plotly figure: its scripts must turn the figure into an SVG plot.
    max_blank : float
        A page whose most common colour covers more than this fraction counts as blank.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {}
    for label, page in pages.items():
        png = screenshot(page, out_dir / f"{label}.png")
        result[label] = blank_fraction(png)
        if result[label] > max_blank:
            raise RenderError(f"page {page} renders blank in Chromium ({result[label]:.1%} one colour; {png})")
    if interactive is not None:
        dom = rendered_dom(interactive)
        if "main-svg" not in dom or "hovertext" not in dom and "hoverlayer" not in dom:
            raise RenderError(f"the interactive figure on {interactive} did not render in Chromium "
                            "(no plotly SVG in the page after its scripts ran)")
    return result


# --------------------------------------------------------------------------------------------
# what a reader sees: the checks of every rendered page
# --------------------------------------------------------------------------------------------
_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\begin\{|\\frac|\\rho|\\text\{")
_DECIMAL = re.compile(r"(?<![\w.])-?\d*\.\d+(?:e-?\d+)?(?![\w.])")


def _significant_digits(token: str) -> int:
    mantissa = token.lower().split("e")[0].lstrip("-").replace(".", "").lstrip("0")
    return len(mantissa)


def _content(soup):
    """The page's own content: the theme's article, without the header around it (launch,
    download and full-screen buttons with their icons)."""
    main = soup.find("main") or soup.find(attrs={"role": "main"}) or soup
    return main.find("article") or main


def page_problems(dom: str, *, executed: bool) -> list[str]:
    """What a reader would see wrong on a rendered page (its DOM after the scripts ran).

    - raw TeX in the visible text (math that MathJax did not render), or math containers left
      unrendered;
    - on an executed chapter: code visible without clicking its toggle, a figure image without a
      numbered caption, text written to stderr (a warning), no rerun box;
    - a table with an index column (an empty first header) or a decimal number with more than 4
      significant digits.
    """
    soup = BeautifulSoup(dom, "html.parser")
    main = _content(soup)
    problems = []
    for tag in main.find_all(["script", "style", "mjx-container", "pre", "code", "svg"]):
        tag.extract()
    visible = main.get_text(" ")
    raw = sorted(set(_TEX.findall(visible)))
    if raw:
        problems.append(f"raw TeX in the text: {', '.join(raw)}")
    main = _content(BeautifulSoup(dom, "html.parser"))
    if main.select("span.math, div.math") and not main.find("mjx-container"):
        problems.append("equations were not rendered (no MathJax output)")
    if executed:
        for cell in main.select("div.cell_input"):
            if cell.find_parent("details") is None:
                problems.append("code visible without a toggle")
                break
        for img in main.find_all("img"):
            if str(img.get("id", "")).endswith("-thumb"):
                continue  # the hover image of the interactive figure
            figure = img.find_parent("figure")
            number = figure.select_one(".caption-number") if figure else None
            if number is None:
                problems.append(f"an image without a numbered caption ({str(img.get('src', ''))[:40]})")
                break
        if main.select("div.output.stderr"):
            problems.append("a warning or error text shown (stderr output)")
        if "Rerun this chapter" not in main.get_text(" "):
            problems.append("no rerun box")
    for table in main.find_all("table"):
        headers = [th.get_text(strip=True) for th in table.select("thead th")]
        if headers and headers[0] == "" and len(headers) > 1:
            problems.append("a table with an index column")
        for cell in table.find_all("td"):
            for token in _DECIMAL.findall(cell.get_text(" ")):
                if _significant_digits(token) > 4:
                    problems.append(f"a table number with more than 4 significant digits: {token}")
                    break
    return problems


def check_book(html_dir: Path, pages: list, executed: set) -> dict[str, list[str]]:
    """:func:`page_problems` of every page of the built book (``pages``: paths under
    ``html_dir``; ``executed``: those that are executed chapters). Returns page -> problems."""
    out = {}
    for page in pages:
        problems = page_problems(rendered_dom(Path(html_dir) / page), executed=page in executed)
        if problems:
            out[str(page)] = problems
    return out
