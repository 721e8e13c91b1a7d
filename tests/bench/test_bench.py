"""`cmm-cache bench fit` as a user runs it: every figure is there (figures are measured, never asserted)."""

import json

from click.testing import CliRunner
from cmm_cache.cli.main import main
from support.figures import is_figure

from cmm_cache.bench.fit import BusyLoad, bench_suite
from cmm_cache.bench.protocol import bench_protocol

TINY = ["--classes", "3", "--dim", "16", "--shots", "1", "--iterations", "40"]


def _json(args):
    r = CliRunner().invoke(main, ["bench", "fit", *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_compare_threads_under_load_reports_each_choice_and_the_default():
    out = _json([*TINY, "--compare-threads", "--busy"])
    row = out["busy"]
    assert set(row["seconds"]) == {"1 thread", "2 threads", "default"}
    assert all(is_figure(v) for v in row["seconds"].values()) and is_figure(row["default_vs_best_fixed"])
    assert sum(row["default_threads"]["iterations_per_threads"].values()) == 40


def test_busy_load_is_started_and_stopped():
    with BusyLoad(2) as load:
        procs = list(load.procs)
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)


def test_single_fit_reports_engine_and_threads():
    out = _json([*TINY, "--test-size", "0"])
    assert out["engine"] and is_figure(out["fit_seconds"]) and is_figure(out["loop_seconds"])
    assert out["machine"]["cores"] >= 1 and "kernel" in out["machine"]


def test_protocol_runs_every_shot_and_seed_both_ways():
    out = bench_protocol(classes=3, dim=16, shots=(1, 2), seeds=(1,), iterations=30, test_per_class=3, log=None)
    for mode in ("sequential", "parallel"):
        runs = out[mode]["runs"]
        assert sorted((r["shots"], r["seed"]) for r in runs) == [(1, 1), (2, 1)]
        assert is_figure(out[mode]["seconds"]) and is_figure(out[mode]["loop_seconds_sum"])
    assert out["parallel"]["processes"] >= 1 and out["best_mode"] in ("sequential", "parallel")
    # the same runs, the same numbers, whichever way they ran
    acc = {
        m: sorted((r["shots"], r["seed"], r["test_acc"]) for r in out[m]["runs"]) for m in ("sequential", "parallel")
    }
    assert acc["sequential"] == acc["parallel"]


def test_suite_has_every_figure_of_the_readme():
    out = bench_suite(
        classes=3,
        dim=16,
        iterations=30,
        protocol_kw={"shots": (1,), "seeds": (1,), "test_per_class": 2, "modes": ("sequential",)},
        log=None,
    )
    for cond in ("quiet", "busy"):
        assert set(out["threads"][cond]["seconds"]) == {"1 thread", "2 threads", "default"}
    assert is_figure(out["single_run_seconds"]) and is_figure(out["protocol"]["seconds"])
    assert out["machine"]["cpu"]


def test_bench_partial_ft_reports_the_fit_time_of_partial_finetuning():
    """`bench partial-ft` on the tiny ViT and ResNet towers: per-step and per-val-check seconds and the whole
    fit they make (the method's 9 configs × 12,800 steps); `--full` times the whole fit itself."""
    for arch, shape in (("tiny", [17, 64]), ("tiny-rn", [256, 2, 2])):
        r = CliRunner().invoke(main, ["bench", "partial-ft", "--arch", arch, "--classes", "5", "--shots", "2",
                                      "--iterations", "5", "--json"])  # fmt: skip
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        assert out["input_shape"] == shape and out["configs"] == 9 and out["iterations_per_config"] == 12800
        assert is_figure(out["seconds_per_step"]) and is_figure(out["seconds_per_val_check"])
        assert out["estimated_fit_seconds"] >= 9 * 12800 * out["seconds_per_step"]
        assert "cores, load average" in out["machine"]


def test_bench_methods_points_block_input_methods_to_their_benchmark():
    from cmm_cache.bench.methods import bench_methods

    out = bench_methods(["cross-modal-partial-ft", "zero-shot"], classes=3, dim=8, shots=1)
    rows = {r["method"]: r for r in out["methods"]}
    assert rows["cross-modal-partial-ft"]["skipped"] == "cmm-cache bench partial-ft" and is_figure(
        rows["zero-shot"]["seconds"]
    )
