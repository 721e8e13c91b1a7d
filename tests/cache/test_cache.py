"""Cache inspection and damage detection: verify (checksums + schema), info, ls, the lock."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from cmm_cache.cli.main import main

from cmm_cache.cache.info import list_caches
from cmm_cache.cache.locate import cache_path
from cmm_cache.cache.lock import CacheLock, lock_path
from cmm_cache.cache.reader import Split, open_cache
from cmm_cache.cache.verify import verify_cache
from cmm_cache.cache.writer import write_cache
from cmm_cache.errors import CmmError
from cmm_cache.extract.pipeline import extract

sys.path.insert(0, str(Path(__file__).parents[1]))
from support.extract import make_dataset  # noqa: E402


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    out = tmp_path_factory.mktemp("c") / "tinyset" / "tiny.h5"
    extract(make_dataset(root), "tiny", out=out, shots=[1], seeds=[1], chunk_rows=8, num_workers=0, record_last=False)
    return out


def _flip_byte_in(path: Path, node: str) -> None:
    with h5py.File(path, "r") as f:
        info = f[node].id.get_chunk_info(0)
        offset, size = info.byte_offset, info.size
    with open(path, "r+b") as fh:
        fh.seek(offset + size // 2)
        b = fh.read(1)
        fh.seek(offset + size // 2)
        fh.write(bytes([b[0] ^ 0x10]))


def test_verify_passes_a_sound_cache(cache_file):
    assert verify_cache(cache_file) == []
    r = CliRunner().invoke(main, ["cache", "verify", str(cache_file)])
    assert r.exit_code == 0 and "ok" in r.output


def test_verify_catches_a_flipped_byte(cache_file, tmp_path):
    damaged = tmp_path / "damaged.h5"
    shutil.copy(cache_file, damaged)
    _flip_byte_in(damaged, "splits/test/features")
    problems = verify_cache(damaged)
    assert any("splits/test/features" in p and "damaged" in p for p in problems), problems
    r = CliRunner().invoke(main, ["cache", "verify", str(damaged), "--json"])
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    assert out["ok"] is False and out["caches"][0]["problems"]
    r = CliRunner().invoke(main, ["cache", "verify", str(damaged)])
    assert r.exit_code == 1 and "damaged" in r.output
    with pytest.raises(CmmError, match="damaged"):  # the reader refuses it too
        open_cache(damaged).split("test")


def test_verify_catches_schema_inconsistencies(tmp_path):
    f = tmp_path / "bad.h5"
    feats = np.zeros((4, 1, 8), np.float16)
    write_cache(
        f,
        dataset="d",
        backbone="b",
        provenance={},
        classnames=["a", "b"],
        text={"t": (np.ones((3, 8), np.float32), ["{}"])},
        default_templates="t",
        splits={"train": Split(feats, np.array([0, 1, 5, 1]), np.arange(4), ["center", "hflip"])},
        fewshot={(1, 1): (np.array([0, 9]), np.array([0]))},
    )
    problems = "\n".join(verify_cache(f))
    assert "text/t/features: 3 rows for 2 classes" in problems
    assert "views" in problems  # 1 view stored, 2 named
    assert "class ids outside" in problems
    assert "fewshot/shot_1-seed_1/train: row positions outside" in problems
    assert "splits/val, which does not exist" in problems
    g = tmp_path / "not.h5"
    g.write_bytes(b"not hdf5 at all")
    assert "not readable as HDF5" in verify_cache(g)[0]


def test_info_and_ls(cache_file, monkeypatch):
    monkeypatch.setenv("CMM_CACHE_DIR", str(cache_file.parent.parent))
    r = CliRunner().invoke(main, ["cache", "info", str(cache_file), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["attrs"]["schema"] == "cmm-cache/1" and info["provenance"]["model"] == "cmm-tiny"
    nodes = {n["node"]: n for n in info["nodes"]}
    assert nodes["splits/train/features"]["shape"][1:] == [2, 32] and nodes["splits/train/features"]["checksum"]
    r = CliRunner().invoke(main, ["cache", "info", "--dataset", "tinyset", "--backbone", "tiny", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["path"] == str(cache_file)
    assert cache_path("tinyset", "tiny") == cache_file
    rows = list_caches()
    assert len(rows) == 1 and rows[0]["dataset"] == "tinyset" and rows[0]["classes"] == 3
    assert rows[0]["splits"]["test"] == 12
    r = CliRunner().invoke(main, ["cache", "ls"])
    assert r.exit_code == 0 and "tinyset" in r.output
    # an unfinished extraction is listed as such
    (cache_file.parent / "other.h5.partial").mkdir()
    assert any(r.get("unfinished") for r in list_caches())
    (cache_file.parent / "other.h5.partial").rmdir()


def test_lock_is_exclusive_and_released(tmp_path):
    target = tmp_path / "x.h5"
    with CacheLock(target):
        assert lock_path(target).exists()
        with pytest.raises(CmmError, match="Another extraction"):
            CacheLock(target).acquire()
    assert not lock_path(target).exists()  # lock files do not pile up
    with CacheLock(target):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_lock_taken_on_a_removed_lock_file_is_not_kept(tmp_path):
    """The flock-then-unlink race: B opens the lock file, A releases (removing it), B's flock then succeeds on
    the removed file. B must notice and lock the file at the path, so a third writer is still refused."""
    target = tmp_path / "x.h5"
    a = CacheLock(target).acquire()
    fd_b = os.open(lock_path(target), os.O_RDWR)  # B got as far as opening the file
    a.release()
    b = CacheLock(target)
    assert b._lock_fd(fd_b) is False  # the flock succeeded, but on a file nobody else can see
    b.acquire()
    with pytest.raises(CmmError, match="Another extraction"):
        CacheLock(target).acquire()
    b.release()
    assert not lock_path(target).exists()


_WRITER = textwrap.dedent("""
    import os, sys, time
    from cmm_cache.cache.lock import CacheLock
    from cmm_cache.errors import CmmError
    target, marker, go, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    while time.time() < go:
        time.sleep(0.001)
    got = overlaps = 0
    for _ in range(n):
        try:
            lock = CacheLock(target).acquire()
        except CmmError:
            continue
        got += 1
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if the other writer is inside too
            os.close(fd)
            os.unlink(marker)
        except FileExistsError:
            overlaps += 1
        lock.release()
    print(got, overlaps)
