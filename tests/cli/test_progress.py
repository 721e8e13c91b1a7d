"""Progress in a log: nothing silent for more than the interval (10 s by default). Every cadence here runs on a
fake clock: the tests check which lines a sequence of callbacks at given times prints, without waiting."""

import json

import pytest
from click.testing import CliRunner
from cmm_cache.cli import progress as pg
from cmm_cache.cli.main import main


class Clock:
    def __init__(self, t=0.0):
        self.t = t

    def __call__(self):
        return self.t


def _sink(clock, interval=10.0):
    lines = []
    return pg.Sink(interval, clock, lambda line: lines.append((clock.t, line))), lines


def _gaps(times, start, end):
    pts = [start, *times, end]
    return [b - a for a, b in zip(pts, pts[1:])]


def test_a_long_run_prints_a_line_at_least_every_interval():
    """A fit's iteration callbacks every 0.5 s for 60 s: lines never more than 10 s apart, with rate and time left."""
    clock = Clock()
    sink, lines = _sink(clock)
    sink.touch()  # the command's first line (or the heartbeat's start) at t = 0
    step = pg.StepLines("fit cmm 16-shot seed 1", 12000, "it", sink)
    for i in range(1, 121):
        clock.t = 0.5 * i
        step(100 * i, None, f"loss {1.0 / i:.4f}")
    times = [t for t, _ in lines]
    assert times and max(_gaps(times, 0.0, 60.0)) <= 10.0
    assert times[0] == 10.0  # the first within the interval, not at the end
    assert lines[0][1] == "fit cmm 16-shot seed 1: 2000/12000 it (16.7 %), 200 it/s, about 50s left, loss 0.0500"


def test_a_run_shorter_than_the_interval_prints_nothing_but_its_result():
    clock = Clock()
    sink, lines = _sink(clock)
    sink.touch()  # the previous run's result line, just printed
    step = pg.StepLines("fit cmm 1-shot seed 1", 1000, "it", sink)
    for i in range(1, 5):
        clock.t = i
        step(250 * i)
    assert lines == []


def test_the_heartbeat_fills_silences_with_the_latest_state_then_still_working():
    """Callbacks stop (a method without step callbacks, a large file being written): the heartbeat speaks."""
    clock = Clock()
    sink, lines = _sink(clock)
    beat = pg.Heartbeat(sink)
    assert beat.beat() is False  # starts the clock
    step = pg.StepLines("compare gda 4-shot seed 1", 100, "it", sink)
    clock.t = 4.0
    step(40)  # not due yet: nothing printed, but remembered
    clock.t = 9.9
    assert beat.beat() is False
    clock.t = 10.0
    assert beat.beat() is True
    assert lines[-1] == (10.0, "compare gda 4-shot seed 1: 40/100 it (40.0 %), 10 it/s, about 6s left")
    clock.t = 15.0
    assert beat.beat() is False
    clock.t = 20.0
    assert beat.beat() is True  # nothing new since: say what runs, and for how long
    assert lines[-1] == (20.0, "compare gda 4-shot seed 1: still working, 20s so far")
    sink.set_status("extract dtd × rn50: writing /x/rn50.h5", now=20.0)
    clock.t = 30.0
    beat.beat()
    assert lines[-1] == (30.0, "extract dtd × rn50: writing /x/rn50.h5: still working, 10s so far")


def test_text_encoding_lines_per_template_set_with_prompts_per_second(monkeypatch):
    monkeypatch.setattr(type(pg.console), "is_terminal", property(lambda self: False))  # a log
    clock = Clock()
    sink, lines = _sink(clock)
    text = pg.TextProgress("extract dtd × rn50: text", sink=sink)
    for name, total in (("coop", 47), ("clip", 47 * 81)):
        start = clock.t
        for done in range(0, total + 1, 32):
            clock.t = start + done / 10.0  # 10 prompts/s on a slow CPU
            text(name, done, total)
        clock.t = start + total / 10.0
        text(name, total, total)
    said = [line for _, line in lines]
    assert said[0] == "extract dtd × rn50: text, template set 'coop': 0/47 prompts"
    assert said[1] == "extract dtd × rn50: text, template set 'coop': 47/47 prompts (100.0 %), 10.0 prompts/s"
    assert said[2] == "extract dtd × rn50: text, template set 'clip': 0/3807 prompts"
    assert said[-1] == "extract dtd × rn50: text, template set 'clip': 3807/3807 prompts (100.0 %), 10.0 prompts/s"
    clip = [t for t, line in lines if "'clip'" in line]
    assert max(_gaps(clip, clip[0], clip[-1])) <= 10.0 + 3.2  # a line at the first callback after each interval


@pytest.fixture
def log_interval(monkeypatch):
    """Lines on every callback (interval 0): what the CLI prints in a log, without a long run."""
    monkeypatch.setenv("CMM_CACHE_PROGRESS_SECONDS", "0")


def test_extract_in_a_log_reports_each_step(log_interval):
    r = CliRunner().invoke(main, ["extract", "--dataset", "tiny", "--backbone", "tiny", "--shots", "1", "--seeds", "1"])
    assert r.exit_code == 0, r.output
    err = r.stderr.splitlines()
    assert "extract tiny × tiny: loading backbone tiny on cpu" in err
    assert "extract tiny × tiny: text, template set 'clip': 0/15 prompts" in err
    done = "extract tiny × tiny: text, template set 'clip': 15/15 prompts (100.0 %), "
    assert any(line.startswith(done) and line.endswith(" prompts/s") for line in err)
    assert any(line.startswith("extract tiny × tiny: writing ") for line in err)


def test_fit_in_a_log_reports_iterations(log_interval, tmp_path):
    from support.synth import make_cache

    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1,), seeds=(1,))
    r = CliRunner().invoke(main, ["fit", "--cache", str(path), "--iterations", "1500", "--json"])
    assert r.exit_code == 0, r.output
    json.loads(r.stdout)  # stdout stays one JSON object
    lines = [line for line in r.stderr.splitlines() if line.startswith("fit cmm 1-shot seed 1: ")]
    assert lines and lines[-1].startswith("fit cmm 1-shot seed 1: 1500/1500 it (100.0 %), ")
    assert "loss " in lines[-1]
