"""The dry run's output (:mod:`pure_utils.perf.scale`): the lines about its comparisons, the stage
table as markdown, and the result written as JSON and markdown files."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ._measure import measured

__all__ = ["summary", "markdown", "json_ready", "write"]


def _num(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.{digits}g}"


def summary(result: dict, key: str) -> str:
    """The line of the dry run's output about ``key``: ``"end_to_end"``, ``"precision"`` or
    ``"memory"`` (empty when the result has none)."""
    r = result.get(key)
    if not r:
        return ""
    neurons = f"{r.get('neurons')} neuron{'' if r.get('neurons') == 1 else 's'}"
    if key == "end_to_end":
        return (f"end to end, mining + attribution of {neurons}: "
                f"{r['with_stash_s']:.1f} s with the stash, {r['without_stash_s']:.1f} s "
                f"re-forwarding ({r['speedup']:.2f}x); largest difference of the normalised "
                f"vectors {r['max_abs_diff']:.2e} (bitwise equal: {r['bitwise_equal']})")
    if key == "precision":
        return (f"precision, {r['compared']} on {neurons}: largest difference of "
                f"the normalised attributions {r['max_abs_diff']:.3g}; ARI of the k-means labels "
                f"(k = 2..5) mean {r['ari_mean']:.3f}, min {r['ari_min']:.3f}, identical "
                f"{100 * r['share_identical_labels']:.0f}%; time {r['time_ratio']:.2f}x")
    one, four = r["one_x"], r["four_x"]
    return (f"memory, mining + attribution: peak RSS {one['hwm_mib']:.0f} MiB with "
            f"{one['images']:,} images, {four['hwm_mib']:.0f} MiB with {four['images']:,} (4x): "
            f"ratio {r['rss_ratio']:.3f} [target <= 1.10]" + (
                f"; CUDA max allocated {one['cuda_peak_mib']:.0f} and "
                f"{four['cuda_peak_mib']:.0f} MiB, ratio {r['cuda_ratio']:.3f}"
                if r.get("cuda_ratio") else ""))


def markdown(result: dict) -> str:
    """The stage table of a :func:`run_scale` result, as markdown."""
    lines = ["| stage | measured | wall (s) | per second | peak RSS (MiB) | peak CUDA (MiB) "
             "| at the paper's size (s) |", "|---|---|---|---|---|---|---|"]
    for r in result["stages"]:
        full = r["items"] == r["paper_items"]
        lines.append(f"| {r['stage']} | {measured(r)} | {_num(r['seconds'])} | "
                     f"{_num(r['per_s'])} {r['unit']} | {_num(r['rss_peak_mib'])} | "
                     f"{_num(r['cuda_peak_mib'])} | {'' if full else '~'}{_num(r['paper_s'])}"
                     f"{' (measured)' if full else ''} |")
    total = result.get("paper_total_s")
    if total:
        span = f"{total / 60:.1f} min" if total < 7200 else f"{total / 3600:.1f} h"
        lines.append(f"| **one model, the pipeline's stages** | | | | | | ~{_num(total)} "
                     f"(~{span}) |")
    return "\n".join(lines)


def json_ready(obj):
    """JSON-ready: NaN and inf become None, tuples lists, other objects their text."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def write(result: dict, out) -> tuple[Path, Path]:
    """Write ``result`` as ``<out>.json`` and its table as ``<out>.md``; returns both paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    js, md = out.with_suffix(".json"), out.with_suffix(".md")
    js.write_text(json.dumps(json_ready(result), indent=1) + "\n")
    m = result["machine"]
    where = f"{m['cpu_count']} CPUs ({m['cpu']})" + (f", GPU {m['gpu']}" if m.get("gpu") else "")
    extra = [f"Measured on {where}, {m['platform']}, Python {m['python']}, torch "
             f"{result['setting']['torch']}; {result['when']}.",
             "Reduced: " + ("; ".join(result["reduced"]) or "nothing") + "."]
    extra += [summary(result, k) for k in ("end_to_end", "precision", "memory")]
    md.write_text(markdown(result) + "\n\n" + "\n\n".join(e for e in extra if e) + "\n")
    return js, md
