"""Stopped midway (Ctrl-C), `compare` and `fit` over many runs resume: the same command again refits nothing
already finished; --force refits everything."""

import json

import pytest
from click.testing import CliRunner
from cmm_cache.cli.main import main
from support.text_cache import make_text_cache

import cmm_cache.runs.compare as cmp
import cmm_cache.runs.protocol as protocol
from cmm_cache.cache.reader import open_cache

METHODS, SHOTS, SEEDS = ["zero-shot", "gda"], [1, 4], [1, 2]  # 8 runs


class Counter:
    """Wraps module.name: counts the fits; raises KeyboardInterrupt at call number `stop_at` (before fitting),
    as a Ctrl-C during that run would."""

    def __init__(self, monkeypatch, module, name):
        self.real, self.calls, self.stop_at = getattr(module, name), [], None
        monkeypatch.setattr(module, name, self)

    def reset(self, stop_at=None):
        self.calls, self.stop_at = [], stop_at

    def __call__(self, *a, **k):
        self.calls.append(a)
        if self.stop_at is not None and len(self.calls) == self.stop_at:
            raise KeyboardInterrupt
        return self.real(*a, **k)


def test_compare_interrupted_during_a_run_resumes_without_refitting(tmp_path, monkeypatch):
    cache, root = open_cache(make_text_cache(tmp_path / "c.h5")), tmp_path / "runs"
    fits = Counter(monkeypatch, cmp, "fit_run")
    fits.reset(stop_at=4)
    with pytest.raises(KeyboardInterrupt):
        cmp.compare(cache, METHODS, SHOTS, SEEDS, runs_root=root)
    assert len(fits.calls) == 4  # three runs finished and saved, the fourth interrupted

    fits.reset()
    calls = fits.calls
    out = cmp.compare(cache, METHODS, SHOTS, SEEDS, runs_root=root)
    assert len(calls) == 5  # only what was not finished
    assert sum(bool(r.get("skipped")) for r in out["runs"]) == 3
    first = out["runs"]

    fits.reset()
    calls = fits.calls
    again = cmp.compare(cache, METHODS, SHOTS, SEEDS, runs_root=root)
    assert calls == [] and all(r["skipped"] for r in again["runs"])
    assert [r["test_acc"] for r in again["runs"]] == [r["test_acc"] for r in first]  # the stored results
    assert again["table"] == out["table"]

    cmp.compare(cache, METHODS, SHOTS, SEEDS, runs_root=root, force=True)
    assert len(calls) == 8


def test_compare_command_after_ctrl_c_says_resume_and_does(tmp_path, monkeypatch):
    path = make_text_cache(tmp_path / "c.h5")
    args = ["compare", "--cache", str(path), "--methods", ",".join(METHODS), "--shots", "1,4", "--seeds", "1,2"]
    fits = Counter(monkeypatch, cmp, "fit_run")
    fits.reset(stop_at=6)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 130 and "run the same command again to resume" in r.stderr
    fits.reset()
    r = CliRunner().invoke(main, [*args, "--json"])
    assert r.exit_code == 0, r.output
    assert len(fits.calls) == 3 and r.stderr.count("(already fitted: kept)") == 5
    assert sum(bool(x.get("skipped")) for x in json.loads(r.stdout)["runs"]) == 5


def test_fit_over_many_runs_resumes_after_ctrl_c(tmp_path, monkeypatch):
    path = make_text_cache(tmp_path / "c.h5")
    args = ["fit", "--cache", str(path), "--shots", "1,4", "--seeds", "1,2", "--iterations", "30"]
    fits = Counter(monkeypatch, protocol, "_fit_one")
    fits.reset(stop_at=3)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 130 and "run the same command again to resume" in r.stderr
    fits.reset()
    r = CliRunner().invoke(main, [*args, "--json"])
    assert r.exit_code == 0, r.output
    runs = json.loads(r.stdout)["runs"]
    assert len(fits.calls) == 2 and [bool(x.get("skipped")) for x in runs] == [True, True, False, False]
    assert r.stderr.count("(already fitted: kept; --force fits it again)") == 2
