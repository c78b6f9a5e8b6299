"""`claims build`: a docs/claims.md scenario for a company-year, from declared facts plus metered MLflow/ledger data.

Finance never retypes a metered number. A scenario is assembled from two sources:

* **declared facts** (FACTS.yaml, schema `Facts` below): what only the company knows — the company block
  of SCENARIO.yaml, and per drama its launch date, licence, revenue share, production spend, shooting days…
* **metered figures**, read from MLflow (the index: which runs) and the ledger (the money):

  - every ledger `cost` line of the drama is attributed (pipeline/finance/attribution.py): the final cut of
    each episode (its latest finished MLflow episode run in the year, with cached outputs attributed to the
    run that produced them, counted once), superseded runs, failed attempts, runs that did not finish, idle
    nodes. `costs.compute` / `costs.ai_tools` = Σ final-cut `compute` / `ai_tool` lines,
    `costs.rework_compute` / `costs.rework_ai_tools` = Σ rework lines, `costs.idle` = Σ `idle` lines, exact
    Decimal. A run's cost lines are the ledger entries whose `job` is its `microdrama.run_id` tag. A run's
    year is its MLflow start time in China Standard Time (UTC+8); a run logged late (tag
    `microdrama.delayed_from`) counts at the time it was queued; a run MLflow never logged (a budget stop,
    a failure) and an idle bill count when the ledger got their first line.
  - `local_runtime_share[district]` = runtime of the shots whose `location_tags` include the district ÷ the
    runtime of all shots, over those runs' manifests (MLflow artifact `episode/manifest.json`), computed
    exactly from whole frames at each episode's fps and written to 12 decimal places (no policy threshold
    with up to 4 decimals can be crossed by that rounding for runtimes under 11 hours at 24 fps).
  - `episode_minutes_max` = the longest of those episodes (rounded up to 1e-6 minute) unless declared;
    a declared value shorter than a metered episode is a contradiction.

FACTS.yaml (unknown keys are an error; an example is configs/claims/facts-example.yaml)::

    year: 2026                 # optional; when given it must equal --year (facts are per company-year)
    company:                   # exactly the company block of SCENARIO.yaml (docs/claims.md)
      name: 示例影业有限公司    # must equal the `company` tag of the drama's MLflow runs
      districts: [huairou, datong]
      headcount: 4
      overseas_revenue: "0"
      rd_spend: "0"
      rd_spend_previous: "0"
      rd_key_project: false
    dramas:
      - id: ceo-stand-in       # the drama slug = its MLflow experiment = the scenario drama id
        title: 总裁的替身
        orientation: vertical
        episode_minutes_max: 3 # optional: metered when left out
        launched: 2026-03-01
        licence_no: null
        overseas: false
        ai_comic: false
        ip_conversion: false
        yizhuang_theme: false
        produced_in: [huairou]
        costs:                 # declared spend only; compute, ai_tools, rework_*, idle are metered, not accepted
          production: "300000" # must be >= every metered cost
          investment: "300000"
          overseas_spend: "0"
          local_spend: {datong: "80000"}
        revenue_share: "0"
        shooting_days: {datong: 3, total: 10}

Declaring a metered field (`costs.compute`, `costs.ai_tools`, `costs.rework_compute`, `costs.rework_ai_tools`,
`costs.idle`, `local_runtime_share`) is an error naming it.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from pipeline.errors import UserError
from pipeline.finance.attribution import CATEGORIES, FIELDS, LABELS, total
from pipeline.finance.build_metered import (CST, MeteredDrama, MeteringError, default_ledger, default_tracking_uri,
                                            exact_sum, ledger_entries, meter_drama, open_ledger, plain_text,
                                            public_url)
from pipeline.finance.datafiles import YamlError, error_lines, load_exact_file
from pipeline.money import ZERO, shown
from pipeline.finance.scenario import (Company, DramaDeclared, District, Money, Scenario, ScenarioError,
                                       parse_scenario)

__all__ = ["CST", "Built", "DramaFacts", "Facts", "FactsError", "MeteredDrama", "MeteringError", "build_from_file",
           "build_scenario", "contradictions", "default_ledger", "default_tracking_uri", "exact_sum", "load_facts",
           "parse_facts", "plain_text"]


class FactsError(UserError):
    """A declared-facts file that does not validate, or that contradicts the metered data."""


# --------------------------------------------------------------------------------------------- facts
class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DeclaredCosts(_Strict):
    """Spend only the company can declare (CNY); compute and AI tools are metered."""

    production: Money = ZERO
    investment: Money = ZERO
    overseas_spend: Money = ZERO
    local_spend: dict[District, Money] = Field(default_factory=dict)


class DramaFacts(DramaDeclared):
    """One drama's declared facts; the fields of a SCENARIO.yaml drama that are not metered."""

    costs: DeclaredCosts = Field(default_factory=DeclaredCosts)


