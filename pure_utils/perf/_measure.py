"""Measuring a stage: wall time, items per second, peak memory (resident set and CUDA).

The resident set is read from ``/proc/self`` (Linux; no extra package): a thread samples it
every 10 ms for the peak of a stage, and ``VmHWM`` gives the process's high-water mark.
"""
from __future__ import annotations

import ctypes
import math
import os
import resource
import sys
import threading
import time
from contextlib import contextmanager

import torch

__all__ = ["MIB", "hwm", "rss", "Sampler", "Stages", "measured", "mapped_allocations"]

MIB = 1 << 20


def hwm() -> int:
    """The process's peak resident set so far, in bytes (the kernel's high-water mark).

    Linux: ``VmHWM`` of ``/proc/self/status``. Not ``ru_maxrss``, which a process started by
    another one inherits from the copy of the parent that ``fork`` made before ``exec``.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def rss() -> int:
    """This process's resident set now, in bytes (Linux; elsewhere the high-water mark)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return hwm()


@contextmanager
def mapped_allocations(threshold: int = 1 << 20):
    """Within the block, glibc serves every allocation from ``threshold`` bytes up with its own
    memory mapping, returned to the system when freed.

    By default glibc raises that threshold after each large free (up to 32 MiB), and the blocks
    below it then come from a heap that keeps freed memory: the resident set then grows with the
    number of batches run while the memory in use does not. Comparing peaks of runs of different
    lengths needs the fixed threshold. Yields whether it could be set (glibc only); afterwards
    the threshold is set to glibc's largest default, as its own adjustment stays off.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        yield False
        return
    m_mmap_threshold = -3  # glibc's mallopt parameter number
    ok = bool(libc.mallopt(m_mmap_threshold, int(threshold)))
    try:
        yield ok
    finally:
        if ok:
            libc.mallopt(m_mmap_threshold, 32 << 20)


class Sampler(threading.Thread):
    """Samples the resident set every 10 ms: the peak of a stage is that of its samples."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.halt = rss(), threading.Event()

    def run(self):
        while not self.halt.wait(0.01):
            self.peak = max(self.peak, rss())


class Stages:
    """Runs stages and keeps one record per stage (see :meth:`stage`); ``after`` is called after
    each stage (e.g. to write the records so far, which a run stopped later keeps)."""

    def __init__(self, device, log, after=None):
        self.device, self.log, self.records = torch.device(device), log, []
        self.after = after or (lambda: None)
        self.sampler = Sampler()
        self.sampler.start()

    def _sync(self):
        if self.device.type == "cuda":  # queued GPU work belongs to the stage that queued it
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, key: str, name: str, unit: str, paper_items: int):
        """Time the block; it sets ``rec["items"]`` (items done) and may add ``rec["note"]``."""
        rec = {"key": key, "stage": name, "unit": unit, "paper_items": paper_items, "items": 0,
               "note": ""}
        self._sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.sampler.peak = rss()
        start = time.perf_counter()
        yield rec
        self._sync()
        rec["seconds"] = time.perf_counter() - start
        rec["rss_peak_mib"] = max(self.sampler.peak, rss()) / MIB
        rec["hwm_mib"] = hwm() / MIB
        rec["cuda_peak_mib"] = (torch.cuda.max_memory_allocated(self.device) / MIB
                                if self.device.type == "cuda" else None)
        rec["per_s"] = rec["items"] / rec["seconds"] if rec["seconds"] > 0 else math.nan
        rec["paper_s"] = (rec["seconds"] * paper_items / rec["items"] if rec["items"] else math.nan)
        self.records.append(rec)
        self.after()
        self.log(f"  {name}: {measured(rec)} in {rec['seconds']:.1f} s "
                 f"({rec['per_s']:.3g} {unit}/s), peak RSS {rec['rss_peak_mib']:.0f} MiB"
                 + (f", CUDA {rec['cuda_peak_mib']:.0f} MiB" if rec["cuda_peak_mib"] else "")
                 + (f"; {rec['note']}" if rec["note"] else ""))

    def close(self):
        self.sampler.halt.set()


def measured(rec) -> str:
    """``"64 of 50,000 images"``: what a stage record did, of what the paper's size needs."""
    return f"{rec['items']:,} of {rec['paper_items']:,} {rec['unit']}"
