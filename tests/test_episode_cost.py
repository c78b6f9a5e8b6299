"""An episode's production cost across runs, from one real drama history: first run, fully cached re-run,
one-line change to the screenplay, a failed attempt, a budget stop and an idle bill.

Report, `claims build`, the claim packet and the MLflow tags must agree to the digit, and every ledger cost
line of the drama must be counted exactly once, in one visible category.

The failed attempt is a usage record with status `failed` written through the metering code for a run whose
driver died (the fault tests cover real killed workers); everything else is `microdrama run`/`ledger` CLI.
"""
from __future__ import annotations

import re

import csv
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from pipeline.finance.attribution import CATEGORIES, FIELDS, total
from pipeline.finance.build_metered import CST, meter_drama, open_ledger
from pipeline.job import load_job
from pipeline.money import exact_sum, to_fen
from tests.tiny_jobs import cli, ledger_entries, places, write_job

DRAMA = "cost-drama"
YEAR = dt.datetime.now(CST).year
COMPANY = "示例影业有限公司"


def _metered(env: dict):
    ledger = open_ledger(env["ledger"])
    try:
        return meter_drama(DRAMA, YEAR, env["tracking"], ledger)
    finally:
        ledger.close()


def _run(env: dict, work: Path, path: Path, tracking: str | None = None, code: int = 0) -> str:
    res = cli("run", str(path), *places(work), "--quiet", "--tracking-uri", tracking or env["tracking"],
              "--ledger", env["ledger"])
    assert res.exit_code == code, res.output
    if code:
        return res.output
    job = load_job(path, places(work))
    return json.loads((job.out_path / "manifest.json").read_text(encoding="utf-8"))["run_id"]


def _failed_attempt(ledger_url: str, job: str) -> None:
    """One failed video attempt of a run whose driver died before MLflow heard of it, billed by the meter code."""
    from pipeline.metering.ledger import Ledger
    from pipeline.metering.sink import ledger_items
    from pipeline.metering.usage import UsageRecord

    stamp = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    record = UsageRecord(job=job, drama=DRAMA, episode="ep01", stage="video", shot="s01-sh01", backend="camera-move",
                         status="failed", error="RuntimeError: boom", started=stamp, ended=stamp, wall_s=120.0,
                         cpu_s=100.0, cpus=2.0, idempotency_key=f"{job}/video/s01-sh01/attempt-1")
    with Ledger.open(ledger_url) as ledger:
        ledger.append_many(ledger_items(record))


@pytest.fixture(scope="module")
def history(tmp_path_factory, ray_session) -> dict:
    work = tmp_path_factory.mktemp("episode-cost")
    env = {"tracking": f"sqlite:///{work / 'mlflow.db'}", "ledger": f"sqlite:///{work / 'ledger.db'}"}
    path = write_job(work / "ep01", drama=DRAMA, shots=2)
    runs, snaps = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)  # MLflow's default artifact root stays in the temp folder
        runs["first"] = _run(env, work, path)
        snaps["first"] = _metered(env)
        runs["cached"] = _run(env, work, path)
        snaps["cached"] = _metered(env)
        fountain = path.parent / "episode.fountain"
        text = fountain.read_text(encoding="utf-8")
        fountain.write_text(text.replace("签了它。（ep01·2）", "签了它！（ep01·2）"), encoding="utf-8")
        runs["edited"] = _run(env, work, path)
        runs["dead"] = f"{DRAMA}.ep01.dead-driver"
        _failed_attempt(env["ledger"], runs["dead"])
        # a budget of 0 with no history to estimate from: the script runs, the run stops before translate
        stopped = write_job(work / "ep02", drama=DRAMA, episode="ep02", shots=2, budget={"max_cny": "0"})
        env["stop_output"] = _run(env, work, stopped, tracking=f"sqlite:///{work / 'empty.db'}", code=3)
        start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        res = cli("ledger", "bill-idle", "--node", "rented-h100", "--gpu-model", "H100", "--gpus", "1",
                  "--from", start.isoformat(), "--to", (start + dt.timedelta(hours=2)).isoformat(),
                  "--drama", DRAMA, "--ledger", env["ledger"], "--json")
        assert res.exit_code == 0, res.output
        assert cli("ledger", "checkpoint", "--ledger", env["ledger"]).exit_code == 0
    lines = [e for e in ledger_entries(env["ledger"], "cost") if e.body["drama"] == DRAMA]
    return {"work": work, "env": env, "runs": runs, "snaps": snaps, "final": _metered(env), "lines": lines}


