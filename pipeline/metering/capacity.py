"""Farm sizing from the ledger (`microdrama capacity`, docs/farm-sizing.md): the GPU-seconds each stage spent
per delivered episode, measured from usage records (every attempt: retries, failures and rework included),
and the GPUs, replicas and compute spend a daily output needs at a target utilisation."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from decimal import Decimal, localcontext
from typing import Any, Optional

import typer

from pipeline.errors import UserError
from pipeline.money import exact_sum, plain

DAY_S = 86_400


@dataclass(frozen=True)
class StageLoad:
    """One stage's GPU work over the measured episodes."""

    stage: str
    gpu_s: float  # GPU-seconds, every attempt (a quarter GPU for 8 s is 2 GPU-s)
    gpus: float  # GPUs one replica holds (the largest ask seen)
    attempts: int  # executions that held a GPU
    gpu_models: tuple[str, ...] = ()
    source: str = "measured"  # measured | assumed

    def per_episode(self, episodes: int) -> float:
        return self.gpu_s if self.source == "assumed" else self.gpu_s / episodes


@dataclass(frozen=True)
class Measured:
    """What a ledger says about the GPU work of its delivered episodes."""

    episodes: int  # distinct (drama, episode) with a finished edit
    stages: dict[str, StageLoad]
    compute_cny: Decimal  # every compute cost line of those episodes, summed exactly (money.exact_sum)


def measure(ledger: Any, drama: str | None = None) -> Measured:
    """GPU-seconds per stage and cost over the episodes of `ledger` (or of one drama) that were delivered."""
    where = {"drama": drama} if drama else None
    usage = [e.body for e in ledger.entries(kind="usage", where=where)]
    delivered = {(u["drama"], u["episode"]) for u in usage if u["stage"] == "edit" and u["status"] in ("ok", "cached")}
    if not delivered:
        raise UserError(f"--drama {drama}: no delivered episode of this drama in the ledger (an edit that finished)"
                        if drama else "--ledger: no delivered episode in this ledger (an edit that finished); "
                        "run a pilot first, e.g. `microdrama run JOB profile=gpu-h100`, or point --ledger at the farm's")
    gpu_s: dict[str, float] = {}
    gpus: dict[str, float] = {}
    attempts: dict[str, int] = {}
    models: dict[str, set[str]] = {}
    for u in usage:
        if (u["drama"], u["episode"]) not in delivered or not u.get("gpu_s"):
            continue
        s = u["stage"]
        gpu_s[s] = gpu_s.get(s, 0.0) + float(u["gpu_s"])
        gpus[s] = max(gpus.get(s, 0.0), float(u.get("gpus") or 0))
        attempts[s] = attempts.get(s, 0) + 1
        if u.get("gpu_model"):
            models.setdefault(s, set()).add(u["gpu_model"])
    compute = exact_sum(c.body["amount"] for c in ledger.entries(kind="cost", where=where)
                        if c.body["kind"] != "ai_tool" and (c.body.get("drama"), c.body.get("episode")) in delivered)
    stages = {s: StageLoad(s, gpu_s[s], gpus[s] or 1.0, attempts[s], tuple(sorted(models.get(s, ()))))
              for s in sorted(gpu_s)}
    return Measured(len(delivered), stages, compute)


def parse_assumption(text: str) -> StageLoad:
    """`STAGE=GPU_S[:GPUS]`: GPU-seconds one episode spends in STAGE, on replicas of GPUS GPUs (default 1)."""
    stage, eq, rest = text.partition("=")
    amount, _, share = rest.partition(":")
    try:
        value, held = float(amount), float(share or 1)
    except ValueError:
        value = held = -1.0
    if not eq or not stage.strip() or not math.isfinite(value) or value < 0 or not 0 < held <= 64:
        raise UserError(f"--assume {text!r}: write STAGE=GPU_SECONDS_PER_EPISODE[:GPUS_PER_REPLICA], "
                        "e.g. --assume video=4800 or --assume dub=60:0.25")
    return StageLoad(stage.strip(), value, held, 0, (), "assumed")


@dataclass
class Plan:
    episodes_per_day: int
    gpus: int
    utilization: float
    stages: list[dict[str, Any]] = field(default_factory=list)
    gpu_s_per_episode: float = 0.0
    gpus_needed: int = 0  # whole GPUs that the replicas below hold
    episodes_per_day_on_gpus: int = 0  # what `gpus` GPUs deliver at `utilization`
    fits: bool = False
    measured_episodes: int = 0
    compute_cny_measured: str = ""  # the measured episodes' compute cost lines, summed exactly
    compute_cny_per_episode: str = ""  # that total / the episodes, to 60 significant digits
    compute_cny_per_day: str = ""  # per episode × episodes a day, exactly


