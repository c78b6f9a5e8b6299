"""Per-episode production-cost reports for finance: money from the ledger, usage metrics from `mlflow.search_runs`.

An episode's cost is every metered line spent on it across runs (pipeline/finance/attribution.py, the same
rule `claims build` uses): the final cut (cached outputs attributed to the run that built them), rework
(superseded runs, failed attempts, runs that did not finish) and idle rented nodes. Rows hold exact Decimal
text; report_files.py writes them for people (fen-rounded figures beside the exact ones).
"""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from pipeline.errors import UserError
from pipeline.finance.attribution import REWORK, Line, total
from pipeline.money import D, exact_sum

METRICS = ["wall_s", "cpu_s", "gpu_s", "gpu_energy_j", "tokens", "video_seconds", "audio_seconds", "images", "chars",
           "steps", "frames", "executions", "cache_hits", "failed_attempts"]
STAGE_MONEY = ["cost.total_cny", "cost.compute_cny", "cost.ai_tool_cny", "cost.list_value_cny"]
TOTAL_MONEY = ["cost.total_cny", "final_cny", "rework.superseded_cny", "rework.failed_cny", "rework.stopped_cny",
               "idle_cny", "cost.list_value_cny", "free_tools_value_cny", "cache_savings_cny", "cost_per_minute_cny"]
MONEY = sorted(set(STAGE_MONEY + TOTAL_MONEY + ["cost.idle_cny"]))
DRAMA_LEVEL = "(drama)"  # idle lines billed to the drama, not to one episode


def _search(tracking_uri: str, drama: str, kind: str, episode: str | None) -> tuple[Any, list[Any]]:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.get_experiment_by_name(drama)
    if exp is None:
        raise UserError(f"--drama: no MLflow experiment named {drama!r} at {tracking_uri}; "
                        f"run an episode of it first or check --tracking-uri")
    query = f"tags.`microdrama.kind` = '{kind}'"
    if episode:
        query += f" and tags.episode = '{episode}'"
    return exp, mlflow.search_runs([exp.experiment_id], filter_string=query, output_format="list",
                                   order_by=["attributes.start_time ASC"], max_results=50000)


def rows(tracking_uri: str, drama: str, episode: str | None = None, ledger_url: str | None = None) -> list[dict]:
    """One row per episode × stage of the final cut, a REWORK and an IDLE row where there are such lines, and
    one TOTAL row per episode (its production cost); money as exact Decimal strings."""
    from pipeline.finance.build_metered import default_ledger, meter_drama, open_ledger

    _, parents = _search(tracking_uri, drama, "episode", episode)
    _, children = _search(tracking_uri, drama, "stage", episode)
    ledger = open_ledger(default_ledger(ledger_url))
    try:
        metered = meter_drama(drama, None, tracking_uri, ledger)
    finally:
        ledger.close()
    lines = [l for l in metered.attributed if episode is None or l.episode == episode]
    finals = {run.episode: run for run in metered.runs if episode is None or run.episode == episode}
    by_id = {p.info.run_id: p for p in parents}
    episodes = sorted({l.episode or DRAMA_LEVEL for l in lines} | set(finals))
    if not episodes:
        raise UserError(f"--episode: no metered runs for {drama}/{episode or '*'} in the ledger or MLflow")
    out: list[dict] = []
    for ep in episodes:
        mine = [l for l in lines if (l.episode or DRAMA_LEVEL) == ep]
        run = finals.get(ep)
        parent = by_id.get(run.mlflow_run_id) if run else None
        kids = [c for c in children if parent is not None and c.data.tags.get("mlflow.parentRunId") == run.mlflow_run_id]
        delayed = parent.data.tags.get("microdrama.delayed_from", "") if parent is not None else ""
        stage_rows = [_stage_row(ep, c, [l for l in mine if l.category == "final"], delayed) for c in kids]
        out.extend(stage_rows)
        out.extend(_extra_rows(ep, mine))
        out.append(_total_row(ep, parent, run, mine, stage_rows))
    return out


def _money(lines: list[Line]) -> dict[str, str]:
    return {"cost.total_cny": str(total(lines)), "cost.compute_cny": str(total(lines, kinds=["compute"])),
            "cost.ai_tool_cny": str(total(lines, kinds=["ai_tool"])), "cost.idle_cny": str(total(lines, kinds=["idle"])),
            "cost.list_value_cny": str(exact_sum(D(l.body.get("list_value") or "0") for l in lines))}


def _stage_row(episode: str, child: Any, final: list[Line], delayed: str) -> dict[str, Any]:
    """`delayed`: when MLflow was unreachable at run time, the time the run was queued (logged later)."""
    stage = child.data.tags["stage"]
    row: dict[str, Any] = {"episode": episode, "stage": stage, "backend": child.data.params.get("backend", ""),
                           "run_id": child.info.run_id, "delayed": delayed}
    for m in METRICS:
        row[m] = child.data.metrics.get(m)
    row.update(_money([l for l in final if l.body.get("stage") == stage]))
    return row


def _extra_rows(episode: str, mine: list[Line]) -> list[dict[str, Any]]:
    """REWORK (superseded, failed, did not finish) and IDLE rows: spend that is in no final-cut stage."""
    out = []
    for stage, cats in (("REWORK", REWORK), ("IDLE", ("idle",))):
        part = [l for l in mine if l.category in cats]
        if part:
            row: dict[str, Any] = {"episode": episode, "stage": stage, "backend": "", "run_id": "", "delayed": "",
                                   "lines": len(part), "runs": len({l.job for l in part})}
            row.update(_money(part))
            out.append(row)
    return out


def _total_row(episode: str, parent: Any, run: Any, mine: list[Line], stage_rows: list[dict]) -> dict[str, Any]:
    row: dict[str, Any] = {"episode": episode, "stage": "TOTAL", "backend": "",
                           "run_id": parent.info.run_id if parent is not None else "",
                           "delayed": parent.data.tags.get("microdrama.delayed_from", "") if parent is not None else ""}
    for m in METRICS:
        vals = [r[m] for r in stage_rows if r.get(m) is not None]
        row[m] = sum(vals) if vals else None
    production = total(mine)
    row.update(_money(mine))
    row["final_cny"] = str(total(mine, ["final"]))
    for cat in REWORK:
        row[f"rework.{cat}_cny"] = str(total(mine, [cat]))
    row["idle_cny"] = str(total(mine, ["idle"]))
    row["free_tools_value_cny"] = str(Decimal(row["cost.list_value_cny"]) - production)
    row["cache_savings_cny"] = str(cache_savings(mine))
    seconds = Decimal(run.runtime.numerator) / Decimal(run.runtime.denominator) if run is not None else Decimal(0)
    row["duration_s"] = float(seconds) if run is not None else None
    row["cost_per_minute_cny"] = str(production * 60 / seconds) if seconds else ""
    row["lines"] = len(mine)
    row["runs"] = len({l.job for l in mine})
    tags = parent.data.tags if parent is not None else {}
    row["ledger_checkpoint"] = (f"{tags.get('ledger.checkpoint.size', '')}:{tags.get('ledger.checkpoint.root', '')}"
                                if parent is not None else "")
    return row


def cache_savings(lines: list[Line]) -> Decimal:
    """What the final cut took from the cache instead of paying again: the lines of outputs built by an earlier
    run and reused (each counted once, at what building it cost)."""
    return total([l for l in lines if l.category == "final" and l.attributed_to])
