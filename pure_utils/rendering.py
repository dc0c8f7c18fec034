"""The rendering check of the built book: its pages in headless Chromium.

A page that renders blank, or an interactive figure whose scripts do not draw it, fails the
check (``python -m pure_utils.book screenshots``, ``make screenshots``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SCREENSHOT_PAGES", "INTERACTIVE_PAGE", "RenderError", "ensure_chromium", "screenshot",
           "rendered_dom", "blank_fraction", "check_rendering"]

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


def screenshot(page: Path, png: Path, *, width: int = 1280, height: int = 1600) -> Path:
    """Render ``page`` in headless Chromium and save a PNG screenshot."""
    chromium = ensure_chromium()
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
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
