"""The claim engine: every programme at and around its thresholds and caps, stacking, limits, CLI, output shape."""
from __future__ import annotations

import json
import re
import shutil
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipeline.finance.claims import evaluate
from pipeline.finance.claims_cli import app
from pipeline.finance.datafiles import load_exact
from pipeline.money import D
from pipeline.finance.policies import DEFAULT_POLICY_DIR, load_policies
from pipeline.finance.scenario import ScenarioError, parse_scenario

POLICIES = load_policies()
ALL = ["huairou", "yizhuang", "tongzhou", "mentougou", "datong"]


def drama(id: str, launched: str | None = "2026-03-01", **fields: Any) -> dict[str, Any]:
    return {"id": id, "launched": launched, **fields}


def claim(*dramas: dict[str, Any], districts: tuple[str, ...] = ("huairou",), year: int = 2026,
          **company: Any) -> dict[str, Any]:
    data = {"year": year, "company": {"name": "测试影业", "districts": list(districts), **company},
            "dramas": list(dramas)}
    return evaluate(parse_scenario(data), POLICIES).to_dict()


def prog(result: dict[str, Any], pid: str) -> dict[str, Any]:
    return result["programmes"][pid]


def paid(result: dict[str, Any], pid: str) -> dict[str, str]:
    return prog(result, pid)["by_drama"]


# ---------------------------------------------------------------- huairou.compute_voucher
HR = "huairou.compute_voucher"


def hr(compute: str, **fields: Any) -> dict[str, Any]:
    return drama("d", produced_in=["huairou"], costs={"compute": compute}, **fields)


@pytest.mark.parametrize("compute, overseas, expected", [
    ("41234.56", False, "12370.37"),   # 0.30 x 41234.56 = 12370.368
    ("66666.63", False, "19999.99"),   # just under the cap: 19999.989
    ("66666.67", False, "20000.00"),   # 20000.001 -> cap 20000
    ("100000", False, "20000.00"),     # over the cap
    ("0.15", False, "0.05"),           # 0.045 rounds half-up (half-even would give 0.04)
    ("60000", True, "23400.00"),       # 0.39 x 60000
    ("66666.66", True, "26000.00"),    # 25999.9974 rounds to the cap
    ("80000", True, "26000.00"),       # 31200 -> overseas cap 26000
])
def test_huairou_rate_cap_and_overseas_uplift(compute, overseas, expected):
    result = claim(hr(compute, overseas=overseas))
    assert paid(result, HR) == {"d": expected}
    assert prog(result, HR)["total"] == expected == result["total"]


@pytest.mark.parametrize("fields, reason", [
    ({"launched": None}, "not launched"),
    ({"launched": "2027-01-01"}, "after the end of 2026"),
    ({"produced_in": ["yizhuang"]}, "not produced in huairou"),
    ({"episode_minutes_max": "20.01"}, "episode_minutes_max = 20.01 is not <= 20"),
])
def test_huairou_conditions(fields, reason):
    d = {**hr("10000"), **fields}
    result = claim(d, districts=("huairou", "yizhuang"), headcount=10)
    assert paid(result, HR) == {} and prog(result, HR)["total"] == "0.00"
    assert reason in prog(result, HR)["excluded"]["d"]
    assert re.search(r"\[003_332d36df0d886521\.txt .+\]$", prog(result, HR)["excluded"]["d"])  # clause cited


def test_huairou_episode_length_at_the_limit_or_undeclared_passes():
    assert paid(claim(hr("10000", episode_minutes_max=20)), HR) == {"d": "3000.00"}
    assert paid(claim(hr("10000")), HR) == {"d": "3000.00"}


def test_huairou_five_dramas_that_pay_most():
    dramas = [drama(f"d{i}", produced_in=["huairou"], costs={"compute": str(10000 * i)}) for i in range(1, 8)]
    dramas[1]["overseas"] = True  # d2: 0.39 x 20000 = 7800 beats d2's 6000 and d3's 9000? no: 7800 < 9000
    result = claim(*dramas)
    # amounts: d1 3000, d2 7800, d3 9000, d4 12000, d5 15000, d6 18000, d7 21000 -> 20000
    assert paid(result, HR) == {"d3": "9000.00", "d4": "12000.00", "d5": "15000.00", "d6": "18000.00",
                                "d7": "20000.00"}
    assert prog(result, HR)["excluded"] == {"d1": "company limit: 5 dramas per year",
                                            "d2": "company limit: 5 dramas per year"}
    assert prog(result, HR)["total"] == "74000.00"


