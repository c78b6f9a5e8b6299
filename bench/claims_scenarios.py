"""Generated company-years for the claims benchmark and tests: many dramas across all five districts."""
from __future__ import annotations

import random
from typing import Any

DISTRICTS = ["huairou", "yizhuang", "tongzhou", "mentougou", "datong"]


def company_year(dramas: int, seed: int = 7, districts: list[str] | None = None,
                 headcount: int = 12, scale: float = 1.0) -> dict[str, Any]:
    """A scenario dict with `dramas` works whose facts make most of them compete across programmes;
    `scale` multiplies every cost and revenue (small scales leave company-year caps unfilled)."""
    rng = random.Random(seed)
    districts = districts or DISTRICTS
    works = [_drama(rng, i, districts, scale) for i in range(dramas)]
    return {"year": 2026,
            "company": {"name": "基准影业", "districts": districts, "headcount": headcount,
                        "overseas_revenue": str(rng.randrange(0, 30_000_000)),
                        "rd_spend": str(rng.randrange(0, 5_000_000)),
                        "rd_spend_previous": str(rng.randrange(0, 5_000_000))},
            "dramas": works}


def _drama(rng: random.Random, i: int, districts: list[str], scale: float) -> dict[str, Any]:
    def cny(low: int, high: int) -> int:
        return int(rng.randrange(low, high) * scale)

    compute = cny(1_000, 400_000)
    tools = cny(0, 200_000)
    production = compute + tools + cny(0, 3_000_000)
    days_total = rng.randrange(1, 30)
    where = rng.sample(districts, rng.randrange(1, len(districts) + 1))
    return {
        "id": f"d{i:05d}",
        "launched": f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "orientation": rng.choice(["vertical", "vertical", "horizontal"]),
        "episode_minutes_max": str(rng.choice([1.5, 2, 2.5, 3, 5])),
        "licence_no": rng.choice([None, f"(京)网剧审字(2026)第{i:05d}号"]),
        "overseas": rng.random() < 0.3,
        "ai_comic": rng.random() < 0.3,
        "ip_conversion": rng.random() < 0.5,
        "yizhuang_theme": rng.random() < 0.2,
        "produced_in": where,
        "costs": {"compute": str(compute), "ai_tools": str(tools), "production": str(production),
                  "investment": str(production), "overseas_spend": str(cny(0, 500_000)),
                  "local_spend": {d: str(cny(0, 2_000_000)) for d in where}},
        "revenue_share": str(cny(0, 20_000_000)),
        "shooting_days": {**{d: rng.randrange(0, days_total + 1) for d in where[:1]}, "total": days_total},
        "local_runtime_share": {d: str(round(rng.random(), 2)) for d in where if d == "datong"},
    }
