"""`microdrama claims ...`: evaluate a company-year scenario against the policy files, as JSON or a table."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline.errors import UserError
from pipeline.finance.claims import ClaimResult, evaluate
from pipeline.finance.money import fmt
from pipeline.finance.policies import DEFAULT_POLICY_DIR, load_policies
from pipeline.finance.scenario import load_scenario

app = typer.Typer(help="Subsidy claims: evaluate company-year scenarios against the policy data.",
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