def test_huairou_limit_ties_go_to_earlier_launch():
    dates = ["2026-06-01", "2026-01-05", "2026-03-01", "2026-02-01", "2026-05-01", "2026-04-01"]
    dramas = [drama(f"d{i}", launched=day, produced_in=["huairou"], costs={"compute": "10000"})
              for i, day in enumerate(dates)]
    result = claim(*dramas)
    assert list(prog(result, HR)["excluded"]) == ["d0"]  # launched last
    assert prog(result, HR)["total"] == "15000.00"
    assert prog(claim(*dramas[1:]), HR)["excluded"] == {}  # exactly five: all paid


# ---------------------------------------------------------------- yizhuang.ai_spend (+ OPC)
AI, IP, REV = "yizhuang.ai_spend", "yizhuang.ip_conversion", "yizhuang.overseas_revenue"


def yz(*dramas: dict[str, Any], headcount: int = 10, **company: Any) -> dict[str, Any]:
    return claim(*dramas, districts=("yizhuang",), headcount=headcount, **company)


@pytest.mark.parametrize("headcount, compute, expected", [
    (6, "100000", "30000.00"),          # 6 people: not an OPC, 30%
    (5, "100000", "50000.00"),          # 5 people: OPC (5人以下 includes 5), 50%
    (5, "999999.98", "499999.99"),      # OPC just under its 500,000 cap
    (5, "1000000", "500000.00"),        # at the cap
    (5, "1000000.02", "500000.00"),     # over it
    (5, "4000000", "500000.00"),        # an OPC stays on the OPC rule even where 30% would pay more
    (6, "3333333.30", "999999.99"),     # regular rule just under its 1,000,000 cap
    (6, "3333333.34", "1000000.00"),    # 1000000.002 -> cap
])
def test_yizhuang_ai_spend_opc_and_caps(headcount, compute, expected):
    result = yz(drama("d", costs={"compute": compute}), headcount=headcount)
    assert paid(result, AI) == {"d": expected}


def test_yizhuang_ai_spend_basis_is_compute_plus_ai_tools_and_company_cap_is_shared():
    result = yz(drama("a", launched="2026-02-01", costs={"compute": "1500000", "ai_tools": "500000"}),
                drama("b", launched="2026-01-01", costs={"compute": "2000000"}))
    # a: 0.30 x 2,000,000 = 600,000; b: 600,000; together 1,200,000 -> cap 1,000,000, earlier launch (b) first
    assert paid(result, AI) == {"a": "400000.00", "b": "600000.00"}
    assert prog(result, AI)["total"] == "1000000.00"
    assert any("company-year cap 1000000: 600000.00 -> 400000.00" in s for s in prog(result, AI)["trace"])


# ---------------------------------------------------------------- yizhuang.ip_conversion (+ theme)
def ip(id: str, production: str, **fields: Any) -> dict[str, Any]:
    return drama(id, ip_conversion=True, costs={"production": production}, **fields)


@pytest.mark.parametrize("production, theme, expected", [
    ("1000000", False, "300000.00"),
    ("1000000", True, "360000.00"),       # x 1.2
    ("3333333.30", False, "999999.99"),   # just under the 1,000,000 cap: 999999.99
    ("3333333.33", False, "1000000.00"),  # 999999.999 rounds up to the cap
    ("4000000", False, "1000000.00"),
    ("3333333.30", True, "1199999.99"),   # themed: 0.36 x 3333333.30 = 1199999.988
    ("4000000", True, "1200000.00"),      # themed cap 1,200,000
])
def test_yizhuang_ip_conversion_rate_theme_and_caps(production, theme, expected):
    result = yz(ip("d", production, yizhuang_theme=theme))
    assert paid(result, IP) == {"d": expected}


def test_yizhuang_ip_conversion_themed_and_plain_works_share_nested_caps():
    result = yz(ip("plain", "3000000"), ip("themed", "1000000", yizhuang_theme=True))
    # plain 900,000 within 1,000,000; themed 360,000 but all together at most 1,200,000
    assert paid(result, IP) == {"plain": "900000.00", "themed": "300000.00"}


