"""`microdrama mlflow ...`: runs queued while the MLflow tracking server was unreachable — list them, flush them."""
from __future__ import annotations

import json
from typing import Optional

import typer

app = typer.Typer(help="MLflow runs queued while the tracking server was unreachable.", no_args_is_help=True)


@app.command()
def pending(as_json: bool = typer.Option(False, "--json", help="Print the queue as JSON")) -> None:
    """List the queued runs: episode, tracking server, when and why they were queued."""
    from pipeline.metering.mlflow_queue import _safe, pending as queued

    from pipeline import safe_io

    items = []
    for path in queued():
        try:
            payload = json.loads(safe_io.read_text(path, "queued run", max_bytes=64 << 20))
            m = payload["manifest"]
            m["run_id"], m["drama"], m["episode"], payload["tracking_uri"], payload["queued_at"]
        except (safe_io.InputError, ValueError, KeyError, TypeError) as exc:
            typer.echo(f"error: {path}: not a readable queued run ({exc}); move it out of the queue", err=True)
            raise typer.Exit(2) from None
        items.append({"file": str(path), "run_id": m["run_id"], "drama": m["drama"], "episode": m["episode"],
                      "tracking_uri": _safe(payload["tracking_uri"]), "queued_at": payload["queued_at"],
                      "reason": payload.get("reason", "")[:200]})
    if as_json:
        typer.echo(json.dumps(items, ensure_ascii=False, indent=2))
        return
    for it in items:
        typer.echo(f"{it['queued_at']}  {it['drama']}/{it['episode']}  {it['run_id']}  -> {it['tracking_uri']}")
    typer.echo(f"{len(items)} run(s) queued")


@app.command()
def flush(tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="Only the runs queued for this server (default: every queued run, each to "
                                     "the server it was meant for)")) -> None:
    """Log every queued run whose server answers now, tagged microdrama.delayed_from=<queued at>; exit 1 while
    runs are left in the queue (their server is still unreachable)."""
    from pipeline.episode import tracking_uri_of
    from pipeline.metering.mlflow_queue import flush as flush_queue, pending as queued

    uri = tracking_uri_of(tracking_uri) if tracking_uri else None
    logged = flush_queue(uri)
    for run_id in logged:
        typer.echo(f"logged {run_id}")
    left = len(queued())
    typer.echo(f"{len(logged)} run(s) flushed, {left} still queued", err=True)
    raise typer.Exit(1 if left else 0)
