"""What the build says while it runs: one line per chapter and quiet lines per cell.

Each executed chapter's run time is kept in ``book/executed/.times.json`` (``{name: seconds}``,
beside the executed notebooks, not in git), so that the next build can say how long the
chapters it still has to run took last time. While a notebook runs, a line names the cell it is
in at most every ``interval`` seconds (``fig3: cell 7/21, 40 s``); a long cell is named again
while it runs, so a reader sees a line at least every ``interval`` seconds.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from papermill.engines import NBClientEngine, papermill_engines

from .._files import apply_umask

__all__ = ["TIMES_FILE", "read_times", "load_times", "record_time", "eta_seconds", "duration_text",
           "eta_text", "CellProgress", "ENGINE_NAME", "ProgressEngine"]

#: the per-chapter run times of the last build, beside the executed notebooks
TIMES_FILE = ".times.json"


def read_times(path: Path) -> dict[str, float]:
    """``{chapter: seconds}`` from a JSON file; empty when there is no (readable) record."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))} if isinstance(data, dict) else {}


def load_times(executed_dir: Path) -> dict[str, float]:
    """``{chapter: seconds}`` of the last runs (:data:`TIMES_FILE` in ``executed_dir``)."""
    return read_times(Path(executed_dir) / TIMES_FILE)


def record_time(executed_dir: Path, name: str, seconds: float) -> None:
    """Keep ``seconds`` as the run time of chapter ``name`` (the other chapters' times stay)."""
    path = Path(executed_dir) / TIMES_FILE
    times = load_times(executed_dir)
    times[name] = round(float(seconds), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TIMES_FILE}.tmp")
    tmp.write_text(json.dumps(times, indent=1, sort_keys=True))
    apply_umask(tmp)
    tmp.replace(path)


def eta_seconds(names, times: dict, jobs: int = 1) -> tuple[float, int]:
    """How long ``names`` take by their last run times, and how many of them have one: the sum,
    or with ``jobs`` notebooks at once the time the busiest of ``jobs`` queues needs when each
    chapter, the longest first, goes to the queue that is free first."""
    known = sorted((times[n] for n in names if n in times), reverse=True)
    queues = [0.0] * max(1, int(jobs))
    for seconds in known:
        queues[queues.index(min(queues))] += seconds
    return float(max(queues)), len(known)


def duration_text(seconds: float) -> str:
    """``40 s``, ``3.5 min`` or ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def eta_text(names, times: dict, jobs: int = 1) -> str:
    """What the last build's times say about running ``names`` (``jobs`` at once): ``about 12.0
    min by the last build's times`` (``, 2 never timed`` when some have no time; ``no earlier
    times`` when none has)."""
    names = list(names)
    seconds, known = eta_seconds(names, times, jobs)
    if not names:
        return "nothing left"
    if not known:
        return "no earlier times to estimate from"
    unknown = len(names) - known
    return (f"about {duration_text(seconds)} by the last build's times"
            + (f", {unknown} never timed" if unknown else ""))


class CellProgress:
    """Lines about a running notebook: ``log("NAME: cell i/n, T s")`` at most every ``interval``.

    Call it as papermill's cell-start hook (``progress(cell_index, cell)``); :meth:`start` and
    :meth:`stop` run a ticker that names the current cell again while a long cell runs.
    ``clock`` is injectable for tests.
    """

    def __init__(self, name: str, cells: list, log, *, interval: float = 30.0, clock=time.monotonic):
        self.name, self.log, self.interval, self.clock = name, log, interval, clock
        self._code = [i for i, c in enumerate(cells) if c.get("cell_type") == "code"]
        self._begin = self._last = clock()
        self._current = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = None

    def line(self) -> str:
        return (f"  {self.name}: cell {self._current}/{len(self._code)}, "
                f"{self.clock() - self._begin:.0f} s")

    def __call__(self, cell_index: int, cell=None, cells=None) -> None:
        """A cell starts: remember it, and say so when ``interval`` has passed since the last line.
        ``cells``: the running notebook's cells (papermill's injected parameters cell included),
        which ``cell_index`` counts in."""
        with self._lock:
            if cells is not None:
                self._code = [i for i, c in enumerate(cells) if c.get("cell_type") == "code"]
            self._current = sum(1 for i in self._code if i <= cell_index)
            if self._current:
                self._maybe_log()

    def _maybe_log(self) -> None:
        if self.clock() - self._last >= self.interval:
            self._last = self.clock()
            self.log(self.line())

    def tick(self) -> None:
        """Say where the notebook is if ``interval`` has passed (the ticker calls this)."""
        with self._lock:
            if self._current:
                self._maybe_log()

    def start(self) -> "CellProgress":
        def loop():
            while not self._stopped.wait(max(0.5, min(self.interval, 5.0))):
                self.tick()
        self._thread = threading.Thread(target=loop, daemon=True, name=f"progress-{self.name}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


#: the papermill engine that reports each cell's start (:class:`ProgressEngine`)
ENGINE_NAME = "pure-progress"


class ProgressEngine(NBClientEngine):
    """papermill's nbclient engine, calling ``on_cell(cell_index, cell, cells)`` as each cell
    starts (``cells``: the notebook being run, its injected parameters cell included)."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, on_cell=None, **kwargs):
        if on_cell is not None:
            started = nb_man.cell_start

            def cell_start(cell, cell_index=None, **kw):
                result = started(cell, cell_index, **kw)
                on_cell(cell_index if cell_index is not None else 0, cell, nb_man.nb.cells)
                return result
            nb_man.cell_start = cell_start
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)


papermill_engines.register(ENGINE_NAME, ProgressEngine)
