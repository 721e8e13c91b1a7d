"""Finding runs: `list_runs` with their short ids, and `resolve_run`, the one rule behind every `--run`."""

import json
import shutil
from pathlib import Path

import pytest
from support.synth import make_cache

from cmm_cache.cache.reader import open_cache
from cmm_cache.errors import CmmError
from cmm_cache.runs.discovery import folder_run_id, list_runs, resolve_run
from cmm_cache.runs.identity import run_id, run_identity
from cmm_cache.runs.protocol import fit_protocol


@pytest.fixture
def runs(tmp_path):
    """4 runs under tmp_path/runs: zero-shot 1/2-shot seed 1, linear-probe 1-shot seeds 1, 2."""
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1, 2), seeds=(1, 2))
    cache, root = open_cache(path), tmp_path / "runs"
    out = list(fit_protocol(cache, [1, 2], [1], method="zero-shot", runs_root=root))
    out += list(fit_protocol(cache, [1], [1, 2], method="linear-probe", runs_root=root))
    return root, [{**r, "run": Path(r["run"])} for r in out]


def test_runs_are_listed_with_the_id_their_result_records(runs):
    root, fitted = runs
    listed = list_runs(root)
    assert len(listed) == 4 and {i.run_id for i in listed} == {r["run_id"] for r in fitted}
    for info in listed:
        r = json.loads((info.path / "result.json").read_text())
        assert info.run_id == r["run_id"] == run_id(run_identity(r))
        assert (info.method, info.shots, info.seed, info.dataset, info.backbone) == (
            r["method"], r["shots"], r["seed"], "synth", "synth-bb"
        )  # fmt: skip
    assert [i.method for i in listed] == ["linear-probe", "linear-probe", "zero-shot", "zero-shot"]


def test_filters_take_names_as_users_write_them(runs):
    root, _ = runs
    assert len(list_runs(root, method="zero_shot")) == 2  # `_` for `-`, as the method registry takes it
    assert len(list_runs(root, method="linear-probe", dataset="synth", backbone="SYNTH-BB")) == 2
    assert list_runs(root, dataset="dtd") == [] and list_runs(root / "nowhere") == []


def test_a_run_written_before_ids_were_recorded_gets_the_same_id(runs):
    root, fitted = runs
    path = fitted[0]["run"]
    result = json.loads((path / "result.json").read_text())
    old = {k: v for k, v in result.items() if k not in ("run_id", "cache_content_sha256")}
    (path / "result.json").write_text(json.dumps(old))
    assert folder_run_id(path) == result["run_id"]  # from the identity, the content hash from provenance.json
    assert resolve_run(result["run_id"], root) == path


def test_resolve_run_takes_an_id_a_prefix_a_run_folder_or_a_folder_of_one_run(runs, tmp_path):
    root, fitted = runs
    target = fitted[2]["run"]  # linear-probe 1-shot seed 1
    rid = fitted[2]["run_id"]
    assert resolve_run(rid, root) == target
    assert resolve_run(rid[:6], root) == target and resolve_run(rid[:4].upper(), root) == target
    assert resolve_run(target, root) == target
    one = tmp_path / "kept" / "best" / "shot_1-seed_1"
    shutil.copytree(target, one)
    assert resolve_run(tmp_path / "kept", root) == one  # a folder holding exactly one run, at any depth


def test_a_folder_of_several_runs_lists_them_with_their_ids(runs):
    root, fitted = runs
    lp = fitted[2]["run"].parent  # linear-probe-<key>/shot_1-seed_{1,2}
    with pytest.raises(CmmError) as e:
        resolve_run(lp, root)
    assert f"{lp} holds 2 runs; which one?" in e.value.message
    assert fitted[2]["run_id"] in e.value.message and fitted[3]["run_id"] in e.value.message
    assert "run's id" in e.value.hint
    with pytest.raises(CmmError, match="holds 4 runs"):
        resolve_run(root, root)  # the folder of everything asks as well


def test_what_is_no_run_says_so(runs, tmp_path):
    root, fitted = runs
    (tmp_path / "empty").mkdir()
    for value, said in (
        (tmp_path / "empty", "No run in"),
        (tmp_path / "c.h5", "is a file, not a run folder"),
        ("abcdef0123", "No run with id abcdef0123 under"),
        ("no-such-folder", "No run folder no-such-folder"),
        (fitted[0]["run_id"][:3], "No run folder"),  # 3 digits are too few to be an id
    ):
        with pytest.raises(CmmError, match=said) as e:
            resolve_run(value, root)
        assert "cmm-cache runs ls" in e.value.hint or "run's id" in e.value.hint


def test_a_prefix_of_several_ids_lists_them(runs):
    root, fitted = runs
    for r, fake in zip(fitted[:2], ("abcd111111", "abcd222222")):
        result = json.loads((r["run"] / "result.json").read_text())
        (r["run"] / "result.json").write_text(json.dumps({**result, "run_id": fake}))
    with pytest.raises(CmmError, match=r"Run id abcd fits 2 runs") as e:
        resolve_run("abcd", root)
    assert "abcd111111" in e.value.message and "Give more digits" in e.value.hint
    assert resolve_run("abcd2", root) == fitted[1]["run"]
