"""Extraction that is interrupted, killed, locked or finds something at its target: resume, refuse, recover."""
# ruff: noqa: F811  (the fixtures imported from support/extract.py are used as arguments)

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cmm_cache.backbones.load import load_backbone
from cmm_cache.cache.lock import CacheLock
from cmm_cache.cache.partial import partial_dir
from cmm_cache.cache.reader import open_cache
from cmm_cache.cache.verify import verify_cache
from cmm_cache.errors import CmmError
from cmm_cache.extract.pipeline import extract

sys.path.insert(0, str(Path(__file__).parents[1]))
from support.extract import KW, SEEDS, SHOTS, InjectedFailure, ds, fail_after, image_root, make_dataset, reference  # noqa: E402, F401


def test_interrupted_run_resumes_and_ends_identical(reference, ds, tmp_path):
    _, ref = reference
    out = tmp_path / "c.h5"
    with pytest.raises(InjectedFailure):
        extract(ds, "tiny", out=out, on_chunk=fail_after(3), **KW)
    assert not out.exists()  # never a lie at the final path
    assert len(list(partial_dir(out).glob("*.*.npz"))) == 3
    r = extract(ds, "tiny", out=out, **KW)
    assert r.status == "written" and r.images_resumed == 12 and r.images_encoded == sum(r.splits.values()) - 12
    a, b = open_cache(ref), open_cache(out)
    for s in ("train", "val", "test"):
        sa, sb = a.split(s), b.split(s)
        assert np.array_equal(sa.features, sb.features), s
        assert np.array_equal(sa.labels, sb.labels) and np.array_equal(sa.index, sb.index)
    for g in a.fewshot_groups:
        assert all(np.array_equal(x, y) for x, y in zip(a.fewshot(*g), b.fewshot(*g)))
    for t in a.text_sets:
        assert np.array_equal(a.text(t), b.text(t))
    assert not partial_dir(out).exists()
    # the same request again: nothing to do; a different one: refused without --force
    assert extract(ds, "tiny", out=out, **KW).status == "up-to-date"
    with pytest.raises(CmmError, match="--force"):
        extract(ds, "tiny", out=out, **{**KW, "shots": [1]})
    assert extract(ds, "tiny", out=out, force=True, **{**KW, "shots": [1]}).status == "written"
    assert open_cache(out).fewshot_groups == [(1, 1), (1, 2)]


def test_killed_process_resumes_and_ends_identical(reference, image_root, tmp_path):
    """A real SIGKILL (no cleanup code runs) after 2 chunks: nothing at the final path, the lock is free, resume."""
    _, ref = reference
    out = tmp_path / "k.h5"
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
        "from support.extract import fail_after, make_dataset\n"
        "from cmm_cache.extract.pipeline import extract\n"
        f"extract(make_dataset({str(image_root)!r}), 'tiny', out={str(out)!r}, on_chunk=fail_after(2, kill=True), "
        f"**{KW!r})\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr[-2000:]
    assert not out.exists() and len(list(partial_dir(out).glob("*.*.npz"))) == 2
    r = extract(make_dataset(image_root), "tiny", out=out, **KW)
    assert r.images_resumed == 8
    a, b = open_cache(ref), open_cache(out)
    for s in ("train", "val", "test"):
        assert np.array_equal(a.split(s).features, b.split(s).features), s


def test_partial_run_of_a_different_request_is_refused(ds, tmp_path):
    out = tmp_path / "c.h5"
    with pytest.raises(InjectedFailure):
        extract(ds, "tiny", out=out, on_chunk=fail_after(1), **KW)
    with pytest.raises(CmmError, match="unfinished extraction for a different request"):
        extract(ds, "tiny", out=out, **{**KW, "seeds": [1]})
    assert extract(ds, "tiny", out=out, force=True, **{**KW, "seeds": [1]}).images_resumed == 0


def test_locked_cache_is_refused_at_once(ds, tmp_path):
    out = tmp_path / "c.h5"
    with CacheLock(out):
        with pytest.raises(CmmError, match="Another extraction is writing"):
            extract(ds, "tiny", out=out, **KW)
    assert not out.exists()
    # a writer that died holding the lock does not block: the kernel released its lock
    code = f"from cmm_cache.cache.lock import CacheLock; import os; CacheLock({str(out)!r}).acquire(); os._exit(9)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert extract(ds, "tiny", out=out, **KW).status == "written"


def test_lock_of_a_killed_extraction_is_free_at_once(image_root, tmp_path):
    """An extraction killed (SIGKILL) while its DataLoader workers run: the lock is free the moment it is dead.

    Forked workers share the lock's open file; unless they drop it, they keep a dead writer's lock
    until their watchdog notices the parent is gone (seconds later).
    """
    out = tmp_path / "k.h5"
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
        "from support.extract import fail_after, make_dataset\n"
        "from cmm_cache.extract.pipeline import extract\n"
        f"extract(make_dataset({str(image_root)!r}), 'tiny', out={str(out)!r}, on_chunk=fail_after(1, kill=True), "
        f"**{ {**KW, 'shots': [1], 'seeds': [1], 'num_workers': 2}!r})\n"
    )
    # No pipes: reading the child's output to the end would wait for its orphaned workers too.
    with open(tmp_path / "stderr.txt", "w") as err:
        p = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=err, timeout=120)
    assert p.returncode == -9, (tmp_path / "stderr.txt").read_text()[-2000:]
    CacheLock(out).acquire().release()  # no wait, no retry
    r = extract(make_dataset(image_root), "tiny", out=out, **{**KW, "shots": [1], "seeds": [1]})
    assert r.status == "written" and r.images_resumed == 3  # the one train chunk (1 image per class)


