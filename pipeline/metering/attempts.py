"""Attempts that die with their process are metered too: a start entry before the work, heartbeats during it,
a usage record after.

A killed worker cannot write its own usage record. So every stage attempt first appends an `attempt`
entry (idempotency key `<usage key>/start`: who, where, when it started on its worker) together with its
liveness row in `attempt_heartbeats`, and only then works. While it works, a thread of the worker sends a
heartbeat every `heartbeat_s` seconds (default 2, $MICRODRAMA_HEARTBEAT_S), moving that row forward in place:
heartbeats are liveness, not evidence, so they stay out of the Merkle log. An attempt without a usage record
under its usage key is running, or dead; a dead one is closed with a failed usage record billed from its start
on the worker to its LAST HEARTBEAT — never the time it queued before, never the time it took to notice its
death; at most one heartbeat interval short of the work it really did. Who closes it, whoever is first:

- the Ray retry of the same task (Ray re-runs a task whose worker died): at its start it closes the
  dead attempts of its stage and shot, then numbers its own attempts after them;
- the driver at the end of a run (retries exhausted, actor killed, run failed, stopped or interrupted);
- any later run, batch or `microdrama ledger close-dead`, on any host: the ledger knows which attempts are
  open, and one whose last heartbeat is older than `dead_after` intervals (default 12,
  $MICRODRAMA_HEARTBEAT_DEAD_AFTER) is dead (its worker, its driver or its node is gone). On the driver's own
  host a driver process that is provably gone makes its attempts dead at once.

The closing record is appended under the attempt's own usage key and only if that key is still absent (one
transaction), so if the attempt did manage to write its record the ledger keeps that one, and two closers
racing on different hosts bill it once: exactly one usage record per attempt that started, never two.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from typing import Any

from pipeline.metering.meter import idempotency_key
from pipeline.metering.usage import AIUsage, UsageRecord

KIND = "attempt"
_HOST = socket.gethostname()
HEARTBEAT_S = 2.0  # seconds between heartbeats of a running attempt
DEAD_AFTER = 12  # heartbeat intervals of silence after which an open attempt is dead
log = logging.getLogger(__name__)


def heartbeat_interval() -> float:
    """$MICRODRAMA_HEARTBEAT_S (0.05..60 s), else HEARTBEAT_S: the driver's choice, carried to every attempt."""
    return _env_float("MICRODRAMA_HEARTBEAT_S", HEARTBEAT_S, 0.05, 60.0)


def dead_after() -> float:
    """$MICRODRAMA_HEARTBEAT_DEAD_AFTER (2..1000 intervals), else DEAD_AFTER."""
    return _env_float("MICRODRAMA_HEARTBEAT_DEAD_AFTER", float(DEAD_AFTER), 2.0, 1000.0)


def _env_float(name: str, default: float, lo: float, hi: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"${name}={raw!r}: not a number; unset it or give e.g. {default:g}") from None
    if not lo <= value <= hi:
        raise ValueError(f"${name}={raw!r}: must be between {lo:g} and {hi:g}")
    return value


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


def _gpu_model(gpus: float) -> str | None:
    """The NVML name of the first GPU this attempt was given (what the meter would record), or None."""
    if gpus <= 0:
        return None
    from pipeline.metering import meter

    alloc = meter._ray_allocation()
    devices = alloc["devices"] if alloc and alloc.get("devices") else meter._visible_devices(gpus)
    try:
        return meter._Energy(devices).model
    except Exception:  # noqa: BLE001 - no NVML here: the closing record says the model is unknown
        return None