class Facts(_Strict):
    """A company-year's declared facts: the company block and the dramas' declared facts."""

    year: StrictInt | None = Field(default=None, ge=2000, le=2100)
    company: Company
    dramas: list[DramaFacts] = Field(default_factory=list)

    def index(self, drama_id: str) -> int:
        for i, drama in enumerate(self.dramas):
            if drama.id == drama_id:
                return i
        raise KeyError(drama_id)


def _metered_keys(data: Any) -> list[str]:
    """Problems for metered fields written into the facts (removed from `data` so they are reported once)."""
    problems = []
    dramas = data.get("dramas") if isinstance(data, dict) else None
    for i, drama in enumerate(dramas if isinstance(dramas, list) else []):
        if not isinstance(drama, dict):
            continue
        costs = drama.get("costs")
        found = [k for k in ("local_runtime_share",) if k in drama]
        found += [f for f in FIELDS if isinstance(costs, dict) and f.split(".", 1)[1] in costs]
        for key in found:
            problems.append(f"dramas[{i}].{key}: is metered (from the ledger and the episode manifests), "
                            "not declared; remove it from the facts file")
            if key.startswith("costs."):
                del costs[key.split(".", 1)[1]]
            else:
                del drama[key]
    return problems


def parse_facts(data: Any, source: str = "facts") -> Facts:
    """Validate loaded facts data, or raise FactsError naming every bad field."""
    if not isinstance(data, dict):
        raise FactsError(f"{source}: a facts file is a mapping with company and dramas; got {type(data).__name__}")
    problems = _metered_keys(data)
    try:
        facts = Facts.model_validate(data)
    except ValidationError as err:
        raise FactsError([f"{source}: {p}" for p in problems + error_lines(err)]) from None
    seen: dict[str, int] = {}
    for i, drama in enumerate(facts.dramas):
        if drama.id in seen:
            problems.append(f"dramas[{i}].id: {drama.id!r} repeats dramas[{seen[drama.id]}].id")
        seen.setdefault(drama.id, i)
    if problems:
        raise FactsError([f"{source}: {p}" for p in problems])
    return facts


def load_facts(path: Path | str) -> Facts:
    """Read FACTS.yaml (numbers kept exact) and validate it."""
    try:
        data = load_exact_file(Path(path), "facts")
    except YamlError as err:
        raise FactsError(str(err)) from None
    return parse_facts(data, str(path))


# ------------------------------------------------------------------------------------------ assembly
@dataclass
class Built:
    """A built scenario: the validated Scenario, the metered data behind each drama, and provenance."""

    scenario: Scenario
    metered: dict[str, MeteredDrama]
    facts_source: str
    facts_sha256: str
    tracking_uri: str
    ledger_url: str
    checkpoint: Any = None  # the ledger's latest signed checkpoint when built
    notes: list[str] = field(default_factory=list)  # things finance should know (no runs in the year, ...)

    def to_yaml(self) -> str:
        """SCENARIO.yaml text: a provenance header (comments), then the docs/claims.md document."""
        data = _plain(self.scenario.model_dump(mode="python"))
        return self._header() + yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=120)

    def _header(self) -> str:
        cp = self.checkpoint
        lines = [f"Built by `microdrama claims build` at {dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ}.",
                 "Metered fields (costs.compute, costs.ai_tools, costs.rework_*, costs.idle, local_runtime_share,",
                 "episode_minutes_max when not declared) come from MLflow and the ledger: rebuild, never edit them.",
                 f"facts: {self.facts_source}" + (f" (sha256 {self.facts_sha256})" if self.facts_sha256 else ""),
                 f"MLflow: {public_url(self.tracking_uri)}",
                 f"ledger: {public_url(self.ledger_url)} " + (f"(latest signed checkpoint #{cp.id}: size "
                                                             f"{cp.tree_size}, root {cp.root_hash})" if cp
                                                             else "(no signed checkpoint)")]
        for drama, m in self.metered.items():
            lines.append(f"{drama} {m.year}: production cost CNY {shown(m.production)} (exactly {plain_text(m.production)}) over "
                         f"{len(m.attributed)} ledger cost line(s); {len(m.runs)} final episode run(s)"
                         + (f", {len(m.superseded)} older run(s) superseded" if m.superseded else ""))
            for category in CATEGORIES:
                mine = [l for l in m.attributed if l.category == category]
                if mine:
                    lines.append(f"  {category} ({LABELS[category]}): {len(mine)} line(s), CNY {shown(total(mine))}")
            for name, value in m.fields().items():
                lines.append(f"  {name} = {plain_text(value)}")
            for run in m.runs:
                lines.append(f"  {run.episode}: MLflow run {run.mlflow_run_id}, job {run.run_id}, "
                             f"{run.started:%Y-%m-%d %H:%M} CST, {len(run.lines)} final-cut cost line(s)")
        lines += [f"note: {n}" for n in self.notes]
        return "".join(f"# {line}\n" for line in lines)