def plan(measured: Measured | None, episodes_per_day: int, gpus: int, utilization: float,
         assumed: list[StageLoad] = ()) -> Plan:
    """Replicas per GPU stage and GPUs in all for `episodes_per_day`, each GPU busy `utilization` of the day
    (the rest is model loads, queueing between episodes and the autoscaler's slack)."""
    loads = dict(measured.stages) if measured else {}
    loads.update({a.stage: a for a in assumed})
    if not loads or not any(l.gpu_s > 0 for l in loads.values()):
        raise UserError("no GPU-seconds to size from: the ledger's episodes ran on CPU (a preview or tiny profile) "
                        "and no --assume was given; run a pilot season on the GPU profile, or pass "
                        "--assume STAGE=GPU_SECONDS_PER_EPISODE for each GPU stage")
    episodes = measured.episodes if measured else 1
    out = Plan(episodes_per_day, gpus, utilization, measured_episodes=measured.episodes if measured else 0)
    held = 0.0
    for name in sorted(loads):
        load = loads[name]
        per_ep = load.per_episode(episodes)
        busy = per_ep * episodes_per_day / DAY_S  # GPUs busy around the clock
        replicas = max(1, math.ceil(busy / utilization / load.gpus - 1e-9))
        held += replicas * load.gpus
        out.stages.append({"stage": name, "source": load.source, "gpu_s_per_episode": round(per_ep, 3),
                           "gpus_per_replica": load.gpus, "gpu_hours_per_day": round(per_ep * episodes_per_day / 3600, 2),
                           "busy_gpus": round(busy, 3), "replicas": replicas,
                           "gpus_held": round(replicas * load.gpus, 3), "gpu_models": list(load.gpu_models),
                           "attempts": load.attempts})
        out.gpu_s_per_episode += per_ep
    out.gpu_s_per_episode = round(out.gpu_s_per_episode, 3)
    out.gpus_needed = math.ceil(held - 1e-9)
    out.episodes_per_day_on_gpus = math.floor(gpus * DAY_S * utilization / out.gpu_s_per_episode) \
        if out.gpu_s_per_episode else 0
    out.fits = out.gpus_needed <= gpus
    if measured:
        with localcontext() as ctx:
            ctx.prec = 60  # the quotient's digits; the product below is exact in them
            per_episode = measured.compute_cny / measured.episodes
            ctx.prec = 100
            per_day = per_episode * episodes_per_day
        out.compute_cny_measured = plain(measured.compute_cny)
        out.compute_cny_per_episode, out.compute_cny_per_day = plain(per_episode), plain(per_day)
    return out


def capacity(episodes_per_day: int = typer.Option(1000, "--episodes-per-day", min=1, help="Daily output to size for"),
             gpus: int = typer.Option(64, "--gpus", min=1, help="GPUs the farm has (or is quoted for)"),
             utilization: float = typer.Option(0.8, "--utilization", min=0.05, max=1.0,
                                               help="Share of each GPU's day spent on shots (the rest: loads, "
                                                    "queueing, autoscaler slack)"),
             drama: Optional[str] = typer.Option(None, "--drama", help="Only this drama's episodes"),
             assume: list[str] = typer.Option([], "--assume", help="STAGE=GPU_S_PER_EPISODE[:GPUS_PER_REPLICA] "
                                              "for a stage the ledger has not measured (repeatable)"),
             no_ledger: bool = typer.Option(False, "--no-ledger", help="Size from --assume alone"),
             ledger: Optional[str] = typer.Option(None, "--ledger", envvar="MICRODRAMA_LEDGER",
                                                  help="Ledger URL (default sqlite:///ledger.db)"),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Size a GPU farm from the ledger's measured GPU-seconds: replicas per stage and GPUs for a daily output."""
    from rich.console import Console
    from rich.table import Table

    from pipeline.finance.report_cli import _exit
    from pipeline.metering.ledger_cli import _session
    from pipeline.money import shown

    try:
        assumed = [parse_assumption(a) for a in assume]
        measured = None
        if not no_ledger:
            with _session(ledger, read_only=True) as led:
                measured = measure(led, drama)
        result = plan(measured, episodes_per_day, gpus, utilization, assumed)
    except UserError as exc:
        _exit(exc)
    if as_json:
        typer.echo(json.dumps(asdict(result), indent=1))
        return
    console = Console()
    where = f"{result.measured_episodes} delivered episode(s) measured" if measured else "assumptions only"
    table = Table(title=f"{episodes_per_day:,} episodes a day at {utilization:.0%} GPU utilisation ({where})")
    for col in ("stage", "from", "GPU-s/ep", "GPU/rep", "GPU-h/day", "replicas", "GPUs"):
        table.add_column(col, justify="left" if col in ("stage", "from") else "right")
    for s in result.stages:
        table.add_row(s["stage"], s["source"], f"{s['gpu_s_per_episode']:,.1f}", f"{s['gpus_per_replica']:g}",
                      f"{s['gpu_hours_per_day']:,.1f}", str(s["replicas"]), f"{s['gpus_held']:g}")
    console.print(table)
    models = sorted({m for s in result.stages for m in s["gpu_models"]})
    if models:
        console.print(f"measured on: {', '.join(models)}")
    verdict = "fits" if result.fits else "does NOT fit"
    console.print(f"{result.gpu_s_per_episode:,.1f} GPU-s an episode; {result.gpus_needed} GPU(s) needed: "
                  f"{verdict} on {gpus}, which deliver about {result.episodes_per_day_on_gpus:,} episodes a day")
    if result.compute_cny_per_episode:
        console.print(f"compute spend: CNY {shown(result.compute_cny_per_episode)} an episode, "
                      f"CNY {shown(result.compute_cny_per_day)} a day (the measured episodes' cost lines)")
