"""Run identity and folders, the protocol loop in the library, data checks, finding runs."""

import json
import re

import numpy as np
import pytest
from support.synth import make_cache

from cmm_cache.cache.reader import Cache, open_cache
from cmm_cache.cache.writer import write_cache
from cmm_cache.errors import CmmError
from cmm_cache.heads.run_folder import load_run
from cmm_cache.runs.discovery import find_run, scan_runs
from cmm_cache.runs.identity import config_key, result_config_key
from cmm_cache.runs.protocol import check_data, fit_protocol, fit_run, plan
from cmm_cache.runs.store import save_run

FAST = {"iterations": 30}


@pytest.fixture
def cache(tmp_path):
    return open_cache(make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1, 2), seeds=(1, 2))[0])


def _copy(c: Cache, path, fewshot=None, **over):
    """The cache `c` rewritten with other few-shot groups (or other attributes)."""
    kw = dict(
        dataset=c.dataset,
        backbone=c.backbone,
        provenance=c.provenance,
        classnames=c.classnames,
        text={"synthetic": (c.text(), ["x"])},
        default_templates="synthetic",
        splits={n: c.split(n) for n in ("train", "val", "test")},
        fewshot=fewshot if fewshot is not None else {g: c.fewshot(*g) for g in c.fewshot_groups},
    )
    kw.update(over)
    return open_cache(write_cache(path, **kw))


# ----------------------------------------------------------------------------
# Identity


def test_config_key_is_the_resolved_config_without_seed_device_and_runtime_options():
    base = {"method": "cmm", "iterations": 100, "lr": 1e-3, "templates": "t"}
    k = config_key({**base, "seed": 1, "device": "cpu", "threads": 2}, ("threads",))
    assert k == config_key({**base, "seed": 3, "device": "cuda", "threads": None, "shots": 16}, ("threads",))
    assert k != config_key({**base, "iterations": 200}, ("threads",))
    assert k != config_key({**base, "templates": "other"}, ("threads",))
    assert re.fullmatch("[0-9a-f]{8}", k)
    # a result written before methods existed (no method, no key) gets the key its config has today
    old = {"config": {**{x: v for x, v in base.items() if x != "method"}, "seed": 2, "device": "cpu", "threads": 1}}
    assert result_config_key(old) == k


def test_same_options_typed_differently_are_one_config(cache):
    a, _ = fit_run(cache, 1, 1, method="cmm", options={"iterations": 30, "lr": 1})
    b, _ = fit_run(cache, 1, 1, method="cmm", options={"iterations": 30, "lr": 1.0, "threads": 1})
    assert a["config_key"] == b["config_key"] and a["config"]["lr"] == 1.0


# ----------------------------------------------------------------------------
# Folders: never mixed, never silently overwritten


def test_two_configs_get_two_folders_and_the_same_run_is_skipped_or_forced(tmp_path, cache):
    root = tmp_path / "runs"
    first = list(fit_protocol(cache, [1], [1], options=FAST, runs_root=root))
    other = list(fit_protocol(cache, [1], [1], options={**FAST, "use_map": False}, runs_root=root))
    again = list(fit_protocol(cache, [1], [1], options=FAST, runs_root=root))
    forced = list(fit_protocol(cache, [1], [1], options=FAST, runs_root=root, force=True))
    assert first[0]["run"] != other[0]["run"]
    assert again[0]["run"] == first[0]["run"] and again[0]["skipped"] and not first[0]["replaced"]
    assert again[0]["test_acc"] == first[0]["test_acc"] and again[0]["run_id"] == first[0]["run_id"]
    assert forced[0]["run"] == first[0]["run"] and forced[0]["replaced"] and not forced[0].get("skipped")
    folders = sorted(p.parent.parent.name for p in root.rglob("result.json"))
    assert folders == sorted([f"cmm-{first[0]['config_key']}", f"cmm-{other[0]['config_key']}"])
    assert load_run(other[0]["run"]).model.W is None and load_run(first[0]["run"]).model.W is not None
    assert "replaced" not in json.loads((root.rglob("result.json").__next__()).read_text())


def test_out_folder_of_another_config_is_refused_before_training(tmp_path, cache):
    out = tmp_path / "mine"
    list(fit_protocol(cache, [1], [1], options=FAST, out=out))
    with pytest.raises(CmmError, match="holds another run") as e:
        list(fit_protocol(cache, [1], [1], options={**FAST, "triplet": False}, out=out))
    assert "--out" in e.value.hint and "--force" in e.value.hint
    assert json.loads((out / "result.json").read_text())["config"]["triplet"] is True
    r = list(fit_protocol(cache, [1], [1], options={**FAST, "triplet": False}, out=out, force=True))
    assert r[0]["replaced"] and json.loads((out / "result.json").read_text())["config"]["triplet"] is False


def test_save_run_is_the_one_place_a_result_goes(tmp_path, cache):
    result, arrays = fit_run(cache, 2, 1, options=dict(iterations=20))
    path = save_run(cache, result, arrays, runs_root=tmp_path / "r")
    assert path == tmp_path / "r" / "synth" / "synth-bb" / f"cmm-{result['config_key']}" / "shot_2-seed_1"
    assert load_run(path).result["config_key"] == result["config_key"]


# ----------------------------------------------------------------------------
# The protocol loop


