"""Small helpers for the book's notebooks: glue numbers so that the prose never types them."""
from __future__ import annotations

import numbers

import numpy as np
from myst_nb import glue as _glue


def _plain(value):
    # numpy scalars print as ``np.float64(0.5)``, which the book cannot parse back
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def glue(key: str, value, fmt: str | None = None):
    """Store ``value`` under ``key`` for ``{glue:text}`` roles in the book (not displayed).

    Parameters
    ----------
    key : str
        Glue key, unique within the notebook.
    value : number or str
        NumPy scalars are turned into Python numbers; ``nan`` is glued as ``"n/a"``.
    fmt : str, optional
        A format spec (``".2f"``, ``".0%"``): the value is glued as the formatted string, so
        the page needs no format of its own and a missing value reads ``n/a``.

    Returns
    -------
    None
        (so that a notebook cell ending in ``glue(...)`` shows nothing)
    """
    value = _plain(value)
    if isinstance(value, float) and not np.isfinite(value):
        value = "n/a"
    elif fmt is not None and not isinstance(value, str):
        value = format(value, fmt)
    _glue(key, value, display=False)


def compare_word(a: float, b: float, *, higher: str = "above", lower: str = "below",
                 tie: str = "equal to", tol: float = 1e-9) -> str:
    """``"above"`` / ``"below"`` / ``"equal to"``: how ``a`` compares with ``b``, for prose."""
    a, b = _plain(a), _plain(b)
    if not (np.isfinite(a) and np.isfinite(b)):
        return "not comparable with"
    if abs(a - b) <= tol:
        return tie
    return higher if a > b else lower
