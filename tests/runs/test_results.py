"""Run folders: what they hold, atomic replacement, merge and the mean ± std table."""

import csv
import json

import numpy as np
import pytest
from support.synth import make_cache

from cmm_cache.cache.reader import open_cache
from cmm_cache.errors import CmmError
from cmm_cache.heads.run_folder import load_run
from cmm_cache.runs.protocol import fit_run
from cmm_cache.runs.results import RESULT_FIELDS, read_results, scan_results, summarize, write_csv
from cmm_cache.runs.store import write_run

FIELDS = {
    "dataset",
    "backbone",
    "shots",
    "seed",
    "alpha",
    "val_acc",
    "test_acc",
    "zero_shot_test_acc",
    "cmm_only_test_acc",
    "fit_seconds",
    "iterations",
    "config",
    "cache_provenance_sha256",
    "versions",
}


@pytest.fixture
def cache(tmp_path):
    return open_cache(make_cache(tmp_path / "c.h5", C=5, d=12, shots=(1, 2), seeds=(1, 2))[0])


def test_run_folder_round_trip(tmp_path, cache):
    result, arrays = fit_run(cache, 2, 1, options=dict(iterations=50))
    assert FIELDS <= set(result)
    assert result["cache_provenance_sha256"] == cache.provenance_sha256
    assert result["config"]["iterations"] == 50 and result["config"]["templates"] == "synthetic"
    assert 0 <= result["test_acc"] <= 100 and result["alpha"] in [round(0.1 * i, 1) for i in range(1, 21)]
    run = write_run(tmp_path / "runs" / "r", result, arrays, cache)
    assert sorted(p.name for p in run.iterdir()) == ["classes.json", "provenance.json", "result.json", "weights.npz"]
    back = load_run(run)
    assert back.result == json.loads(json.dumps(result))
    assert np.array_equal(back.model.W.numpy(), arrays["W"]) and np.array_equal(back.model.T0.numpy(), cache.text())
    assert back.classnames == cache.classnames and back.provenance == cache.provenance


def test_rerun_replaces_the_folder_cleanly(tmp_path, cache):
    result, arrays = fit_run(cache, 1, 1, options=dict(iterations=20))
    d = tmp_path / "runs" / "shot_1-seed_1"
    write_run(d, result, arrays, cache)
    (d / "stale.txt").write_text("from an older version")
    result["seed"] = 99
    write_run(d, result, arrays, cache)
    assert not (d / "stale.txt").exists() and load_run(d).result["seed"] == 99
    assert [p.name for p in d.parent.iterdir()] == ["shot_1-seed_1"]  # no temp folder left behind


def test_no_map_run_has_no_W(tmp_path, cache):
    result, arrays = fit_run(cache, 1, 1, options=dict(iterations=20, use_map=False))
    assert "W" not in arrays
    assert load_run(write_run(tmp_path / "r", result, arrays, cache)).model.W is None


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(CmmError, match="No run"):
        load_run(tmp_path / "nothing")


def _r(shots, seed, acc, **config):
    return {
        "config": {"method": "cmm", "iterations": 10, **config, "seed": seed},
        "dataset": "d",
        "backbone": "b",
        "shots": shots,
        "seed": seed,
        "alpha": 1.0,
        "val_acc": acc,
        "test_acc": acc,
        "zero_shot_test_acc": 50.0,
        "cmm_only_test_acc": acc - 1,
        "fit_seconds": 1.0,
        "iterations": 10,
        "cache_provenance_sha256": "x",
    }


def test_summary_is_mean_and_sample_std_per_shot():
    s = summarize([_r(4, 1, 70.0), _r(4, 2, 72.0), _r(4, 3, 74.0), _r(1, 1, 60.0)])
    assert [r["shots"] for r in s] == [1, 4]
    four = s[1]
    assert four["runs"] == 3 and four["seeds"] == [1, 2, 3]
    assert four["test_acc_mean"] == 72.0 and four["test_acc_std"] == 2.0
    assert s[0]["test_acc_std"] == 0.0


def test_merge_reads_nested_run_folders_and_writes_csv(tmp_path):
    for k, s, acc in [(1, 1, 60.0), (1, 2, 62.0)]:
        d = tmp_path / "runs" / f"shot_{k}-seed_{s}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(_r(k, s, acc)))
    rows = read_results([tmp_path / "runs"])
    assert len(rows) == 2
    out = write_csv(rows, tmp_path / "o.csv")
    got = list(csv.DictReader(open(out)))
    assert [float(r["test_acc"]) for r in got] == [60.0, 62.0]
    assert set(RESULT_FIELDS) <= set(got[0])
    with pytest.raises(CmmError):
        read_results([tmp_path / "o.csv.d"])


def test_summary_never_averages_two_configurations():
    runs = [_r(1, 1, 10.0), _r(1, 2, 10.0), _r(1, 1, 5.0, use_map=False), _r(1, 2, 6.0, use_map=False)]
    s = summarize(runs)
    assert len(s) == 2 and {r["runs"] for r in s} == {2}
    assert sorted(r["test_acc_mean"] for r in s) == [5.5, 10.0]
    assert len({r["config_key"] for r in s}) == 2 and all(len(r["config_key"]) == 8 for r in s)
    assert {r["method"] for r in s} == {"cmm"}


def test_merge_reports_a_damaged_result_by_path_and_keeps_the_rest(tmp_path):
    good = tmp_path / "runs" / "a" / "shot_1-seed_1"
    good.mkdir(parents=True)
    (good / "result.json").write_text(json.dumps(_r(1, 1, 60.0)))
    broken = {"b": "{not json", "c": "[1, 2]", "d": json.dumps({**_r(1, 1, 1.0), "shots": "four"})}
    for name, text in broken.items():
        d = tmp_path / "runs" / name / "shot_1-seed_1"
        d.mkdir(parents=True)
        (d / "result.json").write_text(text)
    hidden = tmp_path / "runs" / "a" / ".shot_2-seed_1.tmp-123"  # a write in progress is not a run
    hidden.mkdir()
    (hidden / "result.json").write_text("{")
    results, damaged = scan_results([tmp_path / "runs"])
    assert [r["run"] for r in results] == [str(good)]
    assert sorted(d["path"] for d in damaged) == sorted(
        str(tmp_path / "runs" / n / "shot_1-seed_1" / "result.json") for n in broken
    )
    assert "shots" in [d for d in damaged if "/d/" in d["path"]][0]["error"]
