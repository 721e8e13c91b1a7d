"""`cmm-cache benchmark`, `cmm-cache report` and `eval --save` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from cmm_cache.cli.main import main
from support.bench_data import write_colour_folder
from support.synth import World, make_cache, make_shift_cache

from cmm_cache.cache.locate import cache_path
from cmm_cache.util.paths import runs_dir

SHARD_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")


@pytest.fixture(autouse=True)
def _no_shard_env(monkeypatch):
    for name in SHARD_ENV:
        monkeypatch.delenv(name, raising=False)


def _run(args, ok=True, env=None):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env=env)
    if ok:
        assert r.exit_code == 0, r.output
    return r


def _synth(name, **kw):
    make_cache(cache_path(name, "bb"), dataset=name, backbone="bb", C=4, d=12, shots=(1, 2), seeds=(1, 2), **kw)


def test_benchmark_json_runs_and_reports(tmp_path):
    for name in ("one", "two"):
        _synth(name, seed=len(name))
    args = [
        "--datasets",
        "one,two",
        "--backbone",
        "bb",
        "--methods",
        "zero-shot,gda,cmm",
        "--shots",
        "1,2",
        "--seeds",
        "1,2",
        "--max-iterations",
        "40",
    ]
    r = _run(["benchmark", *args, "--report", tmp_path / "rep", "--json"])
    out = json.loads(r.stdout)
    assert out["jobs"] == 2 * 3 * 2 * 2 == out["ran"] and out["complete"] and out["shard"]["count"] == 1
    assert Path(out["report"]["html"]).is_file() and Path(out["report"]["png"][0]).is_file()
    assert "[24/24] two × bb cmm 2-shot seed 2" in r.stderr
    assert {
        json.loads((Path(x["run"]) / "result.json").read_text())["iterations"]
        for x in out["runs"]
        if x["method"] == "cmm"
    } == {40}
    again = json.loads(_run(["benchmark", *args, "--no-report", "--json"]).stdout)
    assert again["ran"] == 0 and again["skipped"] == 24 and "report" not in again
    rep = json.loads(_run(["report", runs_dir(), "--out", tmp_path / "rep2", "--no-plot", "--json"]).stdout)
    assert rep["summary"]["datasets"] == ["one", "two"] and rep["png"] == []
    table1 = Path(rep["csv"]["table1-bb"]).read_text()
    assert table1 == Path(out["report"]["csv"]["table1-bb"]).read_text()


def test_benchmark_lists_what_is_missing_and_trains_nothing(tmp_path):
    _synth("one")
    r = _run(
        [
            "benchmark",
            "--datasets",
            "one,ghost",
            "--backbone",
            "bb",
            "--methods",
            "zero-shot,cross-modal-lp",
            "--shots",
            "1",
            "--seeds",
            "1",
        ],
        ok=False,
    )
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "Nothing was trained: 3 requirement(s) of the 4 benchmark jobs" in text
    assert "No batch size of [8, 32] fits 8 image and 4 text samples" in text  # the method's own precheck
    assert "cmm-cache extract --dataset ghost --backbone bb" in text and "--add-text" in text
    assert not list(runs_dir().rglob("result.json"))


def test_benchmark_shard_that_disagrees_with_torchrun_is_refused(tmp_path):
    _synth("one")
    r = _run(
        ["benchmark", "--datasets", "one", "--backbone", "bb", "--methods", "zero-shot", "--shard", "0/2"],
        ok=False,
        env={"RANK": "1", "WORLD_SIZE": "2"},
    )
    assert r.exit_code == 2 and "disagrees with the torchrun environment" in " ".join(r.output.split())


def test_benchmark_extract_then_run_on_your_own_folder(tmp_path):
    folder = write_colour_folder(tmp_path / "colours", 50)
    r = _run(
        [
            "benchmark",
            "--datasets",
            folder,
            "--backbone",
            "tiny",
            "--methods",
            "zero-shot",
            "--shots",
            "1",
            "--seeds",
            "1",
            "--extract",
            "--no-report",
            "--json",
        ]
    )
    out = json.loads(r.stdout)
    assert out["prepared"] == [{"did": "extract", "dataset": str(folder), "backbone": "tiny"}] and out["ran"] == 1
    again = json.loads(
        _run(
            [
                "benchmark",
                "--datasets",
                "colours",
                "--backbone",
                "tiny",
                "--methods",
                "zero-shot",
                "--shots",
                "1",
                "--seeds",
                "1",
                "--extract",
                "--no-report",
                "--json",
            ]
        ).stdout
    )
    assert again["prepared"] == [] and again["skipped"] == 1  # the short name finds the same cache and run


def test_eval_shift_save_feeds_table_3(tmp_path):
    world = World(C=20, d=16, seed=3)
    make_cache(
        cache_path("imagenet", "bb"),
        dataset="imagenet",
        backbone="bb",
        world=world,
        shots=(16,),
        seeds=(1,),
        train_per_class=16,
        wnids=True,
    )
    fitted = json.loads(
        _run(["fit", "--dataset", "imagenet", "--backbone", "bb", "--iterations", "60", "--json"]).stdout
    )
    make_shift_cache(cache_path("imagenet-a", "bb"), world, [2, 5, 7, 11, 19], backbone="bb", dataset="imagenet-a")
    out = json.loads(_run(["eval", "--shift", "imagenet-a", "--save", "--json"]).stdout)
    saved = Path(out["saved"])
    assert saved == Path(fitted["run"]) / "evals" / "imagenet_a.json"
    doc = json.loads(saved.read_text())
    assert doc["schema"] == "cmm-eval/1" and doc["run_id"] == fitted["run_id"] and doc["test_acc"] == out["test_acc"]
    rep = json.loads(_run(["report", runs_dir(), "--out", tmp_path / "rep", "--no-plot", "--json"]).stdout)
    md = Path(rep["markdown"]).read_text()
    assert "Table 3 — ImageNet → distribution shifts" in md and "Table 2 — ImageNet, 16 shots" in md
    t3 = Path(rep["csv"]["table3"]).read_text()
    assert f"imagenet_a,{round(out['test_acc'], 4)}," in t3
