"""The claim engine: evaluate a company-year scenario against the policy data, with a cited trace per step."""
from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pipeline.finance import stacking
from pipeline.finance.allocation import Allocation, Candidate, Choice, Search, allocate, best_choice
from pipeline.money import ZERO, fmt, plain
from pipeline.finance.policies import (Policy, PolicyError, PolicySet, Programme, StackingGroup, load_policies,
                                       selects)
from pipeline.finance.rules import Assessment, Context, Step, assess
from pipeline.finance.scenario import Scenario


@dataclass(frozen=True)
class ProgrammeResult:
    """One programme's outcome for the company-year: total, per-drama amounts, exclusions, trace."""

    id: str
    district: str
    level: str  # per_work | company
    title: str
    total: Decimal
    by_drama: dict[str, Decimal] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    steps: tuple[Step, ...] = ()
    policy: Policy | None = field(default=None, compare=False, repr=False)  # for packets: seed, deadlines

    def steps_for(self, drama: str | None) -> list[Step]:
        """The programme-wide steps plus those about one drama (what a claim packet for it shows)."""
        return [s for s in self.steps if s.drama is None or s.drama == drama]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"total": fmt(self.total)}
        if self.level == "per_work":
            out["by_drama"] = {d: fmt(a) for d, a in self.by_drama.items()}
            out["excluded"] = dict(self.excluded)
        out["trace"] = [s.render() for s in self.steps]
        return out


@dataclass(frozen=True)
class ClaimResult:
    """Every programme of the company's districts, evaluated; `to_dict` is the CLAIMS.md output."""

    year: int
    company: str
    programmes: dict[str, ProgrammeResult]
    scenario: Scenario

    @property
    def total(self) -> Decimal:
        return sum((p.total for p in self.programmes.values()), ZERO)

    def to_dict(self) -> dict[str, Any]:
        return {"year": self.year, "company": self.company,
                "programmes": {pid: p.to_dict() for pid, p in self.programmes.items()},
                "total": fmt(self.total)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)


@dataclass
class _Run:
    """Working state of one evaluation."""

    scenario: Scenario
    policies: list[Policy]
    work: dict[str, dict[str, Assessment]] = field(default_factory=dict)  # programme -> drama -> assessment
    company: dict[str, Assessment] = field(default_factory=dict)
    programmes: dict[str, tuple[Policy, Programme]] = field(default_factory=dict)
    cache: dict[tuple[str, frozenset[str]], Allocation] = field(default_factory=dict)
    asks: dict[str, list[Candidate]] = field(default_factory=dict)

    def candidates(self, pid: str) -> list[Candidate]:
        """Every work the programme would pay something (or 0) for, in scenario order."""
        if pid not in self.asks:
            order = {d.id: (i, d.launched) for i, d in enumerate(self.scenario.dramas)}
            self.asks[pid] = [Candidate(d, a.amount, a.company_cap, order[d][1], order[d][0])
                              for d, a in self.work[pid].items() if a.amount is not None]
        return self.asks[pid]

    def limit(self, pid: str) -> int | None:
        prog = self.programmes[pid][1]
        return prog.limit.count if prog.limit else None

    def allocation(self, pid: str, dramas: frozenset[str]) -> Allocation:
        key = (pid, dramas)
        if key not in self.cache:
            self.cache[key] = allocate([c for c in self.candidates(pid) if c.drama in dramas], self.limit(pid))
        return self.cache[key]

    def score(self, choice: Choice) -> Decimal:
        return sum((self.allocation(pid, _dramas_for(pid, choice)).total for pid in self.work), ZERO)

    def bound(self, choice: Choice, undecided: dict[str, list[frozenset[str]]]) -> Decimal:
        """At least the score of every way of deciding `undecided`.

        A programme no undecided drama can still join pays exactly its allocation. Of the others, those
        whose count limit or company-year cap cuts what the dramas that have or may join them ask are
        bounded per programme (its `limit` largest asks, no more than the largest cap where every ask
        counts under one); the rest per drama (the asks already chosen, plus for each undecided drama the
        most one of its options asks from them), since a drama is paid under one option only."""
        exact, cut, free_chosen = ZERO, ZERO, ZERO
        free: set[str] = set()
        for pid, work in self.work.items():
            chosen = _dramas_for(pid, choice)
            maybe = {d for d, opts in undecided.items() if any(pid in o for o in opts)}
            if not maybe:
                exact += self.allocation(pid, chosen).total
                continue
            asks = [work[d] for d in chosen | maybe if work[d].amount is not None]
            prog = self.programmes[pid][1]
            everything = sum((a.amount for a in asks), ZERO)
            most = sum(sorted((a.amount for a in asks), reverse=True)[:prog.limit.count if prog.limit else None],
                       ZERO)
            caps = [a.company_cap for a in asks]
            if caps and all(c is not None for c in caps):
                most = min(most, max(caps))
            if most < everything:
                cut += most
            else:
                free.add(pid)
                free_chosen += sum((work[d].amount for d in chosen if work[d].amount is not None), ZERO)
        per_drama = sum((max(sum((self.work[p][d].amount for p in o if p in free
                                  and self.work[p][d].amount is not None), ZERO) for o in opts)
                         for d, opts in undecided.items()), ZERO)
        return exact + cut + free_chosen + per_drama


