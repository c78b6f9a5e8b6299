"""Cost lines: usage priced in exact Decimal CNY (OpenCost-style compute, AI tools, node idle time)."""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Context, Decimal, localcontext
from typing import Iterable, Literal

from pydantic import BaseModel, ConfigDict

from pipeline.metering.prices import Price, PriceBook, PriceError, money
from pipeline.money import to_fen
from pipeline.metering.usage import UsageRecord

__all__ = ["CostLine", "bill", "cost_lines", "idle_lines", "money", "round_fen", "summarise"]

_CTX = Context(prec=50)  # headroom: only divisions (by per or by 3600) are ever cut, at 50 digits
_SECONDS_PER_HOUR = Decimal(3600)


def round_fen(x: Decimal) -> Decimal:
    """Round a final amount half-up to the fen (0.01 CNY); call only at the end."""
    return to_fen(money(x))


def _hours(seconds: Decimal) -> Decimal:
    return _CTX.divide(seconds, _SECONDS_PER_HOUR)


def _amount(quantity: Decimal, rate: Decimal, per: int, seconds: Decimal | None) -> Decimal:
    """quantity × rate / per; for hourly items from seconds × rate / (3600 × per): one division."""
    if seconds is None:
        return _CTX.divide(_CTX.multiply(quantity, rate), Decimal(per))
    return _CTX.divide(_CTX.multiply(seconds, rate), _CTX.multiply(_SECONDS_PER_HOUR, Decimal(per)))


