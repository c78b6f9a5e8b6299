"""The report's files for people: CSV and XLSX with fen-rounded money beside the exact value, and the HTML page.

CSV: each money column holds what a person reads (half-up to the fen, "< 0.01" for a sub-fen amount) and the
column `<name>.exact` the exact ledger sum. XLSX: money cells are numbers (the exact value as a double) with a
money number format, so SUM works in Excel and LibreOffice; the exact text is in the `<name>.exact` column.
"""
from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.finance.report import MONEY
from pipeline.money import shown

# Excel/LibreOffice number format: 0 reads 0.00, a positive sub-fen amount "< 0.01", else #,##0.00
XLSX_MONEY = '[=0]0.00;[<0.005]"< 0.01";#,##0.00'
FIRST = ["episode", "stage", "backend", "duration_s", "cost.total_cny", "final_cny", "rework.superseded_cny",
         "rework.failed_cny", "rework.stopped_cny", "idle_cny", "cost_per_minute_cny", "cache_savings_cny",
         "cost.compute_cny", "cost.ai_tool_cny", "cost.idle_cny", "cost.list_value_cny", "free_tools_value_cny"]
FORMATS = ("csv", "xlsx", "html")


def columns(rows_: list[dict]) -> list[str]:
    """Every column, the figures finance reads first; each money column followed by its `.exact` twin."""
    found = sorted({k for r in rows_ for k in r}, key=lambda c: (FIRST.index(c) if c in FIRST else len(FIRST), c))
    out = []
    for col in found:
        out.append(col)
        if col in MONEY:
            out.append(f"{col}.exact")
    return out


def _exact(row: dict, col: str) -> str:
    value = row.get(col)
    return "" if value in (None, "") else str(value)


def write(rows_: list[dict], path: Path, fmt: str, title: str) -> Path:
    """Write the rows as csv, xlsx or html at `path`."""
    if fmt not in FORMATS:
        raise UserError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    cols = columns(rows_)
    if fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows([_csv_row(r, cols) for r in rows_])
    elif fmt == "xlsx":
        _xlsx(rows_, cols, path)
    else:
        from pipeline.finance.report_html import render_html

        path.write_text(render_html(rows_, title), encoding="utf-8")
    return path


def _csv_row(row: dict, cols: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col in cols:
        if col.endswith(".exact"):
            out[col] = _exact(row, col[:-6])
        elif col in MONEY:
            out[col] = shown(row[col]) if row.get(col) not in (None, "") else ""
        else:
            out[col] = row.get(col)
    return out


def _xlsx(rows_: list[dict], cols: list[str], path: Path) -> None:
    from openpyxl import Workbook
    from openpyxl.utils import get_column_letter

    wb = Workbook()
    ws = wb.active
    ws.title = "report"
    ws.append(cols)
    for r in rows_:
        ws.append([_xlsx_cell(r, c) for c in cols])
    for i, col in enumerate(cols, start=1):
        letter = get_column_letter(i)
        ws.column_dimensions[letter].width = max(10, min(40, len(col) + 2))
        if col in MONEY:
            for (cell,) in ws.iter_rows(min_row=2, min_col=i, max_col=i):
                cell.number_format = XLSX_MONEY
    ws.freeze_panes = "C2"
    wb.save(path)


def _xlsx_cell(row: dict, col: str) -> Any:
    if col.endswith(".exact"):
        return _exact(row, col[:-6])
    value = row.get(col)
    if col in MONEY:
        # a number (a double of the exact value: Excel has no decimals) so that SUM works; exact text beside it
        return None if value in (None, "") else float(Decimal(str(value)))
    return value
