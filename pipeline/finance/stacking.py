"""The stacking choice for a big company-year as an exact integer program over fen amounts (HiGHS).

Each work with more than one way to be paid (`options`: the sets of programmes a stacking rule lets it
claim together) picks exactly one. A programme pays what `allocation.allocate` pays for the works that
chose it: its count limit keeps the best-ranked works, then its company-year caps (nested, smallest
first) cut the total. Both are linear in 0/1 variables:

- *kept*: a work ranked at position i is kept only if fewer than `limit` works ranked before it chose the
  programme (a running count, big-M on the positions past the limit);
- *paid*: for a chain of caps C1 ≤ C2 ≤ …, the most the kept works can be paid is
  min(Σ asks, C_j + Σ asks of the works outside cap C_j) — the value of the smallest-cap-first fill.

Amounts are whole fen, so any two choices differ by at least one fen and a solution whose exact score is
within one fen of HiGHS's dual bound is the best there is. The choice is scored again with the Decimal
allocation, so what is paid never comes from the solver's floating point.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable

import numpy as np

from pipeline.finance.allocation import Candidate, Choice, Search, allocate

SOLVER_SECONDS = 120.0  # the solver's time limit; past it the best choice found is kept, marked unproven
FEN_PER_CNY = 100


@dataclass
class _Model:
    """Rows and columns of the program as it is built (row-wise sparse matrix)."""

    cost: list[float] = field(default_factory=list)
    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    integer: list[int] = field(default_factory=list)
    row_lo: list[float] = field(default_factory=list)
    row_hi: list[float] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    offset: float = 0.0

    def column(self, cost: float = 0.0, upper: float = 1.0, binary: bool = True) -> int:
        self.cost.append(cost)
        self.lower.append(0.0)
        self.upper.append(upper)
        self.integer.append(1 if binary else 0)
        return len(self.cost) - 1

    def row(self, terms: dict[int, float], lo: float, hi: float) -> None:
        self.starts.append(len(self.index))
        for col, coef in terms.items():
            if coef:
                self.index.append(col)
                self.value.append(coef)
        self.row_lo.append(lo)
        self.row_hi.append(hi)


@dataclass(frozen=True)
class _Linear:
    """A 0/1 quantity as a constant plus a sum of columns (a work's membership, or its kept flag)."""

    const: float
    terms: dict[int, float]


def solve(options: dict[str, list[frozenset[str]]], programmes: dict[str, tuple[list[Candidate], int | None]],
          score: Callable[[Choice], Decimal], seconds: float | None = None) -> Search:
    """The choice that pays most; `programmes` maps a programme id to its candidates and count limit."""
    import highspy

    options = _reduce(options, programmes)
    model = _Model()
    choice_cols: dict[str, list[tuple[int, frozenset[str]]]] = {}
    for drama, opts in options.items():
        if len(opts) > 1:
            cols = [(model.column(), o) for o in opts]
            choice_cols[drama] = cols
            model.row({c: 1.0 for c, _ in cols}, 1.0, 1.0)
    for pid, (cands, limit) in programmes.items():
        member = {c.drama: _membership(pid, c.drama, options, choice_cols) for c in cands}
        _add_programme(model, sorted(cands, key=Candidate.rank), limit, member)
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 0.5)
    h.setOptionValue("time_limit", float(SOLVER_SECONDS if seconds is None else seconds))
    h.setOptionValue("threads", 1)
    h.passModel(_lp(model, highspy))
    h.run()
    return _decode(h, model, options, choice_cols, score, highspy)


