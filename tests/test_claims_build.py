"""`claims build` and `claims packet` from real metered episodes: exact costs, runtime shares, contradictions,
verifiable inclusion proofs, CLI exit codes.

The data: a 2-shot screenplay (one shot tagged #huairou, one #datong) run on preview-cpu as drama
claims-a ep01 (twice: the second, cached run supersedes the first), claims-a ep02 and claims-b ep01; then
a GPU node's idle time and a video-API call are billed to claims-a ep02 through the metering code (so the
amounts are large enough to see at the fen) and the ledger signs a checkpoint.
"""
from __future__ import annotations

import copy
import datetime as dt
import json
from decimal import Context, Decimal, Inexact, localcontext
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.finance.build import (CST, FactsError, build_scenario, load_facts, parse_facts)
from pipeline.finance.claims import evaluate
from pipeline.finance.claims_cli import app
from pipeline.money import ZERO, D, exact_sum, fmt, to_fen
from pipeline.finance.scenario import load_scenario

SCREENPLAY = """\
Title: 测试短剧
Language: zh
Languages: zh
Characters:
    林晓 | voice=f

内景. 怀柔 办公室 - 夜 #huairou

[[shot: close, hold]]
林晓
签了。

外景. 大同 古城墙 - 夜 #datong

[[shot: wide, pan-right]]
林晓
走吧。
"""
JOB = """\
drama: claims-a
episode: ep01
title: 测试 · 第1集
company: 示例影业有限公司
languages: [zh]
profile: preview-cpu
screenplay: episode.fountain
seed: 7
stages:
  storyboard: {width: 270, height: 480}
  video: {fps: 12, width: 270, height: 480}
"""
COMPANY = "示例影业有限公司"
YEAR = dt.datetime.now(CST).year
IDLE_SECONDS = 4987  # a rented H100 node held 1 h 23 min 7 s
API_SECONDS = 5  # wan2.5-t2v:720p, CNY 0.60 per generated second
_PREPARED: dict[str, dict] = {}


def prepare_metered(base: Path) -> dict:
    """Run the short episodes once per test session (cached on disk under `base`), return ids and URLs."""
    done = base / "prepared.json"
    if done.exists():
        return json.loads(done.read_text(encoding="utf-8"))
    from pipeline.episode import run_job
    from pipeline.job import load_job

    (base / "job").mkdir(parents=True, exist_ok=True)
    (base / "job" / "episode.fountain").write_text(SCREENPLAY, encoding="utf-8")
    (base / "job" / "job.yaml").write_text(JOB, encoding="utf-8")
    urls = {"tracking_uri": f"sqlite:///{base / 'mlflow.db'}", "ledger_url": f"sqlite:///{base / 'ledger.db'}"}

    def run(*overrides: str) -> dict:
        job = load_job(base / "job" / "job.yaml", [f"output_dir={base / 'out'}", f"cache_dir={base / 'cache'}",
                                                   *overrides])
        manifest = run_job(job, quiet=True, **urls)
        assert manifest["mlflow"]["status"] == "logged", manifest["mlflow"]
        return {k: manifest[k] for k in ("run_id", "fps", "shots", "drama", "episode", "mlflow")}

    data = {**urls, "superseded": run(), "a_ep01": run(), "a_ep02": run("episode=ep02"),
            "b_ep01": run("drama=claims-b")}
    _bill_late_lines(urls["ledger_url"], data["a_ep02"]["run_id"])
    done.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return data


def _bill_late_lines(ledger_url: str, job: str) -> None:
    """Idle GPU time of a rented node and one video-API call, billed to `job` through the metering code."""
    from pipeline.metering.costs import idle_lines
    from pipeline.metering.ledger import Ledger
    from pipeline.metering.sink import ledger_items, price_book
    from pipeline.metering.usage import AIUsage, UsageRecord

    book = price_book()
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    end = start + dt.timedelta(seconds=IDLE_SECONDS)
    idle = idle_lines("rented-h100", "H100", 1, start, end, "0.001", book, job=job, drama="claims-a", episode="ep02")
    stamp = start.isoformat().replace("+00:00", "Z")
    api = UsageRecord(job=job, drama="claims-a", episode="ep02", stage="video", shot="s01-sh01",
                      backend="wan2.5-t2v-api", started=stamp, ended=stamp, wall_s=40.0, cpu_s=0.0, cpus=0.0,
                      ai_usage=(AIUsage(tool="wan2.5-t2v:720p", unit="second", quantity=API_SECONDS),),
                      idempotency_key=f"{job}/video/s01-sh01/api-1")
    with Ledger.open(ledger_url) as ledger:
        ledger.append_many([("cost", line.model_dump(mode="json"), f"{line.usage_key}/cost/0") for line in idle]
                           + ledger_items(api, book))
        ledger.checkpoint()


