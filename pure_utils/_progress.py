"""Progress bars: ``tqdm.auto``, quiet where the environment asks for it.

- In Jupyter without ipywidgets, ``tqdm.auto`` warns and falls back to text bars, which is what
  we want; the warning only clutters notebooks, so it is silenced.
- ``TQDM_DISABLE=1`` turns every bar off, also where a function passes ``disable=`` itself
  (tqdm's own variable only changes defaults). The book build sets it, so executed pages show
  results, not progress.
- Outside a terminal and outside Jupyter (a log file, CI) bars are off: redrawn bars would fill
  the log with carriage returns. Long runs print their own lines there (training, the build).
"""
import os
import sys
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from tqdm.auto import tqdm as _tqdm


def _quiet() -> bool:
    if os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"):
        return True
    interactive = "ipykernel" in sys.modules or getattr(sys.stderr, "isatty", lambda: False)()
    return not interactive


def tqdm(*args, **kwargs):
    """``tqdm.auto.tqdm``, switched off by ``TQDM_DISABLE`` and outside terminals and Jupyter."""
    if _quiet():
        kwargs["disable"] = True
    return _tqdm(*args, **kwargs)
