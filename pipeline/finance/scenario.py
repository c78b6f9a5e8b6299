"""SCENARIO.yaml: one company-year of dramas and declared facts, validated exactly as docs/claims.md specifies."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool,
                      StrictInt, ValidationError)

from pipeline.errors import UserError
from pipeline.finance.datafiles import YamlError, error_lines, load_exact_file
from pipeline.money import ZERO, D, bounded, exact_sum

DISTRICTS = ("huairou", "yizhuang", "tongzhou", "mentougou", "datong")
District = Literal["huairou", "yizhuang", "tongzhou", "mentougou", "datong"]
DayKey = Literal["huairou", "yizhuang", "tongzhou", "mentougou", "datong", "total"]


class ScenarioError(UserError):
    """A scenario file that does not validate; `problems` names every bad field."""


def _number(value: Any) -> Decimal:
    try:
        return bounded(value, "a number")
    except (TypeError, ValueError) as err:
        raise ValueError(str(err)) from None


def _non_negative(value: Decimal) -> Decimal:
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def _positive(value: Decimal) -> Decimal:
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


def _unit_share(value: Decimal) -> Decimal:
    if not ZERO <= value <= 1:
        raise ValueError(f"a share of the runtime must be between 0 and 1, got {value}")
    return value


Money = Annotated[Decimal, BeforeValidator(_number), AfterValidator(_non_negative)]
Minutes = Annotated[Decimal, BeforeValidator(_number), AfterValidator(_positive)]
Share = Annotated[Decimal, BeforeValidator(_number), AfterValidator(_unit_share)]
Days = Annotated[StrictInt, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Company(_Strict):
    """The applicant: where it operates and its company-level declared facts."""

    name: str = Field(min_length=1)
    districts: list[District]
    headcount: StrictInt | None = Field(default=None, ge=1)
    overseas_revenue: Money = ZERO
    rd_spend: Money = ZERO
    rd_spend_previous: Money = ZERO
    rd_key_project: StrictBool = False


class Costs(_Strict):
    """A drama's costs in CNY; `production` includes every metered cost (compute, ai_tools, rework, idle).

    compute / ai_tools: the lines of the outputs in the final episodes; rework_*: superseded runs, failed
    attempts, runs that did not finish; idle: idle rented nodes billed to the drama (docs/claims.md)."""

    compute: Money = ZERO
    ai_tools: Money = ZERO
    rework_compute: Money = ZERO
    rework_ai_tools: Money = ZERO
    idle: Money = ZERO
    production: Money = ZERO
    investment: Money = ZERO
    overseas_spend: Money = ZERO
    local_spend: dict[District, Money] = Field(default_factory=dict)


class DramaDeclared(_Strict):
    """The fields of a drama that a company declares (everything but its costs): shared by the scenario's
    Drama and the claims builder's facts file (pipeline/finance/build.py)."""

    id: str = Field(min_length=1, pattern=r"^\S+$")
    title: str = ""
    orientation: Literal["vertical", "horizontal"] = "vertical"
    episode_minutes_max: Minutes | None = None
    launched: dt.date | None = None
    licence_no: str | None = Field(default=None, min_length=1)
    overseas: StrictBool = False
    ai_comic: StrictBool = False
    ip_conversion: StrictBool = False
    yizhuang_theme: StrictBool = False
    produced_in: list[District] = Field(default_factory=list)
    revenue_share: Money = ZERO
    shooting_days: dict[DayKey, Days] = Field(default_factory=dict)


class Drama(DramaDeclared):
    """One work claimed for in the scenario year."""

    costs: Costs = Field(default_factory=Costs)
    local_runtime_share: dict[District, Share] = Field(default_factory=dict)


class Scenario(_Strict):
    """A company-year: the company, its dramas, and the year the claims are for."""

    year: StrictInt = Field(ge=2000, le=2100)
    company: Company
    dramas: list[Drama] = Field(default_factory=list)

    def drama(self, drama_id: str) -> Drama:
        """The drama with this id (KeyError when absent)."""
        for drama in self.dramas:
            if drama.id == drama_id:
                return drama
        raise KeyError(drama_id)


def check_scenario(scenario: Scenario) -> list[str]:
    """Cross-field checks the schema cannot express; every problem as one 'field: why' line."""
    problems = _check_company(scenario.company)
    seen: dict[str, int] = {}
    for i, drama in enumerate(scenario.dramas):
        if drama.id in seen:
            problems.append(f"dramas[{i}].id: {drama.id!r} repeats dramas[{seen[drama.id]}].id; "
                            "drama ids must be unique")
        seen.setdefault(drama.id, i)
        problems += _check_drama(drama, f"dramas[{i}]")
    return problems


