"""`microdrama capacity`: farm sizing from the ledger's GPU-seconds (docs/farm-sizing.md). The ledger here holds
usage records as the meter writes them for GPU stages (priced by the real price book), since this machine has no
GPU; the tiny farm bench's CPU ledger is the other case: nothing to size from."""
from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal, localcontext

import pytest
from typer.testing import CliRunner

GPU = "NVIDIA H100 80GB HBM3"  # as NVML names it


def invoke(*args: str):
    from pipeline.cli import _mount, app

    if not any(c.name == "capacity" for c in app.registered_commands):
        _mount()
    return CliRunner().invoke(app, list(args))


def _record(episode: str, stage: str, shot: str | None, attempt: int, wall_s: float, gpus: float,
            status: str = "ok", drama: str = "season"):
    from pipeline.metering.usage import UsageRecord

    stamp = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc).isoformat().replace("+00:00", "Z")
    job = f"run-{drama}-{episode}"
    return UsageRecord(job=job, drama=drama, episode=episode, stage=stage, shot=shot, backend="b", attempt=attempt,
                       status=status, started=stamp, ended=stamp, wall_s=wall_s, cpu_s=1.0, gpus=gpus,
                       gpu_s=gpus * wall_s, gpu_model=GPU if gpus else None,
                       idempotency_key=f"{job}/{stage}/{shot or '-'}/attempt-{attempt}")


@pytest.fixture(scope="module")
def ledger_url(tmp_path_factory) -> str:
    """Two delivered episodes (one video shot failed once and was retried) and one that never reached its edit."""
    from pipeline.metering.ledger import Ledger
    from pipeline.metering.sink import ledger_items

    url = f"sqlite:///{tmp_path_factory.mktemp('capacity') / 'ledger.db'}"
    records = []
    for ep in ("ep01", "ep02"):
        records += [_record(ep, "script", None, 1, 2.0, 0),
                    _record(ep, "storyboard", "s1", 1, 120.0, 1), _record(ep, "storyboard", "s2", 1, 80.0, 1),
                    _record(ep, "video", "s1", 1, 300.0, 1), _record(ep, "video", "s2", 1, 300.0, 1),
                    _record(ep, "dub", "s1", 1, 20.0, 0.25), _record(ep, "dub", "s2", 1, 20.0, 0.25),
                    _record(ep, "edit", None, 1, 10.0, 0)]
    records.append(_record("ep01", "video", "s1", 2, 100.0, 1, status="failed"))  # real GPU time, billed too
    records.append(_record("ep03", "video", "s1", 1, 5000.0, 1))  # no edit: not delivered, not counted
    records.append(_record("ep01", "video", "s1", 1, 999.0, 1, drama="other"))  # another drama
    records.append(_record("ep01", "edit", None, 1, 1.0, 0, drama="other"))
    with Ledger.open(url) as ledger:
        for r in records:
            ledger.append_many(ledger_items(r))
    return url


def test_measure_counts_every_attempt_of_delivered_episodes_only(ledger_url) -> None:
    from pipeline.metering.capacity import measure
    from pipeline.money import exact_sum
    from pipeline.metering.ledger import Ledger

    with Ledger.open(ledger_url, create=False) as ledger:
        m = measure(ledger, "season")
        costs = [e.body for e in ledger.entries(kind="cost", where={"drama": "season"})
                 if e.body["episode"] in ("ep01", "ep02") and e.body["kind"] == "compute"]
    assert m.episodes == 2
    assert {s: (l.gpu_s, l.gpus, l.attempts) for s, l in m.stages.items()} == {
        "storyboard": (400.0, 1.0, 4), "video": (1300.0, 1.0, 5), "dub": (20.0, 0.25, 4)}
    assert m.stages["video"].gpu_models == (GPU,)
    assert m.compute_cny == exact_sum(c["amount"] for c in costs) > 0


