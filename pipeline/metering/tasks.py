"""Hosted-provider tasks as ledger facts: submitted before polling, ended once, budget reserved before submit.

A paid provider task (a video clip, an image) is submitted once and polled until it ends. Three facts make
that safe with money when processes die:

- `provider_task` — appended right after the provider accepted the submission and before polling: the
  task id, the provider, the request digest (model, prompt, input digests, size, duration) and the planned
  units. A worker or driver that dies while polling leaves it open; the next attempt of the same shot (a
  Ray retry, or the next run of the episode) finds it by request digest and polls that task instead of
  paying for a new one.
- `provider_task_end` — one per task (key `task/<provider>/<task id>/end`): its final status and the
  usage the provider billed for it, with the usage key of the attempt that bills it. That attempt's usage
  record carries the usage; if the attempt died before writing its record, the closing record built by
  metering/attempts.py carries it instead — billed exactly once either way.
- `budget_reservation` — before submitting, the shot's planned cost is reserved through the single ledger
  writer, which checks spent + outstanding reservations + this one against `budget.max_cny` atomically, so
  concurrent shots cannot overshoot the budget together. A reservation is outstanding until its attempt's
  usage record is in the ledger (then the record's cost lines count instead).
"""
from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pipeline.money import exact_sum

TASK, END, RESERVATION = "provider_task", "provider_task_end", "budget_reservation"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def end_key(provider: str, task_id: str) -> str:
    return f"task/{provider}/{task_id}/end"


@dataclass(frozen=True)
class Prior:
    """A task an earlier attempt submitted for the same request: still open (poll it), or ended."""

    task: dict[str, Any]
    end: dict[str, Any] | None

    @property
    def task_id(self) -> str:
        return str(self.task["task_id"])


class BudgetRefused(RuntimeError):
    """Reserving this shot's planned cost would exceed budget.max_cny: the shot is not submitted."""

    retryable = False


def reserve(ledger: Any, body: dict[str, Any], key: str, limit: Decimal | None) -> dict[str, Any]:
    """Atomically (call it where appends are serialised: the ledger writer) check and append a reservation.
    Returns {"ok": bool, "spent", "reserved", "amount"} as strings."""
    run = body["job"]
    amount = Decimal(body["amount"])
    existing = ledger.find(key)
    spent = exact_sum(e.body["amount"] for e in ledger.entries(kind="cost", where={"job": run}))
    held = [e.body for e in ledger.entries(kind=RESERVATION, where={"job": run})]
    reserved = exact_sum(Decimal(r["amount"]) for r in held if ledger.find(r["usage_key"]) is None)
    facts = {"spent": str(spent), "reserved": str(reserved), "amount": str(amount)}
    if existing is not None:  # this very reservation was made already (a retried call)
        return {"ok": True, **facts}
    if limit is not None and spent + reserved + amount > limit:
        return {"ok": False, **facts}
    ledger.append_many([(RESERVATION, body, key)])
    return {"ok": True, **facts}


def billed_by(ledger: Any, usage_key: str) -> list[dict[str, Any]]:
    """The ai_usage items of the task ends this attempt was to bill (for its closing record)."""
    items: list[dict[str, Any]] = []
    for e in ledger.entries(kind=END, where={"billed_by": usage_key}):
        items += list(e.body.get("ai_usage") or [])
    return items


@dataclass
class Journal:
    """The facts of one stage attempt, written through the ledger writer (`sink`) and read from `reader`
    (a Ledger, or a callable opening one)."""

    sink: Any
    reader: Any
    ids: dict[str, Any]  # job (run id), drama, episode, stage, shot, attempt, usage_key
    limit: Decimal | None = None
    notes: list[dict[str, Any]] = field(default_factory=list)  # planned vs billed differences, for params

    def _append(self, items: list[tuple[str, dict, str]]) -> None:
        from pipeline.metering.sink import append_items

        append_items(self.sink, items)

    @contextlib.contextmanager
    def _ledger(self) -> Iterator[Any]:
        if callable(self.reader):
            ledger = self.reader()
            try:
                yield ledger
            finally:
                ledger.close()
        else:
            yield self.reader

    def prior(self, provider: str, request: str) -> Prior | None:
        """The latest task submitted for this request (same episode, stage and shot) and its end, if any."""
        where = {k: self.ids[k] for k in ("drama", "episode", "stage", "shot")} | {"provider": provider,
                                                                                   "request": request}
        with self._ledger() as ledger:
            found = [e.body for e in ledger.entries(kind=TASK, where=where)]
            if not found:
                return None
            task = found[-1]
            end = ledger.find(end_key(provider, str(task["task_id"])))
            return Prior(task, end.body if end is not None else None)

    def submitted(self, provider: str, model: str, task_id: str, request: str, planned: list[dict]) -> None:
        body = {**self.ids, "provider": provider, "model": model, "task_id": task_id, "request": request,
                "planned": planned, "submitted": _now()}
        self._append([(TASK, body, f"{self.ids['usage_key']}/task/{provider}/{task_id}")])

    def ended(self, provider: str, task_id: str, status: str, ai_usage: list[dict], result: dict) -> None:
        """The task's one end fact; the usage is billed by this attempt (its usage record or closing one)."""
        body = {**self.ids, "provider": provider, "task_id": task_id, "status": status,
                "ai_usage": ai_usage, "billed_by": self.ids["usage_key"], "result": result, "ended": _now()}
        self._append([(END, body, end_key(provider, task_id))])

    def reserve(self, amount: Decimal, request: str, what: str) -> None:
        """Reserve the planned cost of one submission; BudgetRefused when the budget cannot hold it."""
        body = {**self.ids, "request": request, "amount": str(amount), "what": what, "at": _now()}
        key = f"{self.ids['usage_key']}/reserve/{request}"
        if hasattr(getattr(self.sink, "reserve", None), "remote"):
            import ray

            answer = ray.get(self.sink.reserve.remote(body, key, self.limit))
        else:
            answer = reserve(self.sink, body, key, self.limit)
        if not answer["ok"]:
            raise BudgetRefused(
                f"budget.max_cny: shot {self.ids['shot']} not submitted: {what} is planned at {amount} CNY; "
                f"spent {answer['spent']} + reserved by shots under way {answer['reserved']} + {amount} > "
                f"{self.limit} CNY. Raise budget.max_cny; finished shots are cached and a re-run resumes")

    def note(self, **fact: Any) -> None:
        self.notes.append(fact)


class NoJournal:
    """Outside an orchestrated attempt (a backend called directly): nothing is recorded, nothing resumed."""

    ids: dict[str, Any] = {}
    limit = None

    def __init__(self) -> None:
        self.notes: list[dict[str, Any]] = []

    def prior(self, provider: str, request: str) -> Prior | None:
        return None

    def submitted(self, *a: Any, **k: Any) -> None:
        pass

    def ended(self, *a: Any, **k: Any) -> None:
        pass

    def reserve(self, *a: Any, **k: Any) -> None:
        pass

    def note(self, **fact: Any) -> None:
        self.notes.append(fact)


_CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("microdrama_task_journal", default=None)


def current() -> Journal | NoJournal:
    return _CURRENT.get() or NoJournal()


@contextlib.contextmanager
def bound(journal: Any) -> Iterator[Any]:
    """Make `journal` the current one for the backend calls inside (one stage attempt)."""
    token = _CURRENT.set(journal)
    try:
        yield journal
    finally:
        _CURRENT.reset(token)
