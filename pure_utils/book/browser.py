"""The rendering check of the built book: its pages in headless Chromium.

A page that renders blank, or an interactive figure whose scripts do not draw it, fails the
check (``python -m pure_utils.book screenshots``, ``make screenshots``). So does any page that a
reader would see wrong (:func:`check_book`), rendered at each of :data:`VIEWS` (a laptop and a
phone width, the theme's light and dark mode): raw TeX, unfolded code, an element wider than the
article column without its own scroll box, a table cell clipped, a figure number that is not the
chapter's (:mod:`.numbering`), an image without alt text; and every violation of the WCAG 2 A
and AA rules (:data:`AXE_OPTIONS`, colour contrast included, in both themes) that axe-core, the
accessibility checker, finds in the page (:func:`axe_problems`), but for the rules of
:data:`AXE_IGNORED`.

axe-core :data:`AXE_VERSION` comes from npm: ``make screenshots`` installs it before the check
(:data:`AXE_INSTALL`, into ``.cache/axe``; skipped when that version is there) and the check
reads ``axe.min.js`` from there (:func:`axe_script`); nothing is downloaded while it runs. Its
script goes into the framed copy of each page with the layout probe (:func:`probed_page`), runs
after the probe, and writes its violations into the page's DOM, which Chromium's ``--dump-dom``
returns; a run whose promise did not resolve within Chromium's virtual time is a problem too.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import json

import numpy as np
from bs4 import BeautifulSoup
from PIL import Image

from ..paths import ROOT
from .numbering import FIGURE_SCHEMES, figure_label, page_figures

__all__ = ["SCREENSHOT_PAGES", "INTERACTIVE_PAGE", "RenderError", "ensure_chromium", "screenshot",
           "rendered_dom", "blank_fraction", "check_rendering", "page_problems", "check_book",
           "VIEWS", "probed_page", "remove_probe", "layout_problems", "figure_problems",
           "AXE_VERSION", "AXE_DIR", "AXE_INSTALL", "AXE_OPTIONS", "AXE_IGNORED", "axe_script",
           "axe_problems"]

#: pages of the built book that the rendering check screenshots, and the page with the
#: interactive (plotly) figure
SCREENSHOT_PAGES = ["book/intro.html", "book/executed/fig3_polysemanticity.html"]
INTERACTIVE_PAGE = "book/executed/fig2_method.html"
#: the views every page is checked in: (window width in px, theme)
VIEWS = [(1280, "light"), (1280, "dark"), (390, "light"), (390, "dark")]
_PROBE = Path(__file__).with_name("layout_probe.js")

#: axe-core, the accessibility checker run in every page: the version, where ``make screenshots``
#: installs it (npm, before the check) and the command that installs it
AXE_VERSION = "4.14.1"
AXE_DIR = ROOT / ".cache" / "axe"
AXE_INSTALL = f"npm install --no-save --prefix .cache/axe axe-core@{AXE_VERSION}"
#: the options of ``axe.run``: the rules of WCAG 2 levels A and AA (color-contrast among them)
AXE_OPTIONS = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa"]}, "resultTypes": ["violations"]}
#: axe rules not counted as problems, each with its reason: only a rule that fails on the theme's
#: own markup, which the book cannot change (never image-alt, document-title, html-has-lang,
#: color-contrast: the book's own content can break them)
AXE_IGNORED: dict[str, str] = {}


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


def axe_script() -> Path:
    """``axe.min.js`` of axe-core :data:`AXE_VERSION`, where ``make screenshots`` installs it
    (:data:`AXE_DIR`); a :class:`RenderError` naming the install command when it is not there."""
    path = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
    meta = path.with_name("package.json")
    version = json.loads(meta.read_text()).get("version") if meta.exists() else None
    if not path.exists() or version != AXE_VERSION:
        found = f"version {version}" if path.exists() else "missing"
        raise RenderError(f"axe-core {AXE_VERSION} is needed for the accessibility check ({path}: {found}): "
                          f"run `make axe` or, in {ROOT}, `{AXE_INSTALL}`")
    return path


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


def rendered_dom(page: Path, *, width: int | None = None, height: int = 1600) -> str:
    """The page's DOM after its scripts ran in headless Chromium (``width``: the window's, in
    px; Chromium's default when None)."""
    chromium = ensure_chromium()
    size = [f"--window-size={width},{height}"] if width else []
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *size, "--dump-dom",
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


