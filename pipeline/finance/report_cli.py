"""`microdrama report` and `microdrama estimate`: finance's view of metered runs, from the ledger and MLflow."""
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
           ledger: Optional[str] = typer.Option(None, "--ledger", envvar="MICRODRAMA_LEDGER",
                                                 help="Ledger URL (default sqlite:///ledger.db)")) -> None:
    """Per-episode production cost across runs (final cut, rework, idle) with time, GPU-s, energy, CPU-s, AI
    usage and cache savings per stage: money from the ledger, usage from MLflow."""
    from pipeline import safe_io
    from pipeline.finance.report import rows
    from pipeline.finance.report_files import FORMATS, write
    from pipeline.job import SLUG
    from pipeline.metering.mlflow_sink import tracking_uri_of
    from pipeline.services import check_tracking_uri, from_library

    try:
        if fmt not in FORMATS:
            raise UserError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
        for flag, value in (("--drama", drama), ("--episode", episode)):
            if value is not None and not SLUG.fullmatch(value):
                raise UserError(f"{flag} {value!r}: not a slug (lowercase letters, digits, '-', '_' or '.')")
        path = out or Path(f"report-{drama}{'-' + episode if episode else ''}.{fmt}")
        safe_io.check_out_file(path, "--out")
        uri = tracking_uri_of(tracking_uri)
        check_tracking_uri(uri)  # a closed port: exit 4 in seconds, not minutes of MLflow's HTTP retries
        try:
            data = rows(uri, drama, episode, ledger)
        except UserError:
            raise
        except Exception as exc:  # a tracking store or ledger the libraries cannot read: one line
            raise from_library(exc, f"--tracking-uri {uri}") or exc
        try:
            write(data, path, fmt, f"{drama} production cost report")
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
    from pipeline.finance.estimate import estimate as predict
    from pipeline.services import check_tracking_uri
    from pipeline.job import load_job
    from pipeline.job_backends import planned_shots
    from pipeline.metering.mlflow_sink import tracking_uri_of
    from pipeline.money import shown, shown_rate

    try:
        j = load_job(job, overrides or [])
        shots = planned_shots(j)  # a screenplay's shots, or for a screenwriter one shot per beat (an estimate)
        check_tracking_uri(tracking_uri_of(tracking_uri))  # past runs are read from there: it must answer
    except (UserError, screenplay.ScreenplayError) as exc:
        _exit(exc if isinstance(exc, UserError) else UserError(str(exc)))
    result = predict(j, shots, tracking_uri_of(tracking_uri))
    if as_json:
        typer.echo(json.dumps(result, ensure_ascii=False, indent=2))
        return
    table = Table(title=f"estimate {j.drama}/{j.episode} ({shots} shots)")
    columns = ("stage", "backend", "executions", "per_execution", "estimate_cny", "samples")
    for col in columns:
        table.add_column(col)
    for line in result["stages"]:
        shown_line = {**line, "estimate_cny": shown(line["estimate_exact"]) if line.get("estimate_exact") else None}
        table.add_row(*[str(shown_line[c]) if shown_line[c] is not None else "no history, no price" for c in columns])
    Console().print(table)
    typer.echo(result["message"])
    if j.budget.max_cny is not None:
        typer.echo(f"budget: {shown_rate(j.budget.max_cny)} CNY")
