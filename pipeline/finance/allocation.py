"""Company-year allocation: count limits, nested company-year caps, and the stacking choice that pays most."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Iterable

from pipeline.money import ZERO



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
Bound = Callable[[Choice, dict[str, list[frozenset[str]]]], Decimal]


SEARCH_BUDGET = 200_000  # branches the exact search may open before it settles for a local optimum


@dataclass(frozen=True)
class Search:
    """The stacking choice and how it was found."""

    choice: Choice
    proven: bool  # True: no other choice scores more; False: the budget ran out (best found, then improved)
    branches: int
    by: str = "search"  # search: the branch-and-bound below; program: the integer program (stacking.py)


def best_choice(options: dict[str, list[frozenset[str]]], score: Callable[[Choice], Decimal],
                bound: Bound | None = None, budget: int | None = None) -> Search:
    """Pick one option per drama maximising `score`; options are listed best-alone first.

    Exact: a depth-first search over the dramas with more than one option, in scenario order, that skips
    a branch only when `bound(partial, undecided)` — an upper limit on the score of every completion —
    shows it cannot beat the best choice found so far. It therefore returns the same choice as trying
    every combination: the first (in listing order) of those that score the most, so ties keep each
    drama's best-alone option. Without `bound` every combination is tried. Should the search open more
    than `budget` branches it stops, improves the best choice found one drama at a time, and says so
    (`proven=False`), rather than run for hours on a company with hundreds of competing works.
    """
    budget = SEARCH_BUDGET if budget is None else budget
    fixed = {d: opts[0] for d, opts in options.items() if len(opts) == 1}
    open_ = {d: opts for d, opts in options.items() if len(opts) > 1}
    names = list(open_)
    best: list[Any] = [None, ZERO]  # choice, score
    opened = [0]
    # A local optimum's score prunes from the start; the search still returns the first best choice in
    # listing order, as a choice scoring exactly this is kept only if none before it scores as much.
    start = _ascent({**fixed, **{d: opts[0] for d, opts in open_.items()}}, open_, score)
    floor = score(start)

    class _OutOfBudget(Exception):
        pass

    def search(i: int, partial: Choice) -> None:
        opened[0] += 1
        if opened[0] > budget:
            raise _OutOfBudget
        if i == len(names):
            value = score(partial)
            if (best[0] is None and value >= floor) or (best[0] is not None and value > best[1]):
                best[0], best[1] = dict(partial), value
            return
        if bound is not None:
            limit = bound(partial, {d: open_[d] for d in names[i:]})
            if (best[0] is None and limit < floor) or (best[0] is not None and limit <= best[1]):
                return  # no completion of this branch scores more (or, before any, as much as the floor)
        drama = names[i]
        for option in open_[drama]:
            partial[drama] = option
            search(i + 1, partial)
        del partial[drama]

    try:
        search(0, dict(fixed))
    except _OutOfBudget:
        found = best[0] if best[0] is not None and best[1] > floor else start
        return Search(_ascent(found, open_, score), proven=False, branches=opened[0] - 1)
    return Search(best[0] if best[0] is not None else dict(fixed), proven=True, branches=opened[0])


def _ascent(choice: Choice, open_: dict[str, list[frozenset[str]]], score: Callable[[Choice], Decimal]) -> Choice:
    """Change one drama's option at a time while the score strictly improves."""
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
