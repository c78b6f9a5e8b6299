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


def emit_record(writer: Any, job: Any, record: UsageRecord) -> list[Any]:
    """Append synchronously through the single ledger writer (a Ray actor handle or a Ledger)."""
    items = ledger_items(record)
    if hasattr(writer, "append_many") and hasattr(writer.append_many, "remote"):
        import ray

        return ray.get(writer.append_many.remote(items))
    return writer.append_many(items)


def append_items(sink: Any, items: list[tuple[str, dict, str]]) -> list[Any]:
    """Append through the ledger writer actor (blocking) or straight to a Ledger."""
    if hasattr(sink.append_many, "remote"):
        import ray

        return ray.get(sink.append_many.remote(items))
    return sink.append_many(items)