def test_plan_sizes_replicas_from_gpu_seconds_per_episode(ledger_url) -> None:
    res = invoke("capacity", "--ledger", ledger_url, "--drama", "season", "--episodes-per-day", "1000",
                 "--gpus", "64", "--utilization", "0.8", "--json")
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    stages = {s["stage"]: s for s in plan["stages"]}
    # video 650 GPU-s an episode × 1000 / 86400 s = 7.52 busy GPUs, / 0.8 = 9.4: 10 one-GPU replicas;
    # storyboard 200 → 2.31 / 0.8 = 2.9: 3; dub 10 → 0.116 / 0.8 = 0.145 GPU: 1 replica of a quarter GPU
    assert {s: (v["gpu_s_per_episode"], v["replicas"], v["gpus_held"]) for s, v in stages.items()} == {
        "storyboard": (200.0, 3, 3.0), "video": (650.0, 10, 10.0), "dub": (10.0, 1, 0.25)}
    assert plan["gpu_s_per_episode"] == 860.0 and plan["gpus_needed"] == 14 and plan["fits"] is True
    assert plan["episodes_per_day_on_gpus"] == int(64 * 86400 * 0.8 // 860)  # 5,143
    per_episode = Decimal(plan["compute_cny_per_episode"])
    with localcontext() as ctx:
        ctx.prec = 100
        assert Decimal(plan["compute_cny_per_day"]) == per_episode * 1000  # exact, never a float
    small = json.loads(invoke("capacity", "--ledger", ledger_url, "--drama", "season", "--gpus", "8",
                              "--json").output)
    assert small["fits"] is False and small["gpus_needed"] == 14


def test_the_table_a_person_reads(ledger_url) -> None:
    res = invoke("capacity", "--ledger", ledger_url, "--drama", "season")
    assert res.exit_code == 0, res.output
    assert "14 GPU(s) needed: fits on 64" in res.output and "CNY " in res.output and "video" in res.output


def test_an_assumption_stands_in_for_a_stage_not_measured(ledger_url) -> None:
    res = invoke("capacity", "--no-ledger", "--assume", "video=4800", "--assume", "dub=60:0.25", "--json")
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    stages = {s["stage"]: s for s in plan["stages"]}
    assert stages["video"]["source"] == "assumed" and stages["video"]["replicas"] == 70  # 55.6 busy / 0.8
    assert stages["dub"]["gpus_held"] == 1.0 and plan["gpus_needed"] == 71 and plan["fits"] is False
    mixed = json.loads(invoke("capacity", "--ledger", ledger_url, "--drama", "season", "--assume", "video=100",
                              "--json").output)
    assert {s["stage"]: s["source"] for s in mixed["stages"]} == {"dub": "measured", "storyboard": "measured",
                                                                   "video": "assumed"}


@pytest.mark.parametrize("args, says", [
    (("--assume", "video"), "--assume 'video'"),
    (("--assume", "video=-3"), "STAGE=GPU_SECONDS_PER_EPISODE"),
    (("--assume", "dub=60:0"), "GPUS_PER_REPLICA"),
    (("--drama", "nobody"), "--drama nobody: no delivered episode"),
])
def test_bad_input_names_the_flag(ledger_url, args, says) -> None:
    res = invoke("capacity", "--ledger", ledger_url, *args)
    assert res.exit_code == 2 and says in res.output and "Traceback" not in res.output, res.output


def test_a_cpu_ledger_has_nothing_to_size_from(tmp_path) -> None:
    from pipeline.metering.ledger import Ledger
    from pipeline.metering.sink import ledger_items

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger.open(url) as ledger:
        for r in (_record("ep01", "video", "s1", 1, 30.0, 0), _record("ep01", "edit", None, 1, 3.0, 0)):
            ledger.append_many(ledger_items(r))
    res = invoke("capacity", "--ledger", url)
    assert res.exit_code == 2 and "no GPU-seconds to size from" in res.output and "--assume" in res.output
    missing = invoke("capacity", "--ledger", f"sqlite:///{tmp_path / 'typo.db'}")
    assert missing.exit_code != 0 and "--ledger" in missing.output and "Traceback" not in missing.output
