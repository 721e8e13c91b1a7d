"""`runs ls`, `--run ID` in predict and eval, and tables that fit logs (nothing cut, paths whole)."""

import json

from click.testing import CliRunner
from cmm_cache.cli.main import main
from support.synth import make_cache
from support.text_cache import make_text_cache
from support.tiny_run import cli_json, tiny_run

from cmm_cache.util.paths import runs_dir


def _cli(args, ok=True):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert r.exit_code == 0, r.output
    return r


def test_predict_and_eval_take_a_run_id_from_runs_ls(tmp_path_factory):
    t = tiny_run(tmp_path_factory)
    listed = cli_json(["runs", "ls", "--cache-dir", t.cache_dir])
    mine = [r for r in listed["runs"] if r["path"] == str(t.run)]
    assert len(mine) == 1 and mine[0]["run_id"] == t.fitted["run_id"] and mine[0]["test_acc"] == t.fitted["test_acc"]
    rid = mine[0]["run_id"]
    image = t.test_paths[:3]
    by_path = cli_json(["predict", "--run", t.run, *image])
    by_id = cli_json(["predict", "--run", rid, "--cache-dir", t.cache_dir, *image])
    by_prefix = cli_json(["predict", "--cache-dir", t.cache_dir, "--run", rid[:5], *image])  # option order: any
    assert by_id["predictions"] == by_path["predictions"] == by_prefix["predictions"] and by_id["run"] == str(t.run)
    ev = cli_json(["eval", "--run", rid, "--cache-dir", t.cache_dir])
    assert ev["run"] == str(t.run) and ev["test_acc"] == t.fitted["test_acc"]
    gap_by_id = cli_json(["gap", "--run", rid, "--cache-dir", t.cache_dir])
    assert gap_by_id == cli_json(["gap", "--run", t.run, "--cache-dir", t.cache_dir])


def test_a_run_that_is_not_there_is_a_usage_error_that_says_where_to_look(tmp_path):
    r = _cli(["predict", "--run", "0123abcd", str(tmp_path)], ok=False)
    assert r.exit_code == 2 and "No run with id 0123abcd under" in r.output and "cmm-cache runs ls" in r.output
    assert "Traceback" not in r.output


def _fit_some(tmp_path, methods=("zero-shot", "linear-probe")):
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1,), seeds=(1, 2))
    for m in methods:
        _cli(["fit", "--cache", path, "--method", m])
    return path


def test_runs_ls_lists_ids_and_whole_paths_in_a_log(tmp_path, monkeypatch):
    deep = tmp_path / ("a-folder-with-a-long-name-" * 4) / "runs"
    monkeypatch.setenv("CMM_CACHE_DIR", str(deep.parent))
    _fit_some(tmp_path)
    out = json.loads(_cli(["runs", "ls", "--json"]).stdout)
    assert len(out["runs"]) == 4 and out["runs_root"] == str(deep)
    r = _cli(["runs", "ls", "--method", "linear_probe"])
    lines = r.stderr.splitlines()
    shown = [x for x in out["runs"] if x["method"] == "linear-probe"]
    for run in shown:  # each on one line: id, method, numbers and the whole path (> 100 characters)
        assert len(run["path"]) > 100
        assert any(run["run_id"] in line and run["path"] in line and f"{run['test_acc']:.2f}" in line for line in lines)
    assert "…" not in r.stderr and "zero-shot" not in r.stderr
    r = _cli(["runs", "ls", "--dataset", "dtd"])
    assert "No runs of dataset dtd under" in r.stderr


def test_results_merge_shows_run_ids_and_folders_uncut_in_a_log(tmp_path):
    path = make_text_cache(tmp_path / "t.h5")
    methods = "zero-shot,cross-modal-wise-ft,cross-modal-lp"  # long names that differ only at their ends
    _cli(["compare", "--cache", path, "--methods", methods, "--shots", "1", "--seeds", "1,2", "--max-iterations", "30"])
    r = _cli(["results", "merge", runs_dir()])
    assert "…" not in r.stderr  # no "13.…", no "cmm…"
    merged = json.loads(_cli(["results", "merge", runs_dir(), "--json"]).stdout)
    lines = r.stderr.splitlines()
    for run in merged["runs"]:
        row = [line for line in lines if run["run_id"] in line]
        assert len(row) == 1 and run["run"] in row[0] and f" {run['method']} " in row[0]
        assert f"{run['test_acc']:.2f}" in row[0]
    assert "run id" in r.stderr and "run folder" in r.stderr
