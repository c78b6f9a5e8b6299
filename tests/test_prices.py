"""Price tables: validation of the data, and selection of the table in force at the time of use."""
from __future__ import annotations

import datetime as dt
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.metering.prices import PriceBook, PriceError, load_table, money

ROOT = Path(__file__).resolve().parents[1]
UTC = dt.timezone.utc

TABLE = """\
id: {id}
currency: CNY
effective_from: {start}
effective_to: {end}
source: {{title: test list, url: "https://example.com/prices", retrieved: 2026-01-02}}
items:
  gpu-h100: {{unit: gpu-hour, price: "{price}", gpu_model: H100}}
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _book(tmp_path: Path) -> PriceBook:
    _write(tmp_path, "old.yaml", TABLE.format(id="old", start="2025-01-01", end="2026-01-01",
                                              price="15.00"))
    _write(tmp_path, "new.yaml", TABLE.format(id="new", start="2026-01-01", end="null",
                                              price="12.00"))
    return PriceBook.load(tmp_path)


def test_shipped_tables_load():
    book = PriceBook.load(ROOT / "configs" / "prices")
    ids = {t.id for t in book.tables}
    assert {"compute-2025", "compute-2026", "ai-tools-2026"} <= ids
    at = dt.datetime(2026, 6, 1, tzinfo=UTC)
    free = book.price_for("tanzhe-zhikong-t2v", at)
    assert free.price == 0 and free.list_value > 0 and "000_00e89342472210b3" in free.source
    assert book.price_for("deepseek-chat:input", at).per == 1_000_000


@pytest.mark.parametrize("at, table", [
    (dt.datetime(2025, 12, 31, 15, 59, 59, 999999, tzinfo=UTC), "old"),  # 23:59:59.999999 CST
    (dt.datetime(2025, 12, 31, 16, 0, tzinfo=UTC), "new"),  # 2026-01-01 00:00 CST: end is exclusive
    (dt.datetime(2026, 1, 1, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))), "new"),
    (dt.datetime(2024, 12, 31, 16, 0, tzinfo=UTC), "old"),  # first instant of the old table
])
def test_price_selected_by_date_at_boundaries(tmp_path, at, table):
    price = _book(tmp_path).price_for("gpu-h100", at)
    assert price.table_id == table
    assert price.price == Decimal("15.00" if table == "old" else "12.00")


def test_no_price_names_item_and_date(tmp_path):
    book = _book(tmp_path)
    with pytest.raises(PriceError, match=r"'gpu-h100' at 2024-12-31T15:59:59\+00:00"):
        book.price_for("gpu-h100", dt.datetime(2024, 12, 31, 15, 59, 59, tzinfo=UTC))
    with pytest.raises(PriceError, match="'gpu-b200'.*no table prices it"):
        book.price_for("gpu-b200", dt.datetime(2026, 2, 1, tzinfo=UTC))
    with pytest.raises(PriceError, match="no timezone"):
        book.price_for("gpu-h100", dt.datetime(2026, 2, 1))


def test_overlapping_tables_rejected(tmp_path):
    _write(tmp_path, "a.yaml", TABLE.format(id="a", start="2025-01-01", end="null", price="1"))
    _write(tmp_path, "b.yaml", TABLE.format(id="b", start="2026-01-01", end="null", price="2"))
    with pytest.raises(PriceError, match="tables a and b .* gpu-h100"):
        PriceBook.load(tmp_path)


@pytest.mark.parametrize("price, message", [
    ("0.1", "0.1 is a YAML float that binary floating point cannot hold exactly"),
    ('"-1.00"', "must be >= 0"),
    ('"abc"', "not a decimal number"),
    ("true", "a price must be a string"),
])
def test_bad_prices_rejected_naming_file_and_field(tmp_path, price, message):
    path = _write(tmp_path, "bad.yaml", TABLE.format(id="bad", start="2026-01-01", end="null",
                                                     price="X").replace('"X"', price))
    with pytest.raises(PriceError) as err:
        load_table(path)
    assert str(path) in str(err.value) and "items.gpu-h100.price" in str(err.value)
    assert message in str(err.value)


def test_exact_yaml_float_accepted(tmp_path):
    path = _write(tmp_path, "ok.yaml", TABLE.format(id="ok", start="2026-01-01", end="null",
                                                    price="X").replace('"X"', "2.5"))
    assert load_table(path).items["gpu-h100"].price == Decimal("2.5")


@pytest.mark.parametrize("edit, message", [
    (("currency: CNY", "currency: USD"), "currency: currency must be CNY"),
    (("effective_to: null", "effective_to: 2025-06-01"), "effective_to 2025-06-01 must be after"),
    (("gpu_model: H100}", "gpu_model: H100, colour: red}"), "items.gpu-h100.colour: Extra inputs"),
    (("unit: gpu-hour", "unit: hour"), "items.gpu-h100.unit: unknown unit 'hour'"),
    (("id: t", "id: t\nid: u"), "duplicate key 'id'"),
    (('url: "https://example.com/prices", ', ""), "source: give a url or a document"),
])
def test_bad_tables_rejected(tmp_path, edit, message):
    text = TABLE.format(id="t", start="2026-01-01", end="null", price="1.00").replace(*edit)
    path = _write(tmp_path, "t.yaml", text)
    with pytest.raises(PriceError, match="t.yaml") as err:
        load_table(path)
    assert message in str(err.value)


def test_gpu_item_matches_nvml_names(tmp_path):
    book = PriceBook.load(ROOT / "configs" / "prices")
    assert book.gpu_item("NVIDIA H100 80GB HBM3") == "gpu-h100"
    assert book.gpu_item("NVIDIA H200") == "gpu-h200"
    assert book.gpu_item("NVIDIA H20") == "gpu-h20"
    assert book.gpu_item("NVIDIA A100-SXM4-80GB") == "gpu-a100"
    assert book.gpu_item("NVIDIA GeForce RTX 4090") == "gpu-4090"
    with pytest.raises(PriceError, match="no gpu-hour item matches"):
        book.gpu_item("Tesla T4")


def test_money_is_exact():
    assert money("0.10") + money("0.20") == Decimal("0.30")
    assert money(0.1) == Decimal("0.1")  # float measurements enter at their shortest text
    with pytest.raises(ValueError):
        money(float("nan"))
    with pytest.raises(TypeError):
        money(True)


def test_every_model_backend_reports_only_priced_tools():
    """What each diffusers/TTS backend reports to the meter has a price item (0 for local models), so a real
    run never stops at pricing: video seconds, steps and frames; images and steps; characters and speech."""
    import datetime as dt

    from models.image.diffusers_t2i import SPECS as IMAGE
    from models.tts.vits import SPECS as VOICES
    from models.video.diffusers_video import SPECS as VIDEO
    from pipeline.metering.sink import price_book

    book, at = price_book(), dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)
    wanted = [(f"{name}{suffix}", unit) for name in VIDEO for suffix, unit in (("", "second"), (":step", "step"),
                                                                              (":frame", "frame"))]
    wanted += [(f"{name}{suffix}", unit) for name in IMAGE for suffix, unit in (("", "image"), (":step", "step"))]
    wanted += [(f"{name}{suffix}", unit) for name in VOICES for suffix, unit in (("", "char"), (":audio", "second"))]
    wanted += [("espeak-ng", "char"), ("espeak-ng:audio", "second"), ("piper:en_US-joe-medium", "char"),
               ("piper:en_US-joe-medium:audio", "second")]
    for item, unit in wanted:
        assert book.price_for(item, at).unit == unit, item
