"""A cache is read once, consistently: one open handle for a reader's whole life; a file replaced under a
reader never mixes into what it reads; `extract --force` on a cache another process reads is refused, and a
writer replacing a cache waits for the readers of the old file."""

import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from support.synth import make_cache
from support.tiny_run import cli

from cmm_cache.cache.lock import check_not_read
from cmm_cache.cache.reader import open_cache
from cmm_cache.errors import CmmError
from cmm_cache.runs.protocol import fit_run

TESTS = str(Path(__file__).parents[1])


def _reader_process(path: Path, ready: Path, stop: Path) -> subprocess.Popen:
    """Another process that opens the cache, reads train, says so, waits for `stop`, reads train again and
    prints whether both reads were the same."""
    code = textwrap.dedent(f"""
        import os, time
        import numpy as np
        from cmm_cache.cache.reader import open_cache
        c = open_cache({str(path)!r})
        a = c.split("train").features.copy()
        open({str(ready)!r}, "w").close()
        while not os.path.exists({str(stop)!r}):
            time.sleep(0.01)
        b = c.split("train").features
        print("same" if a.shape == b.shape and np.array_equal(a, b) else "different", a.shape)
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(p: Path, proc: subprocess.Popen) -> None:
    while not p.exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)


def test_a_cache_replaced_under_a_reader_is_read_as_it_was(tmp_path):
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1, 4), seeds=(1,), train_per_class=16)
    expected = fit_run(open_cache(path), 4, 1, method="zero-shot")[0]["test_acc"]
    cache = open_cache(path)
    make_cache(path, C=4, d=8, shots=(1,), seeds=(1,), train_per_class=2, test_per_class=3, seed=5)  # replaced
    assert cache.split("train").features.shape[0] == 64  # the file it opened, not the new one
    result, _ = fit_run(cache, 4, 1, method="zero-shot")  # its 4-shot rows index the old train split
    assert result["test_acc"] == expected
    assert open_cache(path).split("train").features.shape[0] == 8  # a new reader reads the new file


def test_a_closed_reader_refuses_a_replaced_file_with_a_message(tmp_path):
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1,), seeds=(1,))
    cache = open_cache(path)
    cache.close()
    assert cache.split("val").labels.shape == (16,)  # the same file: reopened
    cache.close()
    make_cache(path, C=4, d=8, shots=(1,), seeds=(1,), val_per_class=3, seed=3)
    with pytest.raises(CmmError, match="was replaced"):
        cache.split("val")


def test_extract_force_on_a_cache_another_process_reads_is_refused(tmp_path):
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1,), seeds=(1,))
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    proc = _reader_process(path, ready, stop)
    try:
        _wait_for(ready, proc)
        with pytest.raises(CmmError, match="being read by another process"):
            check_not_read(path)
        r = cli(["extract", "--dataset", "tiny", "--backbone", "tiny", "--out", path, "--force"], ok=False)
        assert r.exit_code == 2 and "being read by another process" in " ".join(r.output.split())
        assert "Traceback" not in r.output
    finally:
        stop.write_text("")
        out, err = proc.communicate(timeout=60)
    assert out.startswith("same"), err
    check_not_read(path)  # the reader is gone: free


def test_a_writer_waits_for_the_readers_of_the_old_file(tmp_path, caplog):
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1,), seeds=(1,), train_per_class=16)
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    proc = _reader_process(path, ready, stop)
    _wait_for(ready, proc)
    done = threading.Event()

    def replace():
        make_cache(path, C=4, d=8, shots=(1,), seeds=(1,), train_per_class=2, seed=9)
        done.set()

    with caplog.at_level(logging.WARNING, logger="cmm_cache"):
        t = threading.Thread(target=replace)
        t.start()
        try:
            # The writer cannot put its file in place while the other process reads the old one.
            assert not done.wait(1.0)
            assert proc.poll() is None
        finally:
            stop.write_text("")
        out, err = proc.communicate(timeout=60)
        t.join(timeout=60)
    assert done.is_set() and out.startswith("same"), err
    assert any("Waiting for the processes reading" in r.getMessage() for r in caplog.records)
    assert open_cache(path).split("train").features.shape[0] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "ready", "stop"]  # no temporary file left


def test_one_handle_for_the_life_of_a_reader(tmp_path, monkeypatch):
    """Every read of one Cache goes through the handle it opened (no reopening per few-shot read)."""
    import h5py

    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1, 2), seeds=(1, 2))
    cache = open_cache(path)
    opened = []
    real = h5py.File
    monkeypatch.setattr(h5py, "File", lambda *a, **k: opened.append(a) or real(*a, **k))
    for k in (1, 2):
        for s in (1, 2):
            cache.fewshot(k, s)
    for split in ("train", "val", "test"):
        cache.split(split)
    cache.text()
    cache.templates()
    assert opened == []
    assert np.isfinite(cache.split("test").features.astype(np.float32)).all()
