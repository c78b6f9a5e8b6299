"""Claim packets: one folder per programme and drama with amount, trace, evidence JSON and an HTML summary."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import UserError
from pipeline.finance.attribution import CATEGORIES, FIELDS
from pipeline.finance.build_metered import exact_sum
from pipeline.finance.claims import ClaimResult, ProgrammeResult
from pipeline.finance.datafiles import error_lines
from pipeline.money import fmt, to_fen
from pipeline.finance.packet_html import render_summary
from pipeline.finance.scenario import Money
from pipeline.finance.workdays import CalendarRangeError, add_working_days



class PacketError(UserError):
    """A packet cannot be written: unknown programme or drama, a drama not paid, or evidence that disagrees."""


class CostLine(BaseModel):
    """One metered cost line as the ledger holds it, with where it sits in the ledger."""

    model_config = ConfigDict(frozen=True, extra="allow")  # quantity, rate, stage ... are carried along
    kind: str = Field(pattern="^(compute|ai_tool|idle)$")
    category: str = Field(default="final", pattern="^(" + "|".join(CATEGORIES) + ")$")  # attribution.py
    item: str
    amount: Money
    ledger_index: int = Field(ge=0)
    leaf_hash: str = Field(pattern="^[0-9a-f]{64}$")
    inclusion_proof: list[str] = Field(default_factory=list)
    mlflow_run_id: str | None = None
    list_value: Money | None = None  # a free tool's list value (Mentougou annex §5)


class Evidence(BaseModel):
    """What a claim rests on: cost lines, the signed checkpoint covering them, MLflow runs, declared facts."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    cost_lines: list[CostLine] = Field(default_factory=list)
    checkpoint: str = ""  # signed ledger checkpoint text (tree size, root hash, signature lines)
    public_key: str = ""  # the ledger's verifier key (signed-note vkey) the checkpoint is signed with
    run_checkpoints: list[dict[str, Any]] = Field(default_factory=list)  # each run's checkpoint + consistency proof
    mlflow_run_ids: list[str] = Field(default_factory=list)
    declared_facts: dict[str, Any] = Field(default_factory=dict)
    dates: dict[str, dt.date] = Field(default_factory=dict)  # notified / accepted -> deadlines
    supplementing: list[tuple[dt.date, dt.date]] = Field(default_factory=list)


def write_packet(result: ClaimResult, programme_id: str, drama_id: str | None, evidence: dict[str, Any],
                 out_dir: Path | str) -> Path:
    """Write <out_dir>/<programme>__<drama>/ with claim.json, evidence.json and summary.html; return it."""
    prog = _programme(result, programme_id)
    amount = _amount(prog, drama_id)
    ev = _evidence(evidence)
    problems = _check_costs(result, prog, drama_id, ev)
    if problems:
        raise PacketError(problems)
    folder = Path(out_dir) / f"{_safe(programme_id)}__{_safe(drama_id or 'company')}"
    folder.mkdir(parents=True, exist_ok=True)
    claim = _claim_doc(result, prog, drama_id, amount)
    evidence_doc = _evidence_doc(result, drama_id, ev, _deadlines(prog, ev))
    claim_text, evidence_text = _dump(claim), _dump(evidence_doc)
    (folder / "claim.json").write_text(claim_text, encoding="utf-8")
    (folder / "evidence.json").write_text(evidence_text, encoding="utf-8")
    digests = {"claim.json": _sha256(claim_text), "evidence.json": _sha256(evidence_text)}
    (folder / "summary.html").write_text(render_summary(claim, evidence_doc, digests), encoding="utf-8")
    return folder


def _programme(result: ClaimResult, programme_id: str) -> ProgrammeResult:
    if programme_id not in result.programmes:
        raise PacketError(f"programme {programme_id!r} is not in this result; one of {sorted(result.programmes)}")
    return result.programmes[programme_id]


def _amount(prog: ProgrammeResult, drama_id: str | None) -> Decimal:
    if prog.level == "company":
        if drama_id is not None:
            raise PacketError(f"{prog.id} is a company-level programme: pass drama_id=None")
        return prog.total
    if drama_id in prog.by_drama:
        return prog.by_drama[drama_id]
    why = prog.excluded.get(drama_id or "", "not in the scenario")
    raise PacketError(f"{drama_id!r} is not paid under {prog.id}: {why}")


