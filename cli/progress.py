"""Progress bars and progress lines.

- :class:`Bars`: rich bars for `fit` (iterations of each run) and `predict` (images): silent with --json or
  off a terminal.
- :class:`ImageProgress`: `extract`'s images: a rich bar on a terminal, plain log lines elsewhere. Logs (a
  batch job's stderr, `2> log`, CI) get one line at the start, one every ``interval`` seconds
  (``CMM_CACHE_PROGRESS_SECONDS``, default 10) and one at the end, each readable on its own: images done of
  total, percent, images/s, time left.
"""

from __future__ import annotations

import os
import time

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


class LogLines:
    """An (images done, images total) callback that prints a plain line now and then."""

    def __init__(self, label: str, interval: float | None = None, clock=time.monotonic, emit=None):
        self.label = label
        self.interval = _interval() if interval is None else float(interval)
        self.clock = clock
        self.emit = emit or (lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))
        self.start: tuple[float, int] | None = None  # (time, images done) at the first call: resumed work
        self.last_t = 0.0
        self.last_done = -1

    def line(self, done: int, total: int, now: float) -> str:
        pct = f" ({100.0 * done / total:.1f} %)" if total else ""
        text = f"{self.label}: {done}/{total} images{pct}"
        t0, d0 = self.start
        if now > t0 and done > d0:
            speed = (done - d0) / (now - t0)
            text += f", {speed:.1f} images/s"
            if done < total:
                text += f", about {_duration((total - done) / speed)} left"
        return text

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if self.start is None:
            self.start = (now, done)
            resumed = f" ({done} already done by an earlier run)" if done else ""
            self.emit(f"{self.label}: {done}/{total} images{resumed}")
            self.last_t, self.last_done = now, done
            return
        if done == self.last_done:
            return
        if done >= total or now - self.last_t >= self.interval:
            self.emit(self.line(done, total, now))
            self.last_t, self.last_done = now, done


class RichBar:
    """rich progress (images done, images/s, time left) as a progress callback."""

    def __init__(self, label: str):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class Speed(ProgressColumn):
            def render(self, task):
                return Text(f"{task.speed:.1f} img/s" if task.speed else "- img/s")

        self.label = label
        self.task = None
        self.p = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("images"),
            Speed(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )

    def __call__(self, done: int, total: int) -> None:
        if self.task is None:
            # images already on disk from an earlier run start the bar but are not part of the speed
            self.task = self.p.add_task(self.label, total=total, completed=done)
            return
        self.p.update(self.task, completed=done, total=total)


class ImageProgress:
    """``with ImageProgress(label, enabled) as progress:`` -> a callback for the library, or None when disabled."""

    def __init__(self, label: str, enabled: bool = True):
        self.label = label
        self.enabled = enabled
        self.bar: RichBar | None = None

    def __enter__(self):
        if not self.enabled:
            return None
        if console.is_terminal:
            self.bar = RichBar(self.label)
            self.bar.p.__enter__()
            return self.bar
        return LogLines(self.label)

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.p.__exit__(*exc)
        return False


class Bars:
    """``with Bars(enabled) as bars: update = bars.task(label, total, unit)`` then ``update(done, note=None)``."""

    def __init__(self, enabled: bool):
        self.enabled, self.p = enabled and console.is_terminal, None

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
        """A callback ``update(done, total=None, note=None)``, or None when the bar is off."""
        if not self.p:
            return None
        tid = self.p.add_task(label, total=total, unit=unit, note="")

        def update(done, total=None, note=None):
            self.p.update(tid, completed=done, **({"total": total} if total else {}), note=note or "")

        return update

    def __exit__(self, *exc):
        if self.p:
            self.p.__exit__(*exc)
        return False