def _reduce(options: dict[str, list[frozenset[str]]],
            programmes: dict[str, tuple[list[Candidate], int | None]]) -> dict[str, list[frozenset[str]]]:
    """The options that are real decisions.

    A programme pays a fixed sum when the works that must join it already pay what all that may join it
    would (a company-year cap filled either way); options of a work that then differ only in such
    programmes are one decision (the first listed is kept), and an option whose paying programmes are a
    strict subset of another's, the difference being programmes where one more work never lowers the total
    (no count limit, or no cap), is never better. Repeated until nothing changes, since every work that is
    left with one option can fix more programmes."""
    options = dict(options)
    fixed: set[str] = set()
    monotone = {pid for pid, (cands, limit) in programmes.items()
                if limit is None or len(cands) <= limit or all(c.company_cap is None for c in cands)}
    changed = True
    while changed:
        changed = False
        for pid, (cands, limit) in programmes.items():
            if pid not in fixed and _pays_fixed(pid, cands, limit, options, pid in monotone):
                fixed.add(pid)
                changed = True
        for drama, opts in options.items():
            if len(opts) > 1:
                kept = _decisions(opts, fixed, monotone)
                if len(kept) < len(opts):
                    options[drama] = kept
                    changed = True
    return options


def _pays_fixed(pid: str, cands: list[Candidate], limit: int | None, options: dict[str, list[frozenset[str]]],
                monotone: bool) -> bool:
    must = [c for c in cands if all(pid in o for o in options[c.drama])]
    may = [c for c in cands if any(pid in o for o in options[c.drama])]
    if len(must) == len(may):
        return True
    return monotone and allocate(must, limit).total == allocate(may, limit).total


def _decisions(opts: list[frozenset[str]], fixed: set[str], monotone: set[str]) -> list[frozenset[str]]:
    paying = [o - fixed for o in opts]
    kept = []
    for i, (opt, pays) in enumerate(zip(opts, paying)):
        same = any(paying[j] == pays for j in range(i))
        beaten = any(pays < other and other - pays <= monotone for other in paying)
        if not same and not beaten:
            kept.append(opt)
    return kept


def _membership(pid: str, drama: str, options: dict[str, list[frozenset[str]]],
                choice_cols: dict[str, list[tuple[int, frozenset[str]]]]) -> _Linear:
    if drama in choice_cols:
        return _Linear(0.0, {col: 1.0 for col, opt in choice_cols[drama] if pid in opt})
    return _Linear(1.0 if pid in options[drama][0] else 0.0, {})


def _add_programme(model: _Model, ranked: list[Candidate], limit: int | None,
                   member: dict[str, _Linear]) -> None:
    """The programme's kept flags, then its paid total (a column, or asks straight into the objective)."""
    kept = _kept(model, ranked, limit, member)
    asks = [(float(c.amount * FEN_PER_CNY), c.company_cap, kept[c.drama]) for c in ranked]
    caps = sorted({cap for _, cap, _ in asks if cap is not None})
    if not caps:
        for ask, _, k in asks:
            _add_objective(model, k, ask)
        return
    total = model.column(cost=1.0, upper=float(sum(a for a, _, _ in asks)), binary=False)
    for level in (None, *caps):
        outside = [(a, k) for a, cap, k in asks if level is None or cap is None or cap > level]
        rhs = 0.0 if level is None else float(level * FEN_PER_CNY)
        terms: dict[int, float] = {total: 1.0}
        for ask, k in outside:
            rhs += ask * k.const
            for col, coef in k.terms.items():
                terms[col] = terms.get(col, 0.0) - ask * coef
        model.row(terms, -np.inf, rhs)


def _add_objective(model: _Model, k: _Linear, ask: float) -> None:
    model.offset += ask * k.const
    for col, coef in k.terms.items():
        model.cost[col] += ask * coef


