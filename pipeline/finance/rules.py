"""Rule evaluation for one programme and one work (or the company): conditions, terms, basis, amount, trace."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pipeline.money import ZERO, D, fmt, plain, to_fen
from pipeline.finance.policies import (Brackets, Cite, Compare, Equals, IncreaseBasis, IsTrue,
                                       Launched, Licensed, Money, Policy, ProducedIn, Programme, Rate,
                                       Share, SumBasis)
from pipeline.finance.scenario import Company, Drama, field_value


@dataclass(frozen=True)
class Step:
    """One traced step of a claim: what was checked or computed, and the seed clause it comes from."""

    programme: str
    drama: str | None
    kind: str  # validity | assumed | condition | variant | uplift | basis | rate | cap | limit | stacking | total
    text: str
    seed: str
    clause: str

    def render(self) -> str:
        who = f"{self.drama}: " if self.drama else ""
        return f"{who}{self.kind}: {self.text} [{self.seed} {self.clause}]"


@dataclass(frozen=True)
class Context:
    """What a rule is evaluated against: the year, the company, the drama (None for company-level)."""

    year: int
    company: Company
    drama: Drama | None
    policy: Policy
    programme: Programme

    def step(self, kind: str, text: str, cite: Cite) -> Step:
        drama = self.drama.id if self.drama else None
        return Step(self.programme.id, drama, kind, text, cite.seed or self.policy.seed, cite.clause)


@dataclass(frozen=True)
class Assessment:
    """A programme applied to one work (or the company) before limits, company caps and stacking."""

    drama: str | None
    amount: Decimal | None  # rounded to the fen; None when not eligible
    reason: str  # why not eligible, '' when eligible
    company_cap: Decimal | None
    steps: tuple[Step, ...]


@dataclass
class _Terms:
    rate: Rate | None
    fixed: Money | None
    brackets: Brackets | None
    cap_per_work: Money | None
    cap_per_company_year: Money | None
    factor: Decimal = field(default_factory=lambda: D(1))
    uplift_cite: Cite | None = None


def check(condition: Any, ctx: Context) -> tuple[bool, str]:
    """Evaluate one named predicate; the text says what was found either way."""
    if isinstance(condition, Launched):
        return _launched(ctx)
    if isinstance(condition, Licensed):
        number = ctx.drama.licence_no if ctx.drama else None
        return (True, f"licence {number}") if number else (False, "no 网络剧片发行许可证 number (licence_no)")
    if isinstance(condition, IsTrue):
        value = field_value(condition.field, ctx.company, ctx.drama)
        return bool(value), f"{condition.field} is {'true' if value else 'false'}"
    if isinstance(condition, ProducedIn):
        places = ctx.drama.produced_in if ctx.drama else []
        ok = condition.district in places
        return ok, f"{'' if ok else 'not '}produced in {condition.district} (produced_in: {places})"
    if isinstance(condition, Equals):
        value = field_value(condition.field, ctx.company, ctx.drama)
        return value == condition.value, f"{condition.field} is {value}, rule needs {condition.value}"
    if isinstance(condition, Compare):
        return _compare(condition, ctx)
    if isinstance(condition, Share):
        return _share(condition, ctx)
    raise TypeError(f"unknown condition {condition!r}")


def _launched(ctx: Context) -> tuple[bool, str]:
    launched = ctx.drama.launched if ctx.drama else None
    if launched is None:
        return False, "not launched on a platform (launched is null)"
    year_end = dt.date(ctx.year, 12, 31)
    if launched > year_end:
        return False, f"launched {launched}, after the end of {ctx.year}"
    return True, f"launched {launched}"


_OPS = {"at_least": (">=", lambda a, b: a >= b), "more_than": (">", lambda a, b: a > b),
        "at_most": ("<=", lambda a, b: a <= b), "less_than": ("<", lambda a, b: a < b)}


def _compare(cond: Compare, ctx: Context) -> tuple[bool, str]:
    value = field_value(cond.field, ctx.company, ctx.drama)
    sign, holds = _OPS[cond.test]
    if value is None:
        ok = cond.missing == "pass"
        return ok, f"{cond.field} not declared ({'not checked' if ok else 'required'}: {sign} {plain(cond.value)})"
    ok = holds(value, cond.value)
    return ok, f"{cond.field} = {plain(value)} {sign if ok else 'is not ' + sign} {plain(cond.value)}"


def _share(cond: Share, ctx: Context) -> tuple[bool, str]:
    part = field_value(cond.part, ctx.company, ctx.drama)
    whole = field_value(cond.whole, ctx.company, ctx.drama)
    sign = ">" if cond.test == "share_more_than" else ">="
    if whole == 0:
        return False, f"{cond.whole} is 0 or not declared, so the share {cond.part} / {cond.whole} is unknown"
    # part / whole > value  <=>  part > value * whole (whole > 0): exact, no division
    ok = part > cond.value * whole if sign == ">" else part >= cond.value * whole
    verdict = sign if ok else f"is not {sign}"
    return ok, f"{cond.part} / {cond.whole} = {plain(part)}/{plain(whole)} {verdict} {plain(cond.value)}"


def _conditions(conditions: list[Any], ctx: Context, kind: str) -> tuple[list[str], list[Step]]:
    failures, steps = [], []
    for cond in conditions:
        ok, text = check(cond, ctx)
        steps.append(ctx.step(kind, f"{'met' if ok else 'NOT met'} - {text}", cond.cite))
        if not ok:
            failures.append(f"not met: {text} [{cond.cite.seed or ctx.policy.seed} {cond.cite.clause}]")
    return failures, steps


def _when(conditions: list[Any], ctx: Context) -> tuple[bool, str]:
    results = [check(c, ctx) for c in conditions]
    return all(ok for ok, _ in results), "; ".join(text for _, text in results)


def _terms(ctx: Context, steps: list[Step]) -> tuple[_Terms, list[str]]:
    """Base terms, replaced by the first variant whose `when` holds, then raised by applicable uplifts."""
    prog = ctx.programme
    terms = _Terms(prog.rate, prog.fixed, prog.brackets, prog.cap_per_work, prog.cap_per_company_year)
    failures: list[str] = []
    for variant in prog.variants:
        holds, why = _when(variant.when, ctx)
        if not holds:
            continue
        steps.append(ctx.step("variant", f"{variant.id} terms apply ({why})", variant.cite))
        failures, found = _conditions(variant.requires, ctx, "condition")
        steps.extend(found)
        terms.rate = variant.rate or terms.rate
        terms.cap_per_work = variant.cap_per_work or terms.cap_per_work
        terms.cap_per_company_year = variant.cap_per_company_year or terms.cap_per_company_year
        break
    for uplift in prog.uplifts:
        holds, why = _when(uplift.when, ctx)
        if not holds:
            steps.append(ctx.step("uplift", f"{uplift.id} not applied ({why})", uplift.cite))
            continue
        terms.factor *= uplift.factor
        terms.uplift_cite = uplift.cite
        terms.cap_per_work = uplift.cap_per_work or terms.cap_per_work
        terms.cap_per_company_year = uplift.cap_per_company_year or terms.cap_per_company_year
        steps.append(ctx.step("uplift", f"{uplift.id} applies ({why}): amount x {plain(uplift.factor)}",
                              uplift.cite))
    return terms, failures


def _basis(ctx: Context) -> tuple[Decimal, Step | None]:
    basis = ctx.programme.basis
    if basis is None:
        return ZERO, None
    if isinstance(basis, SumBasis):
        values = [field_value(f, ctx.company, ctx.drama) or ZERO for f in basis.fields]
        total = sum(values, ZERO)
        parts = " + ".join(f"{f} {plain(v)}" for f, v in zip(basis.fields, values))
        text = f"{parts} = {plain(total)}" if len(values) > 1 else parts
        return total, ctx.step("basis", text, basis.cite)
    assert isinstance(basis, IncreaseBasis)
    current = field_value(basis.current, ctx.company, ctx.drama)
    previous = field_value(basis.previous, ctx.company, ctx.drama)
    grown = max(current - previous, ZERO)
    text = f"{basis.current} {plain(current)} - {basis.previous} {plain(previous)} -> increase {plain(grown)}"
    return grown, ctx.step("basis", text, basis.cite)


def _raw_amount(terms: _Terms, basis: Decimal, ctx: Context) -> tuple[Decimal, Step]:
    if terms.fixed is not None:
        return terms.fixed.amount, ctx.step("rate", f"fixed {plain(terms.fixed.amount)} per work", terms.fixed.cite)
    if terms.brackets is not None:
        band = next(b for b in terms.brackets.bands if b.upper is None or basis < b.upper)
        upper = plain(band.upper) if band.upper is not None else "∞"
        raw = basis * band.rate
        text = f"bracket [{plain(band.lower)}, {upper}): {plain(band.rate)} x the whole {plain(basis)} = {plain(raw)}"
        return raw, ctx.step("rate", text, terms.brackets.cite)
    assert terms.rate is not None
    raw = basis * terms.rate.value
    return raw, ctx.step("rate", f"{plain(terms.rate.value)} x {plain(basis)} = {plain(raw)}", terms.rate.cite)


def _capped(raw: Decimal, cap: Money | None, what: str, ctx: Context) -> tuple[Decimal, Step | None]:
    if cap is None:
        return raw, None
    if raw > cap.amount:
        return cap.amount, ctx.step("cap", f"{what} {plain(cap.amount)}: {plain(raw)} -> {plain(cap.amount)}", cap.cite)
    return raw, ctx.step("cap", f"{what} {plain(cap.amount)}: {plain(raw)} is within it", cap.cite)


def assess(ctx: Context) -> Assessment:
    """Apply one programme to one work (or, for a company-level programme, to the company)."""
    drama = ctx.drama.id if ctx.drama else None
    failures, steps = _conditions(ctx.programme.conditions, ctx, "condition")
    terms, missed = _terms(ctx, steps)
    failures += missed
    if failures:
        return Assessment(drama, None, "; ".join(failures), None, tuple(steps))
    basis, basis_step = _basis(ctx)
    steps += [basis_step] if basis_step else []
    raw, rate_step = _raw_amount(terms, basis, ctx)
    steps.append(rate_step)
    if terms.factor != 1:
        raw = raw * terms.factor
        steps.append(ctx.step("uplift", f"x {plain(terms.factor)} = {plain(raw)}",
                              terms.uplift_cite or ctx.programme.cite))
    per_work = ctx.programme.level == "per_work"
    cap = terms.cap_per_work if per_work else terms.cap_per_company_year
    capped, cap_step = _capped(raw, cap, "cap per work" if per_work else "cap per company-year", ctx)
    steps += [cap_step] if cap_step else []
    amount = to_fen(capped)
    steps.append(ctx.step("amount", f"{fmt(amount)} (rounded half-up to the fen)", ctx.programme.cite))
    if per_work and amount == 0:
        return Assessment(drama, None, "nothing to pay: the amount is 0.00", None, tuple(steps))
    company_cap = terms.cap_per_company_year.amount if terms.cap_per_company_year else None
    return Assessment(drama, amount, "", company_cap, tuple(steps))