def test_protocol_reads_each_split_once_and_yields_runs_in_order(tmp_path, cache, monkeypatch):
    reads = []
    real = Cache.split
    monkeypatch.setattr(Cache, "split", lambda self, name: reads.append(name) or real(self, name))
    got = list(fit_protocol(open_cache(cache.path), None, None, options=FAST, runs_root=tmp_path / "r"))
    assert [(r["shots"], r["seed"]) for r in got] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert sorted(reads) == ["test", "train", "val"]


def test_protocol_results_equal_single_runs_and_a_runner_sees_every_job(tmp_path, cache):
    seen = []

    def runner(fn, jobs):
        seen.extend((j.shots, j.seed) for j in jobs)
        return [fn(j) for j in reversed(jobs)][::-1]  # any order of work, results in job order

    got = list(fit_protocol(cache, [1, 2], [2], options=FAST, save=False, runner=runner))
    assert seen == [(1, 2), (2, 2)]
    single = fit_run(cache, 2, 2, method="cmm", options=FAST)[0]
    assert got[1]["test_acc"] == single["test_acc"] and got[1]["alpha"] == single["alpha"]
    assert "run" not in got[0]


def test_plan_refuses_a_missing_group_before_any_training(cache):
    assert plan(cache, [2], None) == [(2, 1), (2, 2)]
    with pytest.raises(CmmError, match="16-shot/seed 1"):
        list(fit_protocol(cache, [1, 16], None, options=FAST, save=False))


# ----------------------------------------------------------------------------
# Data checks


def test_counts_per_class_go_into_the_result(cache):
    r, _ = fit_run(cache, 2, 1, options=dict(iterations=10))
    assert r["train_images_per_class"] == [2, 2, 2, 2] and r["val_images_per_class"] == [2, 2, 2, 2]
    assert r["warnings"] == []


def test_a_class_without_training_image_stops_the_fit(tmp_path, cache):
    labels = cache.split("train").labels
    tr, va = cache.fewshot(1, 1)
    holed = _copy(cache, tmp_path / "h.h5", fewshot={(1, 1): (tr[labels[tr] != 2], va)})
    with pytest.raises(CmmError, match="no training image for 1 class") as e:
        list(fit_protocol(holed, [1], [1], options=FAST, runs_root=tmp_path / "r"))
    assert "'class 2'" in e.value.message and "extract" in e.value.hint
    assert not (tmp_path / "r").exists()


def test_a_class_without_val_image_is_a_recorded_warning(tmp_path, cache):
    tr, va = cache.fewshot(1, 1)
    vl = cache.split("val").labels
    c = _copy(cache, tmp_path / "v.h5", fewshot={(1, 1): (tr, va[vl[va] != 0])})
    r, _ = fit_run(c, 1, 1, options=dict(iterations=10))
    assert r["val_images_per_class"][0] == 0 and "class 0" in r["warnings"][0]


def test_a_single_class_dataset_stops(tmp_path):
    c = open_cache(make_cache(tmp_path / "one.h5", C=1, d=8, shots=(1,), seeds=(1,))[0])
    with pytest.raises(CmmError, match="nothing to classify"):
        check_data(c, 1, 1)


# ----------------------------------------------------------------------------
# Finding runs


def test_find_run_takes_the_default_config_or_asks(tmp_path, cache):
    root = tmp_path / "runs"
    no_map = list(fit_protocol(cache, [2], [1], options={**FAST, "use_map": False}, runs_root=root))[0]
    assert find_run(root, "synth", shots=2, seed=1).path.as_posix() == no_map["run"]  # the only config
    lp = list(fit_protocol(cache, [2], [1], options={**FAST, "lr": 1e-3}, runs_root=root))[0]
    with pytest.raises(CmmError, match="Several configurations") as e:
        find_run(root, "synth", shots=2, seed=1)
    assert no_map["run"] in e.value.message and lp["run"] in e.value.message and "use_map=False" in e.value.message
    result, arrays = fit_run(cache, 2, 1, method="cmm", options=FAST)
    result["config"]["iterations"] = 16000  # stands for a default-config run (without training 16k steps)
    result["config_key"] = result_config_key({"config": result["config"]})
    path = save_run(cache, result, arrays, runs_root=root)
    assert find_run(root, "synth", shots=2, seed=1).path == path  # the default config among several
    assert find_run(root, "synth", seed=1).shots == 2  # largest K fitted with that seed
    with pytest.raises(CmmError, match="No zero-shot run"):
        find_run(root, "synth", method="zero-shot", shots=2)


def test_old_layout_runs_are_found_and_read(tmp_path, cache):
    """A run folder as written before methods and config keys: shot_K-seed_S under the backbone."""
    result, arrays = fit_run(cache, 1, 1, options=dict(iterations=20))
    old = {k: v for k, v in result.items() if k not in ("method", "config_key", "head", "hparams")}
    old["config"] = {k: v for k, v in old["config"].items() if k != "method"}
    d = tmp_path / "runs" / "synth" / "synth-bb" / "shot_1-seed_1"
    d.mkdir(parents=True)
    np.savez(d / "weights.npz", **arrays)
    (d / "classes.json").write_text(json.dumps({"names": cache.classnames, "wnids": None}))
    (d / "provenance.json").write_text(json.dumps(cache.provenance))
    (d / "result.json").write_text(json.dumps(old))
    ref = find_run(tmp_path / "runs", "synth", shots=1, seed=1)
    assert ref.path == d and ref.method == "cmm" and ref.config_key == result["config_key"]
    run = load_run(d)
    assert run.head.alpha == result["alpha"] and [r.path for r in scan_runs(tmp_path / "runs")] == [d]
