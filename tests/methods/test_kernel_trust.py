"""The compiled training loop runs no code it did not build itself in a private folder.

A planted library (its constructor creates a marker file the moment it is loaded) sits where the kernel is
looked for: in a kernel folder of another owner, one open to other users, behind a symbolic link, with a
sha256 that does not match the record, or at the old predictable temporary path. It is never loaded (the
marker never appears); the trainer still gets a kernel it built itself. Arguments are checked before any
call into C, and a kernel that cannot be had is said once, with the reason and the cost.
"""

import logging
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from cmm_cache.methods.trainers.cmm import kernel as K
from cmm_cache.methods.trainers.cmm.trainer import TrainConfig, clip_prob_true, draw_batches, train_cmm

CC = K._compiler()
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler: the kernel is never built or loaded here")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A clean kernel memo and a cache dir of this test's own; afterwards the memo is as it was."""
    state = dict(K._state)
    K.forget()
    monkeypatch.setenv("CMM_CACHE_DIR", str(tmp_path / "cache"))
    yield tmp_path / "cache"
    K.forget()
    K._state.update(state)


def _planted(where: Path, name: str, marker: Path) -> Path:
    """A shared library named `name` in `where` whose constructor creates `marker` when it is loaded."""
    where.mkdir(parents=True, exist_ok=True)
    src = where.parent / "planted.c"
    src.write_text(
        "#include <stdio.h>\n"
        f'__attribute__((constructor)) static void planted(void) {{ FILE *f = fopen("{marker}", "w"); '
        "if (f) fclose(f); }\n"
        "int cmm_abi_version(void) { return 1; }\n"
    )
    out = where / name
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(out), str(src)], check=True, capture_output=True)
    return out


def _names() -> list[str]:
    return [name for _, name in K._keys(CC)]


def _load_and_check(marker: Path) -> dict:
    lib = K.load()
    assert not marker.exists(), "the planted library was loaded (its constructor ran)"
    st = K.status()
    assert lib is not None and st["available"], st  # a kernel this process built itself
    return st


def _plant_all(kdir: Path, marker: Path) -> None:
    for name in _names():  # every flag set's name, each with a matching recorded sha256
        lib = _planted(kdir, name, marker)
        import hashlib

        (kdir / (name + ".sha256")).write_text(hashlib.sha256(lib.read_bytes()).hexdigest() + "\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder of another owner needs root (see the open-folder case)")
def test_kernel_folder_of_another_owner_is_refused(fresh, tmp_path, caplog):
    kdir, marker = fresh / "kernels", tmp_path / "MARKER"
    _plant_all(kdir, marker)
    os.chmod(kdir, 0o700)
    for p in [kdir, *kdir.iterdir()]:
        os.chown(p, 4242, 4242)  # another user's folder and files, private to them
    with caplog.at_level(logging.WARNING, logger="cmm_cache"):
        st = _load_and_check(marker)
    assert "another user" in st["reason"] and "temporary folder" in st["reason"]
    assert not st["path"].startswith(str(kdir))
    assert sum("another user" in r.getMessage() for r in caplog.records) == 1  # said once, with the reason


@pytest.mark.skipif(os.geteuid() != 0, reason="files of another owner need root")
def test_planted_files_of_another_owner_in_a_private_folder_are_refused(fresh, tmp_path):
    kdir, marker = fresh / "kernels", tmp_path / "MARKER"
    _plant_all(kdir, marker)
    os.chmod(kdir, 0o700)
    for p in kdir.iterdir():
        os.chown(p, 4242, 4242)
    st = _load_and_check(marker)
    assert st["reason"] in ("built", "cached") or "temporary folder" in st["reason"], st


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o755])
def test_kernel_folder_open_to_others_is_closed_and_emptied_first(fresh, tmp_path, mode):
    """A kernel folder of yours that others can write (group/world-writable) or enter: nothing in it is
    trusted. It is closed to 0700 and emptied, and the kernel built again."""
    kdir, marker = fresh / "kernels", tmp_path / "MARKER"
    _plant_all(kdir, marker)
    os.chmod(kdir, mode)
    st = _load_and_check(marker)
    assert st["reason"] == "built" and st["path"].startswith(str(kdir))
    assert (kdir.stat().st_mode & 0o777) == 0o700


def test_kernel_folder_behind_a_symbolic_link_is_refused(fresh, tmp_path):
    real, marker = tmp_path / "elsewhere", tmp_path / "MARKER"
    _plant_all(real, marker)
    os.chmod(real, 0o700)
    fresh.mkdir(parents=True)
    (fresh / "kernels").symlink_to(real)
    st = _load_and_check(marker)
    assert "symbolic link" in st["reason"] and not st["path"].startswith(str(real))


def test_a_library_that_does_not_match_its_recorded_sha256_is_not_loaded(fresh, tmp_path):
    kdir, marker = fresh / "kernels", tmp_path / "MARKER"
    kdir.mkdir(parents=True, mode=0o700)
    os.chmod(kdir, 0o700)
    for name in _names():
        _planted(kdir, name, marker)
        (kdir / (name + ".sha256")).write_text("0" * 64 + "\n")  # not the planted file's hash
    st = _load_and_check(marker)
    assert st["reason"] == "built"  # thrown away and built again


