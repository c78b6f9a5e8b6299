"""Attempts that die with their process are metered too: a start entry before the work, a usage record after.

A killed worker cannot write its own usage record. So every stage attempt first appends an `attempt`
entry (idempotency key `<usage key>/start`: who, where, when it started) and only then works. An
attempt entry without a usage record under its usage key is an attempt whose process died; it is
closed by whoever notices first, with a failed usage record billed from the start entry:

- the Ray retry of the same task (Ray re-runs a task whose worker died): at its start it closes the
  dead attempts of its stage and shot, then numbers its own attempts after them;
- the driver at the end of a run (retries exhausted, actor killed, run failed or interrupted);
- the next run of the same episode, for attempts of an earlier run whose driver process is gone.

The closing record is appended under the attempt's own usage key, so if the attempt did manage to
write its record (it died after the append) the ledger keeps that one and the closing record is a no-op:
exactly one usage record per attempt that started, never two.
"""
from __future__ import annotations

import datetime as dt
import os
import socket
from collections import defaultdict
from typing import Any

from pipeline.metering.meter import idempotency_key
from pipeline.metering.usage import AIUsage, UsageRecord

KIND = "attempt"
_HOST = socket.gethostname()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def start_key(usage_key: str) -> str:
    return f"{usage_key}/start"


def driver_identity() -> dict[str, Any]:
    """Who runs the episode: an attempt whose driver process is gone can be closed by the next run."""
    import psutil

    return {"host": _HOST, "pid": os.getpid(), "created": round(psutil.Process().create_time(), 2)}


def driver_alive(driver: dict[str, Any]) -> bool | None:
    """True/False for a driver on this host; None (unknown) for another host."""
    import psutil

    if not driver or driver.get("host") != _HOST:
        return None
    try:
        proc = psutil.Process(int(driver["pid"]))
        return abs(proc.create_time() - float(driver.get("created", 0))) < 1.0 and \
            proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, KeyError, ValueError, TypeError):
        return False