def test_yizhuang_ip_conversion_conditions():
    result = yz(ip("unlaunched", "100000", launched=None), drama("no-ip", costs={"production": "100000"}))
    excluded = prog(result, IP)["excluded"]
    assert "not launched" in excluded["unlaunched"] and "ip_conversion is false" in excluded["no-ip"]


# ---------------------------------------------------------------- 从优不重复 (annex item 9)
def test_yizhuang_stacking_pays_the_larger_for_the_same_drama():
    result = yz(drama("d", ip_conversion=True, costs={"compute": "100000", "production": "600000"}))
    assert paid(result, IP) == {"d": "180000.00"} and paid(result, AI) == {}
    assert "从优不重复" in prog(result, AI)["excluded"]["d"]
    assert "paid under yizhuang.ip_conversion" in prog(result, AI)["excluded"]["d"]
    assert result["total"] == "180000.00"


def test_yizhuang_stacking_tie_keeps_ai_spend():
    result = yz(drama("d", ip_conversion=True, costs={"compute": "100000", "production": "100000"}))
    assert paid(result, AI) == {"d": "30000.00"} and paid(result, IP) == {}


def test_yizhuang_stacking_choice_maximises_the_company_year_total():
    # each drama alone: ip 1,020,000 > ai 900,000; both on ip would be capped at 1,000,000 in all
    both = dict(ip_conversion=True, costs={"compute": "3000000", "production": "3400000"})
    result = yz(drama("a", launched="2026-01-01", **both), drama("b", launched="2026-02-01", **both))
    assert paid(result, IP) == {"a": "1000000.00"}
    assert paid(result, AI) == {"b": "900000.00"}
    assert result["total"] == "1900000.00"
    assert "stacking" in prog(result, IP)["excluded"]["b"]


# ---------------------------------------------------------------- yizhuang.overseas_revenue (brackets)
@pytest.mark.parametrize("revenue, expected", [
    ("0", "0.00"),
    ("14999999.99", "150000.00"),      # 1% = 149999.9999
    ("15000000", "450000.00"),         # 3% from 15,000,000 on, on the whole amount
    ("99999999.99", "3000000.00"),     # 3% = 2999999.9997
    ("100000000", "6000000.00"),       # 6% from 100,000,000 on
])
def test_yizhuang_overseas_revenue_brackets(revenue, expected):
    result = yz(overseas_revenue=revenue)
    assert prog(result, REV)["total"] == expected
    assert "by_drama" not in prog(result, REV) and "excluded" not in prog(result, REV)


# ---------------------------------------------------------------- tongzhou
def tz(*dramas: dict[str, Any], **company: Any) -> dict[str, Any]:
    return claim(*dramas, districts=("tongzhou",), **company)


@pytest.mark.parametrize("investment, expected", [
    ("1000000", "300000.00"), ("1666666.63", "499999.99"), ("1666666.67", "500000.00"), ("3000000", "500000.00"),
])
def test_tongzhou_ai_comic(investment, expected):
    assert paid(tz(drama("d", ai_comic=True, costs={"investment": investment})), "tongzhou.ai_comic") == {"d": expected}


def test_tongzhou_ai_comic_company_cap_of_5m():
    dramas = [drama(f"d{i:02}", launched=f"2026-01-{i + 1:02}", ai_comic=True, costs={"investment": "2000000"})
              for i in range(11)]
    result = tz(*dramas, drama("plain", costs={"investment": "2000000"}))
    programme = prog(result, "tongzhou.ai_comic")
    assert programme["total"] == "5000000.00" and len(programme["by_drama"]) == 10
    assert programme["excluded"]["d10"] == "company-year cap 5000000 reached"  # launched last
    assert "ai_comic is false" in programme["excluded"]["plain"]


def test_tongzhou_overseas_per_drama_and_company_caps():
    ovs = [drama(f"d{i}", launched=f"2026-0{i + 1}-01", overseas=True, costs={"overseas_spend": s})
           for i, s in enumerate(["600000", "700000", "666666.63", "1000000", "1000000", "1000000"])]
    result = tz(*ovs, drama("home", costs={"overseas_spend": "100000"}))
    # per work: d0 180,000 | d1 200,000 (cap) | d2 199,999.99 | d3-d5 200,000; the 1,000,000 company cap
    # goes to the largest first (d1, d3, d4, d5: 800,000), then d2 199,999.99, leaving 0.01 for d0
    assert paid(result, "tongzhou.overseas") == {
        "d0": "0.01", "d1": "200000.00", "d2": "199999.99", "d3": "200000.00", "d4": "200000.00",
        "d5": "200000.00"}
    assert prog(result, "tongzhou.overseas")["total"] == "1000000.00"
    assert "overseas is false" in prog(result, "tongzhou.overseas")["excluded"]["home"]