def probed_page(page: Path, theme: str = "light", width: int = 1280, height: int = 1600, *,
                axe: Path | None = None) -> Path:
    """A host page beside ``page`` that shows it in a frame ``width`` px wide (Chromium's
    headless window is at least 500 px wide: a phone's width needs the frame), opened in the
    theme's ``theme`` mode (``"light"`` or ``"dark"``: the pydata theme's stored choice) and
    running the layout probe (``layout_probe.js``), whose result the host page keeps in its DOM.
    With ``axe`` (``axe.min.js``, :func:`axe_script`) the framed copy also holds axe-core and
    the marker ``<div id="pure-axe">`` (with :data:`AXE_OPTIONS`) that the probe fills with axe's
    violations (:func:`axe_problems`).
    Both files lie beside ``page`` (so that its links and images resolve): the host is
    ``.probe-host-NAME``, the framed copy ``.probe-NAME``; :func:`remove_probe` deletes them."""
    if theme not in ("light", "dark"):
        raise ValueError(f"theme {theme!r}: 'light' or 'dark'")
    page = Path(page)
    text = page.read_text(errors="replace")
    if "<head>" not in text or "</body>" not in text:
        raise RenderError(f"{page}: not an HTML page with <head> and </body>")
    head = ("<script>try { localStorage.setItem('mode', '%s'); localStorage.setItem('theme', '%s'); }"
            " catch (e) {}</script>" % (theme, theme))
    probe = f"<script>{_PROBE.read_text()}</script>"
    if axe is not None:  # the marker first: a page where axe's script fails still shows it
        options = json.dumps(AXE_OPTIONS).replace("&", "&amp;").replace('"', "&quot;")
        script = Path(axe).read_text().replace("</script", "<\\/script")
        probe = (f'<div id="pure-axe" hidden data-state="waiting" data-options="{options}"></div>'
                 f'<script id="pure-axe-script">{script}</script>' + probe)
    framed = page.with_name(f".probe-{page.name}")
    framed.write_text(text.replace("<head>", "<head>" + head, 1).replace("</body>", probe + "</body>", 1))
    host = page.with_name(f".probe-host-{page.name}")
    host.write_text(_HOST.format(src=framed.name, width=width, height=height))
    return host


def remove_probe(host: Path) -> None:
    """Delete a :func:`probed_page` host page and its framed copy."""
    host = Path(host)
    host.with_name(host.name.replace(".probe-host-", ".probe-", 1)).unlink(missing_ok=True)
    host.unlink(missing_ok=True)


_HOST = """<!DOCTYPE html><html><head><meta charset="utf-8"><style>body {{ margin: 0; }}
iframe {{ border: 0; display: block; }}</style></head><body>
<iframe src="{src}" width="{width}" height="{height}"></iframe>
<script>window.addEventListener("message", function (e) {{
  var r = e.data && e.data.pureLayoutProbe; if (!r) return;
  var old = document.getElementById("pure-layout-probe"); if (old) old.remove();
  var d = document.createElement("div"); d.id = "pure-layout-probe"; d.hidden = true;
  d.setAttribute("data-problems", JSON.stringify(r.problems));
  d.setAttribute("data-theme", r.theme); d.setAttribute("data-width", String(r.width));
  var t = document.createElement("textarea"); t.id = "pure-framed-dom"; t.textContent = r.dom;
  d.appendChild(t); document.body.appendChild(d); }});</script></body></html>
"""


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


def layout_problems(dom: str) -> list[str]:
    """What the layout probe found on a rendered page (``[]`` when the DOM holds no probe
    result): elements wider than the article column without their own scroll box, content
    clipped by ``overflow: hidden``, a page that scrolls sideways."""
    probe = BeautifulSoup(dom, "html.parser").find(id="pure-layout-probe")
    return [] if probe is None else list(json.loads(probe.get("data-problems", "[]")))


def axe_problems(dom: str) -> list[str]:
    """What axe-core found on a rendered page (``[]`` when the DOM holds no axe marker, i.e. axe
    was not injected): each violation of a rule not in :data:`AXE_IGNORED`, as ``"axe: image-alt
    (critical), 2 elements, e.g. img.foo"``, or that axe did not load, failed or did not finish."""
    mark = BeautifulSoup(dom, "html.parser").find(id="pure-axe")
    if mark is None:
        return []
    state = mark.get("data-state")
    if state == "missing":
        return ["axe did not load (its script failed in the page)"]
    if state == "error":
        return [f"axe failed: {mark.get('data-error', '')}"]
    if state != "done":
        return ["axe did not finish (its run did not resolve before the page's DOM was read)"]
    problems = []
    for rule in json.loads(mark.get("data-violations", "[]")):
        if rule["id"] in AXE_IGNORED:
            continue
        n = rule["nodes"]
        problems.append(f"axe: {rule['id']} ({rule.get('impact') or 'no impact given'}), "
                        f"{n} element{'' if n == 1 else 's'}, e.g. {rule.get('target') or '?'}")
    return problems


