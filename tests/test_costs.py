"""Cost lines: exact Decimal CNY from usage, free tools with list value, idle time, totals."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal, localcontext
from pathlib import Path

import pytest

from pipeline.metering.costs import bill, cost_lines, idle_lines, round_fen, summarise
from pipeline.metering.prices import PriceBook, PriceError
from pipeline.metering.usage import AIUsage, UsageRecord

ROOT = Path(__file__).resolve().parents[1]
UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook.load(ROOT / "configs" / "prices")


def _record(**kw) -> UsageRecord:
    base = dict(job="job-1", drama="d", episode="ep01", stage="video", shot="s01",
                backend="wan2.1-i2v-480p", started="2026-03-02T10:00:00+00:00",
                ended="2026-03-02T10:30:00+00:00", wall_s=1800.0, cpu_s=900.0, cpus=1.0,
                idempotency_key="job-1/video/s01/attempt-1")
    base.update(kw)
    return UsageRecord(**base)


def test_gpu_and_cpu_lines_are_exact(book):
    r = _record(gpus=2.0, gpu_model="NVIDIA H100 80GB HBM3", gpu_s=3600.0)
    gpu, cpu = cost_lines(r, book)
    assert (gpu.item, gpu.quantity, gpu.rate, gpu.amount) == ("gpu-h100", 1, Decimal("12.00"), 12)
    assert gpu.amount_fen == Decimal("12.00") and gpu.price_table == "compute-2026"
    assert gpu.usage_key == "job-1/video/s01/attempt-1" and gpu.kind == "compute"
    assert (cpu.item, cpu.quantity, cpu.amount) == ("cpu-vcpu", Decimal("0.5"), Decimal("0.06"))
    assert "allocated 1.0 vCPU" in cpu.basis


def test_cpu_bills_max_of_allocation_and_usage(book):
    (cpu,) = cost_lines(_record(cpus=1.0, wall_s=1800.0, cpu_s=5400.0), book)  # 3 cores busy
    assert cpu.quantity == Decimal("1.5") and cpu.amount == Decimal("0.18")
    assert cpu.basis.startswith("measured 5400.0 CPU-s")


def test_older_table_prices_older_usage(book):
    r = _record(gpus=1.0, gpu_model="NVIDIA H100", started="2025-12-31T15:59:00+00:00")
    assert cost_lines(r, book)[0].rate == Decimal("15.00")  # 23:59 CST: compute-2025


def test_ai_tool_lines_exact(book):
    r = _record(cpus=0.0, cpu_s=0.0, ai_usage=(
        AIUsage(tool="deepseek-chat:input", unit="token", quantity=1234),
        AIUsage(tool="deepseek-chat:output", unit="token", quantity=567),
        AIUsage(tool="cosyvoice-v2", unit="char", quantity=333)))
    tin, tout, tts = cost_lines(r, book)
    assert tin.amount == Decimal("0.002468") and tin.per == 1_000_000
    assert tout.amount == Decimal("0.001701")
    assert tts.amount == Decimal("0.0666")
    assert all(x.list_value == x.amount and x.kind == "ai_tool" for x in (tin, tout, tts))
    assert summarise([tin, tout, tts])["total"] == Decimal("0.07")  # 0.070769 → 0.07 at the end


def test_free_tool_priced_zero_with_list_value(book):
    r = _record(cpus=0.0, cpu_s=0.0, ai_usage=(
        AIUsage(tool="tanzhe-zhikong-t2v", unit="second", quantity=12.5),
        AIUsage(tool="espeak-ng", unit="char", quantity=400)))
    free, local = cost_lines(r, book)
    assert free.amount == 0 and free.list_value == Decimal("7.5") and free.rate == 0
    assert "000_00e89342472210b3" in free.source
    assert local.amount == 0 and local.list_value == 0
    s = summarise([free, local])
    assert s["total"] == Decimal("0.00") and s["list_value"] == Decimal("7.50")


def test_unit_mismatch_and_missing_gpu_model_fail_loudly(book):
    r = _record(ai_usage=(AIUsage(tool="wanx2.1-t2i-turbo", unit="second", quantity=3),))
    with pytest.raises(PriceError, match="priced per image, but the usage is in second"):
        cost_lines(r, book)
    with pytest.raises(PriceError, match="declare the model"):
        cost_lines(_record(gpus=1.0), book)


def test_each_attempt_billed_once(book):
    a1 = _record()
    a2 = _record(attempt=2, idempotency_key="job-1/video/s01/attempt-2", status="ok")
    lines = bill([a1, a2, a1], book)  # a1 delivered twice (e.g. a resent ledger append)
    assert [x.usage_key for x in lines] == [a1.idempotency_key, a2.idempotency_key]
    with pytest.raises(PriceError, match="share idempotency key"):
        bill([a1, _record(wall_s=10.0)], book)


def test_idle_line(book):
    start = dt.datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    (idle,) = idle_lines("node-a", "NVIDIA H100 80GB HBM3", 8, start, start + dt.timedelta(hours=2),
                         Decimal("9.25"), book, job="job-1", drama="d", episode="ep01")
    assert idle.kind == "idle" and idle.stage == "(idle)" and idle.node == "node-a"
    assert idle.quantity == Decimal("6.75") and idle.amount == Decimal("81.0000")
    assert idle.usage_key == f"idle/node-a/{start.isoformat()}"
    assert idle_lines("node-a", "H100", 1, start, start + dt.timedelta(hours=1), "1", book) == []
    with pytest.raises(PriceError, match="allocated but only"):
        idle_lines("node-a", "H100", 1, start, start + dt.timedelta(hours=1), "1.5", book)


def test_summary_by_stage_and_kind(book):
    video = cost_lines(_record(gpus=1.0, gpu_model="H100"), book)  # 6.00 + 0.06
    script = cost_lines(_record(stage="script", cpus=0.0, cpu_s=0.0, idempotency_key="k2",
                                ai_usage=(AIUsage(tool="qwen-plus:output", unit="token",
                                                  quantity=1_000_000),)), book)  # 2.00
    s = summarise(video + script)
    assert s["total"] == Decimal("8.06") and s["lines"] == 3
    assert s["by_stage"] == {"script": Decimal("2.00"), "video": Decimal("6.06")}
    assert s["by_kind"] == {"ai_tool": Decimal("2.00"), "compute": Decimal("6.06")}
    assert s["by_stage_kind"]["video"] == {"compute": Decimal("6.06")}


def test_round_fen_half_up():
    assert round_fen(Decimal("0.005")) == Decimal("0.01")
    assert round_fen(Decimal("0.0049999")) == Decimal("0.00")
    assert round_fen(Decimal("2.675")) == Decimal("2.68")  # a float would give 2.67


def test_cost_line_round_trips_through_json(book):
    from pipeline.metering.costs import CostLine

    (line,) = cost_lines(_record(wall_s=1.0, cpu_s=0.3), book)
    again = CostLine.model_validate_json(line.model_dump_json())
    with localcontext() as ctx:
        ctx.prec = 50
        assert again == line and again.amount == Decimal("0.12") / 3600  # one division, 50 digits
