"""`cmm_cache.runs.benchmark`: the job list, units and shards (pure), the checks before training, and whole
benchmarks on three image folders of one's own (tiny backbone): report, shards, a killed run, workers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.bench_data import DATASETS, METHODS, OPTIONS, SEEDS, SHOTS, make_three
from support.synth import make_cache

from cmm_cache.analysis.report import report
from cmm_cache.cache.locate import cache_path
from cmm_cache.errors import CmmError
from cmm_cache.runs import benchmark as bm

SHARD_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_STEP",
)


@pytest.fixture(autouse=True)
def _no_shard_env(monkeypatch):
    """A test machine inside a SLURM array or torchrun must not shard these benchmarks."""
    for name in SHARD_ENV:
        monkeypatch.delenv(name, raising=False)


# ----------------------------------------------------------------------------------------------- pure parts


def test_job_list_is_the_flat_product_in_order():
    jobs = bm.job_list("paper", "rn50,vit-b-16", "zero-shot,cmm", [1, 16], [1, 2])
    assert len(jobs) == 11 * 2 * 2 * 2 * 2
    assert [j.dataset for j in jobs[:: len(jobs) // 11]] == list(bm.PAPER_DATASETS)
    first = [(j.backbone, j.method, j.shots, j.seed) for j in jobs[:16]]
    assert first[:5] == [
        ("rn50", "zero-shot", 1, 1),
        ("rn50", "zero-shot", 1, 2),
        ("rn50", "zero-shot", 16, 1),
        ("rn50", "zero-shot", 16, 2),
        ("rn50", "cmm", 1, 1),
    ]
    assert first[8][0] == "vit-b-16"
    assert bm.job_list("paper", "rn50", "cmm", [1], [1]) == bm.job_list(["paper"], ["rn50"], ["cmm"], [1], [1])


def test_job_list_refuses_unknown_names_and_caps_costs():
    with pytest.raises(CmmError, match="Unknown method"):
        bm.job_list("dtd", "rn50", "cmm,nope", [1], [1])
    with pytest.raises(CmmError, match="no option"):
        bm.job_list("dtd", "rn50", "cmm", [1], [1], options={"cmm": {"nope": 1}})
    full = bm.job_list("dtd", "rn50", "cmm", [1], [1])[0]
    capped = bm.job_list("dtd", "rn50", "cmm", [1], [1], max_iterations=1600)[0]
    assert capped.cost == pytest.approx(full.cost / 10)  # 1,600 of the default 16,000 iterations
    assert dict(capped.options)["iterations"] == 1600


def test_units_keep_methods_that_share_a_fit_together():
    jobs = bm.job_list("dtd,eurosat", "rn50", "zero-shot,cross-modal-lp,cross-modal-wise-ft,cmm", [1, 2], [1])
    units = bm.units(jobs)
    assert sorted(i for u in units for i in u) == list(range(len(jobs)))
    paired = [u for u in units if len(u) > 1]
    assert len(paired) == 4  # 2 datasets x 2 shots: cross-modal-lp with cross-modal-wise-ft of the same subset
    for u in paired:
        assert {jobs[i].method for i in u} == {"cross-modal-lp", "cross-modal-wise-ft"}
        assert len({jobs[i].subset for i in u}) == 1


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_partition_the_work_deterministically_and_evenly(count):
    jobs = bm.job_list("paper", "rn50", "all", [1, 2, 4], [1, 2])
    units = bm.units(jobs)
    costs = [bm.unit_cost(jobs, u) for u in units]
    shards = [bm.shard_units(costs, i, count) for i in range(count)]
    assert sorted(u for s in shards for u in s) == list(range(len(units)))  # every unit once
    assert shards == [bm.shard_units(list(costs), i, count) for i in range(count)]  # pure
    loads = [sum(costs[u] for u in s) for s in shards]
    assert max(loads) - min(loads) <= max(costs) + 1e-9  # greedy largest-first: within one unit of even
    by_jobs = bm.shard_jobs(jobs, 0, count)
    assert [u for u in by_jobs] == [units[u] for u in shards[0]]


def test_resolve_shard_sources_and_conflicts():
    assert bm.resolve_shard(None, {}) == bm.Shard()
    assert bm.resolve_shard("1/3", {}) == bm.Shard(1, 3, "--shard")
    t = bm.resolve_shard(None, {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})
    assert (t.index, t.count, t.source, t.local_rank) == (2, 4, "torchrun", 0)
    s = bm.resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "3"})
    assert (s.index, s.count, s.source) == (2, 4, "slurm array")
    both = {"RANK": "1", "WORLD_SIZE": "2", "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}
    c = bm.resolve_shard(None, both)
    assert (c.index, c.count) == (3 * 2 + 1, 8)
    assert bm.resolve_shard("7/8", both).index == 7  # an explicit shard that agrees is fine
    with pytest.raises(CmmError, match="disagrees with the torchrun"):
        bm.resolve_shard("0/2", {"RANK": "1", "WORLD_SIZE": "2"})
    with pytest.raises(CmmError, match="SLURM_ARRAY_TASK_COUNT is not"):
        bm.resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "1"})
    for bad in ("2/2", "x/2", "1", "0/0"):
        with pytest.raises(CmmError, match="is not I/N"):
            bm.resolve_shard(bad, {})
    with pytest.raises(CmmError, match="not an integer"):
        bm.resolve_shard(None, {"WORLD_SIZE": "two"})


# ------------------------------------------------------------------------------- checks before training


def _synth(cache_dir, name, **kw):
    return make_cache(
        cache_path(name, "bb", cache_dir),
        dataset=name,
        backbone="bb",
        C=4,
        d=12,
        shots=(1, 2),
        seeds=(1,),
        train_per_class=4,
        **kw,
    )[0]


def test_every_missing_requirement_is_reported_before_any_training(tmp_path):
    cd = tmp_path / "cache"
    _synth(cd, "first")  # fine for zero-shot; lacks the per-template text cross-modal-lp needs
    runs = tmp_path / "runs"
    with pytest.raises(CmmError) as e:
        bm.benchmark("first,second", "bb", "zero-shot,cross-modal-lp", [1, 4], [1], cache_dir=cd, runs_root=runs)
    msg = str(e.value)
    assert msg.startswith("Nothing was trained")
    assert "no cache of second with backbone bb" in msg  # a missing cache
    assert "per-template text" in msg and "cross-modal-lp" in msg  # a method's need
    assert "4-shot/seed 1" in msg  # a subset the cache lacks
    assert "cmm-cache extract --dataset second --backbone bb" in e.value.hint
    assert "--add-text" in e.value.hint and "--extract" in e.value.hint
    assert not list(runs.rglob("result.json"))  # zero-shot on `first` came first in the list: not fitted either


def test_a_method_that_cannot_fit_a_subset_is_refused_before_training(tmp_path):
    cd = tmp_path / "cache"
    _synth(cd, "small")
    with pytest.raises(CmmError, match="No batch size") as e:
        bm.benchmark(
            "small",
            "bb",
            "zero-shot,wise-ft",
            [1],
            [1],
            cache_dir=cd,
            runs_root=tmp_path / "runs",
            options={"wise-ft": {"batch_size": [64]}},
        )
    assert "wise-ft on the 1-shot seed 1 subset" in str(e.value)
    assert not list((tmp_path / "runs").rglob("result.json"))


def test_extract_is_refused_in_a_sharded_benchmark(tmp_path):
    called = []
    with pytest.raises(CmmError, match="--extract in a sharded benchmark") as e:
        bm.benchmark(
            "nowhere",
            "bb",
            "zero-shot",
            [1],
            [1],
            cache_dir=tmp_path / "c",
            shard="0/2",
            extract=lambda d, b: called.append((d, b)),
        )
    assert "cmm-cache extract --dataset nowhere --backbone bb" in e.value.hint and not called


def test_extract_adds_missing_caches_before_the_checks(tmp_path):
    cd = tmp_path / "cache"

    def extract(dataset, backbone):
        _synth(cd, dataset)

    out = bm.benchmark("made", "bb", "zero-shot", [1], [1], cache_dir=cd, runs_root=tmp_path / "runs", extract=extract)
    assert out["prepared"] == [{"did": "extract", "dataset": "made", "backbone": "bb"}]
    assert out["ran"] == 1 and out["complete"]


def test_extract_adds_per_template_text_where_a_method_needs_it(tmp_path):
    from support.text_cache import make_text_cache

    cd = tmp_path / "cache"
    path = _synth(cd, "plain")
    calls = []

    def add_text(dataset, backbone, cache_file):
        calls.append((dataset, backbone, Path(cache_file)))
        make_text_cache(cache_file, shots=(1,), seeds=(1,))  # the same file, now with per-template text

    out = bm.benchmark(
        "plain",
        "bb",
        "zero-shot,cross-modal-lp",
        [1],
        [1],
        cache_dir=cd,
        runs_root=tmp_path / "r",
        options={"cross-modal-lp": {"iterations": 20}},
        extract=lambda d, b: None,
        add_text=add_text,
    )
    assert calls == [("plain", "bb", path)] and out["ran"] == 2
    assert out["prepared"] == [{"did": "add-text", "dataset": "plain", "backbone": "bb"}]


def _text(cd, name, **kw):
    from support.text_cache import make_text_cache

    return make_text_cache(
        cache_path(name, "bb", cd), C=4, d=12, shots=(1, 2), seeds=(1,), dataset=name, backbone="bb", **kw
    )


def test_a_named_method_on_block_inputs_is_refused_before_anything_trains(tmp_path):
    cd, runs = tmp_path / "cache", tmp_path / "runs"
    path = _text(cd, "noblocks")
    with pytest.raises(CmmError, match="Nothing was trained") as e:
        bm.benchmark("noblocks", "bb", "zero-shot,cross-modal-partial-ft", [1], [1], cache_dir=cd, runs_root=runs)
    assert "lacks block inputs for train, val, test, which cross-modal-partial-ft needs" in e.value.message
    assert f"--out {path} --finetune-blocks 1 --force" in e.value.hint
    assert "--extract" not in e.value.hint  # --extract does not re-extract an existing cache
    assert not runs.exists()  # zero-shot, listed first, did not run either


def test_all_leaves_out_what_a_cache_cannot_serve_and_says_so(tmp_path):
    cd = tmp_path / "cache"
    _text(cd, "noblocks")
    _text(cd, "blocks", blocks=True)
    out = bm.benchmark("noblocks,blocks", "bb", "all", [2], [1], cache_dir=cd, runs_root=tmp_path / "r",
                       max_iterations=5)  # fmt: skip
    ran = {(Path(f).parts[-2].rsplit("-", 1)[0], Path(f).parts[-4]) for f in out["run_folders"]}  # method, dataset
    assert ("cross-modal-partial-ft", "blocks") in ran and ("cross-modal-partial-ft", "noblocks") not in ran
    assert ("cmm", "noblocks") in ran and out["complete"]
    assert list(out["not_run"]) == ["noblocks × bb"]
    why = out["not_run"]["noblocks × bb"]["cross-modal-partial-ft"]
    assert "block inputs" in why and "--finetune-blocks 1 --force" in why
    assert out["jobs"] == 2 * len(bm.resolve_methods("all")) - 1


def test_extract_writes_block_inputs_only_for_a_named_method_that_trains_on_them(tmp_path):
    calls = []

    def extract(dataset, backbone, finetune_blocks=0):
        calls.append((dataset, finetune_blocks))
        _text(tmp_path / "c", dataset, blocks=bool(finetune_blocks))

    out = bm.benchmark("named", "bb", "cross-modal-partial-ft", [1], [1], cache_dir=tmp_path / "c",
                       runs_root=tmp_path / "r", max_iterations=5, extract=extract)  # fmt: skip
    assert out["prepared"] == [{"did": "extract", "dataset": "named", "backbone": "bb", "finetune_blocks": 1}]
    assert out["ran"] == 1
    out = bm.benchmark("every", "bb", "all", [2], [1], cache_dir=tmp_path / "c", runs_root=tmp_path / "r",
                       max_iterations=5, extract=extract)  # fmt: skip
    assert calls == [("named", 1), ("every", 0)] and "cross-modal-partial-ft" in out["not_run"]["every × bb"]


# ------------------------------------------------------------------------------ whole benchmarks (tiny)


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """The three folders extracted once; the unsharded reference benchmark and its report."""
    base = tmp_path_factory.mktemp("bench")
    cache_dir, _ = make_three(base)
    out = _run(cache_dir, base / "runs-A")
    rep = report(out["run_folders"], base / "report-A")
    return {"base": base, "cache_dir": cache_dir, "out": out, "report": rep}


def _run(cache_dir, runs, **kw):
    names = ",".join(DATASETS)
    return bm.benchmark(
        names, "tiny", METHODS, SHOTS, SEEDS, options=OPTIONS, cache_dir=cache_dir, runs_root=runs, device="cpu", **kw
    )


def _tables(written: dict) -> dict:
    """The report's tables that do not depend on timing (everything but Table 4), as CSV text."""
    return {k: Path(p).read_text() for k, p in written["csv"].items() if k != "table4"}