def test_a_library_without_a_recorded_sha256_is_not_loaded(fresh, tmp_path):
    kdir, marker = fresh / "kernels", tmp_path / "MARKER"
    kdir.mkdir(parents=True, mode=0o700)
    os.chmod(kdir, 0o700)
    for name in _names():
        _planted(kdir, name, marker)
    st = _load_and_check(marker)
    assert st["reason"] == "built"


def test_the_old_predictable_temporary_folder_is_never_used(fresh, tmp_path, monkeypatch):
    """Earlier versions fell back to $TMPDIR/cmm-cache-kernels-<uid>, which another user could pre-create."""
    marker = tmp_path / "MARKER"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    _plant_all(tmpdir / f"cmm-cache-kernels-{os.getuid()}", marker)
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("CMM_CACHE_DIR", str(tmp_path / "a-file" / "cache"))  # no kernel folder can be made
    st = _load_and_check(marker)
    assert "temporary folder" in st["reason"]
    assert not list(tmpdir.glob("cmm-cache-kernel-*")), "the per-process build folder is removed after loading"


def test_a_foreign_library_that_binds_badly_falls_back_cleanly(fresh, tmp_path):
    """A library in the private folder with a matching hash but not the kernel's symbols (e.g. built by
    another version): not used, built again; never a crash."""
    kdir = fresh / "kernels"
    kdir.mkdir(parents=True, mode=0o700)
    os.chmod(kdir, 0o700)
    src = tmp_path / "other.c"
    src.write_text("int something_else(void) { return 0; }\n")
    import hashlib

    for name in _names():
        subprocess.run([CC, "-shared", "-fPIC", "-o", str(kdir / name), str(src)], check=True)
        (kdir / (name + ".sha256")).write_text(hashlib.sha256((kdir / name).read_bytes()).hexdigest())
    assert K.load() is not None and K.status()["reason"] == "built"


def test_a_kernel_that_cannot_be_built_is_said_once_with_reason_and_cost(fresh, tmp_path, monkeypatch, caplog):
    fake = tmp_path / "full-disk-cc"
    fake.write_text("#!/bin/sh\necho 'fatal error: write failed: No space left on device' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(K, "_compiler", lambda: str(fake))
    x, y, T0 = _data()
    with caplog.at_level(logging.WARNING, logger="cmm_cache"):
        r1 = train_cmm(x, y, T0, TrainConfig(iterations=5))
        r2 = train_cmm(x, y, T0, TrainConfig(iterations=5))
    said = [r.getMessage() for r in caplog.records if r.name.startswith("cmm_cache")]
    assert len(said) == 1, said
    assert "No space left on device" in said[0] and "torch path" in said[0] and "slower" in said[0]
    assert r1.engine.startswith("torch") and "No space left on device" in (r1.engine_note or "")
    assert r2.engine_note == r1.engine_note  # each run records why (the result), the warning is said once


def _data(C=5, d=16, per=4):
    g = torch.Generator().manual_seed(0)
    T0 = torch.nn.functional.normalize(torch.randn(C, d, generator=g), dim=1)
    y = torch.arange(C).repeat_interleave(per)
    x = torch.nn.functional.normalize(T0[y] + 0.3 * torch.randn(len(y), d, generator=g), dim=1)
    return x, y, T0


def test_arguments_are_checked_before_the_c_call():
    lib = K.load()
    if lib is None:
        pytest.skip(f"no compiled CPU loop here: {K.status()['reason']}")
    x, y, T0 = _data()
    cfg = TrainConfig(iterations=4)
    p0y = clip_prob_true(x, y, T0)
    with pytest.raises(ValueError, match="labels outside"):
        K.KernelLoop(lib, x, torch.full_like(y, 7), p0y, T0, cfg)
    with pytest.raises(ValueError, match="x must be"):
        K.KernelLoop(lib, x[:, :3], y, p0y, T0, cfg)
    with pytest.raises(ValueError, match="batch size"):
        K.KernelLoop(lib, x, y, p0y, T0, TrainConfig(iterations=4, batch_size=65))
    loop = K.KernelLoop(lib, x, y, p0y, T0, cfg)
    try:
        with pytest.raises(ValueError, match="schedule"):
            loop.run(0, 1, 1)  # no schedule yet
        bad = draw_batches(len(x), 4, cfg.batch_size, 1)
        bad[2, 3] = len(x)  # one index past the samples
        with pytest.raises(ValueError, match="batch indices outside"):
            loop.set_schedule(bad, [1e-4] * 4)
        with pytest.raises(ValueError, match="learning rates"):
            loop.set_schedule(draw_batches(len(x), 4, cfg.batch_size, 1), [1e-4] * 3)
        loop.set_schedule(draw_batches(len(x), 4, cfg.batch_size, 1), [1e-4] * 4)
        with pytest.raises(ValueError, match="outside the schedule"):
            loop.run(2, 9, 1)
        assert set(loop.run(0, 4, 1, want={4})) == {4}  # a valid call still runs
    finally:
        loop.close()


def test_the_planted_library_does_run_code_when_loaded(tmp_path):
    """The control: loading the planted library does create the marker, so its absence above means it was
    never loaded (in a separate process, so this process never loads it)."""
    marker = tmp_path / "MARKER"
    lib = _planted(tmp_path / "plant", "x.so", marker)
    import sys

    subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(lib)!r})"], check=True)
    assert marker.exists()
