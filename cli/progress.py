"""A rich progress bar for `fit` (iterations of each run) and `predict` (images): silent with --json or
off a terminal."""

from __future__ import annotations

from .common import console


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
