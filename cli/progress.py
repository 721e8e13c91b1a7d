"""Progress: rich bars on a terminal, plain lines in a log; the library only calls callbacks.

Nothing a command does stays silent for more than ``interval`` seconds (``CMM_CACHE_PROGRESS_SECONDS``,
default 10) when stderr is a log (a batch job's stderr, ``2> log``, CI):

- :class:`Sink`: where plain lines go and when the last one went; every line below goes through one;
- :class:`LogLines`: a (done, total) callback (extract's images, text prompts): a line at the start, one every
  ``interval`` seconds and one at the end, each readable on its own: done of total, percent, rate, time left;
- :class:`StepLines`: a run's iterations (fit, compare): a line whenever ``interval`` seconds passed since the
  last line of any kind, with the loss;
- :class:`Heartbeat`: a thread that says what is running ("still ...") when nothing was printed for
  ``interval`` seconds (a method without step callbacks, writing a large cache file, a benchmark's timing);
- :class:`ImageProgress`, :class:`TextProgress`, :class:`Bars`: pick a rich bar on a terminal or lines in a log.

The cadence is decided by an injectable clock, so tests check it without waiting.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from cmm_cache.cli.common import console

DEFAULT_INTERVAL_S = 10.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("CMM_CACHE_PROGRESS_SECONDS", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _print_plain(line: str) -> None:
    console.print(line, markup=False, highlight=False, soft_wrap=True)


class Sink:
    """Plain progress lines: printed through `emit` (stderr by default), the time of the last one remembered.

    `status` names what is running now (for :class:`Heartbeat`). Lines from several threads do not interleave.
    """

    def __init__(self, interval: float | None = None, clock=time.monotonic, emit=None):
        self.interval = _interval() if interval is None else float(interval)
        self.clock = clock
        self._emit = emit or _print_plain
        self.last: float | None = None  # time of the last line (None: nothing yet)
        self.last_line: str | None = None
        self.status, self.since = "", None
        self.current: Callable[[], str | None] | None = None  # the latest progress line of the running task
        self.lock = threading.RLock()  # a check "is a line due?" and its line happen together

    def emit(self, line: str, now: float | None = None) -> None:
        with self.lock:
            self._emit(line)
            self.last = self.clock() if now is None else now
            self.last_line = line

    def touch(self, now: float | None = None) -> None:
        """Something else showed progress (a rich bar moved, a result line was printed)."""
        self.last = self.clock() if now is None else now

    def due(self, now: float) -> bool:
        """Whether `interval` seconds passed since the last line (always, before the first)."""
        return self.last is None or now - self.last >= self.interval

    def set_status(self, status: str, now: float | None = None) -> None:
        """What runs now (a new task: its progress line, if any, is set by the task)."""
        self.status, self.since = status, self.clock() if now is None else now
        self.current = None


class LogLines:
    """A (done, total) callback that prints a plain line now and then (see the module docstring).

    `unit` names what is counted (``images``, ``prompts``). With a shared `sink`, lines of several callbacks
    and the heartbeat keep one cadence.
    """

    def __init__(
        self,
        label: str,
        interval: float | None = None,
        clock=time.monotonic,
        emit=None,
        unit: str = "images",
        sink: Sink | None = None,
    ):
        self.label = label
        self.unit = unit
        self.sink = sink or Sink(interval, clock, emit)
        self.interval = self.sink.interval
        self.clock = self.sink.clock
        self.start: tuple[float, int] | None = None  # (time, done) at the first call: resumed work
        self.last_t = 0.0
        self.last_done = -1

    def line(self, done: int, total: int, now: float) -> str:
        pct = f" ({100.0 * done / total:.1f} %)" if total else ""
        text = f"{self.label}: {done}/{total} {self.unit}{pct}"
        t0, d0 = self.start
        if now > t0 and done > d0:
            speed = (done - d0) / (now - t0)
            text += f", {speed:.1f} {self.unit}/s"
            if done < total:
                text += f", about {_duration((total - done) / speed)} left"
        return text

    def __call__(self, done: int, total: int) -> None:
        with self.sink.lock:
            self._update(done, total)

    def _update(self, done: int, total: int) -> None:
        now = self.clock()
        if self.start is None:
            self.start = (now, done)
            resumed = f" ({done} already done by an earlier run)" if done else ""
            self.sink.set_status(self.label, now)
            self.sink.emit(f"{self.label}: {done}/{total} {self.unit}{resumed}", now)
            self.last_t, self.last_done = now, done
            return
        self.sink.current = lambda: self.line(done, total, now)  # what the heartbeat says if callbacks pause
        if done == self.last_done:
            return
        if done >= total or now - self.last_t >= self.interval:
            self.sink.emit(self.line(done, total, now), now)
            self.last_t, self.last_done = now, done


class StepLines:
    """A run's ``update(done, total=None, note=None)`` in a log: one line whenever the sink was quiet for
    `interval` seconds (so a run shorter than that prints nothing but its result line). Between callbacks the
    heartbeat repeats the latest state."""

    def __init__(self, label: str, total: int | None, unit: str, sink: Sink):
        self.label, self.total, self.unit, self.sink = label, total, unit, sink
        self.t0 = sink.clock()
        sink.set_status(label, self.t0)

    def __call__(self, done: int, total: int | None = None, note: str | None = None) -> None:
        with self.sink.lock:
            now = self.sink.clock()
            self.total = total or self.total
            self.sink.current = lambda: self.line(done, note, now)
            if self.sink.due(now):
                self.sink.emit(self.line(done, note, now), now)

    def line(self, done: int, note: str | None, now: float) -> str:
        text = f"{self.label}: {done}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100.0 * done / self.total:.1f} %)"
        else:
            text += f" {self.unit}"
        if now > self.t0 and done > 0:
            speed = done / (now - self.t0)
            text += f", {speed:.0f} {self.unit}/s"
            if self.total and done < self.total:
                text += f", about {_duration((self.total - done) / speed)} left"
        if note:
            text += f", {note}"
        return text


class Heartbeat:
    """``with Heartbeat(sink):`` a thread that prints "<status>: still working (Ns)" whenever nothing was printed
    through `sink` for its interval. :meth:`beat` is one check (what the thread runs; tests call it directly)."""

    def __init__(self, sink: Sink, poll: float | None = None):
        self.sink = sink
        self.poll = poll if poll is not None else max(0.2, min(1.0, sink.interval / 4 or 1.0))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> bool:
        with self.sink.lock:
            return self._beat()

    def _beat(self) -> bool:
        now = self.sink.clock()
        if self.sink.last is None:
            self.sink.touch(now)  # the clock starts with the command
            return False
        if not self.sink.due(now):
            return False
        latest = self.sink.current() if self.sink.current is not None else None
        if latest and latest != self.sink.last_line:
            self.sink.emit(latest, now)  # the running task's latest progress, when its callbacks are sparse
            return True
        what = self.sink.status or "working"
        since = "" if self.sink.since is None else f", {_duration(now - self.sink.since)} so far"
        self.sink.emit(f"{what}: still working{since}", now)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            self.beat()

    def __enter__(self):
        if self.sink.interval > 0:
            self.beat()
            self._thread = threading.Thread(target=self._run, name="cmm-cache-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return False


def sink(status: str = "") -> Sink:
    """A sink printing to the CLI's stderr console, with the interval from the environment; `status` names what
    the command does until something more precise is set."""
    s = Sink()
    if status:
        s.set_status(status)
    return s


class RichBar:
    """rich progress (done, rate, time left) as a (done, total) callback."""

    def __init__(self, label: str, unit: str = "images", sink: Sink | None = None, short_unit: str | None = None):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        short = short_unit or ("img" if unit == "images" else unit)

        class Speed(ProgressColumn):
            def render(self, task):
                return Text(f"{task.speed:.1f} {short}/s" if task.speed else f"- {short}/s")

        self.label = label
        self.sink = sink
        self.task = None
        self.p = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            Speed(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )

    def __call__(self, done: int, total: int) -> None:
        if self.sink is not None:
            self.sink.touch()
        if self.task is None:
            # work already on disk from an earlier run starts the bar but is not part of the speed
            self.task = self.p.add_task(self.label, total=total, completed=done)
            return
        self.p.update(self.task, completed=done, total=total)


class ImageProgress:
    """``with ImageProgress(label, enabled) as progress:`` -> a callback for the library, or None when disabled."""

    def __init__(self, label: str, enabled: bool = True, sink: Sink | None = None):
        self.label = label
        self.enabled = enabled
        self.sink = sink
        self.bar: RichBar | None = None

    def __enter__(self):
        if not self.enabled:
            return None
        if console.is_terminal:
            self.bar = RichBar(self.label, sink=self.sink)
            self.bar.p.__enter__()
            return self.bar
        return LogLines(self.label, sink=self.sink)

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.p.__exit__(*exc)
        return False


class TextProgress:
    """``(set name, prompts done, prompts total)`` for the library's text encoding: one bar (terminal) or one
    :class:`LogLines` (log) per template set, labelled ``<label>, template set '<name>'``."""

    def __init__(self, label: str, enabled: bool = True, sink: Sink | None = None):
        self.label, self.enabled, self.sink = label, enabled, sink
        self.current: tuple[str, Callable] | None = None
        self._bar: RichBar | None = None

    def __call__(self, name: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.current is None or self.current[0] != name:
            self._close_bar()
            label = f"{self.label}, template set '{name}'"
            if console.is_terminal:
                self._bar = RichBar(label, unit="prompts", sink=self.sink, short_unit="prompts")
                self._bar.p.__enter__()
                self.current = (name, self._bar)
            else:
                self.current = (name, LogLines(label, unit="prompts", sink=self.sink))
        self.current[1](done, total)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.p.__exit__(None, None, None)
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        self._close_bar()
        return False


class Bars:
    """``with Bars(enabled, sink) as bars: update = bars.task(label, total, unit)`` then ``update(done, note=None)``.

    On a terminal: rich bars (when `enabled`, i.e. not with --json). In a log: :class:`StepLines` through `sink`
    (also with --json: they go to stderr), or nothing without a sink.
    """

    def __init__(self, enabled: bool, sink: Sink | None = None):
        self.sink = sink
        self.terminal = console.is_terminal
        self.enabled, self.p = enabled and self.terminal, None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]} {task.fields[note]}"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self.p.__enter__()
        return self

    def task(self, label: str, total: int | None, unit: str = ""):
        """A callback ``update(done, total=None, note=None)``, or None when nothing is shown."""
        if not self.p:
            if self.terminal or self.sink is None:
                return None
            return StepLines(label, total, unit, self.sink)
        tid = self.p.add_task(label, total=total, unit=unit, note="")
        if self.sink is not None:
            self.sink.set_status(label)

        def update(done, total=None, note=None):
            if self.sink is not None:
                self.sink.touch()
            self.p.update(tid, completed=done, **({"total": total} if total else {}), note=note or "")

        return update

    def __exit__(self, *exc):
        if self.p:
            self.p.__exit__(*exc)
        return False


def printer(sink: Sink, quiet: bool = False):
    """A ``log(*args)`` for library functions that report in lines (the benchmarks): printed on stderr (nothing
    when `quiet`), each line counting as progress for the heartbeat."""

    def log(*args, **kwargs) -> None:
        if not quiet:
            console.print(*args, **kwargs)
            sink.touch()

    return log
