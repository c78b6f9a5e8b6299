"""`microdrama claims ...`: evaluate a company-year scenario, build one from metered data, write claim packets."""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from pipeline import safe_io
from pipeline.errors import UserError
from pipeline.finance.claims import ClaimResult, evaluate
from pipeline.money import fmt
from pipeline.finance.policies import DEFAULT_POLICY_DIR, load_policies
from pipeline.finance.scenario import load_scenario

T = TypeVar("T")
app = typer.Typer(help="Subsidy claims: evaluate, build and packet company-year scenarios.",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def claims() -> None:
    """Subsidy claims from metered costs (POLICIES.md, CLAIMS.md)."""


@app.command("evaluate")
def evaluate_command(
    scenario: Annotated[Path, typer.Argument(help="SCENARIO.yaml (CLAIMS.md format)")],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON document (CLAIMS.md output)")] = False,
    policies: Annotated[Path, typer.Option("--policies", help="directory of policy files")] = DEFAULT_POLICY_DIR,
) -> None:
    """Evaluate every programme of the company's districts for the scenario's year."""
    try:
        result = evaluate(load_scenario(scenario), load_policies(policies))
    except UserError as err:
        _fail(err)
    if as_json:
        sys.stdout.write(result.to_json() + "\n")
    else:
        Console().print(_table(result))


TrackingOpt = typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                           help="MLflow tracking URI (default sqlite:///mlflow.db)")
LedgerOpt = typer.Option("--ledger", envvar="MICRODRAMA_LEDGER", help="Ledger URL (default sqlite:///ledger.db)")


@app.command("build")
def build_command(
    year: Annotated[int, typer.Option("--year", min=2000, max=2100,
                                      help="the claim year (runs started that year, China time)")],
    facts: Annotated[Path, typer.Option("--facts", help="declared facts YAML (pipeline/finance/build.py)")],
    drama: Annotated[Optional[list[str]], typer.Option("--drama", help="drama slug; repeat; default: all "
                                                       "dramas of the facts file")] = None,
    tracking_uri: Annotated[Optional[str], TrackingOpt] = None,
    ledger: Annotated[Optional[str], LedgerOpt] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="write SCENARIO.yaml here (default: stdout)")] = None,
    packets: Annotated[Optional[Path], typer.Option("--packets", help="also write a claim packet for every "
                                                    "paid programme and drama into this folder")] = None,
    policies: Annotated[Path, typer.Option("--policies", help="directory of policy files")] = DEFAULT_POLICY_DIR,
) -> None:
    """Assemble SCENARIO.yaml: declared facts plus metered costs and runtime shares from MLflow and the ledger."""
    from pipeline.finance.build import build_from_file
    from pipeline.finance.packet_evidence import make_packets

    try:
        check_slugs("--drama", drama or [])
        if out is not None:
            safe_io.check_out_file(out, "--out")
        if packets is not None:
            safe_io.check_out_dir(packets, "--packets")
        check_metered(tracking_uri, ledger)
        built = _library_errors(lambda: build_from_file(facts, year, dramas=drama, tracking_uri=tracking_uri,
                                                        ledger_url=ledger))
        text = built.to_yaml()
        for note in built.notes:
            Console(stderr=True, highlight=False).print(f"note: {note}", markup=False)
        if out is None and packets is None:
            sys.stdout.write(text)
            return
        target = out or packets / "scenario.yaml"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise safe_io.write_failed(exc, target, "--out" if out else "--packets") from None
        typer.echo(str(target))
        if packets is not None:
            for folder in make_packets(target, None, packets, tracking_uri=built.tracking_uri,
                                       ledger_url=built.ledger_url, policies=load_policies(policies)):
                typer.echo(str(folder))
    except UserError as err:
        _fail(err)