def test_benchmark_report_has_every_part(three):
    out, rep = three["out"], three["report"]
    assert out["jobs"] == 3 * 3 * 2 * 2 == out["ran"] and out["complete"] and out["skipped"] == 0
    md = Path(rep["markdown"]).read_text()
    assert "### Table 1 — tiny: average over datasets" in md and "### Per dataset — tiny" in md
    assert "![accuracy vs shots, tiny](accuracy_vs_shots-tiny.png)" in md
    png = Path(rep["png"][0]).read_bytes()
    assert png.startswith(b"\x89PNG")
    page = Path(rep["html"]).read_text()
    assert "data:image/png;base64," in page and 'src="http' not in page and "<link" not in page
    # The published CMM averages stand beside ours (not comparable here: other datasets and backbone).
    for text in (md, page):
        assert "65.45" in text and "77.56" in text
    pub = list(csv.DictReader(open(rep["csv"]["published"])))
    cmm = {int(r["shots"]): r for r in pub if r["method"] == "cmm" and r["table"] == "table1-average"}
    assert float(cmm[1]["theirs"]) == 65.45 and float(cmm[16]["theirs"]) == 77.56
    assert cmm[1]["ours"] == "" and "no rn50 runs" in cmm[1]["why_no_ours"] and cmm[1]["selection"] == "few-shot-val"
    # Table 1 is the mean over datasets of each dataset's mean over seeds, from the runs themselves.
    runs = [json.loads(Path(p, "result.json").read_text()) for p in out["run_folders"]]
    t1 = {(r["method"], int(r["shots"])): r for r in csv.DictReader(open(rep["csv"]["table1-tiny"]))}
    for m in METHODS:
        for k in SHOTS:
            per_ds = [
                sum(r["test_acc"] for r in runs if (r["dataset"], r["method"], r["shots"]) == (d, m, k)) / 2
                for d in DATASETS
            ]
            assert float(t1[m, k]["mean"]) == pytest.approx(sum(per_ds) / 3, abs=1e-3)
            assert t1[m, k]["datasets"] == "alpha;beta;gamma" and t1[m, k]["datasets_missing"] == ""
    assert len({round(float(r["mean"]), 3) for r in t1.values()}) > 2  # the numbers are not all alike