class CostLine(BaseModel):
    """One priced quantity: amount = quantity × rate / per (CNY, unrounded; `amount_fen` is the view)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["compute", "ai_tool", "idle"]
    item: str  # price-table item, e.g. "gpu-h100", "cpu-vcpu", "deepseek-chat:input"
    quantity: Decimal  # in `unit`: gpu-hour, vcpu-hour, token, second, ...
    unit: str
    rate: Decimal  # CNY per `per` units, as published
    per: int = 1
    amount: Decimal  # CNY, unrounded
    list_value: Decimal  # quantity at the list rate: equals amount unless the tool is free/discounted
    currency: str = "CNY"
    price_table: str
    source: str
    usage_key: str  # the usage record's idempotency key (or idle/<node>/<start>)
    job: str = ""
    drama: str = ""
    episode: str = ""
    stage: str = ""
    shot: str | None = None
    node: str = ""
    basis: str = ""  # how the quantity was reached, e.g. "allocated 2 vCPU × 12.5 s"

    @property
    def amount_fen(self) -> Decimal:
        """The amount rounded half-up to the fen, for display; sums use `amount`. (A property, not a
        field, so that a dumped line validates back unchanged.)"""
        return round_fen(self.amount)


def _line(kind: str, price: Price, quantity: Decimal, record: UsageRecord | None,
          basis: str, seconds: Decimal | None = None, **where: str | None) -> CostLine:
    """One line; `seconds` (unit-seconds behind an hourly quantity) keeps the amount to one division."""
    ids = {} if record is None else dict(
        usage_key=record.idempotency_key, job=record.job, drama=record.drama,
        episode=record.episode, stage=record.stage, shot=record.shot, node=record.node)
    ids.update({k: v for k, v in where.items() if v is not None})
    return CostLine(kind=kind, item=price.item, quantity=quantity, unit=price.unit,
                    rate=price.price, per=price.per,
                    amount=_amount(quantity, price.price, price.per, seconds),
                    list_value=_amount(quantity, price.list_value, price.per, seconds),
                    currency=price.currency, price_table=price.table_id, source=price.source,
                    basis=basis, **ids)


def _parse_time(iso: str, what: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise PriceError(f"{what} {iso!r} has no timezone; usage times are ISO-8601 UTC")
    return t


def _expect_unit(price: Price, unit: str, what: str) -> None:
    if price.unit != unit:
        raise PriceError(f"{what}: item {price.item!r} in table {price.table_id} is priced per "
                         f"{price.unit}, but the usage is in {unit}")


def _gpu_line(record: UsageRecord, book: PriceBook, at: dt.datetime) -> CostLine:
    price = book.price_for(book.gpu_item(record.gpu_model), at)
    _expect_unit(price, "gpu-hour", record.idempotency_key)
    gpus, wall = money(record.gpus), money(record.wall_s)
    basis = f"allocated {gpus} GPU × {wall} s ({record.gpu_model})"
    seconds = _CTX.multiply(gpus, wall)
    return _line("compute", price, _hours(seconds), record, basis, seconds)


def _cpu_line(record: UsageRecord, book: PriceBook, at: dt.datetime, item: str) -> CostLine:
    price = book.price_for(item, at)
    _expect_unit(price, "vcpu-hour", record.idempotency_key)
    cpus, wall, used = money(record.cpus), money(record.wall_s), money(record.cpu_s)
    allocated = _CTX.multiply(cpus, wall)
    if used > allocated:
        basis = f"measured {used} CPU-s > allocated {cpus} vCPU × {wall} s (max(request, usage))"
    else:
        basis = f"allocated {cpus} vCPU × {wall} s (>= measured {used} CPU-s)"
    seconds = max(allocated, used)
    return _line("compute", price, _hours(seconds), record, basis, seconds)


def _mem_line(record: UsageRecord, book: PriceBook, at: dt.datetime, item: str) -> CostLine:
    price = book.price_for(item, at)
    _expect_unit(price, "gib-hour", record.idempotency_key)
    gib = _CTX.divide(Decimal(record.peak_rss), Decimal(2**30))
    wall = money(record.wall_s)
    basis = f"peak RSS {record.peak_rss} B × {wall} s"
    seconds = _CTX.multiply(gib, wall)
    return _line("compute", price, _hours(seconds), record, basis, seconds)


def cost_lines(record: UsageRecord, book: PriceBook, *, node_rate_item: str = "cpu-vcpu",
               mem_item: str | None = None) -> list[CostLine]:
    """Price one usage record at the prices in force when it started.

    Compute follows OpenCost's allocation rule: cost = allocated amount × hours × hourly rate, where
    the CPU amount is max(allocated vCPUs × wall time, measured cpu_s) — OpenCost's
    max(request, usage) — and GPUs are billed as allocated (gpus × wall time: a GPU held is a GPU
    paid for). Idle time of a rented node is its own line (`idle_lines`), never spread over stages.
    Amounts stay unrounded (Decimal; the one division, by 3600 s/h × the unit's `per`, is carried
    to 50 significant digits) until `round_fen`.

    Compute: GPU-hours at the rate for `record.gpu_model` (when gpus > 0); CPU-hours at
    `node_rate_item` (when cpus > 0 or cpu_s > 0); memory GiB-hours at `mem_item` only when given
    (most node rates already include memory). AI tools: quantity × unit price; a free tool is a line
    of amount 0 carrying its list value. Failed and cached records are priced like any other: they
    consumed what they consumed. Every attempt is priced; deduplicate with `bill`.
    """
    at = _parse_time(record.started, f"{record.idempotency_key}: started")
    lines = []
    if record.gpus > 0:
        lines.append(_gpu_line(record, book, at))
    if record.cpus > 0 or record.cpu_s > 0:
        lines.append(_cpu_line(record, book, at, node_rate_item))
    if mem_item is not None and record.peak_rss > 0:
        lines.append(_mem_line(record, book, at, mem_item))
    for use in record.ai_usage:
        price = book.price_for(use.tool, at)
        _expect_unit(price, use.unit, f"{record.idempotency_key}: {use.tool}")
        lines.append(_line("ai_tool", price, money(use.quantity), record,
                           f"{use.quantity} {use.unit} reported by {record.backend}"))
    return lines


def bill(records: Iterable[UsageRecord], book: PriceBook, **kwargs: str | None) -> list[CostLine]:
    """Cost lines for many records, each attempt once: a repeated idempotency key is billed once
    when the record is identical and is an error when it differs (two different 'same' attempts)."""
    seen: dict[str, UsageRecord] = {}
    lines: list[CostLine] = []
    for record in records:
        key = record.idempotency_key
        if not key:
            raise PriceError(f"usage record for {record.stage} has no idempotency_key")
        if key in seen:
            if seen[key] != record:
                raise PriceError(f"two different usage records share idempotency key {key!r}")
            continue
        seen[key] = record
        lines.extend(cost_lines(record, book, **kwargs))
    return lines


def idle_lines(node: str, gpu_model: str, gpus: float, rented_start: dt.datetime,
               rented_end: dt.datetime, allocated_gpu_hours: Decimal | float | str,
               book: PriceBook, *, job: str = "", drama: str = "",
               episode: str = "") -> list[CostLine]:
    """The idle GPU time of a rented node: gpus × rental hours − GPU-hours allocated to stages.

    Priced at the rate in force when the rental started. Returns [] when nothing was idle; raises
    when more GPU-hours were allocated than rented (the inputs disagree)."""
    if rented_end <= rented_start:
        raise PriceError(f"idle_lines({node}): rental ends {rented_end} before it starts {rented_start}")
    seconds = money((rented_end - rented_start).total_seconds())
    rented = _hours(_CTX.multiply(money(gpus), seconds))
    idle = _CTX.subtract(rented, money(allocated_gpu_hours))
    if idle < 0:
        raise PriceError(f"idle_lines({node}): {allocated_gpu_hours} GPU-hours allocated but only "
                         f"{rented} rented ({gpus} GPU × {seconds} s)")
    if idle == 0:
        return []
    price = book.price_for(book.gpu_item(gpu_model), rented_start)
    _expect_unit(price, "gpu-hour", f"idle {node}")
    basis = (f"rented {gpus} GPU × {seconds} s = {rented} GPU-h, "
             f"allocated {allocated_gpu_hours} GPU-h")
    return [_line("idle", price, idle, None, basis, usage_key=f"idle/{node}/{rented_start.isoformat()}",
                  job=job, drama=drama, episode=episode, stage="(idle)", node=node)]


def summarise(lines: Iterable[CostLine]) -> dict:
    """Totals overall, by stage, by kind and by stage × kind: each sum is kept unrounded and rounded
    to the fen only here, so rounded parts may differ from the rounded total by a fen."""
    total, listed = Decimal(0), Decimal(0)
    by_stage: dict[str, Decimal] = defaultdict(Decimal)
    by_kind: dict[str, Decimal] = defaultdict(Decimal)
    by_stage_kind: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    list_by_stage: dict[str, Decimal] = defaultdict(Decimal)
    n = 0
    with localcontext(_CTX):
        for line in lines:
            n += 1
            total += line.amount
            listed += line.list_value
            by_stage[line.stage] += line.amount
            list_by_stage[line.stage] += line.list_value
            by_kind[line.kind] += line.amount
            by_stage_kind[line.stage][line.kind] += line.amount
    return {
        "currency": "CNY",
        "lines": n,
        "total": round_fen(total),
        "list_value": round_fen(listed),
        "by_stage": {s: round_fen(a) for s, a in sorted(by_stage.items())},
        "list_value_by_stage": {s: round_fen(a) for s, a in sorted(list_by_stage.items())},
        "by_kind": {k: round_fen(a) for k, a in sorted(by_kind.items())},
        "by_stage_kind": {s: {k: round_fen(a) for k, a in sorted(d.items())}
                          for s, d in sorted(by_stage_kind.items())},
    }