""")


def test_two_writers_never_hold_the_lock_together_and_leave_no_lock_file(tmp_path):
    import time

    target, marker = tmp_path / "x.h5", tmp_path / "inside"
    go = time.time() + 2.0  # both start together, after their imports
    args = [str(target), str(marker), str(go), "3000"]
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, *args], stdout=subprocess.PIPE, text=True) for _ in "ab"]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    got, overlaps = [int(o[0]) for o in outs], [int(o[1]) for o in outs]
    assert all(g > 0 for g in got) and overlaps == [0, 0], outs
    assert not lock_path(target).exists() and not marker.exists()


def test_fewshot_rows_outside_a_split_are_refused(tmp_path):
    """A foreign cache whose few-shot rows point past splits/train gets one clear error when it is opened,
    not an IndexError later."""
    import numpy as np
    import pytest

    from cmm_cache.cache.reader import Split, open_cache
    from cmm_cache.cache.writer import write_cache
    from cmm_cache.errors import CmmError

    feats = np.ones((3, 2, 4), np.float32)
    p = write_cache(
        tmp_path / "bad.h5",
        dataset="d",
        backbone="b",
        provenance={},
        classnames=["a", "b"],
        text={"t": (np.eye(2, 4), ["{}"])},
        default_templates="t",
        splits={
            "train": Split(feats, np.array([0, 1, 1]), np.arange(3), ["center", "hflip"]),
            "val": Split(feats[:, :1], np.array([0, 1, 1]), np.arange(3), ["center"]),
        },
        fewshot={(1, 1): (np.array([0, 7]), np.array([0, 1])), (1, 2): (np.array([0, 1]), np.array([1, 2]))},
    )
    with pytest.raises(CmmError, match=r"fewshot/shot_1-seed_1/train: row positions outside 0\.\.2"):
        open_cache(p)


def _small_cache(path, per_template=None):
    C, d = 3, 4
    feats = np.eye(C, d, dtype=np.float32)
    text = {"set": (feats, ["a {}.", "b {}."]) + ((per_template,) if per_template is not None else ())}
    split = Split(np.ones((2, 1, d), np.float16), np.array([0, 1]), np.array([0, 1]), ["center"])
    return write_cache(
        path, dataset="x", backbone="tiny", provenance={}, classnames=["a", "b", "c"], text=text,
        default_templates="set", splits={"test": split},
    )  # fmt: skip


def test_per_template_text_is_optional_and_its_absence_says_how_to_add_it(tmp_path):
    old = open_cache(_small_cache(tmp_path / "old.h5"))
    assert not old.has_per_template()
    assert verify_cache(old.path) == []  # a cache without the optional node is sound
    with pytest.raises(CmmError, match="--add-text"):
        old.text_per_template()
    per = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)
    new = open_cache(_small_cache(tmp_path / "new.h5", per))
    np.testing.assert_array_equal(new.text_per_template("set"), per)
    assert verify_cache(new.path) == []
    new.close()  # a Cache keeps its file open (read-only) until closed
    with h5py.File(new.path, "r+") as f:  # a per-template node of the wrong shape is reported
        del f["text/set/per_template"]
        f.create_dataset("text/set/per_template", data=per[:, :1], fletcher32=True)
    assert any("per_template" in p for p in verify_cache(new.path))


def test_verify_checks_root_attributes_and_classes(tmp_path):
    """The root-attribute and classes/ checkers: a missing attribute, non-JSON provenance, class vectors that
    disagree with classes/names."""
    f = _small_cache(tmp_path / "c.h5")
    assert verify_cache(f) == []
    with h5py.File(f, "r+") as h:
        del h.attrs["backbone"]
        h.attrs["provenance"] = "{not json"
        h.create_dataset("classes/wnids", data=np.array([b"n1", b"n2"]), fletcher32=True)  # 2 for 3 classes
        h.create_dataset("classes/imagenet_index", data=np.array([0, 5, 1000]), fletcher32=True)
        h.create_dataset("extra/no_checksum", data=np.zeros(3))
    problems = "\n".join(verify_cache(f))
    for want in (
        "attribute 'backbone' missing",
        "attribute provenance is not valid JSON",
        "classes/wnids length differs from classes/names",
        "classes/imagenet_index outside 0..999",
        "extra/no_checksum: stored without a checksum",
    ):
        assert want in problems, want
    assert "imagenet_index length" not in problems  # 3 entries for 3 classes: only the range is wrong