def _job_sum(history: dict, job: str, kinds=None) -> Decimal:
    return exact_sum(e.body["amount"] for e in history["lines"] if e.body["job"] == job
                     and (kinds is None or e.body["kind"] in kinds))


def test_a_fully_cached_rerun_keeps_the_cost_of_the_run_that_built_the_outputs(history):
    first, cached = history["snaps"]["first"], history["snaps"]["cached"]
    runs = history["runs"]
    assert first.production == first.fields()["costs.compute"] > 0
    # the re-run took everything from the cache: run 1's lines are the final cut's, plus the re-run's lookups
    lookups = exact_sum(l.amount for l in cached.attributed if l.job == runs["cached"])
    assert cached.compute == exact_sum([first.compute, lookups]) and cached.compute > 100 * lookups
    assert total(cached.attributed, ["superseded"]) == 0
    reused = [l for l in cached.attributed if l.attributed_to == runs["cached"]]
    assert {l.job for l in reused} == {runs["first"]} and sum(1 for _ in reused) == len(first.attributed)


def test_every_ledger_line_is_counted_once_in_one_category(history):
    m, runs = history["final"], history["runs"]
    assert sorted(l.entry.index for l in m.attributed) == sorted(e.index for e in history["lines"])
    assert m.production == exact_sum(e.body["amount"] for e in history["lines"])
    by_cat = {c: total(m.attributed, [c]) for c in CATEGORIES}
    assert all(by_cat[c] > 0 for c in CATEGORIES), by_cat
    assert by_cat["failed"] == _job_sum(history, runs["dead"])
    stopped = [l for l in m.attributed if l.category == "stopped"]
    assert {l.episode for l in stopped} == {"ep02"} and {l.body["stage"] for l in stopped} == {"script"}
    assert by_cat["idle"] == exact_sum(e.body["amount"] for e in history["lines"] if e.body["kind"] == "idle")
    # the one-line change re-ran what the changed line feeds; the rest of the final cut is run 1's work
    final_jobs = {l.job for l in m.attributed if l.category == "final"}
    assert final_jobs == {runs["first"], runs["edited"]}
    assert {l.job for l in m.attributed if l.category == "superseded"} <= {runs["first"], runs["cached"]}
    assert exact_sum(m.fields()[f] for f in FIELDS) == m.production


