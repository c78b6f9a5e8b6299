"""One paid provider task from request to verified result, safe with money when processes die.

`run_task` digests the request; polls an open task an earlier attempt left for the same request (in the
ledger, pipeline/metering/tasks.py) instead of submitting again; otherwise reserves the planned cost
against the budget, submits, and records the task id before the first poll. It polls to the end,
downloads the result at once and returns a `Finished` the backend checks: `accept()` or `reject(reason)`
writes the task's single end fact with the usage the provider reported, which the attempt then bills.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from models.providers import Download, Limits, PollTimeout, ProviderError, WrongResult, download
from pipeline.metering import tasks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Polled:
    """One poll, in the provider-neutral terms the flow needs."""

    outcome: str  # running | done | failed
    url: str = ""
    usage: list[dict[str, Any]] = field(default_factory=list)  # what the provider bills, from its answer
    status: str = ""  # the provider's own word
    error: ProviderError | None = None


def request_digest(provider: str, request: dict[str, Any]) -> str:
    doc = json.dumps({"provider": provider, **request}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()[:32]


def file_digest(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def compare(planned: list[dict[str, Any]], billed: list[dict[str, Any]]) -> list[str]:
    """Human lines for every item whose billed quantity differs from the planned one."""
    p = {(i["tool"], i["unit"]): float(i["quantity"]) for i in planned}
    b = {(i["tool"], i["unit"]): float(i["quantity"]) for i in billed}
    out = []
    for key in sorted(set(p) | set(b)):
        if abs(p.get(key, 0.0) - b.get(key, 0.0)) > 1e-9:
            out.append(f"{key[0]}: planned {p.get(key, 0):g} {key[1]}, billed {b.get(key, 0):g}")
    return out


@dataclass
class Finished:
    """A task that ended with a downloaded result, not yet accepted or rejected."""

    provider: str
    task_id: str
    request: str
    download: Download
    usage: list[dict[str, Any]]  # billed by this attempt ([] when an earlier attempt billed it)
    planned: list[dict[str, Any]]
    resumed: str | None  # None: submitted now; "open": polled a task left running; "ended": re-fetched
    journal: Any
    status: str = ""

    def facts(self) -> dict[str, Any]:
        diff = compare(self.planned, self.usage) if self.resumed != "ended" else []
        if diff:
            log.warning("%s task %s billed other than planned: %s", self.provider, self.task_id, "; ".join(diff))
        return {"provider": self.provider, "task_id": self.task_id, "request": self.request,
                "result_sha256": self.download.sha256, "result_bytes": self.download.bytes,
                "result_url": self.download.url, "resumed": self.resumed or "no",
                "planned": json.dumps(self.planned, sort_keys=True), "billed": json.dumps(self.usage, sort_keys=True),
                "billed_vs_planned": "; ".join(diff) or "as planned"}

    def accept(self, **result: Any) -> dict[str, Any]:
        facts = self.facts() | result
        if self.resumed != "ended":
            self.journal.ended(self.provider, self.task_id, "succeeded", self.usage, facts)
        return facts

    def reject(self, reason: str, **result: Any) -> WrongResult:
        """End the task as rejected (billed as the provider bills it) and return the error to raise."""
        facts = self.facts() | result | {"rejected": reason}
        if self.resumed != "ended":
            self.journal.ended(self.provider, self.task_id, "rejected", self.usage, facts)
        return WrongResult(f"{self.provider} task {self.task_id}: result rejected: {reason} (billed as the provider "
                           f"bills it: {json.dumps(self.usage)})", ai_usage=tuple(self.usage), task_id=self.task_id)


def run_task(*, provider: str, model: str, request: dict[str, Any], submit: Callable[[], str],
             fetch: Callable[[str], Polled], planned: list[dict[str, Any]], limits: Limits, dest: Path,
             what: str, resumable: bool = True) -> Finished:
    """`resumable=False` for synchronous calls (the answer is the result, there is no task to poll later)."""
    journal = tasks.current()
    digest = request_digest(provider, request)
    prior = journal.prior(provider, digest) if resumable else None
    resumed: str | None = None
    if prior is not None and prior.end is None:
        task_id, resumed = prior.task_id, "open"
    elif prior is not None and prior.end.get("status") == "succeeded":
        # billed by the attempt that saw it end: fetch it again for free while its result URL lives
        again = _refetch(provider, prior.task_id, limits, fetch, dest)
        if again is not None:
            return Finished(provider, prior.task_id, digest, again, [], planned, "ended", journal, "succeeded")
        log.warning("%s task %s: its result is gone (URL expired); submitting the request again",
                    provider, prior.task_id)
    if resumed is None:
        if journal.limit is not None:
            from pipeline.finance.plan import price_items

            journal.reserve(price_items(planned), digest, what)
        task_id = submit()
        journal.submitted(provider, model, task_id, digest, planned)
    polled = _poll(provider, task_id, limits, fetch)
    billed = list(polled.usage)
    if polled.outcome == "failed":
        journal.ended(provider, task_id, polled.status, billed, {"error": str(polled.error)})
        err = polled.error or ProviderError(f"{provider} task {task_id} failed", task_id=task_id)
        err.ai_usage = tuple(billed)
        raise err
    if not polled.usage:
        journal.ended(provider, task_id, "unmetered", [], {})
        raise ProviderError(f"{provider} task {task_id}: the answer reports no usage, so the call cannot be "
                            f"metered; refusing the result", task_id=task_id)
    try:
        got = download(polled.url, dest)
    except ProviderError as exc:
        journal.ended(provider, task_id, "download-failed", billed, {"error": str(exc)})
        raise ProviderError(str(exc), ai_usage=tuple(billed), task_id=task_id) from None
    return Finished(provider, task_id, digest, got, billed, planned, resumed, journal, polled.status)


def _refetch(provider: str, task_id: str, limits: Limits, fetch: Callable[[str], Polled],
             dest: Path) -> Download | None:
    """The result of a task that ended well earlier, or None when the provider no longer has it."""
    try:
        polled = _poll(provider, task_id, limits, fetch)
        return download(polled.url, dest) if polled.outcome == "done" and polled.url else None
    except ProviderError:
        return None


def _poll(provider: str, task_id: str, limits: Limits, fetch: Callable[[str], Polled]) -> Polled:
    start = time.monotonic()
    while True:
        polled = fetch(task_id)
        if polled.outcome in ("done", "failed"):
            return polled
        if time.monotonic() - start > limits.timeout_s:
            raise PollTimeout(f"{provider} task {task_id} still {polled.status} after {limits.timeout_s:.0f} s; "
                              f"it stays recorded in the ledger and the next run polls it instead of paying again",
                              task_id=task_id)
        limits.sleep(limits.poll_s)
