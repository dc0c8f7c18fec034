"""The paper-scale dry run (pure_utils.perf.scale): its figures, its table, and Eq. 5 in parts.

The dry run itself is timed, not tested for speed: these tests check what it reports (items,
extrapolations, the comparisons) and that the parallel and chunked paths give the one-call
results.
"""
import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from pure_utils.perf import engine as bench, scale
from pure_utils.perf._measure import hwm, mapped_allocations, rss
from pure_utils.study.tables import ACTIVATIONS, compare_clusterings


def test_eq5_in_parts_equals_one_call():
    gen = np.random.default_rng(0)
    clip, pure, acts, dino = (gen.normal(size=(2, 6, d)).astype(np.float32) for d in (4, 5, 3, 4))
    neurons = [7, 40]
    parts, done = scale._in_parts(scale._eq5_part, [clip, pure, acts, dino, neurons], 2,
                                  workers=1, part=1)
    assert done == 2 and len(parts) == 2
    expected = compare_clusterings(clip, {"PURE": pure, ACTIVATIONS: acts, "CLIP": clip,
                                          "DINOv2": dino}, ks=scale.KS, neurons=neurons,
                                   progress=False)
    assert pd.concat(parts, ignore_index=True).equals(expected)


def test_parts_in_worker_processes_come_back_in_order():
    x = np.arange(10.0)[:, None] * np.ones((1, 3))
    serial, n = scale._in_parts(np.cumsum, [x], 10, workers=1, part=3)
    spread, m = scale._in_parts(np.cumsum, [x], 10, workers=2, part=3)
    assert n == m == 10 and len(spread) == 4
    assert all(np.array_equal(a, b) for a, b in zip(serial, spread))
    _, none = scale._in_parts(np.cumsum, [x], 10, workers=2, part=3, deadline=0.0)
    assert none < 10   # parts not started by the deadline are left out


def test_sizes_defaults_and_what_is_reduced():
    assert scale._size("8GiB") == 8 << 30 and scale._size("32MiB") == 32 << 20
    assert scale._size("512k") == 512 << 10 and scale._size("0") == 0
    with pytest.raises(Exception, match="not a size"):
        scale._size("lots")
    args, reduced = scale._resolve(scale._parser().parse_args([]))
    assert (args.images, args.neurons, args.n_ref) == (48, 8, 6)
    assert reduced == ["images 48 of 50,000", "neurons 8 of 2,048", "n_ref 6 of 100"]
    args, reduced = scale._resolve(scale._parser().parse_args(["--device", "cuda"]))
    assert (args.images, args.neurons, args.n_ref, reduced) == (50_000, 2048, 100, [])
    assert args.stash_memory == 8 << 30 and args.batch_size == 256
    for bad, match in ((["--n-ref", "4"], "at least 5"),
                       (["--images", "5", "--n-ref", "6"], "at least as many --images"),
                       (["--stages", "mining,heatmaps"], "the first stages of")):
        with pytest.raises(ValueError, match=match):
            scale._resolve(scale._parser().parse_args(bad))


@pytest.fixture(scope="session")  # once per worker: `make test` hands out single tests
def small_run():
    lines, written = [], []
    result = scale.run_scale(log=lines.append, images=6, neurons=2, n_ref=5,
                             stages="mining,attribution", compare_precision="bf16",
                             threads=torch.get_num_threads(),  # this worker's share (conftest.py)
                             workers=0, eq5_workers=1,
                             checkpoint=lambda r: written.append(len(r["stages"])))
    assert written == [1, 2, 3, 4]   # after every stage, with the stages so far
    return result, lines


def test_the_stage_records_and_their_extrapolation(small_run):
    result, lines = small_run
    stages = {r["key"]: r for r in result["stages"]}
    assert list(stages) == ["mining", "attribution", "reforward", "precision"]
    assert stages["mining"]["items"] == 6 and stages["mining"]["paper_items"] == 50_000
    assert stages["attribution"]["items"] == 10 and stages["attribution"]["unit"] == "vectors"
    for r in stages.values():
        assert r["paper_s"] == pytest.approx(r["seconds"] * r["paper_items"] / r["items"])
        assert r["per_s"] == pytest.approx(r["items"] / r["seconds"])
        assert r["rss_peak_mib"] > 100 and r["cuda_peak_mib"] is None
    assert result["reduced"] == ["images 6 of 50,000", "neurons 2 of 2,048", "n_ref 5 of 100"]
    assert result["paper_total_s"] is None          # not every stage ran
    assert any(line.startswith("reduced: images 6 of 50,000") for line in lines)


