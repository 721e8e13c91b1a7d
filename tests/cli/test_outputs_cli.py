"""Every output path is checked before the work starts; a write that fails after it still shows the result and
names what was not written, exit status 2, no traceback."""

import errno
import json
import os
import sys

import pytest
from click.testing import CliRunner
from cmm_cache.cli.main import main
from support.synth import make_cache
from support.text_cache import make_text_cache

from cmm_cache.util.paths import runs_dir


def _cli(args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _no_work(*a, **k):
    raise AssertionError("the work started although an output path was bad")


def _a_file(tmp_path):
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    return f


def _fake_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"dataset": "d", "backbone": "b", "shots": 1, "seed": 1}))
    return run


def test_compare_refuses_a_bad_plot_or_csv_before_fitting(tmp_path, monkeypatch):
    import cmm_cache.runs.compare as cmp

    monkeypatch.setattr(cmp, "fit_run", _no_work)
    path = make_text_cache(tmp_path / "c.h5")
    base = ["compare", "--cache", path, "--methods", "zero-shot", "--shots", "1", "--seeds", "1"]
    for extra, said in (
        (["--plot", _a_file(tmp_path) / "acc.png"], "is not a folder (a file is there)"),
        (["--plot", tmp_path / "acc.pdf"], "cannot write a '.pdf' file"),
        (["--csv", tmp_path], "is a directory"),  # click's own check of an existing path
    ):
        r = _cli([*base, *extra])
        assert r.exit_code == 2 and said in r.output and "Traceback" not in r.output, r.output
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the [plot] extra not installed
    r = _cli([*base, "--plot", tmp_path / "acc.png"])
    assert r.exit_code == 2 and "needs matplotlib" in r.output
    assert not runs_dir().exists()


def test_compare_whose_plot_cannot_be_written_still_prints_the_table_and_the_csv(tmp_path, monkeypatch):
    import cmm_cache.runs.compare as cmp

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cmp, "plot", disk_full)  # fails after the work, as a full disk would
    path = make_text_cache(tmp_path / "c.h5")
    args = ["compare", "--cache", path, "--methods", "zero-shot,gda", "--shots", "1", "--seeds", "1", "--no-save"]
    args += ["--plot", tmp_path / "acc.png", "--csv", tmp_path / "acc.csv"]
    r = _cli(args)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "test accuracy (%)" in r.stderr and "gda" in r.stderr  # the table
    assert f"not written: --plot {tmp_path / 'acc.png'} (OSError: No space left on device)" in r.stderr
    assert (tmp_path / "acc.csv").is_file() and not (tmp_path / "acc.png").exists()
    out = json.loads(_cli([*args, "--json"]).stdout)  # with --json: the result, and what was not written
    assert out["table"] and out["not_written"][0]["what"] == "--plot" and out["plot"] is None


def test_predict_and_export_refuse_a_bad_output_before_loading_anything(tmp_path, monkeypatch):
    import cmm_cache.serving.export as export
    import cmm_cache.serving.predict as predict

    monkeypatch.setattr(predict, "load_classifier", _no_work)
    monkeypatch.setattr(export, "export_run", _no_work)
    run, bad = _fake_run(tmp_path), _a_file(tmp_path) / "out"
    r = _cli(["predict", "--run", run, tmp_path, "--csv", bad / "p.csv"])
    assert r.exit_code == 2 and "--csv" in r.output and "is not a folder (a file is there)" in r.output
    r = _cli(["export", "--run", run, "--out", bad / "m.pt2"])
    assert r.exit_code == 2 and "--out" in r.output and "is not a folder (a file is there)" in r.output
    r = _cli(["export", "--run", run, "--out", tmp_path])
    assert r.exit_code == 2 and "is a directory" in r.output


def test_results_merge_checks_its_csv_first_and_reports_a_failed_write_after_the_table(tmp_path, monkeypatch):
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1,), seeds=(1,))
    assert _cli(["fit", "--cache", path, "--iterations", "30"]).exit_code == 0
    r = _cli(["results", "merge", runs_dir(), "--csv", _a_file(tmp_path) / "all.csv"])
    assert r.exit_code == 2 and "is not a folder (a file is there)" in r.output and "test acc" not in r.output

    import cmm_cache.runs.results as results

    def fails(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(results, "write_csv", fails)
    r = _cli(["results", "merge", runs_dir(), "--csv", tmp_path / "all.csv"])
    assert r.exit_code == 2 and "test acc" in r.stderr and "Traceback" not in r.output
    assert f"not written: --csv {tmp_path / 'all.csv'} (PermissionError: Permission denied)" in r.stderr


def test_fit_refuses_an_out_that_is_a_file_before_training(tmp_path):
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1,), seeds=(1,))
    r = _cli(["fit", "--cache", path, "--out", _a_file(tmp_path)])
    assert r.exit_code == 2 and "--out" in r.output and "is a file" in r.output  # click's own check
    r = _cli(["fit", "--cache", path, "--out", _a_file(tmp_path) / "run"])
    assert r.exit_code == 2 and "--out" in r.output and "is not a folder (a file is there)" in r.output
    assert not runs_dir().exists()


@pytest.mark.parametrize("what", ["--csv"])
def test_datasets_list_checks_its_csv(tmp_path, what):
    r = _cli(["datasets", "tiny", "--split", "test", what, _a_file(tmp_path) / "t.csv"])
    assert r.exit_code == 2 and "is not a folder (a file is there)" in r.output


def test_a_run_folder_that_cannot_be_written_after_the_fit_gives_the_result_and_the_folder(tmp_path, monkeypatch):
    import cmm_cache.runs.protocol as protocol

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(protocol, "save_run", disk_full)
    path = make_text_cache(tmp_path / "c.h5")
    for cmd in (["fit", "--iterations", "30"], ["compare", "--methods", "zero-shot"]):
        r = _cli([*cmd, "--cache", path, "--shots", "1", "--seeds", "1"])
        said = " ".join(r.output.split())
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert "1-shot seed 1 run was fitted (test " in said and "but not written: " in said
        assert "(OSError: No space left on device)" in said and "run the same command again" in said
