"""The stacking choice at company-year scale: the integer program pays exactly what trying every choice pays,
respects every limit, cap and stacking rule for thousands of works, and says so when it is cut short."""
from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.claims_scenarios import company_year
from tests.test_claims import _exhaustive
from pipeline.finance import claims, stacking
from pipeline.finance.policies import load_policies, selects
from pipeline.finance.scenario import parse_scenario

POLICIES = load_policies()


def _evaluate(data, small: int):
    old = claims.SMALL_SEARCH
    claims.SMALL_SEARCH = small
    try:
        return claims.evaluate(parse_scenario(data), POLICIES)
    finally:
        claims.SMALL_SEARCH = old


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=2, max_value=5), st.integers(min_value=0, max_value=10**6),
       st.sampled_from([1.0, 0.3, 0.05, 0.01]), st.integers(min_value=1, max_value=10))
def test_the_program_pays_what_trying_every_choice_pays(works, seed, scale, headcount):
    data = company_year(works, seed=seed, scale=scale, headcount=headcount)
    program = _evaluate(data, small=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(claims, "best_choice", _exhaustive)
        every = _evaluate(data, small=10**9)
    assert program.total == every.total
    assert not any("without proving" in s.text for p in program.programmes.values() for s in p.steps)


def _paid_under(result, drama: str) -> set[str]:
    return {pid for pid, p in result.programmes.items() if drama in p.by_drama}


def test_a_thousand_works_across_five_districts_keep_every_rule():
    data = company_year(1_000, seed=3, scale=0.3)
    result = _evaluate(data, small=claims.SMALL_SEARCH)
    steps = [s.text for p in result.programmes.values() for s in p.steps]
    assert not any("without proving" in t for t in steps)
    policies = {p.district: p for p in POLICIES.policies}
    for pid, prog in result.programmes.items():
        if prog.level == "company":
            continue
        assert prog.total == sum(prog.by_drama.values(), Decimal(0))
        rule = next(r for p in POLICIES.policies for r in p.programmes if r.id == pid)
        if rule.limit:
            assert len(prog.by_drama) <= rule.limit.count
        caps = [c.amount for c in (rule.cap_per_company_year,
                                   *(x.cap_per_company_year for x in (*rule.variants, *rule.uplifts)))
                if c is not None]
        if caps:
            assert prog.total <= max(caps)
    for work in data["dramas"]:  # never paid under two bundles of one stacking rule
        under = _paid_under(result, work["id"])
        for district in data["company"]["districts"]:
            for group in policies[district].stacking:
                hit = {b for b, bundle in enumerate(group.bundles) for pid in under
                       if any(selects(s, pid) for s in bundle)}
                assert len(hit) <= 1, (work["id"], group.id, under)
    assert result.total > 0


def test_a_program_cut_short_says_so_in_the_trace(monkeypatch):
    monkeypatch.setattr(stacking, "SOLVER_SECONDS", 1e-6)
    result = _evaluate(company_year(300, seed=1, scale=0.3), small=0)
    texts = [s.text for p in result.programmes.values() for s in p.steps]
    assert any("integer program" in t and "without proving it the best" in t for t in texts)