def test_run_killed_while_assembling_leaves_no_temp_file_once_resumed(reference, image_root, tmp_path):
    """Killed (SIGKILL) half-way through writing the HDF5 file: a `<final>.tmp-<pid>` stays behind; the resume
    finishes from the chunk files and removes it."""
    _, ref = reference
    out = tmp_path / "work" / "a.h5"
    code = (
        f"import os, signal, sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
        "from support.extract import make_dataset\n"
        "from cmm_cache.cache import writer\n"
        "from cmm_cache.extract.pipeline import extract\n"
        "orig = writer._stream_split\n"
        "def stream_then_die(f, store, sp, *a):\n"
        "    orig(f, store, sp, *a)\n"
        "    f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "writer._stream_split = stream_then_die\n"
        f"extract(make_dataset({str(image_root)!r}), 'tiny', out={str(out)!r}, **{KW!r})\n"
    )
    with open(tmp_path / "stderr.txt", "w") as err:
        p = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=err, timeout=120)
    assert p.returncode == -9, (tmp_path / "stderr.txt").read_text()[-2000:]
    stale = list(out.parent.glob("a.h5.tmp-*"))
    assert not out.exists() and len(stale) == 1 and stale[0].stat().st_size > 0
    r = extract(make_dataset(image_root), "tiny", out=out, **KW)
    assert r.status == "written" and r.images_encoded == 0 and r.images_resumed == sum(r.splits.values())
    assert [p.name for p in out.parent.iterdir()] == ["a.h5"]
    assert verify_cache(out) == []
    a, b = open_cache(ref), open_cache(out)
    for s in ("train", "val", "test"):
        assert np.array_equal(a.split(s).features, b.split(s).features), s


def test_damaged_cache_at_the_final_path_is_called_damaged(ds, tmp_path):
    out = tmp_path / "c.h5"
    extract(ds, "tiny", out=out, **KW)
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 3])  # truncated, e.g. by a full disk during a copy
    with pytest.raises(CmmError) as e:
        extract(ds, "tiny", out=out, **KW)
    msg = str(e.value)
    assert "damaged" in msg and "different request" not in msg
    assert f"cmm-cache cache verify {out}" in msg and "--force" in msg
    r = extract(ds, "tiny", out=out, force=True, **KW)
    assert r.status == "written" and verify_cache(out) == []


def test_cache_not_written_by_extract_is_not_taken_for_another_request(ds, tmp_path):
    from cmm_cache.cache.reader import Split
    from cmm_cache.cache.writer import write_cache

    out = tmp_path / "c.h5"
    split = Split(np.zeros((1, 1, 4), np.float16), np.array([0]), np.array([0]), ["center"])
    text = {"t": (np.ones((1, 4), np.float32), ["{}"])}
    write_cache(
        out, dataset="x", backbone="tiny", provenance={}, classnames=["a"], text=text, default_templates="t",
        splits={"test": split},
    )  # fmt: skip
    with pytest.raises(CmmError, match="not written by `cmm-cache extract`"):
        extract(ds, "tiny", out=out, **KW)


def test_resume_keeps_the_chunk_size_it_started_with(reference, ds, tmp_path):
    """Resume at chunk granularity: a run started with 4-row chunks and repeated with another chunk size (a
    newer default) finishes with 4-row chunks, reusing what is on disk, and ends identical."""
    _, ref = reference
    out = tmp_path / "c.h5"
    with pytest.raises(InjectedFailure):
        extract(ds, "tiny", out=out, on_chunk=fail_after(2), **KW)
    r = extract(ds, "tiny", out=out, **{**KW, "chunk_rows": 64})
    assert r.images_resumed == 8
    a, b = open_cache(ref), open_cache(out)
    for s in ("train", "val", "test"):
        assert np.array_equal(a.split(s).features, b.split(s).features), s
    # the chunk size does not make another request: the cache is up to date for any chunk size
    assert extract(ds, "tiny", out=out, **{**KW, "chunk_rows": 7}).status == "up-to-date"


def test_cache_of_an_earlier_version_is_still_up_to_date(ds, tmp_path):
    """Earlier versions hashed the chunk size (always 1024 from the CLI) into the request fingerprint."""
    import hashlib

    from cmm_cache.extract.plan import plan_splits, request_fingerprint

    out = tmp_path / "c.h5"
    extract(ds, "tiny", out=out, **KW)
    bb = load_backbone("tiny")
    fp = request_fingerprint(ds, bb, *plan_splits(ds, SHOTS, SEEDS, 4))
    legacy = {k: v for k, v in fp.items() if k not in ("sha256", "legacy_sha256")}
    legacy["chunk_rows"] = 1024
    old_sha = hashlib.sha256(json.dumps(legacy, sort_keys=True, default=str).encode()).hexdigest()
    with h5py.File(out, "r+") as f:  # as the earlier version wrote it
        prov = json.loads(f.attrs["provenance"])
        assert prov["request_sha256"] != old_sha
        f.attrs["provenance"] = json.dumps({**prov, "request_sha256": old_sha}, sort_keys=True)
    assert extract(ds, "tiny", out=out, **KW).status == "up-to-date"
