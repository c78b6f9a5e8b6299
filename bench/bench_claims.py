"""Claims at scale: the stacking choice for company-years of 20 to 10,000 dramas across all five districts.

Two figures: (1) on company-years the branch-and-bound search can still prove, the integer program pays
the same total to the fen; (2) seconds per evaluation at 1,000 and 10,000 dramas (the targets are 5 s and
60 s on a 2-core machine), each proven optimal. Ratios, not absolute timings, are what to compare across
machines: the reference is the search on the same scenarios in the same process.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from bench.claims_scenarios import company_year
from pipeline.finance import claims
from pipeline.finance.policies import load_policies
from pipeline.finance.scenario import parse_scenario

RESULTS = Path(__file__).parent / "results" / "claims.json"
COMPARED = [(16, 0, 1.0), (20, 0, 1.0), (20, 1, 1.0), (20, 2, 0.2), (20, 3, 0.05), (30, 2, 1.0)]
SIZES = [(1_000, 1.0), (1_000, 0.2), (10_000, 1.0)]


def _evaluate(n: int, seed: int, scale: float, small: int) -> tuple[float, claims.ClaimResult]:
    scenario = parse_scenario(company_year(n, seed=seed, scale=scale))
    old, claims.SMALL_SEARCH = claims.SMALL_SEARCH, small
    try:
        start = time.perf_counter()
        result = claims.evaluate(scenario, POLICIES)
        return time.perf_counter() - start, result
    finally:
        claims.SMALL_SEARCH = old


def _proven(result: claims.ClaimResult) -> bool:
    return not any("without proving it" in s.text for p in result.programmes.values() for s in p.steps)


def main() -> None:
    compared = []
    for n, seed, scale in COMPARED:
        t_search, by_search = _evaluate(n, seed, scale, small=10**9)
        t_program, by_program = _evaluate(n, seed, scale, small=0)
        row = {"dramas": n, "seed": seed, "scale": scale, "search_s": round(t_search, 3),
               "program_s": round(t_program, 3), "search_proven": _proven(by_search),
               "program_proven": _proven(by_program), "search_total": str(by_search.total),
               "program_total": str(by_program.total),
               "equal_to_the_fen": by_search.total == by_program.total}
        compared.append(row)
        print(json.dumps(row), flush=True)
    sizes = []
    for n, scale in SIZES:
        seconds, result = _evaluate(n, 0, scale, small=claims.SMALL_SEARCH)
        row = {"dramas": n, "scale": scale, "seconds": round(seconds, 2), "proven": _proven(result),
               "total": str(result.total)}
        sizes.append(row)
        print(json.dumps(row), flush=True)
    proven = [r for r in compared if r["search_proven"]]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "compared": compared, "sizes": sizes,
        "equal_where_the_search_proves": all(r["equal_to_the_fen"] for r in proven),
        "search_over_program_time": round(sum(r["search_s"] for r in proven) /
                                          max(sum(r["program_s"] for r in proven), 1e-9), 2),
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


POLICIES = load_policies()

if __name__ == "__main__":
    main()