def test_report_claims_build_packet_and_mlflow_agree_to_the_digit(history, tmp_path):
    import mlflow

    env, m = history["env"], history["final"]
    out = tmp_path / "report.csv"
    res = cli("report", "--drama", DRAMA, "--out", str(out), "--tracking-uri", env["tracking"], "--ledger", env["ledger"])
    assert res.exit_code == 0, res.output
    with out.open(encoding="utf-8") as fh:
        totals = {r["episode"]: r for r in csv.DictReader(fh) if r["stage"] == "TOTAL"}
    assert set(totals) == {"ep01", "ep02", "(drama)"}
    assert exact_sum(r["cost.total_cny.exact"] for r in totals.values()) == m.production
    assert Decimal(totals["ep01"]["cache_savings_cny.exact"]) > 0
    assert Decimal(totals["ep02"]["rework.stopped_cny.exact"]) == total(m.attributed, ["stopped"])

    facts = {"year": YEAR, "company": {"name": COMPANY, "districts": ["huairou"], "headcount": 3},
             "dramas": [{"id": DRAMA, "launched": f"{YEAR}-03-01", "produced_in": ["huairou"]}]}
    facts_path = tmp_path / "facts.yaml"
    facts_path.write_text(yaml.safe_dump(facts, allow_unicode=True), encoding="utf-8")
    scenario = tmp_path / "scenario.yaml"
    res = cli("claims", "build", "--year", str(YEAR), "--facts", str(facts_path), "--out", str(scenario),
              "--tracking-uri", env["tracking"], "--ledger", env["ledger"])
    assert res.exit_code == 0, res.output
    costs = yaml.safe_load(scenario.read_text(encoding="utf-8"))["dramas"][0]["costs"]
    assert {f"costs.{k}": Decimal(v) for k, v in costs.items() if f"costs.{k}" in FIELDS} == m.fields()
    assert "not claimed" not in scenario.read_text(encoding="utf-8")

    packets = tmp_path / "packets"
    res = cli("claims", "packet", str(scenario), "--programme", "huairou.compute_voucher", "--out", str(packets),
              "--tracking-uri", env["tracking"], "--ledger", env["ledger"])
    assert res.exit_code == 0, res.output
    folder = packets / f"huairou.compute_voucher__{DRAMA}"
    claim = json.loads((folder / "claim.json").read_text(encoding="utf-8"))
    evidence = json.loads((folder / "evidence.json").read_text(encoding="utf-8"))
    basis = exact_sum([m.compute, m.fields()["costs.rework_compute"], m.fields()["costs.idle"]])
    assert Decimal(claim["amount"]) == to_fen(basis * Decimal("0.30")) > 0
    basis_step = next(s for s in claim["trace_steps"] if s["kind"] == "basis")
    assert "costs.rework_compute" in basis_step["text"] and "costs.idle" in basis_step["text"]
    assert sorted(c["ledger_index"] for c in evidence["cost_lines"]) == sorted(e.index for e in history["lines"])
    assert {c["category"] for c in evidence["cost_lines"]} == set(CATEGORIES)
    assert evidence["cost_totals"]["production"] == f"{to_fen(m.production):.2f}"

    # MLflow: each logged run's tag is its own ledger lines; with the runs MLflow never saw and the idle bill
    # they add up to the production cost
    client = mlflow.MlflowClient(env["tracking"])
    exp = client.get_experiment_by_name(DRAMA)
    parents = client.search_runs([exp.experiment_id], "tags.`microdrama.kind` = 'episode'")
    logged = {p.data.tags["microdrama.run_id"]: Decimal(p.data.tags["total_cost_cny"]) for p in parents}
    assert set(logged) == {history["runs"][k] for k in ("first", "cached", "edited")}
    assert all(logged[job] == _job_sum(history, job) for job in logged)
    names = [p.info.run_name for p in parents]  # repeated runs of one episode are told apart in the UI
    assert all(re.fullmatch(rf"{DRAMA}/\S+ · \S+ · \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC", n) for n in names), names
    unlogged = exact_sum(e.body["amount"] for e in history["lines"] if e.body["job"] not in logged)
    assert exact_sum([*logged.values(), unlogged]) == m.production


def test_budget_stop_message_shows_the_comparison(history):
    text = " ".join(history["env"]["stop_output"].split())
    assert "stopped before stage 'translate'" in text and "no history and no price for translate" in text
    assert "0.00 CNY" not in text  # the spend is shown at a precision that shows it is over 0


def test_html_report_renders_for_a_finance_reader(history, tmp_path):
    from tests.browser import measure

    env = history["env"]
    page = tmp_path / "report.html"
    res = cli("report", "--drama", DRAMA, "--format", "html", "--out", str(page), "--tracking-uri", env["tracking"],
              "--ledger", env["ledger"])
    assert res.exit_code == 0, res.output
    text = page.read_text(encoding="utf-8")
    assert "Per-episode summary" in text and "per finished minute" in text and "reused from cache" in text
    figures = text.split("<h2>How to read")[0]
    assert "E-" not in figures and "&lt; 0.01" in figures  # sub-fen stage costs carry the marker, not E-notation
    for width in (1280, 800):
        facts, shot = measure(page, width)
        assert facts["scroll_width"] <= facts["viewport"], facts  # nothing wider than the window
        assert facts["clipped"] == [], facts  # no label or figure cut off
        assert facts["tables"] >= 4 and facts["bars"] >= 3, facts
        assert shot.stat().st_size > 10_000
        history.setdefault("screenshots", []).append(shot)