def _dramas_for(pid: str, choice: Choice) -> frozenset[str]:
    return frozenset(d for d, chosen in choice.items() if pid in chosen)


def evaluate(scenario: Scenario, policies: PolicySet | None = None) -> ClaimResult:
    """Evaluate every programme of the districts the company is in, for the scenario's year.

    `policies` defaults to the shipped configs/policies. The result keeps every traced step
    (`ProgrammeResult.steps`, `steps_for(drama)`) so a claim packet can show the same reasoning.
    """
    policies = policies or load_policies()
    by_district = policies.by_district()
    missing = [d for d in scenario.company.districts if d not in by_district]
    if missing:
        raise PolicyError(f"company.districts lists {', '.join(missing)} but {policies.source or 'the policy set'} "
                          f"has no policy file for it; add <district>.yaml or pass --policies")
    active = [by_district[d] for d in scenario.company.districts]
    run = _Run(scenario, active)
    for policy in active:
        for prog in policy.programmes:
            run.programmes[prog.id] = (policy, prog)
            if policy.in_force(scenario.year):
                _assess_programme(run, policy, prog)
    groups = [(p, g) for p in active if p.in_force(scenario.year) for g in p.stacking]
    options = _all_options(run, groups)
    search = _choose(run, options)
    choice = search.choice
    results = {}
    for pid, (policy, prog) in run.programmes.items():
        results[pid] = _result(run, policy, prog, choice, groups)
        if not search.proven:
            results[pid] = _unproven(results[pid], search, groups)
    return ClaimResult(scenario.year, scenario.company.name, results, scenario)


SMALL_SEARCH = 12  # up to this many works with a choice to make, the branch-and-bound search decides


def _choose(run: _Run, options: dict[str, list[frozenset[str]]]) -> Search:
    """The stacking choice that pays the company most.

    A handful of competing works: the branch-and-bound search, which also keeps each work's best-alone
    option among equally paying choices. More: the exact integer program (`stacking.solve`), which
    stays exact and takes seconds for thousands of works."""
    competing = sum(len(opts) > 1 for opts in options.values())
    if competing <= SMALL_SEARCH:
        return best_choice(options, run.score, run.bound)
    programmes = {pid: (run.candidates(pid), run.limit(pid)) for pid in run.work}
    return stacking.solve(options, programmes, run.score)


def _assess_programme(run: _Run, policy: Policy, prog: Programme) -> None:
    s = run.scenario
    if prog.level == "company":
        run.company[prog.id] = assess(Context(s.year, s.company, None, policy, prog))
        return
    run.work[prog.id] = {d.id: assess(Context(s.year, s.company, d, policy, prog)) for d in s.dramas}


