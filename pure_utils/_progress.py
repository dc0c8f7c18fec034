"""Progress bars: ``tqdm.auto`` without its warning when ipywidgets is not installed.

In Jupyter without ipywidgets, ``tqdm.auto`` warns and falls back to text bars, which is
what we want; the warning only clutters notebooks. ``TQDM_DISABLE=1`` turns bars off (the
book build sets it, so executed pages show results, not progress).
"""
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from tqdm.auto import tqdm  # noqa: F401
