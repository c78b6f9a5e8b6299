"""Per-episode compute reports for finance, built from `mlflow.search_runs` (never by scraping files)."""
from __future__ import annotations

import html
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.money import exact_sum

METRICS = ["wall_s", "cpu_s", "gpu_s", "gpu_energy_j", "tokens", "video_seconds", "audio_seconds", "images", "chars",
           "steps", "frames", "executions", "cache_hits", "failed_attempts"]
MONEY = ["cost.total_cny", "cost.compute_cny", "cost.ai_tool_cny", "cost.idle_cny", "cost.list_value_cny"]


def _search(tracking_uri: str, drama: str, kind: str, episode: str | None) -> Any:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.get_experiment_by_name(drama)
    if exp is None:
        raise UserError(f"--drama: no MLflow experiment named {drama!r} at {tracking_uri}; "
                        f"run an episode of it first or check --tracking-uri")
    query = f"tags.`microdrama.kind` = '{kind}'"
    if episode:
        query += f" and tags.episode = '{episode}'"
    return mlflow.search_runs([exp.experiment_id], filter_string=query, output_format="list",
                              order_by=["attributes.start_time ASC"], max_results=50000)


def rows(tracking_uri: str, drama: str, episode: str | None = None, latest_only: bool = True) -> list[dict]:
    """One row per episode × stage plus one TOTAL row per episode; money as exact Decimal strings."""
    parents = _search(tracking_uri, drama, "episode", episode)
    if latest_only:  # the latest finished run of each episode
        latest: dict[str, Any] = {}
        for run in parents:
            if run.info.status == "FINISHED":
                latest[run.data.tags["episode"]] = run
        parents = list(latest.values())
    if not parents:
        raise UserError(f"--episode: no finished runs for {drama}/{episode or '*'}")
    by_parent = {r.info.run_id: r for r in parents}
    children = [c for c in _search(tracking_uri, drama, "stage", episode)
                if c.data.tags.get("mlflow.parentRunId") in by_parent]
    out = []
    for parent in parents:
        mine = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        stage_rows = [_stage_row(parent, c) for c in mine]
        out.extend(stage_rows)
        out.append(_total_row(parent, stage_rows))
    return out


def _stage_row(parent: Any, child: Any) -> dict[str, Any]:
    row = {"episode": parent.data.tags["episode"], "stage": child.data.tags["stage"],
           "backend": child.data.params.get("backend", ""), "run_id": child.info.run_id,
           "delayed": _delayed(parent)}
    for m in METRICS:
        row[m] = child.data.metrics.get(m)
    for k in MONEY:
        row[k] = child.data.tags.get(k, "0")
    return row


def _total_row(parent: Any, stage_rows: list[dict]) -> dict[str, Any]:
    row = {"episode": parent.data.tags["episode"], "stage": "TOTAL", "backend": "",
           "run_id": parent.info.run_id, "delayed": _delayed(parent)}
    for m in METRICS:
        vals = [r[m] for r in stage_rows if r[m] is not None]
        row[m] = sum(vals) if vals else None
    for k in MONEY:
        row[k] = str(exact_sum(r[k] for r in stage_rows))
    duration = parent.data.metrics.get("duration_s") or 0.0
    row["duration_s"] = duration
    total = Decimal(row["cost.total_cny"])
    row["cost_per_minute_cny"] = str((total * 60 / Decimal(str(duration))).quantize(Decimal("0.0001"))) \
        if duration else ""
    row["cache_savings_cny"] = str(cache_savings(stage_rows))
    row["ledger_checkpoint"] = (f"{parent.data.tags.get('ledger.checkpoint.size', '')}:"
                                f"{parent.data.tags.get('ledger.checkpoint.root', '')}")
    return row


def _delayed(parent: Any) -> str:
    """When MLflow was unreachable at run time: the time the run was queued (logged later); else empty."""
    return parent.data.tags.get("microdrama.delayed_from", "")


def cache_savings(stage_rows: list[dict]) -> Decimal:
    """Estimated cost avoided: cache hits × the stage's average cost per executed (non-cached) run."""
    saved = Decimal(0)
    for r in stage_rows:
        hits, runs = int(r["cache_hits"] or 0), int(r["executions"] or 0)
        worked = runs - hits
        if hits and worked:
            saved += Decimal(r["cost.total_cny"]) / worked * hits
    return saved.quantize(Decimal("0.01"))


def write(rows_: list[dict], path: Path, fmt: str, title: str) -> Path:
    columns = sorted({k for r in rows_ for k in r}, key=_order)
    if fmt == "csv":
        import csv

        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=columns)
            w.writeheader()
            w.writerows(rows_)
    elif fmt == "xlsx":
        from openpyxl import Workbook

        wb = Workbook()
        ws = wb.active
        ws.title = "compute"
        ws.append(columns)
        for r in rows_:
            ws.append([_cell(r.get(c), c) for c in columns])
        wb.save(path)
    elif fmt == "html":
        path.write_text(render_html(rows_, columns, title), encoding="utf-8")
    else:
        raise UserError(f"--format: {fmt!r} is not one of csv, xlsx, html")
    return path


def _cell(v: Any, column: str) -> Any:
    """Money stays exact text in the workbook (an Excel number is a binary double: 0.1 + 0.2 != 0.3);
    everything else is written as it is."""
    return v


def _order(col: str) -> tuple[int, str]:
    first = ["episode", "stage", "backend", "duration_s", "cost.total_cny", "cost.compute_cny",
             "cost.ai_tool_cny", "cost_per_minute_cny", "cache_savings_cny"]
    return (first.index(col) if col in first else len(first), col)


def _bars(title: str, data: list[tuple[str, Decimal]]) -> str:
    """A small inline SVG bar chart (no JavaScript, opens anywhere, prints fine)."""
    if not data:
        return ""
    top = max((v for _, v in data), default=Decimal(1)) or Decimal(1)
    h = 26 * len(data) + 30
    bars = []
    for i, (label, v) in enumerate(data):
        w = float(v / top) * 360
        y = 24 + i * 26
        bars.append(f'<text x="0" y="{y + 14}" font-size="12">{html.escape(label)}</text>'
                    f'<rect x="150" y="{y}" width="{w:.1f}" height="18" fill="#3b7dd8"/>'
                    f'<text x="{155 + w:.1f}" y="{y + 14}" font-size="12">{v}</text>')
    return (f'<figure><figcaption>{html.escape(title)}</figcaption><svg width="640" height="{h}" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(bars)}</svg></figure>')


def render_html(rows_: list[dict], columns: list[str], title: str) -> str:
    stages: dict[str, Decimal] = {}
    per_min = []
    for r in rows_:
        if r["stage"] == "TOTAL":
            if r.get("cost_per_minute_cny"):
                per_min.append((r["episode"], Decimal(r["cost_per_minute_cny"])))
        else:
            stages[r["stage"]] = stages.get(r["stage"], Decimal(0)) + Decimal(r["cost.total_cny"])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if r.get(c) is None else str(r.get(c)))}</td>"
                                    for c in columns) + "</tr>" for r in rows_)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:3px 6px}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>"
            + _bars("Cost by stage (CNY)", sorted(stages.items()))
            + _bars("Cost per minute of output (CNY/min)", per_min)
            + f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>")
