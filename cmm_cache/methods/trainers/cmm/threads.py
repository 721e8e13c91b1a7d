"""Choosing the trainer's CPU thread count by timing it, while it runs.

Whether two threads beat one depends on the machine, the shape and above all on
what else runs: on a quiet 2-core machine two threads speed a d = 1024 step up,
but when another process keeps a core busy, every parallel pass waits for a
descheduled peer and two threads can be several times slower than one. A
fixed rule or a calibration done once cannot know which case a run is in, and
load changes during a run. So the loop runs in segments, and
:class:`ThreadChooser` times each one:

* after a short warm-up it probes every candidate for a few dozen iterations
  and keeps the fastest;
* it then re-probes the others now and then (the interval doubles while the
  choice holds, up to ``longest`` iterations, and resets when it changes), and
  at once when the chosen count gets 30 % slower or faster than it was (load
  started or stopped), so a run adapts while it runs;
* a switch made on a probe is confirmed by the next stretch of the new choice
  (and undone if that runs slower than the old one did), so one noisy probe
  costs little.

Probes are short: with a 3× slower alternative the probing costs a few per cent
of a 16k-iteration run. The compiled loop gives bit-identical results for any
thread count, so switching never changes a run's numbers.
"""

from __future__ import annotations

import os

import torch

CANDIDATES = (1, 2, 4)


def candidates(device: torch.device, fixed: int | None = None) -> list[int]:
    """Thread counts worth trying: `fixed` alone when given; one for CUDA; else 1, 2, 4 up to the usable cores."""
    if fixed:
        return [int(fixed)]
    if torch.device(device).type != "cpu":
        return [1]
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    top = max(1, min(cores, torch.get_num_threads()))
    return [n for n in CANDIDATES if n <= top] or [1]


class ThreadChooser:
    """Plans segments (threads, iterations) and learns from their timings."""

    def __init__(
        self,
        options: list[int],
        warmup: int = 16,
        probe_seconds: float = 0.03,
        first: int = 512,
        longest: int = 4096,
        margin: float = 0.05,
        shift: float = 1.3,
    ):
        self.options = list(options)
        self.warmup, self.probe_seconds, self.first, self.longest, self.margin = (
            warmup,
            probe_seconds,
            first,
            longest,
            margin,
        )
        self.rate: dict[int, float] = {}  # seconds per iteration, latest measurement per option
        self.best = self.options[-1]
        self.interval = first
        self.plan: list[tuple[int, int, str]] = []  # queued (threads, iterations, kind)
        self.since_probe = 0
        self.shift = shift  # a choice whose speed moves by this factor is re-probed at once
        self.ref_rate: float | None = None
        self.trial: tuple[int, float] | None = None  # (previous choice, its rate) right after a switch
        self.decided = False
        self.window = (0, 0.0)  # (iterations, seconds) of the current choice since its last check
        self.log: list[tuple[int, int, float, str]] = []  # (threads, iterations, seconds, kind)
        if len(self.options) > 1:
            self.plan = [(self.options[-1], warmup, "warmup")] + [
                (n, self._probe_len(n), "probe") for n in self.options
            ]

    def _probe_len(self, n: int) -> int:
        r = self.rate.get(n) or min(self.rate.values(), default=0.0)
        return 64 if r <= 0 else int(min(max(self.probe_seconds / r, 32), 1024))

    def next(self) -> tuple[int, int]:
        """(threads, at most this many iterations) for the next segment."""
        if len(self.options) == 1:
            return self.options[0], 1 << 30
        if self.plan:
            n, length, _ = self.plan[0]
            return n, length
        return self.best, max(self.interval - self.since_probe, 1)

    def record(self, threads: int, iterations: int, seconds: float) -> None:
        """Report a finished segment (it may be shorter than planned, e.g. cut at a progress report)."""
        if iterations <= 0:
            return
        if len(self.options) == 1:
            self.log.append((threads, iterations, seconds, "fixed"))
            return
        kind = "exploit"
        if self.plan and self.plan[0][0] == threads:
            n, length, kind = self.plan[0]
            if iterations >= length:
                self.plan.pop(0)
            else:
                self.plan[0] = (n, length - iterations, kind)
        self.log.append((threads, iterations, seconds, kind))
        if kind == "warmup":
            return
        self._measure(threads, kind)
        if kind == "probe" and not self.plan:
            self._decide()
        elif kind == "exploit":
            self.since_probe += iterations
            self.window = (self.window[0] + iterations, self.window[1] + seconds)
            changed = False
            if self.window[0] >= 256 and self.window[1] >= 4 * self.probe_seconds:
                rate = self.window[1] / self.window[0]
                self.window = (0, 0.0)
                if self.trial is not None:  # the first window after a switch confirms it, or undoes it
                    old, old_rate = self.trial
                    self.trial = None
                    if rate > old_rate * (1 + self.margin):
                        self.best, self.rate[threads] = old, rate
                        self.interval = min(self.interval * 2, self.longest)
                        return
                ref = self.ref_rate or rate
                changed = not (ref / self.shift < rate < ref * self.shift)  # load started or stopped
                self.ref_rate = ref if not changed else None
                if changed:
                    self.rate[threads] = rate  # the probe is compared with how fast it runs since the shift
            if changed or self.since_probe >= self.interval:
                self.plan = [(n, self._probe_len(n), "probe") for n in self.options if n != self.best]
                self.since_probe = 0

    def _measure(self, threads: int, kind: str) -> None:
        """Rate of `threads` over its latest consecutive segments of one kind (at most the last 256 iterations
        of a choice in use, so a probe is compared with how fast the choice runs now)."""
        its = secs = 0.0
        for n, i, s, k in reversed(self.log):
            if n != threads or k != kind or (kind == "exploit" and its >= 512):
                break
            its, secs = its + i, secs + s
        self.rate[threads] = secs / its

    def _decide(self) -> None:
        current = self.rate.get(self.best, float("inf"))
        challenger = min((n for n in self.options if n in self.rate), key=self.rate.__getitem__)
        if challenger != self.best and self.rate[challenger] < current * (1 - self.margin):
            # the first decision compares probes alike; later ones a short probe with a long stretch: confirm those
            self.trial = (self.best, current) if self.decided else None
            self.best, self.interval = challenger, self.first
        else:
            self.interval = min(self.interval * 2, self.longest)
        self.ref_rate, self.window = None, (0, 0.0)  # the next window of the choice sets its reference
        self.decided = True

    def summary(self) -> dict:
        """Iterations run with each thread count, and the choice at the end."""
        per: dict[int, int] = {}
        for n, i, _, _ in self.log:
            per[n] = per.get(n, 0) + i
        return {"options": self.options, "final": self.best, "iterations_per_threads": per}
