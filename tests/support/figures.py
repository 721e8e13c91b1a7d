"""Benchmark outputs in tests: a figure must be reported, never judged (no speed is asserted in a test)."""

import math


def is_figure(v) -> bool:
    """A measured figure as the benchmarks report it: a finite number (its size says nothing here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