def test_the_comparisons_report_differences_and_timings(small_run):
    result, lines = small_run
    e2e, prec = result["end_to_end"], result["precision"]
    assert e2e["neurons"] == 2 and e2e["max_abs_diff"] <= 1e-4
    stages = {r["key"]: r for r in result["stages"]}
    assert e2e["with_stash_s"] == pytest.approx(stages["mining"]["seconds"]
                                                + stages["attribution"]["seconds"])
    assert e2e["stash"]["memory"] + e2e["stash"]["disk"] >= 1
    # bf16 rounds: the vectors differ, but not by much, and the labels are compared per k
    assert 0 < prec["max_abs_diff"] < 0.2 and prec["compared"] == "fp32 against bf16"
    assert -1 <= prec["ari_min"] <= prec["ari_mean"] <= 1
    assert sorted(prec["ari_mean_per_k"]) == [2, 3, 4, 5]
    assert any(line.startswith("end to end, mining + attribution of 2 neurons") for line in lines)


def test_the_table_and_the_files(small_run, tmp_path):
    result, _ = small_run
    table = scale.markdown(result)
    assert table.splitlines()[0].startswith("| stage | measured | wall (s)")
    assert "| 6 of 50,000 images |" in table and "10 of 204,800 vectors" in table
    js, md = scale.write(result, tmp_path / "out" / "cpu.json")
    back = json.loads(js.read_text())
    assert back["setting"]["images"] == 6 and len(back["stages"]) == 4
    assert md.read_text().startswith(table)
    assert "Reduced: images 6 of 50,000" in md.read_text()


def test_the_memory_check_pairs_the_runs(monkeypatch):
    args, _ = scale._resolve(scale._parser().parse_args(["--images", "16", "--n-ref", "5"]))
    mine = dict(setting=dict(images=16), hwm_after_attribution_mib=1000.0,
                stages=[dict(key="mining", cuda_peak_mib=None, items=16),
                        dict(key="attribution", cuda_peak_mib=None, items=20)])
    child = dict(mine, setting=dict(images=64), hwm_after_attribution_mib=1050.0)
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="log\n" + json.dumps(child), stderr="")

    monkeypatch.setattr(scale.subprocess, "run", fake_run)
    lines = []
    out = scale._memory_check(args, mine, lines.append)
    cmd = calls[0]
    assert cmd[cmd.index("--images") + 1] == "64" and "--memory-child" in cmd
    assert cmd[cmd.index("--attr-limit") + 1] == "4"   # the neurons the main run attributed
    assert out["one_x"]["images"] == 16 and out["four_x"]["images"] == 64
    assert out["rss_ratio"] == pytest.approx(1.05)
    assert "ratio 1.050 [target <= 1.10]" in lines[-1]


def test_measuring_helpers():
    assert hwm() >= rss() > 0
    with mapped_allocations() as fixed:
        assert fixed in (True, False)
        x = torch.ones(1 << 20)
        del x


def test_bench_hands_scale_to_the_dry_run(monkeypatch):
    seen = []
    monkeypatch.setattr(bench, "scale_main", lambda argv: seen.append(argv) or 0)
    assert bench.main(["--scale", "paper", "--images", "8"]) == 0
    assert seen == [["--scale", "paper", "--images", "8"]]


@pytest.mark.slow
def test_every_stage_at_a_tiny_size(tmp_path):
    result = scale.run_scale(log=lambda line: None, images=6, neurons=2, n_ref=5,
                             threads=torch.get_num_threads(),  # this worker's share (conftest.py)
                             workers=0, eq5_workers=1, memory_check=True)
    keys = [r["key"] for r in result["stages"]]
    assert keys[:3] == ["mining", "attribution", "activations"]
    assert set(scale.PIPELINE) <= set(keys) and result["paper_total_s"] > 0
    assert result["neurons_through_all_stages"] == 2
    assert set(result["correlation"]) == {"PURE", ACTIVATIONS, "DINOv2"}
    assert result["memory"]["four_x"]["images"] == 24