def _plain(value: Any) -> Any:
    """Scenario data for YAML: Decimals as plain exact text (never 4.6E-9), dates as ISO text."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        return plain_text(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def contradictions(facts: Facts, i: int, metered: MeteredDrama) -> list[str]:
    """Declared facts of dramas[i] that the metered data contradicts, each naming the facts field."""
    drama, problems = facts.dramas[i], []
    at = f"dramas[{i}]"
    spent = metered.production
    if drama.costs.production and drama.costs.production < spent:
        problems.append(f"{at}.costs.production: {drama.costs.production} is less than the metered production cost "
                        f"({plain_text(spent)}: final cut, rework and idle lines) of {drama.id}'s {metered.year} runs; "
                        "production input includes all of it")
    longest = metered.longest_minutes()
    if drama.episode_minutes_max is not None and longest is not None and drama.episode_minutes_max < longest:
        problems.append(f"{at}.episode_minutes_max: {drama.episode_minutes_max} is shorter than a metered episode "
                        f"({longest} minutes); leave it out to use the metered value")
    others = sorted({run.company for run in metered.runs if run.company and run.company != facts.company.name})
    if others:
        problems.append(f"company.name: {facts.company.name!r}, but {drama.id}'s {metered.year} runs were made by "
                        f"{', '.join(map(repr, others))} (MLflow tag company)")
    return problems


def _drama_data(drama: DramaFacts, metered: MeteredDrama) -> dict[str, Any]:
    data = drama.model_dump(mode="json", exclude={"costs"})
    costs = drama.costs.model_dump(mode="json")
    data["costs"] = {**{f.split(".", 1)[1]: plain_text(v) for f, v in metered.fields().items()}, **costs}
    if drama.episode_minutes_max is None and metered.longest_minutes() is not None:
        data["episode_minutes_max"] = str(metered.longest_minutes())
    data["local_runtime_share"] = {d: str(s) for d, s in metered.runtime_share().items()}
    return data


def select(facts: Facts, dramas: list[str] | None, source: str) -> list[int]:
    """Indexes in `facts.dramas` of the dramas asked for (all when none), each known."""
    if not dramas:
        if not facts.dramas:
            raise FactsError(f"{source}: dramas: empty; declare at least one drama")
        return list(range(len(facts.dramas)))
    missing = [d for d in dramas if d not in {f.id for f in facts.dramas}]
    if missing:
        raise FactsError(f"--drama: {', '.join(missing)} not in {source} dramas "
                         f"({', '.join(f.id for f in facts.dramas) or 'none'}); declare its facts first")
    return [facts.index(d) for d in dict.fromkeys(dramas)]


def build_scenario(facts: Facts, year: int, *, dramas: list[str] | None = None, tracking_uri: str | None = None,
                   ledger_url: str | None = None, facts_source: str = "facts", facts_sha256: str = "",
                   public_key: str | None = None) -> Built:
    """Assemble and validate the SCENARIO for `year` from the facts and the metered MLflow/ledger data."""
    if facts.year is not None and facts.year != year:
        raise FactsError(f"{facts_source}: year: the facts are for {facts.year}, not --year {year}")
    chosen = select(facts, dramas, facts_source)
    uri, url = default_tracking_uri(tracking_uri), default_ledger(ledger_url)
    ledger = open_ledger(url)
    try:
        entries = ledger_entries(ledger, public_key)  # verified against the pinned key and signed root
        metered = {facts.dramas[i].id: meter_drama(facts.dramas[i].id, year, uri, ledger, entries) for i in chosen}
        checkpoint = ledger.latest_checkpoint()
    finally:
        ledger.close()
    problems, notes = [], []
    for i in chosen:
        m = metered[facts.dramas[i].id]
        if not m.experiment_found:
            problems.append(f"dramas[{i}].id: no MLflow experiment named {m.drama!r} at {public_url(uri)}; "
                            "check --tracking-uri (the drama slug of its episode jobs is the experiment name)")
        elif not m.runs:
            notes.append(f"{m.drama}: no finished episode run in {year}; its final-cut figures are 0")
        problems += contradictions(facts, i, m)
    if problems:
        raise FactsError([f"{facts_source}: {p}" for p in problems])
    data = {"year": year, "company": facts.company.model_dump(mode="json"),
            "dramas": [_drama_data(facts.dramas[i], metered[facts.dramas[i].id]) for i in chosen]}
    scenario = _validated(data, chosen, facts_source)
    return Built(scenario, metered, facts_source, facts_sha256, uri, url, checkpoint, notes)


def _validated(data: dict[str, Any], chosen: list[int], source: str) -> Scenario:
    """The scenario's own checks, their paths mapped back to the facts file's drama indexes."""
    try:
        return parse_scenario(data, source)
    except ScenarioError as err:
        def back(m: re.Match[str]) -> str:
            return f"dramas[{chosen[int(m.group(1))]}]"

        raise FactsError([re.sub(r"dramas\[(\d+)\]", back, p) for p in err.problems]) from None


def build_from_file(facts_path: Path | str, year: int, **kwargs: Any) -> Built:
    """`build_scenario` for a facts file (its path and SHA-256 go into the provenance header)."""
    facts = load_facts(facts_path)
    digest = hashlib.sha256(Path(facts_path).read_bytes()).hexdigest()
    return build_scenario(facts, year, facts_source=str(facts_path), facts_sha256=digest, **kwargs)