def _all_options(run: _Run, groups: list[tuple[Policy, StackingGroup]]) -> dict[str, list[frozenset[str]]]:
    """Each drama's options; works eligible for the same programmes share the stacking rules' verdict."""
    order = list(run.work)
    maximal: dict[tuple[str, ...], list[frozenset[str]]] = {}
    options = {}
    for d in run.scenario.dramas:
        eligible = tuple(pid for pid in order if run.work[pid][d.id].amount is not None)
        if eligible not in maximal:
            maximal[eligible] = _maximal(eligible, groups)
        options[d.id] = _ranked(run, d.id, maximal[eligible])
    return options


def _maximal(eligible: tuple[str, ...], groups: list[tuple[Policy, StackingGroup]]) -> list[frozenset[str]]:
    """The largest sets of the eligible programmes that no stacking rule forbids together."""
    if not any(_conflicts(g, eligible) for _, g in groups):
        return [frozenset(eligible)]
    valid = [frozenset(c) for n in range(len(eligible), -1, -1)
             for c in itertools.combinations(eligible, n) if not any(_conflicts(g, c) for _, g in groups)]
    return [s for s in valid if not any(s < other for other in valid)]


def _ranked(run: _Run, drama: str, maximal: list[frozenset[str]]) -> list[frozenset[str]]:
    """One drama's options, best-paying alone first (ties in programme order)."""
    order = list(run.work)

    def value(option: frozenset[str]) -> tuple[Decimal, list[int]]:
        return (-sum((run.work[p][drama].amount for p in option), ZERO), sorted(order.index(p) for p in option))

    return sorted(maximal, key=value)


def _bundles_hit(group: StackingGroup, pids: Any) -> set[int]:
    return {b for b, bundle in enumerate(group.bundles) for pid in pids if any(selects(s, pid) for s in bundle)}


def _conflicts(group: StackingGroup, pids: Any) -> bool:
    return len(_bundles_hit(group, pids)) > 1


def _unproven(result: ProgrammeResult, search: Search, groups: list[tuple[Policy, StackingGroup]]) -> ProgrammeResult:
    """Say in the trace of every programme a stacking rule touches that the choice is not proven the best."""
    cites = [g.cite for _, g in groups if any(selects(s, result.id) for b in g.bundles for s in b)]
    if not cites:
        return result
    how = (f"searched over {search.branches:,} branches" if search.by == "search" else
           f"solved as an integer program within {stacking.SOLVER_SECONDS:g} s")
    text = (f"the choice of programme per work was {how} without proving it "
            "the best (too many competing works); the amounts are what that choice pays and may be below "
            "the most these rules allow")
    policy = result.policy
    step = Step(result.id, None, "stacking", text, cites[0].seed or (policy.seed if policy else ""), cites[0].clause)
    return dataclasses.replace(result, steps=(*result.steps, step))


def _header(run: _Run, policy: Policy, prog: Programme) -> list[Step]:
    """Programme-wide steps: validity, draft status, assumptions the scenario cannot show."""
    ctx = Context(run.scenario.year, run.scenario.company, None, policy, prog)
    v = policy.validity
    span = f"valid {v.valid_from or 'from publication'} to {v.valid_until or 'no stated end'}"
    state = "in force" if policy.in_force(run.scenario.year) else "NOT in force"
    steps = [ctx.step("validity", f"{state} in {run.scenario.year} ({span})", v.cite)]
    if policy.status == "draft":
        steps.append(ctx.step("validity", "a draft: amounts are indicative until it is issued", v.cite))
    steps += [ctx.step("assumed", a.text, a.cite) for a in (*policy.assumptions, *prog.assumptions)]
    return steps