def test_benchmark_again_skips_everything(three):
    again = _run(three["cache_dir"], Path(three["out"]["runs_root"]))
    assert again["ran"] == 0 and again["skipped"] == 36 and again["complete"]


def test_two_shards_give_the_report_of_one_run(three, tmp_path):
    runs = tmp_path / "runs-B"
    first = _run(three["cache_dir"], runs, shard="0/2")
    assert 0 < first["ran"] < 36 and not first["complete"]
    second = _run(three["cache_dir"], runs, shard="1/2")
    assert first["ran"] + second["ran"] == 36 and second["complete"]
    rep = report(second["run_folders"], tmp_path / "report-B")
    assert _tables(rep) == _tables(three["report"])


@pytest.mark.slow
def test_a_killed_benchmark_resumes_to_the_same_report(three, tmp_path):
    """kill -9 after the third run was saved, then the same command again: the report of an unbroken run."""
    runs = tmp_path / "runs-C"
    script = textwrap.dedent(
        f"""
        import os, signal
        from cmm_cache.runs.benchmark import benchmark

        def progress(done, total, row, job):
            if done == 3:
                os.kill(os.getpid(), signal.SIGKILL)

        benchmark({",".join(DATASETS)!r}, "tiny", {METHODS!r}, {SHOTS!r}, {SEEDS!r}, options={OPTIONS!r},
                  cache_dir={str(three["cache_dir"])!r}, runs_root={str(runs)!r}, device="cpu", progress=progress)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in SHARD_ENV}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert len(list(runs.rglob("result.json"))) == 3
    resumed = _run(three["cache_dir"], runs)
    assert resumed["ran"] == 33 and resumed["skipped"] == 3 and resumed["complete"]
    rep = report(resumed["run_folders"], tmp_path / "report-C")
    assert _tables(rep) == _tables(three["report"])


@pytest.mark.slow
def test_worker_processes_give_the_same_runs(three, tmp_path):
    seen = []
    out = _run(three["cache_dir"], tmp_path / "runs-D", jobs=2, progress=lambda d, t, row, job: seen.append(d))
    assert out["ran"] == 36 and out["processes"] == 2 and seen == list(range(1, 37))
    rep = report(out["run_folders"], tmp_path / "report-D", plot=False)
    assert _tables(rep) == _tables(three["report"])


def test_a_half_finished_shared_unit_counts_each_run_once(tmp_path):
    """cross-modal-lp finished, cross-modal-wise-ft of the same subset not: one skipped, one fitted."""
    from support.text_cache import make_text_cache

    cd = tmp_path / "cache"
    make_text_cache(cache_path("texts", "synth-bb", cd), shots=(1,), seeds=(1,))
    opts = {"cross-modal-lp": {"iterations": 20}, "cross-modal-wise-ft": {"iterations": 20}}
    kw = dict(cache_dir=cd, runs_root=tmp_path / "r", options=opts)
    assert bm.benchmark("texts", "synth-bb", "cross-modal-lp", [1], [1], **kw)["ran"] == 1
    both = bm.benchmark("texts", "synth-bb", "cross-modal-lp,cross-modal-wise-ft", [1], [1], **kw)
    assert (both["ran"], both["skipped"], both["already_finished"], both["complete"]) == (1, 1, 1, True)