@pytest.fixture(scope="module")
def metered(tmp_path_factory, ray_session) -> dict:
    return prepare_metered(tmp_path_factory.getbasetemp() / "claims-metered")


def facts_data(districts: tuple[str, ...] = ("huairou", "datong", "yizhuang"), **drama_fields) -> dict:
    return {"year": YEAR, "company": {"name": COMPANY, "districts": list(districts), "headcount": 3},
            "dramas": [{"id": "claims-a", "launched": f"{YEAR}-03-01", "licence_no": "(2026)网微剧审字第001号",
                        "produced_in": ["huairou"], "revenue_share": "600000",
                        "costs": {"production": "5000", "local_spend": {"datong": "80000"}}, **drama_fields},
                       {"id": "claims-b", "launched": f"{YEAR}-04-01", "produced_in": ["huairou"]}]}


def write_facts(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def ledger_lines(metered: dict, *episodes: str) -> list:
    from pipeline.metering.ledger import Ledger

    jobs = {metered[e]["run_id"] for e in episodes}
    with Ledger.open(metered["ledger_url"]) as ledger:
        return [e for e in ledger.entries(kind="cost") if e.body["job"] in jobs]


def drama_lines(metered: dict, drama: str) -> list:
    """Every cost line of the drama in the ledger: the production cost counts each once (attribution.py)."""
    from pipeline.metering.ledger import Ledger

    with Ledger.open(metered["ledger_url"]) as ledger:
        return [e for e in ledger.entries(kind="cost") if e.body["drama"] == drama]


def metered_sum(lines: list, kinds: tuple[str, ...]) -> Decimal:
    """Exact sum (ledger amounts carry 50 significant digits; the default context keeps 28)."""
    with localcontext(Context(prec=200, traps=[Inexact])):
        return sum((D(e.body["amount"]) for e in lines if e.body["kind"] in kinds), ZERO)


def build(metered: dict, facts: dict | None = None, **kwargs):
    return build_scenario(parse_facts(facts or facts_data()), kwargs.pop("year", YEAR),
                          tracking_uri=metered["tracking_uri"], ledger_url=metered["ledger_url"], **kwargs)


# ------------------------------------------------------------------------------------------ build
def test_scenario_costs_are_every_ledger_line_of_the_drama_attributed(metered):
    built = build(metered, dramas=["claims-a"])
    costs = built.scenario.drama("claims-a").costs
    lines = drama_lines(metered, "claims-a")
    compute = metered_sum(lines, ("compute", "idle"))
    # the huairou basis (compute + rework compute + idle) is every compute line, exact, not only to the fen
    assert exact_sum([costs.compute, costs.rework_compute, costs.idle]) == compute
    assert exact_sum([costs.ai_tools, costs.rework_ai_tools]) == metered_sum(lines, ("ai_tool",))
    assert to_fen(costs.ai_tools) == Decimal("3.00")  # 5 s x CNY 0.60, billed to the final ep02 run
    assert to_fen(costs.idle) == Decimal("16.61")  # CNY 12/h x (4987 s - 0.001 h allocated)
    superseded = ledger_lines(metered, "superseded")
    assert superseded and metered_sum(superseded, ("compute",)) > 0  # the first ep01 run built the outputs ...
    m = built.metered["claims-a"]
    by_index = {l.entry.index: l for l in m.attributed}
    assert {by_index[e.index].category for e in superseded} == {"final"}  # ... the cached re-run took: final cut
    assert {by_index[e.index].attributed_to for e in superseded} <= {metered["a_ep01"]["run_id"],
                                                                    metered["a_ep02"]["run_id"]}
    assert [r.run_id for r in m.runs] == [metered["a_ep01"]["run_id"], metered["a_ep02"]["run_id"]]
    assert m.superseded == (metered["superseded"]["mlflow"]["run_id"],)
    assert sorted(by_index) == [e.index for e in lines]  # every line once
    assert costs.production == 5000 and built.scenario.drama("claims-a").revenue_share == 600000  # declared


def test_runtime_share_and_longest_episode_come_from_the_manifests(metered):
    drama = build(metered, dramas=["claims-a"]).scenario.drama("claims-a")
    seconds: dict[str, Fraction] = {}
    for key in ("a_ep01", "a_ep02"):
        m = metered[key]
        for shot in m["shots"]:
            for tag in shot["location_tags"]:
                seconds[tag] = seconds.get(tag, Fraction(0)) + Fraction(shot["frames"], m["fps"])
            seconds["all"] = seconds.get("all", Fraction(0)) + Fraction(shot["frames"], m["fps"])
    assert set(drama.local_runtime_share) == {"huairou", "datong"}
    for district in ("huairou", "datong"):
        exact = seconds[district] / seconds["all"]
        assert abs(Fraction(drama.local_runtime_share[district]) - exact) <= Fraction(1, 2 * 10**12)
    ep01 = sum(Fraction(s["frames"], metered["a_ep01"]["fps"]) for s in metered["a_ep01"]["shots"])
    assert drama.episode_minutes_max >= ep01 / 60 > drama.episode_minutes_max - Decimal("0.000001")
    result = evaluate(build(metered, dramas=["claims-a"]).scenario).to_dict()
    assert result["programmes"]["datong.local_theme"]["by_drama"] == {"claims-a": "8000.00"}  # share > 20%


def test_every_drama_of_the_facts_or_the_ones_named(metered):
    both = build(metered)
    assert [d.id for d in both.scenario.dramas] == ["claims-a", "claims-b"]
    b_lines = ledger_lines(metered, "b_ep01")
    b_costs = both.scenario.drama("claims-b").costs
    assert exact_sum([b_costs.compute, b_costs.rework_compute, b_costs.idle]) == metered_sum(b_lines, ("compute", "idle"))
    only_b = build(metered, dramas=["claims-b", "claims-b"])
    assert [d.id for d in only_b.scenario.dramas] == ["claims-b"]
    later = build(metered, facts={**facts_data(), "year": YEAR + 1}, year=YEAR + 1)
    assert later.scenario.drama("claims-a").costs.compute == 0
    assert any("no finished episode run" in n for n in later.notes)


@pytest.mark.parametrize("change, field, words", [
    (lambda f: f["dramas"][0]["costs"].update(production="10"), "dramas[0].costs.production",
     "is less than the metered production cost"),
    (lambda f: f["dramas"][0].update(episode_minutes_max="0.01"), "dramas[0].episode_minutes_max",
     "shorter than a metered episode"),
    (lambda f: f["company"].update(name="别的公司"), "company.name", f"runs were made by {COMPANY!r}"),
    (lambda f: f.update(year=YEAR - 1), "year", f"the facts are for {YEAR - 1}, not --year {YEAR}"),
    (lambda f: f["dramas"][1].update(shooting_days={"datong": 3}), "dramas[1].shooting_days.total", "required"),
])
def test_contradictions_name_the_facts_field(metered, change, field, words):
    facts = copy.deepcopy(facts_data())
    change(facts)
    with pytest.raises(FactsError) as err:
        build(metered, facts)
    assert any(p.startswith(f"facts: {field}: ") and words in p for p in err.value.problems), err.value.problems


def test_metered_fields_cannot_be_declared():
    facts = facts_data(local_runtime_share={"datong": "0.5"})
    facts["dramas"][0]["costs"].update(compute="100", ai_tools="5", colour="red")
    with pytest.raises(FactsError) as err:
        parse_facts(facts)
    problems = "\n".join(err.value.problems)
    for field in ("local_runtime_share", "costs.compute", "costs.ai_tools"):
        assert f"dramas[0].{field}: is metered" in problems
    assert "dramas[0].costs.colour: unknown key" in problems


def test_example_facts_file_validates():
    facts = load_facts(Path(__file__).resolve().parents[1] / "configs" / "claims" / "facts-example.yaml")
    assert facts.dramas[0].id == "ceo-stand-in"


# ------------------------------------------------------------------------------------------ CLI
def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_build_cli_writes_a_scenario_and_exits_2_on_bad_facts(metered, tmp_path):
    urls = ["--tracking-uri", metered["tracking_uri"], "--ledger", metered["ledger_url"]]
    good = write_facts(tmp_path / "facts.yaml", facts_data())
    out = tmp_path / "scenario.yaml"
    res = cli("build", "--year", str(YEAR), "--facts", str(good), "--drama", "claims-a", "--out", str(out), *urls)
    assert res.exit_code == 0, res.output
    scenario = load_scenario(out)  # the written file is a valid CLAIMS.md scenario
    assert scenario == build(metered, dramas=["claims-a"]).scenario
    assert metered["a_ep02"]["mlflow"]["run_id"] in out.read_text(encoding="utf-8")  # provenance header
    bad = facts_data()
    bad["dramas"][0]["costs"]["compute"] = "1"
    res = cli("build", "--year", str(YEAR), "--facts", str(write_facts(tmp_path / "bad.yaml", bad)), *urls)
    assert res.exit_code == 2 and "dramas[0].costs.compute: is metered" in res.output
    res = cli("build", "--year", str(YEAR), "--facts", str(good), "--drama", "nope", *urls)
    assert res.exit_code == 2 and "--drama: nope not in" in res.output
    res = cli("build", "--year", str(YEAR), "--facts", str(good), "--tracking-uri", metered["tracking_uri"],
              "--ledger", f"sqlite:///{tmp_path / 'missing.db'}")
    assert res.exit_code == 2 and "--ledger: cannot open" in res.output


@pytest.fixture(scope="module")
def packet(metered, tmp_path_factory):
    work = tmp_path_factory.mktemp("packet")
    # without datong: its 就高不重复 rule would pay claims-a under datong.local_theme instead of the voucher
    facts = write_facts(work / "facts.yaml", facts_data(districts=("huairou", "yizhuang")))
    scenario = work / "scenario.yaml"
    urls = ["--tracking-uri", metered["tracking_uri"], "--ledger", metered["ledger_url"]]
    assert cli("build", "--year", str(YEAR), "--facts", str(facts), "--out", str(scenario), *urls).exit_code == 0
    res = cli("packet", str(scenario), "--programme", "huairou.compute_voucher", "--drama", "claims-a",
              "--out", str(work / "packets"), "--notified", "2026-09-30", "--accepted", "2026-03-02", *urls)
    assert res.exit_code == 0, res.output
    folder = Path(res.output.strip().splitlines()[-1])
    return {"folder": folder, "scenario": scenario, "urls": urls, "work": work}


def test_packet_amount_is_30_percent_of_the_metered_compute(metered, packet):
    claim = json.loads((packet["folder"] / "claim.json").read_text(encoding="utf-8"))
    compute = metered_sum(drama_lines(metered, "claims-a"), ("compute", "idle"))
    assert claim["amount"] == fmt(Decimal("0.30") * compute) != "0.00"
    page = (packet["folder"] / "summary.html").read_text(encoding="utf-8")
    assert f"CNY {claim['amount']}" in page
    assert "2026-10-13" in page and "2026-04-14" in page  # dispute: 5 working days; settlement: 30 working days
    assert "microdrama.ledger/" in page and "+" in page  # the verifier key, named after the ledger's origin


def test_packet_cost_lines_carry_proofs_that_verify(metered, packet):
    from pipeline.metering.ledger import Ledger, verify_entry_inclusion

    evidence = json.loads((packet["folder"] / "evidence.json").read_text(encoding="utf-8"))
    lines = evidence["cost_lines"]
    expected = drama_lines(metered, "claims-a")
    assert [line["ledger_index"] for line in lines] == [e.index for e in expected]
    assert {line["kind"] for line in lines} == {"compute", "idle", "ai_tool"}
    with Ledger.open(metered["ledger_url"]) as ledger:
        trusted = ledger.trusted_public_key()
        assert evidence["checkpoint"] == ledger.latest_checkpoint().note
    for line, entry in zip(lines, expected):
        assert line["leaf_hash"] == entry.leaf_hash and line["amount"] == entry.body["amount"]
        assert verify_entry_inclusion(line["entry"].encode(), line["inclusion_proof"], evidence["checkpoint"], trusted)
        assert verify_entry_inclusion(line["entry"].encode(), line["inclusion_proof"], evidence["checkpoint"],
                                      evidence["public_key"])
    forged = lines[-1]["entry"].replace(f'"amount":"{lines[-1]["amount"]}"', '"amount":"999"')
    assert forged != lines[-1]["entry"]
    assert not verify_entry_inclusion(forged.encode(), lines[-1]["inclusion_proof"], evidence["checkpoint"], trusted)
    runs = {metered[k]["mlflow"]["run_id"] for k in ("a_ep01", "a_ep02")}
    assert runs <= set(evidence["mlflow_run_ids"])
    from pipeline.metering.ledger import Checkpoint
    from pipeline.metering.merkle import verify_consistency

    cp = Checkpoint.parse(evidence["checkpoint"])  # each run's own checkpoint, proved to be extended by the packet's
    assert {r["mlflow_run_id"] for r in evidence["run_checkpoints"]} == runs
    for r in evidence["run_checkpoints"]:
        proof = [bytes.fromhex(h) for h in r["consistency_proof"]]
        assert r["tree_size"] < cp.tree_size and verify_consistency(
            r["tree_size"], cp.tree_size, bytes.fromhex(r["root_hash"]), bytes.fromhex(cp.root_hash), proof)
        assert not verify_consistency(r["tree_size"], cp.tree_size, bytes.fromhex(r["root_hash"]),
                                      bytes.fromhex(cp.root_hash), proof[1:] or [b"\0" * 32])
    assert evidence["declared_facts"]["drama"]["revenue_share"] == "600000"


def test_packet_refuses_a_scenario_whose_metered_fields_were_edited(packet):
    text = packet["scenario"].read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    data["dramas"][0]["costs"]["compute"] = "1000"
    edited = packet["work"] / "edited.yaml"
    edited.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    res = cli("packet", str(edited), "--programme", "huairou.compute_voucher", "--out",
              str(packet["work"] / "refused"), *packet["urls"])
    assert res.exit_code == 2 and "dramas[0].costs.compute: the scenario says 1000 but" in res.output
    assert not (packet["work"] / "refused").exists()
    res = cli("packet", str(packet["scenario"]), "--programme", "huairou.nothing", "--out",
              str(packet["work"] / "refused"), *packet["urls"])
    assert res.exit_code == 2 and "--programme: 'huairou.nothing'" in res.output
    res = cli("packet", str(packet["scenario"]), "--programme", "huairou.compute_voucher", "--notified", "30/9",
              "--out", str(packet["work"] / "refused"), *packet["urls"])
    assert res.exit_code == 2 and "--notified: '30/9' is not a date" in res.output


def test_build_with_packets_writes_one_per_paid_claim(metered, tmp_path):
    facts = write_facts(tmp_path / "facts.yaml", facts_data(districts=("huairou", "yizhuang")))
    res = cli("build", "--year", str(YEAR), "--facts", str(facts), "--packets", str(tmp_path / "packets"),
              "--tracking-uri", metered["tracking_uri"], "--ledger", metered["ledger_url"])
    assert res.exit_code == 0, res.output
    written = sorted(p.name for p in (tmp_path / "packets").iterdir())
    # claims-b's metered compute is a fraction of a fen: nothing to pay, no packet
    assert written == ["huairou.compute_voucher__claims-a", "scenario.yaml", "yizhuang.ai_spend__claims-a"]
    claim = json.loads((tmp_path / "packets" / "yizhuang.ai_spend__claims-a" / "claim.json").read_text("utf-8"))
    lines = ledger_lines(metered, "a_ep01", "a_ep02")
    opc = Decimal("0.50") * (metered_sum(lines, ("compute", "idle")) + metered_sum(lines, ("ai_tool",)))
    assert claim["amount"] == fmt(opc)  # headcount 3: the OPC rate, 50% of compute + AI tools
