"""The `microdrama` command: one typer app whose subcommands are listed in one place (STYLE item 11)."""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from pipeline.errors import UserError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Vertical AI micro-drama pipeline with metered, claimable compute.")
err = Console(stderr=True)

# sub-apps: name → "module:attribute", imported lazily so `microdrama validate` stays fast
SUBAPPS = {
    "ledger": ("pipeline.metering.ledger_cli:app", "Tamper-evident ledger: verify, prove, checkpoint."),
    "claims": ("pipeline.finance.claims_cli:app", "Subsidy claims: evaluate, build, packet."),
    "mlflow": ("pipeline.metering.mlflow_cli:app", "Runs queued while MLflow was unreachable: pending, flush."),
    "cache": ("pipeline.cache_cli:app", "The stage cache: verify every entry's digests, --repair removes bad ones."),
    "cast": ("pipeline.cast_cli:app", "Character sheets of a series: status, approve."),
}


# top-level commands living in other modules: name → "module:function" (typer-annotated), imported lazily
COMMANDS = {
    "report": "pipeline.finance.report_cli:report",
    "estimate": "pipeline.finance.report_cli:estimate",
    "submit": "pipeline.submit:submit",
    "edit": "pipeline.handoff.reedit:edit",
    "capacity": "pipeline.metering.capacity:capacity",
}


def quiet_libraries() -> None:
    """Keep Ray's and MLflow's own INFO lines (database migrations, "creating experiment", Ray's token-auth
    notice) out of the user's terminal; their warnings and errors still show. `--verbose` keeps them all."""
    import logging

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", help="Also show Ray's and MLflow's own log lines "
                                          "(quiet by default)")) -> None:
    if not verbose:
        quiet_libraries()


def _fail(exc: BaseException, code: int) -> None:
    for line in str(exc).splitlines() or [type(exc).__name__]:
        err.print(f"[bold red]error:[/] {escape(line)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def validate(args: list[str] = typer.Argument(..., metavar="JOB... [KEY=VALUE...]",
                                             help="Episode job YAML files (a season: several), then dotted overrides"),
             set_: list[str] = typer.Option([], "--set", "-s", help="Override, e.g. stages.video.fps=24")) -> None:
    """Check jobs (schema, profile, backends, screenplay) without running anything; one line per job."""
    jobs = [Path(a) for a in args if "=" not in a or Path(a).is_file()]
    overrides = [*set_, *(a for a in args if "=" in a and not Path(a).is_file())]
    if not jobs:
        _fail(UserError("validate: no job file given (usage: microdrama validate JOB.yaml [JOB.yaml...] "
                        "[KEY=VALUE...])"), 2)
    code, seen = 0, {}
    for path in jobs:
        try:
            j, summary = _validate_one(path, overrides)
            if (j.drama, j.episode) in seen:
                raise UserError(f"episode: {j.drama}/{j.episode} is also the episode of {seen[j.drama, j.episode]}; "
                                "give every job of a season its own episode")
            seen[j.drama, j.episode] = path
            typer.echo(summary)
        except UserError as exc:  # a ScreenplayError is a UserError
            code = max(code, exc.exit_code)
            _report(exc, prefix=f"{path}: " if len(jobs) > 1 else "")
    if code:
        raise typer.Exit(code)


def _report(exc: BaseException, prefix: str) -> None:
    """Print an error of one job among several (each line prefixed with its job file) and go on."""
    for line in str(exc).splitlines() or [type(exc).__name__]:
        err.print(f"[bold red]error:[/] {escape(prefix + line)}", highlight=False, markup=True, soft_wrap=True)


def _validate_one(path: Path, overrides: list[str]) -> tuple[Any, str]:
    from pipeline.job import load_job
    from pipeline.orchestrate import preflight
    from pipeline.stages.script import read_source

    j = load_job(path, overrides)
    script = read_source(j)
    problems = preflight(j)
    if problems:
        raise UserError(problems)
    size = f"shots={len(script.shots)}" if hasattr(script, "shots") else f"beats={len(script.beats)} (treatment)"
    return j, f"ok: {j.drama}/{j.episode} profile={j.profile} languages={','.join(j.languages)} {size}"


