"""The one validation-search rule every method uses: grid order, tie rule and start value in one place.

    chosen = select_on_val(candidates, score)            # score(candidate) -> val accuracy (%)
    chosen = select_scored(candidates, scores)           # when the scores were computed in one batch
    if improves(acc, best_acc): ...                      # early stopping / best epoch inside a training loop

The rule: candidates are compared **in the order given** (each method passes its official code's loop
order); a candidate replaces the current best only when its val score is **strictly higher**, so among
equal scores the earliest wins. The search starts from ``start`` — a ``(candidate, score)`` pair an
official code initializes its best with (GDA keeps alpha 0.1 unless a candidate beats accuracy 0;
Tip-Adapter keeps β = α = 0) — or, by default, from nothing, so the first candidate is always taken.

Only val scores ever come in: test features never reach a method (:class:`cmm_cache.methods.base.FitData`
holds none), and this module never sees a split at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Selection:
    """What a search chose, its val score, and every candidate's score in the order tried."""

    value: Any
    score: float
    tried: list = field(default_factory=list)  # [(candidate, score), ...]


def improves(score, best):
    """The tie rule: strictly higher. Works elementwise on tensors (``improves(acc_tensor, best_tensor)``)."""
    return score > best


def select_scored(candidates: Sequence, scores: Sequence[float], *, start: tuple | None = None) -> Selection:
    """The best of `candidates` given their val `scores` (same order), by the rule above."""
    candidates, scores = list(candidates), [float(s) for s in scores]
    if len(candidates) != len(scores):
        raise ValueError(f"{len(candidates)} candidates but {len(scores)} scores")
    if not candidates and start is None:
        raise ValueError("nothing to select from")
    best_value, best_score, have = (start[0], float(start[1]), True) if start is not None else (None, 0.0, False)
    for c, s in zip(candidates, scores):
        if not have or improves(s, best_score):
            best_value, best_score, have = c, s, True
    return Selection(best_value, best_score, list(zip(candidates, scores)))


def select_on_val(candidates: Iterable, score: Callable[[Any], float], *, start: tuple | None = None) -> Selection:
    """Score each candidate on val (``score(candidate)``, in order) and select by the rule above."""
    candidates = list(candidates)
    return select_scored(candidates, [score(c) for c in candidates], start=start)
