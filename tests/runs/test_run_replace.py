"""Replacing a run folder: atomic from a reader's view, killed at every step without losing the last complete
run, concurrent writers serialized, readers never told "no run" while a run is being replaced."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support.runs import read_tag, save

from cmm_cache.errors import CmmError
from cmm_cache.heads.run_folder import load_run, read_result
from cmm_cache.util import atomic

C, D = 3, 4
TESTS = str(Path(__file__).parents[1])

_PRELUDE = f"import json, os, sys, time\nsys.path.insert(0, {TESTS!r})\n"


# Every step of a replacement where a kill can land, per path: a first save (nothing there yet), a replacement
# by atomic exchange (Linux renameat2), a replacement by two renames (file systems without an exchange).
KILL_POINTS = [
    ("first save", "written", False),
    ("first save", "before-swap", False),
    ("first save", "placed", False),
    ("exchange", "written", False),
    ("exchange", "before-swap", False),
    ("exchange", "swapped", False),
    ("exchange", "cleaned", False),
    ("two renames", "written", True),
    ("two renames", "before-swap", True),
    ("two renames", "aside", True),
    ("two renames", "placed", True),
    ("two renames", "cleaned", True),
]


@pytest.mark.parametrize("case,step,fallback", KILL_POINTS, ids=[f"{c}-{s}" for c, s, _ in KILL_POINTS])
def test_a_save_killed_at_any_step_keeps_a_complete_run(tmp_path, case, step, fallback, monkeypatch):
    if not fallback and case == "exchange" and not atomic.exchange(*_two_dirs(tmp_path)):
        pytest.skip("no atomic exchange on this file system (the two-rename cases cover it)")
    run = tmp_path / "runs" / "shot_1-seed_1"
    if fallback:
        monkeypatch.setenv("CMM_CACHE_NO_EXCHANGE", "1")
    if case != "first save":
        save(run, 1)
    pid = os.fork()  # the child saves and is killed at `step` (no interpreter start-up per kill point)
    if pid == 0:
        try:
            atomic.fault_hook = lambda s: os.kill(os.getpid(), signal.SIGKILL) if s == step else None
            save(run, 2)
        finally:
            os._exit(3)  # not killed: the step was never reached
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"not killed at {step}"
    if case == "first save" and step != "placed":
        with pytest.raises(CmmError, match="No run"):  # nothing was complete yet: no run, never a partial one
            load_run(run)
    else:
        # The last complete run is at the path: the old one before the swap, the new one after.
        tag = read_tag(run)
        before = step in ("written", "before-swap", "aside")
        assert tag == (1 if before and case != "first save" else 2), (case, step, tag)
    # The next save tidies up what the killed one left and writes its own run.
    save(run, 3)
    assert read_tag(run) == 3
    assert sorted(p.name for p in run.parent.iterdir()) == [run.name], "temporary/old folders or a lock left"


def _two_dirs(tmp_path):
    a, b = tmp_path / "probe-a", tmp_path / "probe-b"
    a.mkdir()
    b.mkdir()
    return a, b


def test_reader_puts_back_a_run_left_aside_by_a_killed_save(tmp_path, monkeypatch):
    """Two-rename fallback killed between its renames: the path is empty, the old run sits in `.<name>.old-<pid>`.
    The next reader finds it (no writer holds the lock) and moves it back."""
    monkeypatch.setenv("CMM_CACHE_NO_EXCHANGE", "1")
    run = tmp_path / "shot_1-seed_1"
    save(run, 1)
    old = run.with_name(f".{run.name}.old-12345")
    os.rename(run, old)  # what a kill at step "aside" leaves
    assert read_tag(run) == 1
    assert not old.exists()


def test_one_save_leaves_only_the_run(tmp_path):
    run = tmp_path / "r" / "shot_1-seed_1"
    save(run, 1)
    save(run, 2)
    assert read_tag(run) == 2 and [p.name for p in run.parent.iterdir()] == [run.name]
    assert sorted(p.name for p in run.iterdir()) == ["classes.json", "provenance.json", "result.json", "weights.npz"]


_WRITER = _PRELUDE + textwrap.dedent("""
    from support.runs import save
    path, first, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    while time.time() < go:
        time.sleep(0.001)
    errors = 0
    for i in range(n):
        try:
            save(path, first + i)
        except Exception as e:
            errors += 1
            print(type(e).__name__, e, file=sys.stderr)
    print(json.dumps({"saves": n - errors, "errors": errors}))