def _result(run: _Run, policy: Policy, prog: Programme, choice: Choice,
            groups: list[tuple[Policy, StackingGroup]]) -> ProgrammeResult:
    steps = _header(run, policy, prog)
    base = dict(id=prog.id, district=policy.district, level=prog.level, title=prog.title, policy=policy)
    ctx = Context(run.scenario.year, run.scenario.company, None, policy, prog)
    if not policy.in_force(run.scenario.year):
        excluded = ({} if prog.level == "company" else
                    {d.id: f"policy not in force in {run.scenario.year}" for d in run.scenario.dramas})
        steps.append(ctx.step("total", "0.00", prog.cite))
        return ProgrammeResult(**base, total=ZERO, excluded=excluded, steps=tuple(steps))
    if prog.level == "company":
        found = run.company[prog.id]
        steps += found.steps
        if found.amount is None:
            steps.append(ctx.step("total", f"0.00 - not eligible: {found.reason}", prog.cite))
        else:
            steps.append(ctx.step("total", fmt(found.amount), prog.cite))
        return ProgrammeResult(**base, total=found.amount or ZERO, steps=tuple(steps))
    return _per_work_result(run, policy, prog, choice, groups, steps, base)


def _per_work_result(run: _Run, policy: Policy, prog: Programme, choice: Choice,
                     groups: list[tuple[Policy, StackingGroup]], steps: list[Step],
                     base: dict[str, Any]) -> ProgrammeResult:
    year, company = run.scenario.year, run.scenario.company
    alloc = run.allocation(prog.id, _dramas_for(prog.id, choice))
    over_limit = set(alloc.over_limit)
    by_drama: dict[str, Decimal] = {}
    excluded: dict[str, str] = {}
    for drama in run.scenario.dramas:
        found = run.work[prog.id][drama.id]
        ctx = Context(year, company, drama, policy, prog)
        steps += found.steps
        if found.amount is None:
            excluded[drama.id] = found.reason
        elif prog.id not in choice[drama.id]:
            text, seed, clause = _stacking_reason(prog.id, choice[drama.id], groups, policy)
            excluded[drama.id] = f"stacking {text} [{seed} {clause}]"
            steps.append(Step(prog.id, drama.id, "stacking", text, seed, clause))
        elif drama.id in over_limit:
            assert prog.limit is not None
            excluded[drama.id] = f"company limit: {prog.limit.count} dramas per year"
            steps.append(ctx.step("limit", f"{excluded[drama.id]}; {drama.id} is not among the "
                                  f"{prog.limit.count} that pay most", prog.limit.cite))
        else:
            _cap_outcome(alloc, drama.id, ctx, prog, steps, by_drama, excluded)
    total = sum(by_drama.values(), ZERO)
    steps.append(Context(year, company, None, policy, prog).step("total", fmt(total), prog.cite))
    return ProgrammeResult(**base, total=total, by_drama=by_drama, excluded=excluded, steps=tuple(steps))


def _cap_outcome(alloc: Allocation, drama: str, ctx: Context, prog: Programme, steps: list[Step],
                 by_drama: dict[str, Decimal], excluded: dict[str, str]) -> None:
    paid = alloc.paid[drama]
    cite = prog.cap_per_company_year.cite if prog.cap_per_company_year else prog.cite
    if drama in alloc.capped:
        asked, _, cap = alloc.capped[drama]
        text = f"company-year cap {plain(cap)}: {fmt(asked)} -> {fmt(paid)}"
        steps.append(ctx.step("cap", text, cite))
    if paid > 0:
        by_drama[drama] = paid
    else:
        excluded[drama] = f"company-year cap {plain(alloc.capped[drama][2])} reached"


def _stacking_reason(pid: str, chosen: frozenset[str], groups: list[tuple[Policy, StackingGroup]],
                     own: Policy) -> tuple[str, str, str]:
    """Why a stacking rule dropped `pid` for a drama, with the seed and clause it comes from."""
    for policy, group in groups:
        hit = _bundles_hit(group, [pid])
        winners = sorted(q for q in chosen if _bundles_hit(group, [q]) - hit)
        if hit and winners:
            text = (f"{group.label} ({group.id}): paid under {', '.join(winners)} instead "
                    "for this drama, the choice that pays more")
            return text, group.cite.seed or policy.seed, group.cite.clause
    return "another programme pays more for this drama", own.seed, own.validity.cite.clause
