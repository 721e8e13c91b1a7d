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