@pytest.mark.parametrize("days, ok", [
    ({"tongzhou": 5, "total": 10}, False),   # exactly half: not "more than half"
    ({"tongzhou": 6, "total": 11}, True),
    ({"tongzhou": 51, "total": 100}, True),
    ({"tongzhou": 3}, None),                 # total missing: invalid scenario
    ({}, False),                             # nothing declared
])
def test_tongzhou_location_shoot_more_than_half_the_days(days, ok):
    d = drama("d", shooting_days=days, costs={"local_spend": {"tongzhou": "1000000"}})
    if ok is None:
        with pytest.raises(ScenarioError, match="shooting_days.total: required"):
            tz(d)
        return
    result = tz(d)
    assert paid(result, "tongzhou.location_shoot") == ({"d": "300000.00"} if ok else {})


def test_tongzhou_location_shoot_cap():
    d = drama("d", shooting_days={"tongzhou": 9, "total": 10}, costs={"local_spend": {"tongzhou": "2000000"}})
    assert paid(tz(d), "tongzhou.location_shoot") == {"d": "500000.00"}


@pytest.mark.parametrize("current, previous, key, expected", [
    ("5000000", "3000000", True, "600000.00"),
    ("5000000", "3000000", False, "0.00"),
    ("3000000", "5000000", True, "0.00"),        # R&D fell: no increase
    ("40000000", "0", True, "10000000.00"),      # 12,000,000 -> cap 10,000,000
])
def test_tongzhou_rd_increment(current, previous, key, expected):
    result = tz(rd_spend=current, rd_spend_previous=previous, rd_key_project=key)
    assert prog(result, "tongzhou.rd_increment")["total"] == expected


def test_tongzhou_best_of_districts_drops_the_lower_side_and_frees_a_huairou_slot():
    # x: huairou overseas 0.39 x 50,000 = 19,500 vs tongzhou overseas 0.30 x 100,000 = 30,000
    x = drama("x", overseas=True, produced_in=["huairou"], costs={"compute": "50000", "overseas_spend": "100000"})
    others = [drama(f"h{i}", produced_in=["huairou"], costs={"compute": "10000"}) for i in range(5)]
    result = claim(x, *others, districts=("huairou", "tongzhou"))
    assert paid(result, "tongzhou.overseas") == {"x": "30000.00"}
    assert "择优不重复" in prog(result, HR)["excluded"]["x"]
    assert paid(result, HR) == {f"h{i}": "3000.00" for i in range(5)}  # all five fit now
    assert result["total"] == "45000.00"


# ---------------------------------------------------------------- mentougou
def test_mentougou_licensed_works_and_company_cap():
    works = [drama(f"w{i:02}", launched=f"2026-02-{i + 1:02}", licence_no=f"(2026){i:04}") for i in range(11)]
    result = claim(*works, drama("unlicensed"), drama("unlaunched", launched=None, licence_no="X"),
                   districts=("mentougou",))
    programme = prog(result, "mentougou.licensed_work")
    assert programme["total"] == "500000.00" and set(programme["by_drama"].values()) == {"50000.00"}
    assert programme["excluded"]["w10"] == "company-year cap 500000 reached"
    assert "licence" in programme["excluded"]["unlicensed"]
    assert "not launched" in programme["excluded"]["unlaunched"]


# ---------------------------------------------------------------- datong
RS, LT = "datong.revenue_share", "datong.local_theme"


def dt_(*dramas: dict[str, Any], year: int = 2026, **company: Any) -> dict[str, Any]:
    return claim(*dramas, districts=("datong",), year=year, **company)