@app.command("packet")
def packet_command(
    scenario: Annotated[Path, typer.Argument(help="SCENARIO.yaml, as written by `claims build`")],
    programme: Annotated[str, typer.Option("--programme", help="programme id, e.g. huairou.compute_voucher")],
    out: Annotated[Path, typer.Option("--out", help="folder for the packet folders")],
    drama: Annotated[Optional[str], typer.Option("--drama", help="only this drama (default: every drama paid)")] = None,
    tracking_uri: Annotated[Optional[str], TrackingOpt] = None,
    ledger: Annotated[Optional[str], LedgerOpt] = None,
    notified: Annotated[Optional[str], typer.Option("--notified", help="date the monitoring-data notice was "
                                                    "received (YYYY-MM-DD): dates the dispute deadline")] = None,
    accepted: Annotated[Optional[str], typer.Option("--accepted", help="date the application was accepted "
                                                    "(YYYY-MM-DD): dates the settlement deadline")] = None,
    policies: Annotated[Path, typer.Option("--policies", help="directory of policy files")] = DEFAULT_POLICY_DIR,
) -> None:
    """Evaluate SCENARIO and write a claim packet (claim.json, evidence.json, summary.html) per paid drama."""
    from pipeline.finance.packet_evidence import make_packets

    try:
        dates = {k: _date(v, f"--{k}") for k, v in (("notified", notified), ("accepted", accepted)) if v}
        check_slugs("--drama", [drama] if drama else [])
        safe_io.check_out_dir(out, "--out")
        check_metered(tracking_uri, ledger)
        folders = _library_errors(lambda: make_packets(scenario, [programme], out, drama=drama,
                                                       tracking_uri=tracking_uri, ledger_url=ledger, dates=dates,
                                                       policies=load_policies(policies)))
    except UserError as err:
        _fail(err)
    for folder in folders:
        typer.echo(str(folder))


def check_slugs(flag: str, values: list[str]) -> None:
    """Drama ids as scenarios write them: 1-200 characters, no spaces or control characters."""
    import re

    bad = [v for v in values if not re.fullmatch(r"\S{1,200}", v) or any(ord(c) < 32 or ord(c) == 127 for c in v)]
    if bad:
        raise UserError(f"{flag} {bad[0][:80]!r}: not a drama id (1-200 characters, no spaces or control "
                        "characters)")


def check_metered(tracking_uri: str | None, ledger: str | None) -> None:
    """Before any work: the MLflow server answers (exit 4 in seconds, not minutes of retries) and the ledger
    is an existing SQLite ledger or a PostgreSQL server that answers."""
    from pipeline.finance.build_metered import default_ledger, default_tracking_uri
    from pipeline.services import check_ledger_url, check_tracking_uri

    check_tracking_uri(default_tracking_uri(tracking_uri), "--tracking-uri")
    check_ledger_url(default_ledger(ledger), "--ledger")


def _library_errors(work: Callable[[], T]) -> T:
    """Run `work`; an MLflow/database client error becomes one line (exit 2, or 4 for a lost connection);
    a file the CLI could not write (disk full) too."""
    from pipeline.services import from_library

    try:
        return work()
    except UserError:
        raise
    except Exception as exc:
        known = from_library(exc, "metered data")
        if known is not None:
            raise known from None
        if isinstance(exc, OSError):
            raise UserError(f"cannot write: {exc.strerror or exc}; free space or choose another --out") from None
        raise


def _date(text: str, option: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise UserError(f"{option}: {text!r} is not a date; write YYYY-MM-DD") from None


def _fail(err: UserError) -> None:
    """Print every problem on stderr, no traceback, and exit with code 2."""
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    for line in err.problems:
        console.print(f"error: {line}", markup=False)
    raise typer.Exit(err.exit_code)


def _table(result: ClaimResult) -> Table:
    table = Table(title=f"{result.company} - claims for {result.year}", show_footer=True)
    table.add_column("programme", footer="total", no_wrap=True)
    table.add_column("amount (CNY)", justify="right", footer=fmt(result.total))
    table.add_column("by drama")
    table.add_column("excluded")
    for pid, prog in result.programmes.items():
        by_drama = "\n".join(f"{d}: {fmt(a)}" for d, a in prog.by_drama.items())
        excluded = "\n".join(f"{d}: {why.split(' [')[0]}" for d, why in prog.excluded.items())
        table.add_row(pid, fmt(prog.total), by_drama or "-", excluded or "-")
    return table
