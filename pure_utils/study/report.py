"""Small helpers for the book's notebooks: glue numbers so that the prose never types them, and
write intervals and paired comparisons in words chosen by the numbers."""
from __future__ import annotations

import html
import numbers
import sys

import numpy as np


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
    from myst_nb import glue as _glue  # heavy (sphinx): only the book's notebooks glue

    value = _plain(value)
    if isinstance(value, float) and not np.isfinite(value):
        value = "n/a"
    elif fmt is not None and not isinstance(value, str):
        value = format(value, fmt)
    _glue(key, value, display=False)


def judgeable(row, alpha: float = 0.05) -> bool:
    """Whether a paired comparison (a row of a paired table: ``n``, ``min_p``) can be judged at
    all: two or more units, and a test that can reach ``p < alpha`` with them (its smallest
    reachable p at most ``alpha``)."""
    return row is not None and row["n"] >= 2 and float(row["min_p"]) <= alpha


def interval(mean: float, low: float, high: float, fmt: str = ".2f") -> str:
    """``"0.63 [0.53, 0.72]"``: a value with its interval, for prose and tables."""
    values = [_plain(v) for v in (mean, low, high)]
    if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in values):
        return "n/a"
    m, lo, hi = (format(v, fmt) for v in values)
    return f"{m} [{lo}, {hi}]"


def difference_sentence(row, what: str, *, fmt: str = ".2f", units: str = "neurons") -> str:
    """A paired comparison in words, the word chosen by its interval.

    Parameters
    ----------
    row : mapping
        A row of :func:`pure_utils.study.tables.paired_table` (``a``, ``b``, ``mean``, ``ci_low``,
        ``ci_high``, ``n``, ``n_excluded``, ``p_value``, ``word``).
    what : str
        The score compared, e.g. ``"ARI"``.
    fmt : str
        Format of the mean and its interval.
    units : str
        What the comparison is paired over (``"groups of units"`` for the distance correlation,
        whose values are one per random group of units).

    Returns
    -------
    str
        E.g. ``"PURE (gxa) minus activations, ARI: 0.05 [-0.02, 0.11] over 15 neurons (Wilcoxon
        p = 0.21): no detectable difference"``.
    """
    n_out = int(row["n_excluded"])
    left = f", {n_out} left out for a missing value" if n_out else ""
    p = _plain(row["p_value"])
    p_text = f"Wilcoxon p = {p:.2g}" if isinstance(p, float) and np.isfinite(p) else "no test"
    word = {"higher": f"{row['a']} is higher", "lower": f"{row['a']} is lower"}.get(
        row["word"], "no detectable difference")
    return (f"{row['a']} minus {row['b']}, {what}: "
            f"{interval(row['mean'], row['ci_low'], row['ci_high'], fmt)} over {int(row['n'])} "
            f"{units}{left} ({p_text}): {word}")


def table(frame, *, digits: int = 3, rename: dict | None = None):
    """A table for people: no index column, words in the headers, ``digits`` significant digits.

    Parameters
    ----------
    frame : pandas.DataFrame
    digits : int
        Significant digits of every float (at most 4 in the book).
    rename : dict, optional
        Header replacements; other headers have their underscores turned into spaces.

    Returns
    -------
    pandas.io.formats.style.Styler
        Shown as an HTML table in notebooks and in the book.
    """
    frame = frame.reset_index(drop=True)
    for c in frame.columns:  # numbers kept as objects (e.g. a transposed record) count as numbers
        if frame[c].dtype == object and len(frame) and all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) for v in frame[c]):
            frame[c] = frame[c].infer_objects()
    headers = {c: (rename or {}).get(c, str(c).replace("_", " ")) for c in frame.columns}
    frame = frame.rename(columns=headers)
    floats = [c for c in frame.columns if str(frame[c].dtype).startswith("float")]
    return (frame.style.hide(axis="index")
            .format({c: (lambda v: "n/a" if v != v else f"{v:.{digits}g}") for c in floats}))


class NotedTable:
    """A table whose long texts sit in numbered notes under it (shown as HTML in the book).

    ``styler``: the table (:func:`table`); ``notes``: the notes' texts, note ``i`` numbered
    ``i + 1``. The table sits in a ``pure-table-scroll`` box, which scrolls sideways when the
    table is wider than the page; the box takes the keyboard focus and is named as a region.
    """

    def __init__(self, styler, notes: list[str]):
        self.styler, self.notes = styler, list(notes)

    def _repr_html_(self) -> str:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        notes = f'<ol class="pure-table-notes">{items}</ol>' if items else ""
        # a box that scrolls must be reachable by keyboard (tabindex) and named for a screen reader
        return (f'<div class="pure-table-scroll" tabindex="0" role="region" aria-label="table, '
                f'scrolls sideways">{self.styler.to_html()}</div>{notes}')

    def __repr__(self) -> str:
        notes = "\n".join(f"[{i}] {n}" for i, n in enumerate(self.notes, 1))
        return f"{self.styler.data.to_string(index=False)}\n{notes}"


def table_with_notes(frame, column: str, short, *, digits: int = 3, rename: dict | None = None):
    """:func:`table` with ``column``'s long texts moved into numbered notes under the table.

    Each cell of ``column`` shows ``short(text)`` and, when ``short(text) != text``, the number
    of its note (``"no: judge [1]"``); equal texts share one note. ``frame`` itself is not
    changed: only what is shown differs.

    Parameters
    ----------
    frame : pandas.DataFrame
    column : str
        The column whose texts are long (a name of ``frame``).
    short : callable
        Long text -> the cell's short text.

    Returns
    -------
    NotedTable
    """
    if column not in frame.columns:
        raise KeyError(f"no column {column!r} to move into notes (columns: {', '.join(map(str, frame.columns))})")
    notes: list[str] = []
    cells = []
    for text in frame[column].astype(str):
        word = short(text)
        if word != text:
            if text not in notes:
                notes.append(text)
            word = f"{word} [{notes.index(text) + 1}]"
        cells.append(word)
    shown = frame.copy()
    shown[column] = cells
    return NotedTable(table(shown, digits=digits, rename=rename), notes)


def figure(name: str, fig) -> None:
    """Keep a figure for a numbered, captioned figure of the book.

    The notebook's markdown shows it with a ``{glue:figure}`` directive named ``name``, whose
    body is the caption (glued numbers allowed); the prose refers to it with
    ``{numref}`name```. A matplotlib figure is closed here so that it is not shown twice.
    """
    from myst_nb import glue as _glue  # heavy (sphinx): only the book's notebooks glue

    _glue(name, fig, display=False)
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None and hasattr(fig, "savefig"):
        pyplot.close(fig)