def figure_problems(dom: str, page: str) -> list[str]:
    """Figure numbers and images of a rendered page: every caption numbered as the chapter's
    scheme says (:func:`.numbering.figure_label`; ``page``: the page's path under the book
    without ``.html``), no reference left with Sphinx's book-wide "Fig. N", every image of the
    article with an alt text (not empty, not its file name, no raw TeX: a screen reader would
    spell it out)."""
    main = _content(BeautifulSoup(dom, "html.parser"))
    problems = []
    numbers = [num for _, num in page_figures(str(main))]
    if numbers and page not in FIGURE_SCHEMES:
        problems.append(f"figures on a page without a numbering scheme: {', '.join(numbers)}")
    elif numbers:
        expected = [figure_label(page, i) for i in range(len(numbers))]
        for got, want in zip(numbers, expected):
            if got != want:
                problems.append(f"a figure caption numbered {got!r} where the chapter's scheme says {want!r}")
    for ref in main.select("span.std-numref"):
        if re.match(r"Fig\. \d", ref.get_text()):
            problems.append(f"a reference with the book-wide number {ref.get_text()!r}")
    for img in main.find_all("img"):
        alt, src = str(img.get("alt", "")).strip(), str(img.get("src", ""))
        if str(img.get("id", "")).endswith("-thumb"):
            continue  # the hover image of the interactive figure, drawn by its scripts
        if not alt or alt == src or re.search(r"\.(png|jpe?g|svg|gif|webp)$", alt, re.I):
            problems.append(f"an image without alt text ({src[:60]})")
        elif re.search(r"\\[()\[\]]|\\[A-Za-z]+|\$[^$]+\$", alt):
            problems.append(f"an image whose alt text holds raw TeX ({alt[:60]})")
    return problems


def page_problems(dom: str, *, executed: bool, page: str | None = None) -> list[str]:
    """What a reader would see wrong on a rendered page (its DOM after the scripts ran).

    - raw TeX in the visible text (math that MathJax did not render), or math containers left
      unrendered;
    - on an executed chapter: code visible without clicking its toggle, a figure image without a
      numbered caption, text written to stderr (a warning), no rerun box;
    - a table with an index column (an empty first header) or a decimal number with more than 4
      significant digits;
    - what the layout probe found (:func:`layout_problems`, when the DOM holds its result);
    - what axe-core found (:func:`axe_problems`, when the DOM holds its marker);
    - with ``page`` (the page's path under the book, without ``.html``): figure numbers off the
      chapter's scheme, images without alt text (:func:`figure_problems`).
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
    if page is not None:
        problems += figure_problems(dom, page)
    return problems + layout_problems(dom) + axe_problems(dom)


def _view_dom(page: Path, width: int, theme: str, shots: Path | None, axe: Path | None = None) -> str:
    """The DOM of ``page`` after its scripts, the layout probe and (with ``axe``, the path of
    ``axe.min.js``) axe-core ran, seen at one view (the page's own DOM, from its frame), and its
    screenshot into ``shots`` (when given)."""
    height = 1600 if width > 600 else 844
    host = probed_page(page, theme, width, height, axe=axe)
    try:
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            png = shots / f"{page.stem}-{width}-{theme}.png"
            screenshot(host, png, width=max(width, 500), height=height)
            Image.open(png).crop((0, 0, width, height)).save(png)
        dom = rendered_dom(host, width=max(width, 500), height=height)
    finally:
        remove_probe(host)
    probe = BeautifulSoup(dom, "html.parser").find(id="pure-layout-probe")
    if probe is None:
        raise RenderError(f"the layout probe did not run on {page} at {width} px, {theme}")
    if probe.get("data-theme") != theme or probe.get("data-width") != str(width):
        raise RenderError(f"{page} did not open in the {theme} theme at {width} px (the page "
                          f"says: {probe.get('data-theme')!r} theme, {probe.get('data-width')} px)")
    framed = probe.find("textarea", id="pure-framed-dom")
    if framed is None:
        raise RenderError(f"the layout probe sent no DOM of {page} at {width} px, {theme}")
    return framed.get_text()


def check_book(html_dir: Path, pages: list, executed: set, *, views=None,
               screenshots: Path | None = None) -> dict[str, list[str]]:
    """:func:`page_problems` of every page of the built book, in every view, axe-core's
    violations among them (:func:`axe_script` must find axe-core).

    Parameters
    ----------
    html_dir : Path
        The built book's HTML folder.
    pages : list
        Paths under ``html_dir`` (``"book/intro.html"``).
    executed : set
        Those of ``pages`` that are executed chapters.
    views : list of (int, str), optional
        (window width in px, ``"light"`` or ``"dark"``); default :data:`VIEWS`.
    screenshots : Path, optional
        Folder for a screenshot of each page in each view (``NAME-1280-light.png``); default
        ``screenshots`` beside ``html_dir``.

    Returns
    -------
    dict
        Page -> its problems, each prefixed with the views it shows in (``"[390 light, 390 dark]"``);
        only pages with problems.
    """
    html_dir = Path(html_dir)
    shots = Path(screenshots) if screenshots is not None else html_dir.parent / "screenshots"
    axe = axe_script()  # before the first page: a missing axe-core fails at once
    out = {}
    for page in pages:
        key = str(page).removesuffix(".html")
        found: dict[str, list[str]] = {}
        for width, theme in (views or VIEWS):
            dom = _view_dom(html_dir / page, width, theme, shots, axe)
            for problem in page_problems(dom, executed=page in executed, page=key):
                views_of = found.setdefault(problem, [])
                if f"{width} {theme}" not in views_of:  # a problem may show twice in one view
                    views_of.append(f"{width} {theme}")
        if found:
            out[str(page)] = [f"[{', '.join(v)}] {p}" for p, v in found.items()]
    return out
