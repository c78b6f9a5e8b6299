"""Finance's commands on a real metered run: MLflow layout (experiment, parent and stage runs, params,
metrics, artifacts), `microdrama report` in csv/xlsx/html, `microdrama estimate` from past runs, and the
job budget stopping a run cleanly before the stage that would exceed it."""
from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.job import load_job
from pipeline.money import exact_sum
from tests.tiny_jobs import cli, ledger_entries, places, write_job

DRAMA = "finance-drama"
STAGES = ["script", "translate", "storyboard", "dub", "video", "edit"]


@pytest.fixture(scope="module")
def metered(tmp_path_factory, ray_session):
    """One two-shot, two-language episode run through `microdrama run`, logged to its own MLflow and ledger."""
    work = tmp_path_factory.mktemp("finance")
    path = write_job(work / "job", drama=DRAMA, shots=2)
    env = {"tracking": f"sqlite:///{work / 'mlflow.db'}", "ledger": f"sqlite:///{work / 'ledger.db'}"}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)  # MLflow's default artifact root (./mlruns) stays in the temp folder
        res = cli("run", str(path), *places(work), "--quiet", "--tracking-uri", env["tracking"],
                  "--ledger", env["ledger"])
    assert res.exit_code == 0, res.output
    job = load_job(path, places(work))
    manifest = json.loads((job.out_path / "manifest.json").read_text())
    return {"work": work, "path": path, "job": job, "manifest": manifest, **env}


def test_every_command_is_mounted() -> None:
    from pipeline import cli as cli_mod

    res = cli("--help")
    for name in [*cli_mod.COMMANDS, *cli_mod.SUBAPPS, "run", "validate"]:
        assert f" {name} " in res.output, name


def test_mlflow_layout(metered) -> None:
    import mlflow

    client = mlflow.MlflowClient(metered["tracking"])
    exp = client.get_experiment_by_name(DRAMA)
    (parent,) = client.search_runs([exp.experiment_id], "tags.`microdrama.kind` = 'episode'")
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert (tags["drama"], tags["episode"], tags["profile"]) == (DRAMA, "ep01", "preview-cpu")
    assert tags["company"] == "示例影业有限公司" and tags["microdrama.run_id"] == metered["manifest"]["run_id"]
    size = int(tags["ledger.checkpoint.size"])
    assert size == len(ledger_entries(metered["ledger"])) and len(tags["ledger.checkpoint.root"]) == 64
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_stage = {c.data.tags["stage"]: c for c in children}
    assert sorted(by_stage) == sorted(STAGES)
    video = by_stage["video"]
    assert video.data.params["backend"] == "camera-move" and video.data.params["resolution"] == "144x256"
    assert video.data.metrics["executions"] == 2 and video.data.metrics["wall_s"] > 0
    assert by_stage["dub"].data.metrics["chars"] > 0
    ledger_total = exact_sum(e.body["amount"] for e in ledger_entries(metered["ledger"], "cost"))
    assert exact_sum(c.data.tags["cost.total_cny"] for c in children) == ledger_total
    assert Decimal(tags["total_cost_cny"]) == ledger_total > 0

    artifacts = {a.path for folder in ("episode", "metering", "ledger")
                 for a in client.list_artifacts(parent.info.run_id, folder)}
    assert {"episode/episode.mp4", "episode/manifest.json", "episode/episode.zh.srt", "episode/episode.zh.ass",
            "metering/usage_costs.csv", "metering/usage.json", "ledger/checkpoint.txt"} <= artifacts
    table = Path(client.download_artifacts(parent.info.run_id, "metering/usage_costs.csv", str(metered["work"])))
    with table.open(encoding="utf-8") as fh:
        assert {r["stage"] for r in csv.DictReader(fh)} == set(STAGES)
    note = Path(client.download_artifacts(parent.info.run_id, "ledger/checkpoint.txt", str(metered["work"])))
    assert tags["ledger.checkpoint.root"] in note.read_text() or str(size) in note.read_text()


