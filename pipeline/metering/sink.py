"""From a usage record to durable evidence: price it, then append record + cost lines to the ledger writer."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.metering.costs import cost_lines
from pipeline.metering.prices import PriceBook
from pipeline.metering.usage import UsageRecord

PRICES = Path(__file__).resolve().parents[2] / "configs" / "prices"


@lru_cache(maxsize=4)
def price_book(directory: str | None = None) -> PriceBook:
    return PriceBook.load(directory or os.environ.get("MICRODRAMA_PRICES", str(PRICES)))


def ledger_items(record: UsageRecord, book: PriceBook | None = None) -> list[tuple[str, dict, str]]:
    """(kind, body, idempotency key) for the record and each of its cost lines, ready for append_many."""
    book = book or price_book()
    items = [("usage", record.model_dump(mode="json"), record.idempotency_key)]
    for i, line in enumerate(cost_lines(record, book)):
        body = line.model_dump(mode="json")
        items.append(("cost", body, f"{record.idempotency_key}/cost/{i}"))
    return items


def emit_record(writer: Any, job: Any, record: UsageRecord, *, unless_present: str | None = None) -> list[Any]:
    """Append synchronously through the single ledger writer (a Ray actor handle or a Ledger). With
    `unless_present` (a closing record: its own usage key) nothing is appended if that key is stored."""
    items = ledger_items(record)
    if unless_present is not None:
        return append_items(writer, items, unless_present=unless_present)
    return append_items(writer, items)


def append_items(sink: Any, items: list[tuple[str, dict, str]], **options: Any) -> list[Any]:
    """Append through the ledger writer actor (blocking) or straight to a Ledger; `options` are
    Ledger.append_many's (heartbeats, unless_present)."""
    if hasattr(sink.append_many, "remote"):
        import ray

        return ray.get(sink.append_many.remote(items, **options))
    return sink.append_many(items, **options)


def heartbeat(sink: Any, usage_key: str, at: str, timeout_s: float | None = None) -> bool:
    """One heartbeat through the ledger writer actor (waiting at most `timeout_s`) or straight to a Ledger."""
    if hasattr(sink.heartbeat, "remote"):
        import ray

        return bool(ray.get(sink.heartbeat.remote(usage_key, at), timeout=timeout_s))
    return bool(sink.heartbeat(usage_key, at))
