"""The book's tooling: papermill runs and the Jupyter Book build (``python -m pure_utils.book``),
page decoration, checks of the built pages in headless Chromium."""
from ..registry import lazy_submodules

# the modules of this sub-package are imported on first use
__getattr__ = lazy_submodules(__name__)
