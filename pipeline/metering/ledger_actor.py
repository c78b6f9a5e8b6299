"""The single ledger writer of a Ray cluster: a named actor that owns one Ledger and serialises its appends."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ray

from pipeline.metering.ledger import Checkpoint, Entry, Ledger

DEFAULT_WRITER_NAME = "microdrama-ledger"


MAX_RESTARTS = 20  # a writer whose process dies is restarted, but never for ever (a ledger it cannot open)


@ray.remote(num_cpus=0, max_restarts=MAX_RESTARTS, max_task_retries=-1, max_concurrency=1)
class LedgerWriter:
    """Owns one Ledger; Ray runs its methods one at a time. A retried call after a crash cannot bill twice:
    the idempotency key returns the entry that was already committed. Restarts are bounded (MAX_RESTARTS),
    and the driver opens the ledger itself before starting a writer (`episode.check_ledger`), so a URL the
    writer could never open is refused up front instead of restarting it in a loop."""

    def __init__(self, url: str, key_file: str | None = None) -> None:
        self._url = url
        self._ledger = Ledger.open(url, key_file)

    def serves(self, url: str) -> bool:
        return url == self._url

    def append(self, kind: str, body: Mapping[str, Any], idempotency_key: str) -> Entry:
        return self._ledger.append(kind, body, idempotency_key)

    def append_many(self, items: Sequence[tuple[str, Mapping[str, Any], str]], *,
                    heartbeats: Sequence[tuple[str, str, float]] = (),
                    unless_present: str | None = None) -> list[Entry]:
        return self._ledger.append_many(items, heartbeats=heartbeats, unless_present=unless_present)

    def heartbeat(self, usage_key: str, at: str) -> bool:
        """A running attempt's heartbeat (its worker's clock): moves its liveness row forward, no log entry."""
        return self._ledger.heartbeat(usage_key, at)

    def checkpoint(self) -> Checkpoint:
        return self._ledger.checkpoint()

    def reserve(self, body: Mapping[str, Any], key: str, limit: Any) -> dict[str, Any]:
        """Check-and-append a budget reservation; atomic because this actor runs one call at a time."""
        from pipeline.metering.tasks import reserve

        return reserve(self._ledger, dict(body), key, limit)

    def size(self) -> int:
        return self._ledger.size()

    def root_hash(self, size: int | None = None) -> str:
        return self._ledger.root_hash(size)

    def __repr__(self) -> str:
        return f"LedgerWriter({self._ledger.url!r})"


def get_or_create_writer(url: str, name: str = DEFAULT_WRITER_NAME, *, namespace: str | None = None,
                         detached: bool = False, key_file: str | Path | None = None) -> ray.actor.ActorHandle:
    """The cluster's one writer for `url`: found by name if it already runs, else started. A writer of the
    same name serving another ledger is an error (two writers on one name would interleave ledgers)."""
    options: dict[str, Any] = {"name": name, "get_if_exists": True}
    if namespace is not None:
        options["namespace"] = namespace
    if detached:
        options["lifetime"] = "detached"
    handle = LedgerWriter.options(**options).remote(url, str(key_file) if key_file else None)
    if not ray.get(handle.serves.remote(url)):
        raise ValueError(f"a ledger writer named {name!r} already serves another ledger; pass another name "
                         "or the same URL")
    return handle
