"""Company-year allocation: count limits, nested company-year caps, and the stacking choice that pays most."""
from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable, Iterable

from pipeline.money import ZERO

EXHAUSTIVE_LIMIT = 4096  # stacking choices tried one by one up to this many; beyond, coordinate ascent


@dataclass(frozen=True)
class Candidate:
    """A work's amount under one programme after per-work caps, with the company-year cap it counts under."""

    drama: str
    amount: Decimal
    company_cap: Decimal | None  # None: no company-year cap
    launched: dt.date | None
    order: int  # position in the scenario, the last tie-break

    def rank(self) -> tuple[Decimal, dt.date, int]:
        """Larger amounts first; for equal amounts, earlier launch first."""
        return (-self.amount, self.launched or dt.date.max, self.order)


@dataclass(frozen=True)
class Allocation:
    """What each work is paid under one programme, and what the limit and caps held back."""

    paid: dict[str, Decimal]  # drama -> amount paid (may be less than asked, or 0)
    over_limit: tuple[str, ...]  # dramas dropped by the count limit
    capped: dict[str, tuple[Decimal, Decimal, Decimal]]  # drama -> (asked, paid, cap) where a cap bit

    @property
    def total(self) -> Decimal:
        return sum(self.paid.values(), ZERO)


def allocate(candidates: Iterable[Candidate], limit: int | None) -> Allocation:
    """Keep the `limit` best-paying works, then fill company-year caps in the order that pays most.

    Caps nest: a work counts under its own cap and every larger one (Yizhuang's themed uplift lifts
    the cap to 1,200,000 for themed works while other works stay within 1,000,000). Filling the
    smallest cap first, largest amounts first within a cap, reaches the largest total the caps allow.
    """
    ranked = sorted(candidates, key=Candidate.rank)
    kept = ranked if limit is None else ranked[:limit]
    over = tuple(c.drama for c in ranked[len(kept):])
    infinite = Decimal("Infinity")
    paid: dict[str, Decimal] = {}
    capped: dict[str, tuple[Decimal, Decimal, Decimal]] = {}
    running = ZERO
    for c in sorted(kept, key=lambda c: (c.company_cap if c.company_cap is not None else infinite, c.rank())):
        room = infinite if c.company_cap is None else max(c.company_cap - running, ZERO)
        give = min(c.amount, room)
        paid[c.drama] = give
        running += give
        if give < c.amount:
            capped[c.drama] = (c.amount, give, c.company_cap)  # type: ignore[assignment]
    return Allocation(paid, over, capped)


Choice = dict[str, frozenset[str]]


def best_choice(options: dict[str, list[frozenset[str]]], score: Callable[[Choice], Decimal]) -> Choice:
    """Pick one option per drama maximising `score`; options are listed best-alone first.

    The first choice tried is every drama's best-alone option; another choice replaces it only when
    it scores strictly more, so ties keep the per-drama best (and, among equals, the first listed).
    """
    fixed = {d: opts[0] for d, opts in options.items() if len(opts) == 1}
    open_ = {d: opts for d, opts in options.items() if len(opts) > 1}
    size = 1
    for opts in open_.values():
        size *= len(opts)
    if size <= EXHAUSTIVE_LIMIT:
        return _exhaustive(fixed, open_, score)
    return _ascent(fixed, open_, score)


def _exhaustive(fixed: Choice, open_: dict[str, list[frozenset[str]]],
                score: Callable[[Choice], Decimal]) -> Choice:
    best: Choice | None = None
    best_score = ZERO
    names = list(open_)
    for combo in itertools.product(*(open_[d] for d in names)):
        choice = {**fixed, **dict(zip(names, combo))}
        value = score(choice)
        if best is None or value > best_score:
            best, best_score = choice, value
    return best if best is not None else dict(fixed)


def _ascent(fixed: Choice, open_: dict[str, list[frozenset[str]]],
            score: Callable[[Choice], Decimal]) -> Choice:
    """Change one drama's option at a time while the score strictly improves (too many to try all)."""
    choice = {**fixed, **{d: opts[0] for d, opts in open_.items()}}
    best_score = score(choice)
    improved = True
    while improved:
        improved = False
        for drama, opts in open_.items():
            for option in opts:
                trial = {**choice, drama: option}
                value = score(trial)
                if value > best_score:
                    choice, best_score, improved = trial, value, True
    return choice