def start_body(*, job: str, drama: str, episode: str, stage: str, shot: str | None, backend: str,
               attempt: int, gpus: float, cpus: float, driver: dict[str, Any],
               heartbeat_s: float | None = None) -> dict[str, Any]:
    """The `attempt` entry of one stage attempt, appended on its worker before any work: `started` is when
    the worker took it up (not when the driver queued it)."""
    number, ids = ray_attempt()
    assigned = _assigned()
    if assigned is not None:  # what Ray gave the task or actor, as the meter records it
        gpus, cpus = assigned
    body = {"job": job, "drama": drama, "episode": episode, "stage": stage, "shot": shot, "backend": backend,
            "attempt": attempt, "usage_key": idempotency_key(job, stage, shot, attempt),
            "started": _now().isoformat(timespec="microseconds"), "node": _HOST, "pid": os.getpid(),
            "ray_attempt": number, **ids, "gpus": gpus, "cpus": cpus, "driver": driver,
            "heartbeat_s": float(heartbeat_s if heartbeat_s is not None else heartbeat_interval())}
    model = _gpu_model(float(gpus or 0.0))
    if model:
        body["gpu_model"] = model
    return body


def begin(sink: Any, body: dict[str, Any]) -> None:
    """Append the start entry and its liveness row in one transaction (before any work)."""
    from pipeline.metering.sink import append_items

    append_items(sink, [(KIND, body, start_key(body["usage_key"]))],
                 heartbeats=[(body["usage_key"], body["started"], body["heartbeat_s"])])


class Heartbeat:
    """A daemon thread that tells the ledger writer, every `interval_s`, that this attempt is still at work
    (the worker's clock). Dies with the worker: that silence is what marks the attempt dead."""

    def __init__(self, sink: Any, usage_key: str, interval_s: float) -> None:
        self.sink, self.usage_key, self.interval_s = sink, usage_key, float(interval_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat {usage_key}", daemon=True)
        self.sent = 0

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=max(1.0, 2 * self.interval_s))

    def _run(self) -> None:
        """Beats on a fixed cadence (start + k × interval), each stamped when sent: the last beat that reached
        the writer is at most one interval (plus the send) before the worker died."""
        import time

        from pipeline.metering.sink import heartbeat

        t0 = time.monotonic()
        k = 1
        while not self._stop.wait(max(0.0, t0 + k * self.interval_s - time.monotonic())):
            k = max(k + 1, int((time.monotonic() - t0) / self.interval_s) + 1)  # a late wake skips ticks
            try:
                heartbeat(self.sink, self.usage_key, _now().isoformat(timespec="microseconds"),
                          timeout_s=max(5.0, 4 * self.interval_s))
                self.sent += 1
            except Exception as e:  # noqa: BLE001 - a writer restarting: the next beat carries a later time
                log.debug("heartbeat of %s not delivered: %s", self.usage_key, e)


