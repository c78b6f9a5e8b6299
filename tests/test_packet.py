"""Claim packets from a synthetic evidence dict: files, amounts, trace, deadlines, refusals."""
from __future__ import annotations

import json

import pytest

from pipeline.finance.claims import evaluate
from pipeline.finance.packet import PacketError, write_packet
from pipeline.finance.policies import load_policies
from pipeline.finance.scenario import parse_scenario

SCENARIO = {
    "year": 2026,
    "company": {"name": "示例影业有限公司", "districts": ["huairou", "tongzhou"], "rd_spend": "500000",
                "rd_spend_previous": "100000", "rd_key_project": True},
    "dramas": [
        {"id": "ep-01", "launched": "2026-03-01", "produced_in": ["huairou"], "licence_no": None,
         "costs": {"compute": "41234.56", "ai_tools": "12000"}},
        {"id": "ep-02", "launched": None, "produced_in": ["huairou"], "costs": {"compute": "1000"}},
    ],
}
LEAF = "ab" * 32
EVIDENCE = {
    "cost_lines": [
        {"kind": "compute", "item": "gpu-hour:H100", "amount": "41000.00", "ledger_index": 3, "leaf_hash": LEAF,
         "inclusion_proof": ["cd" * 32, "ef" * 32], "mlflow_run_id": "run-video", "stage": "video"},
        {"kind": "compute", "item": "vcpu-hour", "amount": "234.56", "ledger_index": 4, "leaf_hash": "01" * 32,
         "inclusion_proof": ["23" * 32], "mlflow_run_id": "run-edit"},
        {"kind": "ai_tool", "item": "deepseek-chat:input", "amount": "12000", "ledger_index": 5,
         "leaf_hash": "45" * 32, "mlflow_run_id": "run-script"},
        {"kind": "ai_tool", "item": "tanzhe-t2v", "amount": "0", "list_value": "5000", "ledger_index": 6,
         "leaf_hash": "67" * 32, "mlflow_run_id": "run-video"},  # a free district model: 0 cash, list value
    ],
    "checkpoint": ("microdrama.ledger/v1\n6\nq83vEjsXW8qCWwjp2lvJ7LbHUDL7ZD2W6Yx4n0vV0pk=\n\n"
                   "— ledger-key AbCd<script>\n"),
    "mlflow_run_ids": ["run-episode"],
    "declared_facts": {"platform": "红果短剧"},
    "dates": {"notified": "2026-09-30", "accepted": "2026-03-02"},
    "supplementing": [["2026-03-09", "2026-03-13"]],
}


@pytest.fixture(scope="module")
def result():
    return evaluate(parse_scenario(SCENARIO), load_policies())


def test_packet_has_amount_trace_evidence_and_deadlines(result, tmp_path):
    folder = write_packet(result, "huairou.compute_voucher", "ep-01", EVIDENCE, tmp_path)
    assert folder == tmp_path / "huairou.compute_voucher__ep-01"
    claim = json.loads((folder / "claim.json").read_text(encoding="utf-8"))
    assert claim["amount"] == "12370.37" and claim["drama"] == "ep-01"
    assert "ep-01: rate: 0.3 x 41234.56 = 12370.368 [003_332d36df0d886521.txt 三(二)1]" in claim["trace"]
    assert not any(s.startswith("ep-02") for s in claim["trace"])  # only this drama's steps
    evidence = json.loads((folder / "evidence.json").read_text(encoding="utf-8"))
    assert evidence["cost_totals"] == {"costs.compute": "41234.56", "costs.ai_tools": "12000.00", "costs.rework_compute": "0.00", "costs.rework_ai_tools": "0.00", "costs.idle": "0.00", "production": "53234.56"}
    assert evidence["cost_lines"][0]["stage"] == "video"  # extra fields carried along
    assert evidence["mlflow_run_ids"] == ["run-edit", "run-episode", "run-script", "run-video"]
    assert evidence["declared_facts"]["drama"]["produced_in"] == ["huairou"]
    due = {d["id"]: d["due"] for d in evidence["deadlines"]}
    # dispute: 5 working days after Wed 9/30 over National Day -> Tue 10/13 (Sat 10/10 is a 调休 working day)
    # settlement: 30 working days after 3/2 is 4/14, plus the 5 supplement working days -> 4/21
    assert due == {"dispute": "2026-10-13", "settlement": "2026-04-21"}
    page = (folder / "summary.html").read_text(encoding="utf-8")
    assert "CNY 12370.37" in page and "2026-10-13" in page and "2026-04-21" in page
    assert "<script>" not in page and "&lt;script&gt;" in page  # supplied text is escaped
    assert "http" not in page.split("</style>")[0]  # self-contained: no external assets
    facts = page.split("<h2>Declared facts</h2>")[1]
    assert "<td>produced_in</td><td>怀柔区 (huairou)</td>" in facts  # facts as a person writes them
    assert "<td>rd_key_project</td><td>是</td>" in facts and "<td>overseas</td><td>否</td>" in facts
    assert "False" not in facts and "True" not in facts and "['huairou']" not in facts
    assert "怀柔区 (huairou)、通州区（城市副中心） (tongzhou)" in facts  # the company's districts
    assert "41,000.00" in page and "41,234.56" in page  # amounts at the fen, with separators


def test_company_level_packet_and_missing_dates(result, tmp_path):
    folder = write_packet(result, "tongzhou.rd_increment", None, {}, tmp_path)
    claim = json.loads((folder / "claim.json").read_text(encoding="utf-8"))
    assert claim["amount"] == "120000.00"  # 0.30 x (500,000 - 100,000)
    page = (folder / "summary.html").read_text(encoding="utf-8")
    assert "a draft" in page  # Tongzhou is a draft for comment
    hr = write_packet(result, "huairou.compute_voucher", "ep-01", {}, tmp_path / "b")
    evidence = json.loads((hr / "evidence.json").read_text(encoding="utf-8"))
    assert evidence["deadlines"][0]["due"] == "give evidence dates.notified to compute it"


@pytest.mark.parametrize("programme, drama, evidence, message", [
    ("huairou.nothing", "ep-01", {}, "programme 'huairou.nothing' is not in this result"),
    ("huairou.compute_voucher", "ep-02", {}, "'ep-02' is not paid under huairou.compute_voucher: not met"),
    ("tongzhou.rd_increment", "ep-01", {}, "company-level programme"),
    ("huairou.compute_voucher", "ep-01", {"colour": 1}, "evidence.colour: unknown key"),
    ("huairou.compute_voucher", "ep-01",
     {"cost_lines": [{**EVIDENCE["cost_lines"][0], "amount": "40000"}]},
     "compute lines add up to 40000.00, but the scenario's drama 'ep-01' costs.compute is 41234.56"),
    ("huairou.compute_voucher", "ep-01",
     {"cost_lines": [{**EVIDENCE["cost_lines"][0], "leaf_hash": "xyz"}]}, "evidence.cost_lines[0].leaf_hash"),
])
def test_packet_refusals_name_the_problem(result, tmp_path, programme, drama, evidence, message):
    with pytest.raises(PacketError) as err:
        write_packet(result, programme, drama, evidence, tmp_path)
    assert message in str(err.value)
    assert not any(tmp_path.iterdir())
