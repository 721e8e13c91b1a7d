"""Every write can fail cleanly: a full disk (injected ``OSError(ENOSPC)``) or a refused permission gives one
message naming the path, leaves nothing half-written, keeps what was there, and shows the work's result
where there is one. Messages are printed as written (no rich markup); optional dependencies are checked
before the work."""

import errno
import json
import os
import sys

import numpy as np
import pytest
from support.extract import KW, image_root, make_dataset  # noqa: F401
from support.runs import read_tag, save
from support.synth import make_cache
from support.tiny_run import cli

from cmm_cache.cache import partial, writer
from cmm_cache.errors import CmmError
from cmm_cache.extract.pipeline import extract
from cmm_cache.util import atomic
from cmm_cache.util.atomic import WriteFailed, write_error_reason


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_hdf5s_way_of_saying_disk_full_is_recognised():
    e = OSError("Can't write data (file write failed: time = x, filename = 'a.h5', errno = 28, error message = ...)")
    assert "disk is full" in write_error_reason(e)
    assert write_error_reason(ValueError("bad shape")) is None


def test_a_full_disk_while_saving_a_run_keeps_the_old_run(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "shot_1-seed_1"
    save(run, 1)
    monkeypatch.setattr(atomic.os, "fsync", _enospc)  # the disk fills up while the new run is written
    with pytest.raises(WriteFailed) as e:
        save(run, 2)
    assert "disk is full" in e.value.message and str(run) in e.value.message and "Nothing half-written" in e.value.hint
    monkeypatch.undo()
    assert read_tag(run) == 1  # the last complete run is still there
    assert [p.name for p in run.parent.iterdir()] == [run.name]  # no temporary folder, no lock


def test_fit_shows_the_run_it_could_not_save_then_the_error(tmp_path, monkeypatch):
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1,), seeds=(1,))
    from cmm_cache.runs import store

    monkeypatch.setattr(store, "write_synced", _enospc)
    r = cli(["fit", "--cache", path, "--method", "zero-shot", "--shots", "1", "--runs-dir", tmp_path / "runs"],
            ok=False)  # fmt: skip
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "zero-shot 1-shot seed 1: test" in text  # the result is shown ...
    assert "but not written" in text and "No space left on device" in text  # ... then the one error
    assert not any(p.name.startswith(".") for p in (tmp_path / "runs").rglob("*"))  # nothing half-written


def test_a_full_disk_while_writing_a_chunk_stops_extract_and_it_resumes(image_root, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "x.h5"
    calls = {"n": 0}
    real = np.savez

    def fills_up(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # the third file of the work folder
            _enospc()
        return real(*a, **k)

    monkeypatch.setattr(partial.np, "savez", fills_up)
    with pytest.raises(CmmError, match="disk is full") as e:
        extract(make_dataset(image_root), "tiny", out=out, **KW)
    assert "run the same command again" in e.value.hint
    assert not out.exists() and not list(tmp_path.rglob("*.tmp-*"))
    monkeypatch.undo()
    r = extract(make_dataset(image_root), "tiny", out=out, **KW)
    assert r.status == "written" and r.images_resumed > 0


def test_a_full_disk_while_assembling_the_cache_keeps_the_old_file(image_root, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "x.h5"
    extract(make_dataset(image_root), "tiny", out=out, **KW)
    before = out.read_bytes()
    monkeypatch.setattr(writer, "_stream_split", _enospc)
    with pytest.raises(CmmError, match="disk is full"):
        extract(make_dataset(image_root), "tiny", out=out, force=True, **KW)
    assert out.read_bytes() == before and not list(tmp_path.glob("x.h5.tmp-*"))


def test_compare_shows_its_table_when_the_csv_cannot_be_written(tmp_path, monkeypatch):
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1,), seeds=(1,))
    import cmm_cache.runs.compare as compare_mod

    real = compare_mod.csv.DictWriter

    class Full(real):
        def writerows(self, rows):
            _enospc()

    monkeypatch.setattr(compare_mod.csv, "DictWriter", Full)
    csv = tmp_path / "table.csv"
    r = cli(["compare", "--cache", path, "--methods", "zero-shot", "--shots", "1", "--seeds", "1", "--no-save",
             "--csv", csv], ok=False)  # fmt: skip
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "zero-shot" in text and "1-shot" in text  # the table
    assert f"Could not write {csv}: the disk is full" in "".join(r.output.split("\n"))
    assert not csv.exists() and not list(tmp_path.glob("table.csv.tmp-*"))
    r = cli(["compare", "--cache", path, "--methods", "zero-shot", "--shots", "1", "--seeds", "1", "--no-save",
             "--csv", csv, "--json"], ok=False)  # fmt: skip
    out = json.loads(r.stdout)
    assert r.exit_code == 2 and out["table"] and "disk is full" in out["error"]  # one object: result and error


def test_results_merge_csv_on_a_read_only_folder_is_one_message(tmp_path):
    run = tmp_path / "runs" / "shot_1-seed_1"
    save(run, 1)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("this user can write anywhere (root): the permission case cannot be made here")
        r = cli(["results", "merge", run, "--csv", ro / "all.csv"], ok=False)
        assert r.exit_code == 2 and "Could not write" in r.output and "permission denied" in r.output
    finally:
        ro.chmod(0o700)


def test_results_merge_csv_on_a_full_disk_is_one_message(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "shot_1-seed_1"
    save(run, 1)
    monkeypatch.setattr(atomic.os, "fsync", _enospc)
    r = cli(["results", "merge", run, "--csv", tmp_path / "all.csv"], ok=False)
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "disk is full" in text and "Traceback" not in r.output
    assert "50.00" in text  # the merged table was shown first
    assert not (tmp_path / "all.csv").exists()


def test_plot_without_matplotlib_is_refused_before_any_run(tmp_path, monkeypatch):
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1,), seeds=(1,))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    r = cli(["compare", "--cache", path, "--methods", "zero-shot", "--shots", "1", "--seeds", "1",
             "--runs-dir", tmp_path / "runs", "--plot", tmp_path / "p.png"], ok=False)  # fmt: skip
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "needs matplotlib" in text and "cmm-cache[plot]" in text  # the hint keeps [plot]
    assert not (tmp_path / "runs").exists()  # nothing was fitted


def test_messages_are_printed_as_written(tmp_path):
    """A path holding rich markup ([/], [bold]) is printed as it is: no crash, nothing vanishes."""
    weird = tmp_path / "a[/]b [bold]x[n, 16]"
    r = cli(["fit", "--cache", weird / "c.h5"], ok=False)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "a[/]b [bold]x[n, 16]" in "".join(r.output.split("\n"))
