"""Progress bars: ``tqdm.auto``, quiet where the environment asks for it.

- In Jupyter without ipywidgets, ``tqdm.auto`` warns and falls back to text bars, which is what
  we want; the warning only clutters notebooks, so it is silenced.
- ``TQDM_DISABLE=1`` turns every bar off, also where a function passes ``disable=`` itself
  (tqdm's own variable only changes defaults). The book build sets it, so executed pages show
  results, not progress.
"""
import os
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from tqdm.auto import tqdm as _tqdm


def tqdm(*args, **kwargs):
    """``tqdm.auto.tqdm``, switched off when ``TQDM_DISABLE`` is set to a true value."""
    if os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"):
        kwargs["disable"] = True
    return _tqdm(*args, **kwargs)