@pytest.mark.parametrize("orientation, revenue, expected", [
    ("vertical", "999999.99", None),          # below the vertical threshold
    ("vertical", "1000000", "100000.00"),
    ("vertical", "10000000.01", "1000000.00"),
    ("horizontal", "1999999.99", None),
    ("horizontal", "2000000", "200000.00"),
    ("horizontal", "14999999.90", "1499999.99"),
    ("horizontal", "14999999.99", "1500000.00"),  # 1499999.999 rounds to the cap
    ("horizontal", "16000000", "1500000.00"),
])
def test_datong_revenue_share_thresholds_and_caps(orientation, revenue, expected):
    result = dt_(drama("d", orientation=orientation, licence_no="L", revenue_share=revenue))
    assert paid(result, RS) == ({"d": expected} if expected else {})


def test_datong_revenue_share_company_cap_and_licence():
    big = [drama(f"d{i}", launched=f"2026-0{i + 1}-01", licence_no="L", revenue_share="20000000") for i in range(3)]
    result = dt_(*big, drama("nolicence", revenue_share="20000000"))
    assert paid(result, RS) == {"d0": "1000000.00", "d1": "1000000.00"}
    assert prog(result, RS)["excluded"]["d2"] == "company-year cap 2000000 reached"
    assert "licence" in prog(result, RS)["excluded"]["nolicence"]


@pytest.mark.parametrize("share, revenue, spend, expected", [
    ("0.20", "500000", "800000", None),              # exactly 20%: not "more than"
    ("0.2000001", "500000", "800000", "80000.00"),
    ("0.25", "499999.99", "800000", None),           # revenue below 500,000
    ("0.25", "500000", "6000000", "500000.00"),      # 600,000 -> cap 500,000
])
def test_datong_local_theme_runtime_share_strictly_more_than_20_percent(share, revenue, spend, expected):
    d = drama("d", licence_no="L", revenue_share=revenue, local_runtime_share={"datong": share},
              costs={"local_spend": {"datong": spend}})
    assert paid(dt_(d), LT) == ({"d": expected} if expected else {})


def test_datong_both_measures_apply_to_one_work_and_rd_is_company_level():
    d = drama("d", licence_no="L", revenue_share="1000000", local_runtime_share={"datong": "0.5"},
              costs={"local_spend": {"datong": "800000"}})
    result = dt_(d, rd_spend="30000000")
    assert paid(result, RS) == {"d": "100000.00"} and paid(result, LT) == {"d": "80000.00"}
    assert prog(result, "datong.rd")["total"] == "2000000.00"
    assert result["total"] == "2180000.00"
    assert prog(dt_(rd_spend="1000000"), "datong.rd")["total"] == "100000.00"


def test_datong_highest_only_against_other_policies_for_the_same_drama():
    # d: datong revenue share 0.10 x 1,000,000 = 100,000 vs huairou 0.30 x 10,000 = 3,000 -> datong only
    d = drama("d", licence_no="L", revenue_share="1000000", produced_in=["huairou"], costs={"compute": "10000"})
    result = claim(d, drama("h", produced_in=["huairou"], costs={"compute": "10000"}),
                   districts=("huairou", "datong"))
    assert paid(result, RS) == {"d": "100000.00"} and paid(result, HR) == {"h": "3000.00"}
    assert "就高不重复" in prog(result, HR)["excluded"]["d"]
    assert result["total"] == "103000.00"


def test_datong_validity_window():
    d = drama("d", licence_no="L", revenue_share="1000000")
    assert prog(dt_(d, year=2024), RS)["total"] == "0.00"
    assert prog(dt_(d, year=2024), RS)["excluded"]["d"] == "policy not in force in 2024"
    assert prog(dt_(d, year=2028), RS)["total"] == "100000.00"  # in force until 2028-04-05
    assert prog(dt_(d, year=2029), RS)["total"] == "0.00"


# ---------------------------------------------------------------- output shape
def test_every_programme_of_the_districts_appears_with_two_decimal_strings():
    result = claim(districts=tuple(ALL), headcount=3)
    assert set(result["programmes"]) == set(POLICIES.programme_ids())
    for pid, programme in result["programmes"].items():
        assert programme["total"] == "0.00" and programme["trace"]
        assert ("by_drama" in programme) == (pid not in {REV, "tongzhou.rd_increment", "datong.rd"})
    assert result["total"] == "0.00" and result["year"] == 2026 and result["company"] == "测试影业"
    only = claim(districts=("mentougou",))
    assert list(only["programmes"]) == ["mentougou.licensed_work"]