def _check_company(company: Company) -> list[str]:
    problems = []
    if len(set(company.districts)) != len(company.districts):
        problems.append(f"company.districts: lists a district twice: {company.districts}")
    if "yizhuang" in company.districts and company.headcount is None:
        problems.append("company.headcount: required when yizhuang is in company.districts "
                        "(it decides the OPC rule, seed 002 annex item 7)")
    return problems


def _check_drama(drama: Drama, at: str) -> list[str]:
    problems = []
    if len(set(drama.produced_in)) != len(drama.produced_in):
        problems.append(f"{at}.produced_in: lists a district twice: {drama.produced_in}")
    days = drama.shooting_days
    places = {k: v for k, v in days.items() if k != "total"}
    if places and "total" not in days:
        problems.append(f"{at}.shooting_days.total: required when days per district are given")
    for district, count in places.items():
        if "total" in days and count > days["total"]:
            problems.append(f"{at}.shooting_days.{district}: {count} days exceed the total "
                            f"{days['total']}")
    costs = drama.costs
    metered = exact_sum([costs.compute, costs.ai_tools, costs.rework_compute, costs.rework_ai_tools, costs.idle])
    if costs.production and costs.production < metered:
        problems.append(f"{at}.costs.production: {costs.production} is less than compute + ai_tools + rework + idle "
                        f"({metered}); production input includes them all")
    return problems


def parse_scenario(data: Any, source: str = "scenario") -> Scenario:
    """Validate already-loaded data (numbers exact) into a Scenario, or raise ScenarioError with every problem."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a mapping with year, company, dramas; "
                            f"got {type(data).__name__}")
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as err:
        raise ScenarioError([f"{source}: {line}" for line in error_lines(err)]) from None
    problems = check_scenario(scenario)
    if problems:
        raise ScenarioError([f"{source}: {line}" for line in problems])
    return scenario


def load_scenario(path: Path | str) -> Scenario:
    """Read SCENARIO.yaml (numbers kept exact) and validate it."""
    try:
        data = load_exact_file(Path(path), "scenario")
    except YamlError as err:
        raise ScenarioError(str(err)) from None
    return parse_scenario(data, str(path))


# Scenario fields a policy rule may name, by the kind of value they hold (policies.py checks names).
_COST_FIELDS = ("compute", "ai_tools", "rework_compute", "rework_ai_tools", "idle", "production", "investment",
                "overseas_spend")
DRAMA_NUMBERS = frozenset(
    [f"costs.{name}" for name in _COST_FIELDS]
    + [f"costs.local_spend.{d}" for d in DISTRICTS]
    + [f"shooting_days.{d}" for d in (*DISTRICTS, "total")]
    + [f"local_runtime_share.{d}" for d in DISTRICTS]
    + ["revenue_share", "episode_minutes_max"])
COMPANY_NUMBERS = frozenset(["company.headcount", "company.overseas_revenue", "company.rd_spend",
                             "company.rd_spend_previous"])
DRAMA_FLAGS = frozenset(["overseas", "ai_comic", "ip_conversion", "yizhuang_theme"])
COMPANY_FLAGS = frozenset(["company.rd_key_project"])
DRAMA_TEXTS = frozenset(["orientation"])


def field_value(path: str, company: Company, drama: Drama | None) -> Any:
    """The value a rule's field path names: company.* from the company, the rest from the drama.

    A district missing from a map (local_spend, shooting_days, local_runtime_share) reads as 0;
    a nullable field (episode_minutes_max) reads as None.
    """
    parts = path.split(".")
    if parts[0] == "company":
        value = getattr(company, parts[1])
        return None if value is None else (value if isinstance(value, bool) else D(value))
    if drama is None:
        raise ValueError(f"{path} is a per-drama field, used without a drama")
    if parts[0] in ("shooting_days", "local_runtime_share") or parts[:2] == ["costs", "local_spend"]:
        mapping = drama.costs.local_spend if parts[0] == "costs" else getattr(drama, parts[0])
        return D(mapping.get(parts[-1], 0))
    value: Any = drama
    for part in parts:
        value = getattr(value, part)
    if value is None or isinstance(value, (bool, str)):
        return value
    return D(value)