def _evidence(evidence: dict[str, Any]) -> Evidence:
    try:
        return Evidence.model_validate(evidence)
    except ValidationError as err:
        raise PacketError([f"evidence.{line}" for line in error_lines(err)]) from None


def _check_costs(result: ClaimResult, prog: ProgrammeResult, drama_id: str | None, ev: Evidence) -> list[str]:
    """The cost lines of each metered scenario field (category and kind, attribution.FIELDS), summed and rounded
    to the fen, must equal the scenario's figure."""
    if drama_id is None:
        return []
    costs = result.scenario.drama(drama_id).costs
    problems = []
    for field, (categories, kinds) in FIELDS.items():
        declared = getattr(costs, field.split(".", 1)[1])
        lines = [line.amount for line in ev.cost_lines if line.kind in kinds and line.category in categories]
        if lines and to_fen(exact_sum(lines)) != to_fen(declared):
            problems.append(f"evidence.cost_lines: the {field} lines add up to {fmt(exact_sum(lines))}, but the "
                            f"scenario's drama {drama_id!r} {field} is {declared}; rebuild the scenario from the ledger")
    return problems


def _deadlines(prog: ProgrammeResult, ev: Evidence) -> list[dict[str, str]]:
    """The policy's working-day deadlines, dated from the evidence's notified/accepted dates."""
    out = []
    for deadline in prog.policy.deadlines if prog.policy else []:
        start = ev.dates.get(deadline.event)
        row = {"id": deadline.id, "working_days": str(deadline.working_days), "counted_from": deadline.counted_from,
               "not_counted": deadline.not_counted, "start": start.isoformat() if start else "",
               "cite": f"{deadline.cite.seed or prog.policy.seed} {deadline.cite.clause}"}
        if start is None:
            row["due"] = f"give evidence dates.{deadline.event} to compute it"
        else:
            skip = ev.supplementing if deadline.not_counted else []
            try:
                row["due"] = add_working_days(start, deadline.working_days, skip).isoformat()
            except CalendarRangeError as err:
                row["due"] = f"unknown: {err}"
        out.append(row)
    return out


def _claim_doc(result: ClaimResult, prog: ProgrammeResult, drama_id: str | None, amount: Decimal) -> dict[str, Any]:
    policy = prog.policy
    # a per-work packet shows its own drama's steps; the programme's total step covers other dramas too
    steps = [s for s in prog.steps_for(drama_id) if drama_id is None or s.kind != "total"]
    return {
        "year": result.year, "company": result.company, "programme": prog.id, "title": prog.title,
        "drama": drama_id, "amount": fmt(amount), "currency": "CNY",
        "policy": {"district": prog.district, "title": policy.title if policy else "",
                   "seed": policy.seed if policy else "", "status": policy.status if policy else ""},
        "trace": [s.render() for s in steps],
        "trace_steps": [{"kind": s.kind, "drama": s.drama, "text": s.text, "seed": s.seed, "clause": s.clause}
                        for s in steps],
    }


def _evidence_doc(result: ClaimResult, drama_id: str | None, ev: Evidence,
                  deadlines: list[dict[str, str]]) -> dict[str, Any]:
    lines = [line.model_dump(mode="json") for line in ev.cost_lines]
    totals = {field: fmt(exact_sum(l.amount for l in ev.cost_lines if l.kind in kinds and l.category in cats))
              for field, (cats, kinds) in FIELDS.items()}
    totals["production"] = fmt(exact_sum(l.amount for l in ev.cost_lines))
    facts = result.scenario.drama(drama_id).model_dump(mode="json") if drama_id else {}
    return {
        "cost_lines": lines, "cost_totals": totals, "checkpoint": ev.checkpoint, "public_key": ev.public_key,
        "run_checkpoints": ev.run_checkpoints,
        "mlflow_run_ids": sorted(set(ev.mlflow_run_ids) | {l.mlflow_run_id for l in ev.cost_lines if l.mlflow_run_id}),
        "declared_facts": {"company": result.scenario.company.model_dump(mode="json"), "drama": facts,
                           "supplied": ev.declared_facts},
        "deadlines": deadlines,
        "supplementing": [[a.isoformat(), b.isoformat()] for a, b in ev.supplementing],
    }


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=False, default=str) + "\n"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)