def test_trace_cites_seed_clauses_and_total_is_the_sum():
    result = claim(hr("41234.56"), districts=("huairou", "mentougou"))
    trace = prog(result, HR)["trace"]
    assert ("d: basis: costs.compute 41234.56 + costs.rework_compute 0 + costs.idle 0 = 41234.56 "
            "[003_332d36df0d886521.txt 三(二)1]") in trace
    assert "d: rate: 0.3 x 41234.56 = 12370.368 [003_332d36df0d886521.txt 三(二)1]" in trace
    assert all(re.search(r"\[\d{3}_[0-9a-f]+\.txt .+\]$", step) for step in trace)
    amounts = [Decimal(p["total"]) for p in result["programmes"].values()]
    assert Decimal(result["total"]) == sum(amounts)
    for programme in result["programmes"].values():
        assert all(re.fullmatch(r"\d+\.\d\d", v) for v in [programme["total"], *programme.get("by_drama", {}).values()])


# ---------------------------------------------------------------- scenarios: exact numbers, invalid input
def test_yaml_numbers_are_exact_and_floats_need_exact_text():
    text = """
year: 2026
company: {name: x, districts: [huairou]}
dramas:
  - {id: d, launched: 2026-03-01, produced_in: [huairou], costs: {compute: 41234.56}}
"""
    scenario = parse_scenario(load_exact(text))
    assert scenario.dramas[0].costs.compute == Decimal("41234.56")
    assert D(0.1) == Decimal("0.1")
    with pytest.raises(ValueError, match="more digits than a float holds exactly"):
        D(0.1 + 0.2)


runner = CliRunner()


def cli(tmp_path, text: str, *extra: str):
    path = tmp_path / "scenario.yaml"
    path.write_text(text, encoding="utf-8")
    return runner.invoke(app, ["evaluate", str(path), "--json", *extra])


GOOD = """\
year: 2026
company: {name: 示例影业有限公司, districts: [huairou, yizhuang], headcount: 4}
dramas:
  - id: ep-series-01
    launched: 2026-03-01
    produced_in: [huairou]
    costs: {compute: "41234.56", ai_tools: "12000", production: "300000"}
"""


def test_cli_prints_one_json_document(tmp_path):
    result = cli(tmp_path, GOOD)
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["programmes"][HR]["by_drama"] == {"ep-series-01": "12370.37"}
    assert out["programmes"][AI]["by_drama"] == {"ep-series-01": "26617.28"}  # OPC: 0.5 x 53234.56
    assert out["total"] == "38987.65"
    table = runner.invoke(app, ["evaluate", str(tmp_path / "scenario.yaml")])
    assert table.exit_code == 0 and "38987.65" in table.stdout


@pytest.mark.parametrize("old, new, field", [
    ("headcount: 4", "headcount: 4, colour: red", "company.colour: unknown key"),
    ('compute: "41234.56"', 'compute: "-1"', "dramas[0].costs.compute: must be >= 0"),
    ('compute: "41234.56"', 'compute: "abc"', "dramas[0].costs.compute: not a decimal number"),
    ("districts: [huairou, yizhuang]", "districts: [huairou, chaoyang]", "company.districts[1]"),
    (", headcount: 4", "", "company.headcount: required when yizhuang"),
    ("launched: 2026-03-01", "launched: 2026-02-30", "dramas[0].launched"),
    ("    launched", "    orientation: square\n    launched", "dramas[0].orientation"),
    ('production: "300000"', 'production: "50000"', "dramas[0].costs.production: 50000 is less than"),
    ("  - id: ep-series-01", "  - id: a\n  - id: a", "dramas[1].id: 'a' repeats dramas[0].id"),
    ("year: 2026", "year: twenty", "year"),
    ("year: 2026\n", "", "year: required"),
    ("{name: 示例", "{name: [示例", "not valid YAML"),
])
def test_cli_invalid_scenario_exits_2_naming_the_field(tmp_path, old, new, field):
    assert old in GOOD
    result = cli(tmp_path, GOOD.replace(old, new))
    assert result.exit_code == 2
    assert field in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_a_policy_file_edited_in_a_copy_changes_the_result(tmp_path):
    policies = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, policies)
    huairou = policies / "huairou.yaml"
    huairou.write_text(huairou.read_text(encoding="utf-8")
                       .replace('value: "0.30"', 'value: "0.40"').replace('amount: "20000"', 'amount: "15000"'),
                       encoding="utf-8")
    result = cli(tmp_path, GOOD, "--policies", str(policies))
    assert result.exit_code == 0, result.stderr
    # 0.40 x 41234.56 = 16493.824 -> new per-work cap 15000
    assert json.loads(result.stdout)["programmes"][HR]["by_drama"] == {"ep-series-01": "15000.00"}


