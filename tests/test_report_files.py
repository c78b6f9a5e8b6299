"""The report's files as people open them: CSV/XLSX money at the fen with the exact value beside it, and XLSX
cells that LibreOffice (headless, a real spreadsheet) shows with the money format and sums correctly."""
from __future__ import annotations

import csv
import shutil
import subprocess
from decimal import Decimal

from pipeline.finance.report_files import XLSX_MONEY, write
from pipeline.money import exact_sum, shown, to_fen

AMOUNTS = ["0.000000643000000000000000000000000000000000000001", "12370.368", "0.005", "1999.994999", "0"]


def _rows() -> list[dict]:
    rows = [{"episode": "ep01", "stage": f"stage{i}", "backend": "x", "cost.total_cny": a} for i, a in enumerate(AMOUNTS)]
    rows.append({"episode": "ep01", "stage": "TOTAL", "backend": "", "cost.total_cny": str(exact_sum(AMOUNTS))})
    return rows


def test_csv_has_fen_figures_and_exact_twins(tmp_path):
    path = write(_rows(), tmp_path / "r.csv", "csv", "t")
    with path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["cost.total_cny"] for r in rows] == ["< 0.01", "12,370.37", "0.01", "1,999.99", "0.00", "14,370.37"]
    assert [r["cost.total_cny.exact"] for r in rows][:-1] == AMOUNTS  # every digit the ledger carries
    assert shown("-0.001") == "> -0.01" and shown("2.675") == "2.68"  # half-up, not banker's rounding


def test_libreoffice_shows_the_money_format_and_sums_the_cells(tmp_path):
    from openpyxl import load_workbook

    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    assert soffice, "LibreOffice is missing: run `make system-deps`"
    path = write(_rows(), tmp_path / "r.xlsx", "xlsx", "t")
    wb = load_workbook(path)
    ws = wb.active
    header = [c.value for c in ws[1]]
    col = header.index("cost.total_cny") + 1
    letter = ws.cell(row=1, column=col).column_letter
    assert all(isinstance(ws.cell(row=r, column=col).value, (int, float)) for r in range(2, 8))  # numbers, not text
    assert ws.cell(row=2, column=col).number_format == XLSX_MONEY
    ws.cell(row=9, column=col, value=f"=SUM({letter}2:{letter}6)").number_format = XLSX_MONEY  # what finance types
    wb.save(path)
    out = tmp_path / "lo"
    subprocess.run([soffice, "--headless", f"-env:UserInstallation={(tmp_path / 'profile').as_uri()}",
                    "--convert-to", "csv:Text - txt - csv (StarCalc):44,34,76,1,,0,false,true,true", "--outdir", str(out), str(path)], check=True, capture_output=True,
                   timeout=180)
    with (out / "r.csv").open(encoding="utf-8") as fh:
        cells = [row[col - 1] if len(row) >= col else "" for row in csv.reader(fh)]
    # LibreOffice recalculates the SUM and shows every cell with the money format, as a person sees it
    assert cells[1:7] == ["< 0.01", "12,370.37", "0.01", "1,999.99", "0.00", "14,370.37"], cells
    assert cells[8] == f"{to_fen(exact_sum(AMOUNTS)):,.2f}" == "14,370.37"
    assert Decimal(ws.cell(row=7, column=col + 1).value) == exact_sum(AMOUNTS)