def closing_record(start: dict[str, Any], *, why: str, ended: dt.datetime, method: str,
                   ai_usage: list[dict[str, Any]] | tuple = ()) -> UsageRecord:
    """The failed usage record of an attempt whose process died: wall time from its start to `ended` (its
    last heartbeat), and the provider usage of the tasks it saw end (metering/tasks.py), which no other
    record bills."""
    started = dt.datetime.fromisoformat(start["started"])
    wall = max(0.0, (ended - started).total_seconds())
    gpus, cpus = float(start.get("gpus") or 0.0), float(start.get("cpus") or 0.0)
    return UsageRecord(
        job=start["job"], drama=start["drama"], episode=start["episode"], stage=start["stage"],
        shot=start.get("shot"), backend=start["backend"], attempt=int(start["attempt"]), status="failed",
        error=f"WorkerDied: {why}", node=start.get("node", ""), gpus=gpus, cpus=cpus, started=start["started"],
        ended=max(ended, started).isoformat(timespec="microseconds"), wall_s=round(wall, 6), cpu_s=0.0,
        gpu_s=round(gpus * wall, 6), gpu_model=start.get("gpu_model"), gpu_energy_j=None,
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


def last_alive(ledger: Any, start: dict[str, Any], detected: dt.datetime) -> tuple[dt.datetime, str]:
    """(when the attempt was last known at work, how that was measured): its last heartbeat; for an attempt
    started without a liveness row (a ledger written before heartbeats), when its death was detected."""
    beat = ledger.heartbeat_of(start["usage_key"]) if hasattr(ledger, "heartbeat_of") else None
    if beat is None:
        return detected, "from the attempt's start entry to when its death was detected (an upper bound)"
    began = dt.datetime.fromisoformat(start["started"])
    last = max(began, dt.datetime.fromisoformat(beat.beat))
    return last, (f"from the attempt's start on its worker to its last heartbeat ({beat.beats} heartbeat(s), "
                  f"every {beat.interval_s:g} s): at most one interval short of the work it did; "
                  "no queue time, no detection delay")


def close(sink: Any, starts: list[dict[str, Any]], *, why: str, ended: dt.datetime | None = None,
          ledger: Any = None) -> int:
    """Append the closing record (+ cost lines) of each dead attempt, billed to its last heartbeat (with the
    `ledger`), and only if no record of it is stored yet; returns how many this call closed. With the
    `ledger`, provider tasks the attempt saw end are billed on its closing record."""
    from pipeline.metering.sink import emit_record
    from pipeline.metering.tasks import billed_by

    detected = ended or _now()
    closed = 0
    for start in starts:
        if ledger is not None:
            when, method = last_alive(ledger, start, detected)
        else:
            when, method = detected, "from the attempt's start entry to when its death was detected (an upper bound)"
        billed = billed_by(ledger, start["usage_key"]) if ledger is not None else []
        record = closing_record(start, why=why, ended=when, method=method, ai_usage=billed)
        closed += bool(emit_record(sink, None, record, unless_present=start["usage_key"]))
    return closed


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
    """At the end of a run (its executions finished, cancelled or killed): close its attempts still without a
    record, each billed to its last heartbeat."""
    return close(sink, open_attempts(ledger, {"job": run_id}), why=why, ledger=ledger)


def dead_attempts(ledger: Any, *, now: dt.datetime | None = None, after: float | None = None,
                  skip_run: str | None = None) -> list[tuple[dict[str, Any], str]]:
    """(start body, why) of every open attempt in the ledger that is dead: silent for more than `after`
    heartbeat intervals, or started by a driver on this host whose process is gone. Any host can tell."""
    now = now or _now()
    after = dead_after() if after is None else after
    out = []
    for beat in ledger.open_heartbeats():
        entry = ledger.find(start_key(beat.usage_key))
        if entry is None:
            continue
        start = entry.body
        if start.get("job") == skip_run:
            continue
        silent = (now - dt.datetime.fromisoformat(beat.beat)).total_seconds()
        if silent > after * beat.interval_s:
            why = (f"no heartbeat for {silent:.1f} s (> {after:g} × {beat.interval_s:g} s): its worker, node or "
                   f"driver is gone (run {start['job']})")
        elif driver_alive(start.get("driver") or {}) is False:
            why = f"the driver of run {start['job']} died"
        else:
            continue
        out.append((start, why))
    return out


def close_dead(ledger: Any, sink: Any, *, closer: str, after: float | None = None,
               skip_run: str | None = None, now: dt.datetime | None = None) -> int:
    """Close every dead attempt in the ledger (see dead_attempts), each billed once to its last heartbeat;
    returns how many this call closed (a concurrent closer elsewhere may have closed some first)."""
    closed = 0
    for start, why in dead_attempts(ledger, now=now, after=after, skip_run=skip_run):
        closed += close(sink, [start], why=f"{why}; closed by {closer}", ledger=ledger)
    return closed


def close_orphans(ledger: Any, sink: Any, *, drama: str, episode: str, current_run: str) -> int:
    """Before a run: close the ledger's dead attempts (any episode, any host; see close_dead)."""
    return close_dead(ledger, sink, closer=f"run {current_run} of {drama}/{episode} on {_HOST}",
                      skip_run=current_run)