def test_a_threshold_edited_in_a_policy_copy_changes_eligibility(tmp_path):
    shutil.copytree(DEFAULT_POLICY_DIR, tmp_path / "p")
    datong = tmp_path / "p" / "datong.yaml"
    text = datong.read_text(encoding="utf-8")
    assert text.count('value: "1000000"') == 1
    datong.write_text(text.replace('value: "1000000"', 'value: "900000"'), encoding="utf-8")
    data = {"year": 2026, "company": {"name": "x", "districts": ["datong"]},
            "dramas": [drama("d", licence_no="L", revenue_share="950000")]}
    before = evaluate(parse_scenario(data), POLICIES).to_dict()
    after = evaluate(parse_scenario(data), load_policies(tmp_path / "p")).to_dict()
    assert paid(before, RS) == {} and paid(after, RS) == {"d": "95000.00"}


def test_the_shipped_example_scenario_gives_its_hand_computed_total():
    result = runner.invoke(app, ["evaluate", str(DEFAULT_POLICY_DIR.parent / "claims/example-scenario.yaml"),
                                 "--json"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert {pid: p["total"] for pid, p in out["programmes"].items()} == {
        HR: "38370.37", AI: "26617.28", IP: "216000.00", REV: "20000.00"}
    assert out["total"] == "300987.65"


def test_a_district_without_a_policy_file_exits_2(tmp_path):
    policies = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, policies)
    (policies / "yizhuang.yaml").unlink()
    result = cli(tmp_path, GOOD, "--policies", str(policies))
    assert result.exit_code == 2 and "company.districts lists yizhuang" in result.stderr


def test_a_broken_policy_directory_exits_2_naming_file_and_field(tmp_path):
    policies = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, policies)
    datong = policies / "datong.yaml"
    datong.write_text(datong.read_text(encoding="utf-8").replace('value: "0.10"', 'value: "-0.10"', 1),
                      encoding="utf-8")
    result = cli(tmp_path, GOOD, "--policies", str(policies))
    assert result.exit_code == 2
    assert "datong.yaml: programmes[0].rate.value: a rate is a fraction between 0 and 1" in result.stderr


# ---------------------------------------------------------------- the stacking choice is exact at any size
def test_stacking_choice_stays_exact_with_many_competing_dramas():
    """Two big dramas each pay most alone under ip_conversion, but the 1,000,000 company cap makes the best
    company-year b under ai_spend; a dozen small dramas that could go either way must not hide that."""
    big = [drama("a", ip_conversion=True, costs={"compute": "1250000", "production": "2840000"}),
           drama("b", ip_conversion=True, costs={"compute": "1400000", "production": "2120000"})]
    small = [drama(f"s{i:02d}", ip_conversion=True, costs={"compute": "10", "production": "20"}) for i in range(11)]
    result = yz(*big, *small, headcount=10)
    assert paid(result, IP)["a"] == "852000.00" and paid(result, AI)["b"] == "420000.00"
    # each small drama: ip 6.00 > ai 3.00, both caps have room: 11 x 6.00
    assert result["total"] == "1272066.00"


def _exhaustive(options, score, bound=None):
    import itertools

    names = list(options)
    best, best_score = None, None
    for combo in itertools.product(*(options[d] for d in names)):
        choice = dict(zip(names, combo))
        value = score(choice)
        if best is None or value > best_score:
            best, best_score = choice, value
    from pipeline.finance.allocation import Search

    return Search(best, proven=True, branches=0)


amounts = st.integers(min_value=0, max_value=2_000_000)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(amounts, amounts, amounts, st.booleans(), st.booleans()), min_size=2, max_size=6),
       st.integers(min_value=1, max_value=10))
