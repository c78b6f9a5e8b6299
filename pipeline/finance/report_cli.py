"""`microdrama report` and `microdrama estimate`: finance's view of metered runs, from MLflow."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.errors import UserError

err = Console(stderr=True)


def _exit(exc: UserError) -> None:
    for line in exc.problems:
        err.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def report(drama: str = typer.Option(..., "--drama", help="Drama (MLflow experiment)"),
           episode: Optional[str] = typer.Option(None, "--episode", help="Only this episode"),
           fmt: str = typer.Option("csv", "--format", help="csv | xlsx | html"),
           out: Optional[Path] = typer.Option(None, "--out", help="Output file (default report-<drama>.<fmt>)"),
           tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI"),
           all_runs: bool = typer.Option(False, "--all-runs", help="Every run, not only each episode's latest")
           ) -> None:
    """Per-episode, per-stage compute report: time, GPU-s, energy, CPU-s, AI usage, cost, cache savings."""
    from pipeline import safe_io
    from pipeline.episode import tracking_uri_of
    from pipeline.finance.report import rows, write
    from pipeline.job import SLUG
    from pipeline.services import check_tracking_uri, from_library

    try:
        if fmt not in ("csv", "xlsx", "html"):
            raise UserError(f"--format: {fmt!r} is not one of csv, xlsx, html")
        for flag, value in (("--drama", drama), ("--episode", episode)):
            if value is not None and not SLUG.fullmatch(value):
                raise UserError(f"{flag} {value!r}: not a slug (lowercase letters, digits, '-', '_' or '.')")
        path = out or Path(f"report-{drama}{'-' + episode if episode else ''}.{fmt}")
        safe_io.check_out_file(path, "--out")
        uri = tracking_uri_of(tracking_uri)
        check_tracking_uri(uri)  # a closed port: exit 4 in seconds, not minutes of MLflow's HTTP retries
        try:
            data = rows(uri, drama, episode, latest_only=not all_runs)
        except UserError:
            raise
        except Exception as exc:  # a tracking store MLflow cannot read: one line, not its traceback
            raise from_library(exc, f"--tracking-uri {uri}") or exc
        try:
            write(data, path, fmt, f"{drama} compute report")
        except OSError as exc:
            raise safe_io.write_failed(exc, path, "--out") from None
    except UserError as exc:
        _exit(exc)
    typer.echo(str(path))


def estimate(job: Path = typer.Argument(..., help="Episode job YAML"),
             overrides: list[str] = typer.Argument(None, help="Dotted overrides"),
             tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI"),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Predict an episode's cost from past runs before spending it."""
    from pipeline import screenplay
    from pipeline.episode import tracking_uri_of
    from pipeline.finance.estimate import estimate as predict
    from pipeline.services import check_tracking_uri
    from pipeline.stages.script import read_source
    from pipeline.job import load_job

    try:
        j = load_job(job, overrides or [])
        source = read_source(j)  # a screenplay's shots, or for a screenwriter one shot per beat (an estimate)
        shots = len(source.shots) if hasattr(source, "shots") else max(1, len(source.beats))
        check_tracking_uri(tracking_uri_of(tracking_uri))  # past runs are read from there: it must answer
    except (UserError, screenplay.ScreenplayError) as exc:
        _exit(exc if isinstance(exc, UserError) else UserError(str(exc)))
    result = predict(j, shots, tracking_uri_of(tracking_uri))
    if as_json:
        typer.echo(json.dumps(result, ensure_ascii=False, indent=2))
        return
    table = Table(title=f"estimate {j.drama}/{j.episode} ({shots} shots)")
    for col in ("stage", "backend", "executions", "per_execution", "estimate_cny", "samples"):
        table.add_column(col)
    for line in result["stages"]:
        table.add_row(*[str(line[c]) if line[c] is not None else "no history" for c in
                        ("stage", "backend", "executions", "per_execution", "estimate_cny", "samples")])
    Console().print(table)
    typer.echo(f"total: {result['total_cny']} CNY" +
               (f" (no history for: {', '.join(result['unknown_stages'])})" if result["unknown_stages"] else ""))
    if j.budget.max_cny is not None:
        typer.echo(f"budget: {j.budget.max_cny} CNY")