def ray_attempt() -> tuple[int, dict[str, str]]:
    """(Ray's attempt number of the running task: 0 first, 1.. on Ray retries, and its ids) — (0, {}) outside."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return 0, {}
    ctx = ray.get_runtime_context()
    if ctx.worker.mode != ray.WORKER_MODE:
        return 0, {}
    ids = {"ray_task_id": ctx.get_task_id() or "", "ray_worker_id": ctx.get_worker_id()}
    try:  # no public API in Ray 2.x; the core worker knows which attempt of the task this is
        number = int(ctx.worker.core_worker.get_current_task_attempt_number())
    except Exception:
        number = 0
    return number, ids


def _assigned() -> tuple[float, float] | None:
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    ctx = ray.get_runtime_context()
    if ctx.worker.mode != ray.WORKER_MODE:
        return None
    res = ctx.get_assigned_resources()
    return float(res.get("GPU", 0.0)), float(res.get("CPU", 0.0))


def start_body(*, job: str, drama: str, episode: str, stage: str, shot: str | None, backend: str,
               attempt: int, gpus: float, cpus: float, driver: dict[str, Any]) -> dict[str, Any]:
    """The `attempt` entry of one stage attempt, appended before any work."""
    number, ids = ray_attempt()
    assigned = _assigned()
    if assigned is not None:  # what Ray gave the task or actor, as the meter records it
        gpus, cpus = assigned
    return {"job": job, "drama": drama, "episode": episode, "stage": stage, "shot": shot, "backend": backend,
            "attempt": attempt, "usage_key": idempotency_key(job, stage, shot, attempt),
            "started": _now().isoformat(timespec="microseconds"), "node": _HOST, "pid": os.getpid(),
            "ray_attempt": number, **ids, "gpus": gpus, "cpus": cpus, "driver": driver}


def closing_record(start: dict[str, Any], *, why: str, ended: dt.datetime, method: str,
                   ai_usage: list[dict[str, Any]] | tuple = ()) -> UsageRecord:
    """The failed usage record of an attempt whose process died: wall time from its start to `ended`, and
    the provider usage of the tasks it saw end (metering/tasks.py), which no other record bills."""
    started = dt.datetime.fromisoformat(start["started"])
    wall = max(0.0, (ended - started).total_seconds())
    gpus, cpus = float(start.get("gpus") or 0.0), float(start.get("cpus") or 0.0)
    return UsageRecord(
        job=start["job"], drama=start["drama"], episode=start["episode"], stage=start["stage"],
        shot=start.get("shot"), backend=start["backend"], attempt=int(start["attempt"]), status="failed",
        error=f"WorkerDied: {why}", node=start.get("node", ""), gpus=gpus, cpus=cpus, started=start["started"],
        ended=ended.isoformat(timespec="microseconds"), wall_s=round(wall, 6), cpu_s=0.0,
        gpu_s=round(gpus * wall, 6), gpu_energy_j=None,
        gpu_energy_reason="the attempt's process died before the energy counter could be read" if gpus else
        "no GPU allocated to this stage", peak_rss=0, cache_hit=False, idempotency_key=start["usage_key"],
        ai_usage=tuple(AIUsage(**u) for u in ai_usage),
        meta={"closed_by": why, "wall_s_method": method, "cpu_s": "unknown: the process died before it was measured",
              "peak_rss": "unknown: the process died before it was measured", "pid": str(start.get("pid", "")),
              "ray_attempt": str(start.get("ray_attempt", ""))})


def open_attempts(ledger: Any, where: dict[str, Any]) -> list[dict[str, Any]]:
    """Start entries (bodies, in ledger order) matching `where` that have no usage record yet."""
    starts = [e.body for e in ledger.entries(kind=KIND, where=where)]
    if not starts:
        return []
    done = {ledger_key for ledger_key in (s["usage_key"] for s in starts) if ledger.find(ledger_key) is not None}
    return [s for s in starts if s["usage_key"] not in done]


def close(sink: Any, starts: list[dict[str, Any]], *, why: str, ended: dt.datetime | None = None,
          method: str = "from the attempt's start entry to when its death was detected (an upper bound)",
          ledger: Any = None) -> int:
    """Append the closing record (+ cost lines) of each dead attempt; returns how many were closed. With
    the `ledger`, provider tasks the attempt saw end are billed on its closing record."""
    from pipeline.metering.sink import emit_record
    from pipeline.metering.tasks import billed_by

    when = ended or _now()
    for start in starts:
        billed = billed_by(ledger, start["usage_key"]) if ledger is not None else []
        emit_record(sink, None, closing_record(start, why=why, ended=when, method=method, ai_usage=billed))
    return len(starts)


def close_before_retry(ledger: Any, sink: Any, *, job: str, stage: str, shot: str | None) -> int:
    """In a Ray retry: close this stage and shot's attempts that died with the previous worker; returns the
    highest attempt number used so far (the retry numbers its attempts after it)."""
    where = {"job": job, "stage": stage, "shot": shot}
    starts = [e.body for e in ledger.entries(kind=KIND, where=where)]
    dead = open_attempts(ledger, where)
    number, _ = ray_attempt()
    close(sink, dead, why=f"its worker died; Ray retried the task (Ray attempt {number})", ledger=ledger)
    return max((int(s["attempt"]) for s in starts), default=0)


def close_run(ledger: Any, sink: Any, run_id: str, *, why: str) -> int:
    """At the end of a run: close its attempts still without a record. An attempt followed by a later
    attempt of the same stage and shot is billed up to that one's start (tighter), others up to now."""
    starts = [e.body for e in ledger.entries(kind=KIND, where={"job": run_id})]
    dead = open_attempts(ledger, {"job": run_id})
    later: dict[tuple, list[dt.datetime]] = defaultdict(list)
    for s in starts:
        later[(s["stage"], s.get("shot"))].append(dt.datetime.fromisoformat(s["started"]))
    closed = 0
    for s in dead:
        began = dt.datetime.fromisoformat(s["started"])
        nxt = [t for t in later[(s["stage"], s.get("shot"))] if t > began]
        if nxt:
            closed += close(sink, [s], why=why, ended=min(nxt), ledger=ledger,
                            method="from the attempt's start entry to the start of the next attempt")
        else:
            closed += close(sink, [s], why=why, ledger=ledger)
    return closed


def close_orphans(ledger: Any, sink: Any, *, drama: str, episode: str, current_run: str) -> int:
    """Before a run: close attempts of earlier runs of this episode whose driver process is gone (killed
    driver). Billed from the start entry to that run's last ledger entry (its last sign of life: a lower
    bound). Attempts of drivers on other hosts, or still alive, are left alone."""
    dead = [s for s in open_attempts(ledger, {"drama": drama, "episode": episode})
            if s["job"] != current_run and driver_alive(s.get("driver") or {}) is False]
    if not dead:
        return 0
    last_seen: dict[str, dt.datetime] = {}
    for run in {s["job"] for s in dead}:
        times = [dt.datetime.fromisoformat(e.appended_at.replace("Z", "+00:00"))
                 for e in ledger.entries(where={"job": run})]
        last_seen[run] = max(times)
    for s in dead:
        close(sink, [s], why=f"the driver of run {s['job']} died (closed by run {current_run})",
              ended=max(last_seen[s["job"]], dt.datetime.fromisoformat(s["started"])), ledger=ledger,
              method="from the attempt's start entry to its run's last ledger entry (a lower bound)")
    return len(dead)
