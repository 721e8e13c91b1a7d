"""check_output_path: every output option is checked before the work (and nothing is left behind by the check);
try_write: a write that fails after the work comes back as a report, not an exception."""

import errno
import os
import tempfile

import pytest

from cmm_cache.errors import CmmError
from cmm_cache.util.outputs import NotWritten, check_output_path, try_write


def test_a_writable_path_passes_and_missing_folders_are_fine(tmp_path):
    assert check_output_path(tmp_path / "a.csv", "--csv") == tmp_path / "a.csv"
    assert check_output_path(tmp_path / "new" / "deeper" / "a.csv", "--csv").name == "a.csv"
    assert check_output_path(tmp_path / "run", "--out", folder=True) == tmp_path / "run"
    (tmp_path / "old.csv").write_text("x")
    check_output_path(tmp_path / "old.csv", "--csv")  # replacing a file is writing it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.csv"]  # the probe left nothing


def test_a_file_where_a_folder_must_be_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CmmError, match=r"--csv .*f/out\.csv: .*f is not a folder \(a file is there\)"):
        check_output_path(tmp_path / "f" / "out.csv", "--csv")
    with pytest.raises(CmmError, match=r"is not a folder \(a file is there\)"):
        check_output_path(tmp_path / "f" / "a" / "b" / "plot.png", "--plot")
    with pytest.raises(CmmError, match=r"--out .*f is a file, not a folder"):
        check_output_path(tmp_path / "f", "--out", folder=True)


def test_a_folder_where_a_file_must_be_is_refused(tmp_path):
    with pytest.raises(CmmError, match=r"--out .* is a folder") as e:
        check_output_path(tmp_path, "--out")
    assert "Give a file name" in e.value.hint


def test_a_file_type_the_writer_does_not_know_is_refused(tmp_path):
    with pytest.raises(CmmError, match=r"cannot write a '\.pdf' file") as e:
        check_output_path(tmp_path / "acc.pdf", "--plot", suffixes=(".png", ".svg"))
    assert ".png or .svg" in e.value.hint
    check_output_path(tmp_path / "acc.SVG", "--plot", suffixes=(".png", ".svg"))


def test_a_folder_that_cannot_be_written_is_found_by_trying(tmp_path, monkeypatch):
    """The check creates a file (it does not read permission bits, which root, ACLs and read-only mounts defeat);
    here the creation fails as on a read-only file system."""

    def refuse(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(CmmError, match=r"--csv .*a\.csv: .* is not writable \(Read-only file system\)"):
        check_output_path(tmp_path / "a.csv", "--csv")


def test_try_write_reports_a_failed_write_and_passes_a_good_one(tmp_path):
    def full():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    value, failed = try_write("--plot", tmp_path / "p.png", full)
    assert value is None and failed == NotWritten("--plot", str(tmp_path / "p.png"), "OSError: No space left on device")
    assert failed.line() == f"not written: --plot {tmp_path / 'p.png'} (OSError: No space left on device)"
    assert try_write("--csv", "x", lambda: 7) == (7, None)
    _, failed = try_write("--plot", "p.png", lambda: (_ for _ in ()).throw(CmmError("needs matplotlib")))
    assert failed.error == "needs matplotlib"