@app.command()
def run(job: Path = typer.Argument(..., help="Episode job YAML"),
        overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. stages.video.fps=24"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display; print only the episode path"),
        address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: local)"),
        tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                                                   help="MLflow tracking URI (default sqlite:///mlflow.db)"),
        ledger: Optional[str] = typer.Option(None, "--ledger", envvar="MICRODRAMA_LEDGER",
                                             help="Ledger URL (default sqlite:///ledger.db)")) -> None:
    """Run an episode job end to end and write out/<drama>/<episode>/."""
    from pipeline import screenplay
    from pipeline.job import load_job
    from pipeline.episode import run_job
    from pipeline.orchestrate import preflight
    from pipeline.stages.script import read_source

    try:
        j = load_job(job, overrides or [])
        read_source(j)
        check_services(j, address, tracking_uri, ledger)
        if address is None and not os.environ.get("RAY_ADDRESS"):  # this machine is the worker: check it now
            problems = preflight(j)
            if problems:
                raise UserError(problems)
    except UserError as exc:
        _fail(exc, exc.exit_code)
    except screenplay.ScreenplayError as exc:
        _fail(exc, 2)
    from pipeline import stopping
    from pipeline.runner import ensure_ray

    try:
        ensure_ray(address)  # first: Ray's own SIGTERM handler (it aborts) is replaced by ours below
        with stopping.stop_on_signals():  # SIGTERM/Ctrl-C: cancel, close and bill open attempts, checkpoint
            manifest = run_job(j, quiet=quiet, address=address, tracking_uri=tracking_uri, ledger_url=ledger)
    except stopping.Stopped as exc:
        _fail(RuntimeError(f"stopped: {exc.why}; open attempts were closed and billed, finished stages are "
                           "cached: run it again to resume"), stopping.EXIT_STOPPED)
    except UserError as exc:
        _fail(exc, exc.exit_code)
    except Exception as exc:  # a stage failed after its retries: say which, exit 1
        from pipeline.orchestrate import format_failure

        _fail(RuntimeError(format_failure(exc)), 1)
    out = j.out_path / "episode.mp4"
    from pipeline.runner import corrupt_line

    if corrupt_line(manifest):  # said even with --quiet (on stderr): the cache was tampered with or rotted
        err.print(f"[bold yellow]warning:[/] {escape(corrupt_line(manifest))}", highlight=False, soft_wrap=True)
    from pipeline.identity_report import warning_lines

    for line in warning_lines(manifest):  # shots the identity check could not pass: never silently fine
        err.print(f"[yellow]{escape(line)}[/]", markup=True, highlight=False, soft_wrap=True)
    if quiet:
        typer.echo(str(out))
    else:
        cached = manifest["cache"]
        err.print(f"[green]done[/] {out}  {manifest['duration_s']:.2f}s, {len(manifest['shots'])} shots, "
                  f"cache {cached['hits']}/{cached['executions']}")


def check_services(job, address: str | None, tracking_uri: str | None, ledger: str | None) -> None:
    """Before any work: the ledger (its file, or its server within a short timeout), the Ray address, and
    the MLflow URI's shape (an unreachable MLflow server only queues the run's logging, see `mlflow flush`;
    with a budget its history is needed, so then it must answer too)."""
    from pipeline import services
    from pipeline.episode import resolve_ledger_url, tracking_uri_of

    services.check_ledger_url(resolve_ledger_url(ledger), "--ledger")
    services.check_tracking_uri(tracking_uri_of(tracking_uri), "--tracking-uri",
                                answer=job.budget.max_cny is not None)
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        services.check_ray_address(target, "--address", schemes=("ray", ""))


def _mount() -> None:
    for name, target in COMMANDS.items():
        module, _, attr = target.partition(":")
        app.command(name=name)(getattr(importlib.import_module(module), attr))  # a broken import fails loudly
    for name, (target, help_text) in SUBAPPS.items():
        module, _, attr = target.partition(":")
        app.add_typer(getattr(importlib.import_module(module), attr), name=name, help=help_text)


def main() -> None:
    _mount()
    app()


if __name__ == "__main__":
    main()