def test_report_csv_xlsx_html_agree_with_the_ledger(metered, tmp_path) -> None:
    from openpyxl import load_workbook

    from pipeline.finance.report_files import XLSX_MONEY
    from pipeline.money import shown

    ledger_total = exact_sum(e.body["amount"] for e in ledger_entries(metered["ledger"], "cost"))
    outs = {}
    for fmt in ("csv", "xlsx", "html"):
        out = tmp_path / f"report.{fmt}"
        res = cli("report", "--drama", DRAMA, "--format", fmt, "--out", str(out), "--tracking-uri", metered["tracking"],
                  "--ledger", metered["ledger"])
        assert res.exit_code == 0, res.output
        assert res.output.strip() == str(out)
        outs[fmt] = out
    with outs["csv"].open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["stage"] for r in rows) == sorted([*STAGES, "TOTAL"])
    (total,) = [r for r in rows if r["stage"] == "TOTAL"]
    assert Decimal(total["cost.total_cny.exact"]) == ledger_total  # exact in the data ...
    assert total["cost.total_cny"] == shown(ledger_total) and "E" not in total["cost.total_cny"]  # ... fen for people
    assert all(len(r["cost.total_cny"]) <= 12 for r in rows)  # no 55-digit figures
    per_minute = ledger_total * 60 / Decimal(str(metered["manifest"]["duration_s"]))  # the manifest rounds to 1e-6 s
    assert abs(Decimal(total["cost_per_minute_cny.exact"]) / per_minute - 1) < Decimal("1e-6")
    assert total["ledger_checkpoint"].split(":")[0] == str(len(ledger_entries(metered["ledger"])))
    for col in ("wall_s", "cpu_s", "gpu_s", "gpu_energy_j", "chars", "cache_savings_cny", "final_cny"):
        assert col in total

    sheet = load_workbook(outs["xlsx"]).active
    header = [c.value for c in sheet[1]]
    col = header.index("cost.total_cny")
    assert header[col + 1] == "cost.total_cny.exact"
    cells = {r[header.index("stage")].value: r[col] for r in sheet.iter_rows(min_row=2)}
    total_cell = cells.pop("TOTAL")
    assert isinstance(total_cell.value, float) and total_cell.number_format == XLSX_MONEY  # a number Excel sums
    assert abs(sum(c.value for c in cells.values()) - total_cell.value) < 1e-12
    (exact_cell,) = [r[col + 1].value for r in sheet.iter_rows(min_row=2) if r[header.index("stage")].value == "TOTAL"]
    assert Decimal(exact_cell) == ledger_total

    page = outs["html"].read_text(encoding="utf-8")
    assert "Per-episode summary" in page and "Stage breakdown" in page and "per finished minute" in page
    assert all(f">{s}<" in page for s in STAGES)

    res = cli("report", "--drama", "no-such-drama", "--format", "csv", "--tracking-uri", metered["tracking"],
              "--ledger", metered["ledger"])
    assert res.exit_code == 2 and "--drama" in res.output
    res = cli("report", "--drama", DRAMA, "--format", "pdf", "--tracking-uri", metered["tracking"])
    assert res.exit_code == 2 and "--format" in res.output


def test_estimate_from_past_runs(metered) -> None:
    res = cli("estimate", str(metered["path"]), *places(metered["work"]), "--json",
              "--tracking-uri", metered["tracking"])
    assert res.exit_code == 0, res.output
    est = json.loads(res.output)
    assert est["unknown_stages"] == [] and est["shots"] == 2
    lines = {line["stage"]: line for line in est["stages"]}
    assert lines["video"]["executions"] == 2 and lines["script"]["executions"] == 1
    assert Decimal(est["total_cny"]) == exact_sum(line["estimate_cny"] for line in lines.values())
    # the same job run again costs what was learnt from it: per execution = the video stage's ledger cost / 2
    video_cost = exact_sum(e.body["amount"] for e in ledger_entries(metered["ledger"], "cost", stage="video"))
    assert Decimal(lines["video"]["per_execution"]) == (video_cost / 2).quantize(Decimal("0.000001"))


def _budget_run(metered, tmp_path, episode: str, tracking: str, budget: str):
    path = write_job(tmp_path / episode, drama=DRAMA, episode=episode, shots=2, budget={"max_cny": budget})
    res = cli("run", str(path), *places(tmp_path), "--quiet", "--tracking-uri", tracking,
              "--ledger", metered["ledger"])
    return res, load_job(path, places(tmp_path))


def test_budget_stops_before_the_stage_that_would_exceed_it(metered, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    script_cost = exact_sum(e.body["amount"] for e in ledger_entries(metered["ledger"], "cost", stage="script"))
    res, job = _budget_run(metered, tmp_path, "ep02", metered["tracking"], "0")
    assert res.exit_code == 3, res.output
    assert "budget.max_cny: stopped before stage 'script'" in res.output
    assert not job.out_path.exists()
    assert not [e for e in ledger_entries(metered["ledger"], "usage") if e.body["episode"] == "ep02"]  # no work
    assert script_cost > 0


def test_budget_without_history_stops_once_spent(metered, tmp_path, monkeypatch) -> None:
    """No past runs to learn from: the guard cannot foresee a stage's cost, so it stops before the first
    stage after the budget is spent, and says it had no estimate."""
    monkeypatch.chdir(tmp_path)
    res, job = _budget_run(metered, tmp_path, "ep03", f"sqlite:///{tmp_path / 'empty.db'}", "0")
    assert res.exit_code == 3, res.output
    assert "stopped before stage 'translate'" in res.output and "no history and no price for translate" in res.output
    assert not job.out_path.exists()
    done = [e.body for e in ledger_entries(metered["ledger"], "usage") if e.body["episode"] == "ep03"]
    assert [u["stage"] for u in done] == ["script"]


def test_estimate_without_history_says_so_instead_of_zero(tmp_path) -> None:
    path = write_job(tmp_path / "job", drama="never-run", shots=2, budget={"max_cny": "0.5"})
    res = cli("estimate", str(path), *places(tmp_path), "--json", "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}")
    assert res.exit_code == 0, res.output
    est = json.loads(res.stdout)  # the JSON document is stdout; MLflow may log to stderr
    assert est["total_cny"] is None and len(est["unknown_stages"]) == 6  # not "total: 0.00"
    assert est["message"].startswith("no estimate: no history and no price for script (fountain), ")
    assert "video (camera-move)" in est["message"]