""")

_READER = _PRELUDE + textwrap.dedent("""
    from support.runs import tag_of
    from cmm_cache.errors import CmmError
    from cmm_cache.heads.run_folder import load_run
    path, stop, go = sys.argv[1], sys.argv[2], float(sys.argv[3])
    while time.time() < go:
        time.sleep(0.001)
    reads = missing = errors = mixed = 0
    while not os.path.exists(stop):
        try:
            run = load_run(path)
            reads += 1
            if tag_of(run) is None:
                mixed += 1
        except CmmError as e:
            if "No run" in e.message:
                missing += 1
            else:
                errors += 1
                print(e, file=sys.stderr)
        except Exception as e:
            errors += 1
            print(type(e).__name__, e, file=sys.stderr)
    print(json.dumps({"reads": reads, "missing": missing, "errors": errors, "mixed": mixed}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "two-renames"])
def test_concurrent_saves_and_a_reader(tmp_path, fallback, monkeypatch):
    """2 writers × N saves of one run and a reader reading it all along: 0 errors, 0 missing or mixed reads."""
    n = 200
    run = tmp_path / "runs" / "shot_1-seed_1"
    if fallback:
        monkeypatch.setenv("CMM_CACHE_NO_EXCHANGE", "1")
    env = dict(os.environ)
    save(run, 1)  # a complete run exists from the start: a reader must always find one
    stop = tmp_path / "stop"
    go = time.time() + 3.0  # every process starts together, after its imports
    kw = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=TESTS)
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(run), str(stop), str(go)], **kw)
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(run), str(first), str(n), str(go)], **kw)
        for first in (10, 1000)
    ]
    outs = [w.communicate(timeout=300) for w in writers]
    stop.write_text("")
    rout = reader.communicate(timeout=120)
    w_stats = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    r_stats = json.loads(rout[0].strip().splitlines()[-1])
    print("writers", w_stats, "reader", r_stats)
    assert [s["errors"] for s in w_stats] == [0, 0], [e for _, e in outs]
    assert sum(s["saves"] for s in w_stats) == 2 * n
    assert r_stats["errors"] == 0 and r_stats["missing"] == 0 and r_stats["mixed"] == 0, (r_stats, rout[1][-2000:])
    assert r_stats["reads"] > 0
    assert read_result(run)["fit_seconds"] in (10 + n - 1, 1000 + n - 1)  # the last save of one of the two wins
    assert [p.name for p in run.parent.iterdir()] == [run.name]  # no temporary, old or lock file left


def test_merge_and_discovery_skip_temporary_and_old_folders(tmp_path):
    """What a killed save leaves (hidden `.tmp-`/`.old-` copies of a run) is never counted as a run."""
    from support.tiny_run import cli

    from cmm_cache.runs.discovery import scan_runs

    run = tmp_path / "runs" / "shot_1-seed_1"
    save(run, 1)
    for name in (f".{run.name}.tmp-999", f".{run.name}.old-998"):
        shutil.copytree(run, run.with_name(name))
    assert [r.path for r in scan_runs(tmp_path / "runs")] == [run]
    out = json.loads(cli(["results", "merge", tmp_path / "runs", "--json"]).stdout)
    assert [r["run"] for r in out["runs"]] == [str(run)] and out["summary"][0]["runs"] == 1
    save(run, 2)  # the next save removes them
    assert [p.name for p in run.parent.iterdir()] == [run.name]