def test_branch_and_bound_finds_what_trying_every_choice_finds(works, headcount):
    """The pruned search returns exactly the choice, amounts and trace of trying every combination."""
    import pipeline.finance.claims as claims

    data = {"year": 2026, "company": {"name": "测试影业", "districts": ["huairou", "yizhuang"],
                                      "headcount": headcount},
            "dramas": [drama(f"d{i}", launched=f"2026-0{1 + i % 9}-01", produced_in=["huairou"],
                             ip_conversion=ip_conv, yizhuang_theme=theme,
                             costs={"compute": str(compute), "ai_tools": str(tools),
                                    "production": str(compute + tools + extra)})  # production includes both
                       for i, (compute, tools, extra, ip_conv, theme) in enumerate(works)]}
    fast = evaluate(parse_scenario(data), POLICIES).to_dict()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(claims, "best_choice", _exhaustive)
        slow = evaluate(parse_scenario(data), POLICIES).to_dict()
    assert fast == slow


def test_a_search_out_of_budget_says_so_in_the_trace(monkeypatch):
    import pipeline.finance.allocation as allocation

    monkeypatch.setattr(allocation, "SEARCH_BUDGET", 3)
    works = [drama(f"w{i}", ip_conversion=True, costs={"compute": str(900_000 + i), "production": str(3_000_000 - i)})
             for i in range(6)]
    result = yz(*works, headcount=10)
    for pid in (AI, IP):
        assert any("without proving it the best" in t and "[" in t for t in prog(result, pid)["trace"])
    assert Decimal(result["total"]) == Decimal("2000000.00")  # both caps still filled by the local search


# ---------------------------------------------------------------- caps and limits at and around their edges
LS = "tongzhou.location_shoot"


@pytest.mark.parametrize("spend, expected", [
    ("1666666.63", "499999.99"),   # just under the 500,000 cap: 499999.989
    ("1666666.67", "500000.00"),   # 500000.001 -> cap
    ("1666666.66", "500000.00"),   # 499999.998 rounds to the cap
])
def test_tongzhou_location_shoot_at_its_cap(spend, expected):
    d = drama("d", shooting_days={"tongzhou": 9, "total": 10}, costs={"local_spend": {"tongzhou": spend}})
    assert paid(tz(d), LS) == {"d": expected}


@pytest.mark.parametrize("crews", [20, 21])
def test_tongzhou_location_shoot_at_most_20_crews_a_year(crews):
    works = [drama(f"w{i:02}", launched=f"2026-03-{i + 1:02}", shooting_days={"tongzhou": 6, "total": 10},
                   costs={"local_spend": {"tongzhou": str(100000 + i)}}) for i in range(crews)]
    programme = prog(tz(*works), LS)
    assert len(programme["by_drama"]) == 20
    if crews == 21:  # the smallest ask (w00: 0.30 x 100,000) is the one left out
        assert programme["excluded"] == {"w00": "company limit: 20 dramas per year"}
        assert "w00" not in programme["by_drama"]
    assert programme["total"] == str(sum(D(programme["by_drama"][w]) for w in programme["by_drama"]))


def test_datong_local_theme_company_cap_of_1m():
    works = [drama(f"d{i}", launched=f"2026-0{i + 1}-01", licence_no="L", revenue_share="500000",
                   local_runtime_share={"datong": "0.5"}, costs={"local_spend": {"datong": "6000000"}})
             for i in range(3)]
    programme = prog(dt_(*works), LT)
    assert programme["by_drama"] == {"d0": "500000.00", "d1": "500000.00"} and programme["total"] == "1000000.00"
    assert programme["excluded"]["d2"] == "company-year cap 1000000 reached"  # launched last


@pytest.mark.parametrize("current, expected", [
    ("33333333.30", "9999999.99"),     # increase x 0.30 just under the 10,000,000 cap
    ("33333333.34", "10000000.00"),    # 10000000.002 -> cap
])
def test_tongzhou_rd_increment_at_its_cap(current, expected):
    result = tz(rd_spend=current, rd_spend_previous="0", rd_key_project=True)
    assert prog(result, "tongzhou.rd_increment")["total"] == expected


@pytest.mark.parametrize("spend, expected", [
    ("19999999.90", "1999999.99"), ("20000000", "2000000.00"), ("20000000.10", "2000000.00"),
])
def test_datong_rd_at_its_one_off_cap(spend, expected):
    assert prog(dt_(rd_spend=spend), "datong.rd")["total"] == expected