def _kept(model: _Model, ranked: list[Candidate], limit: int | None,
          member: dict[str, _Linear]) -> dict[str, _Linear]:
    """Whether each work counts for the programme once its count limit keeps the best-ranked ones.

    The number of better-ranked works that chose the programme is carried as a constant plus one running
    column (`s_i = s_{i-1} + membership_{i-1}`), so the program grows linearly with the works."""
    if limit is None or len(ranked) <= limit:
        return {c.drama: member[c.drama] for c in ranked}
    if all(c.company_cap is None for c in ranked):
        return _best_of(model, ranked, limit, member)
    kept: dict[str, _Linear] = {}
    count_const, count_col = 0.0, None  # works ranked above this one that chose the programme
    for i, c in enumerate(ranked):
        m = member[c.drama]
        if count_col is None and count_const < limit or not m.terms and not m.const:
            kept[c.drama] = m  # within the limit for certain, or never a member
        elif count_col is None and not m.terms:
            kept[c.drama] = _Linear(0.0, {})  # the limit is filled by works that always claim it
        else:
            k = model.column()
            model.row({k: 1.0, **{col: -coef for col, coef in m.terms.items()}}, -np.inf, m.const)
            big = float(i - limit + 1)  # the most the count can exceed limit - 1
            terms = {k: big, **({count_col: 1.0} if count_col is not None else {})}
            model.row(terms, -np.inf, limit - 1 + big - count_const)
            kept[c.drama] = _Linear(0.0, {k: 1.0})
        count_const += m.const
        if m.terms:
            s = model.column(upper=float(i + 1), binary=False)
            terms = {s: 1.0, **({count_col: -1.0} if count_col is not None else {})}
            for col, coef in m.terms.items():
                terms[col] = terms.get(col, 0.0) - coef
            model.row(terms, 0.0, 0.0)
            count_col = s
    return kept


def _best_of(model: _Model, ranked: list[Candidate], limit: int,
             member: dict[str, _Linear]) -> dict[str, _Linear]:
    """Without a company-year cap, the `limit` best-ranked members are the `limit` that ask most, so any
    `limit` of the members may be picked: the program maximises, and picks those (a far tighter form)."""
    kept: dict[str, _Linear] = {}
    for c in ranked:
        m = member[c.drama]
        if m.terms or m.const:
            k = model.column()
            model.row({k: 1.0, **{col: -coef for col, coef in m.terms.items()}}, -np.inf, m.const)
            kept[c.drama] = _Linear(0.0, {k: 1.0})
        else:
            kept[c.drama] = m
    picks = {k.terms and next(iter(k.terms)): 1.0 for k in kept.values() if k.terms}
    model.row(picks, -np.inf, float(limit))
    return kept


def _lp(model: _Model, highspy):
    lp = highspy.HighsLp()
    lp.num_col_ = len(model.cost)
    lp.num_row_ = len(model.row_lo)
    lp.col_cost_ = np.array(model.cost, dtype=np.float64)
    lp.col_lower_ = np.array(model.lower, dtype=np.float64)
    lp.col_upper_ = np.array(model.upper, dtype=np.float64)
    lp.row_lower_ = np.array(model.row_lo, dtype=np.float64)
    lp.row_upper_ = np.array(model.row_hi, dtype=np.float64)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = np.array([*model.starts, len(model.index)], dtype=np.int32)
    lp.a_matrix_.index_ = np.array(model.index, dtype=np.int32)
    lp.a_matrix_.value_ = np.array(model.value, dtype=np.float64)
    lp.offset_ = model.offset
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                       for i in model.integer]
    return lp


def _decode(h, model: _Model, options: dict[str, list[frozenset[str]]],
            choice_cols: dict[str, list[tuple[int, frozenset[str]]]], score: Callable[[Choice], Decimal],
            highspy) -> Search:
    """The solver's choice, scored exactly; proven when that score is within a fen of the dual bound."""
    status = h.getModelStatus()
    if status not in (highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kTimeLimit) \
            or not choice_cols and not model.cost:
        if choice_cols:
            raise RuntimeError(f"the stacking program could not be solved: {h.modelStatusToString(status)}")
    values = np.array(h.getSolution().col_value) if model.cost else np.array([])
    choice: Choice = {d: opts[0] for d, opts in options.items() if d not in choice_cols}
    for drama, cols in choice_cols.items():
        best = max(cols, key=lambda c: values[c[0]] if len(values) else 0.0)
        choice[drama] = best[1]
    exact = score(choice) * FEN_PER_CNY
    bound = h.getInfo().mip_dual_bound if choice_cols else float(exact)
    proven = status == highspy.HighsModelStatus.kOptimal and float(exact) >= bound - 0.99
    nodes = int(h.getInfo().mip_node_count) if choice_cols else 0
    return Search(choice, proven=proven, branches=nodes, by="program")
