"""The shared setup for teams: ledger on a real PostgreSQL, MLflow through a real `mlflow server` on PostgreSQL.

Two episodes run at once in separate processes (each its own Ray and ledger writer) and append to one
PostgreSQL ledger that still verifies; finance pulls its report from the server; raw appends from two
processes interleave without a gap or a duplicate.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from tests.pg import mlflow_server, postgres  # noqa: F401  (fixtures)
from tests.short_jobs import write_batch

DRAMA = "pg-shared"


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MICRODRAMA_LEDGER")}
    env.update(RAY_ADDRESS="local", RAY_USAGE_STATS_ENABLED="0", MICRODRAMA_LEDGER_KEY_FILE=str(tmp / "ledger.key"),
               MICRODRAMA_MLFLOW_QUEUE=str(tmp / "mlflow-queue"))
    return env


@pytest.fixture(scope="module")
def two_episodes(postgres, mlflow_server, tmp_path_factory):  # noqa: F811
    """Two `microdrama run` processes started together: ledger on PostgreSQL, MLflow on the server."""
    from pipeline.metering.ledger import Ledger

    tmp = tmp_path_factory.mktemp("pg-episodes")
    ledger_url = postgres.create_database("ledger")
    env = _env(tmp)
    Ledger.open(ledger_url, tmp / "ledger.key").public_key()  # the key both writers sign with
    jobs = write_batch(tmp / "jobs", DRAMA, 2)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(job), f"output_dir={tmp / 'out'}",
         f"cache_dir={tmp / 'cache'}", "--quiet", "--ledger", ledger_url, "--tracking-uri", mlflow_server.url],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for job in jobs]
    results = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    manifests = [json.loads((tmp / "out" / DRAMA / f"ep0{i}" / "manifest.json").read_text()) for i in (1, 2)]
    return {"tmp": tmp, "ledger_url": ledger_url, "manifests": manifests, "postgres": postgres,
            "mlflow_runs": {m["run_id"]: _mlflow_run(mlflow_server.url, m["run_id"]) for m in manifests}}


def _mlflow_run(tracking_uri: str, run_id: str):
    """The episode's parent run on the server, found by its microdrama run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(DRAMA)
    runs = client.search_runs([exp.experiment_id], f"tags.`microdrama.run_id` = '{run_id}'")
    assert len(runs) == 1, run_id
    return runs[0]


def test_concurrent_episodes_share_one_postgres_ledger_that_verifies(two_episodes) -> None:
    from pipeline.metering.ledger import Ledger

    with Ledger.open(two_episodes["ledger_url"], two_episodes["tmp"] / "ledger.key") as ledger:
        report = ledger.verify()
        assert report.ok, report.problems
        entries = ledger.entries()
        assert [e.index for e in entries] == list(range(len(entries)))  # gap-free
        keys = [e.idempotency_key for e in entries]
        assert len(keys) == len(set(keys))  # every record exactly once
        for manifest in two_episodes["manifests"]:
            usage = ledger.entries(kind="usage", where={"job": manifest["run_id"]})
            assert len(usage) == manifest["cost"]["usage_records"] == 9
            assert {e.body["idempotency_key"] for e in usage} == {e.idempotency_key for e in usage}
        assert len(ledger.checkpoints()) >= 2  # each episode signed one; both extend each other


def test_manifest_names_the_ledger_without_its_password(two_episodes) -> None:
    pg = two_episodes["postgres"]
    for manifest in two_episodes["manifests"]:
        assert manifest["ledger"]["url"].startswith("postgresql://127.0.0.1:")
        assert pg.password not in json.dumps(manifest)
    assert not list((two_episodes["tmp"] / "mlflow-queue").glob("*.json"))  # logged, none queued
    from pipeline.metering.ledger import Checkpoint, Ledger

    with Ledger.open(two_episodes["ledger_url"], read_only=True) as ledger:
        held = [Checkpoint.parse(m["ledger"]["checkpoint"]) for m in two_episodes["manifests"]]  # the whole note
        assert [(c.tree_size, c.root_hash) for c in held] == [(m["ledger"]["tree_size"], m["ledger"]["root_hash"])
                                                              for m in two_episodes["manifests"]]
        report = ledger.verify(held=held)  # each manifest's checkpoint is one the log must still extend
        assert report.ok and report.held_checked == 2, report.problems


def test_finance_report_comes_from_the_mlflow_server(two_episodes, mlflow_server) -> None:  # noqa: F811
    from pipeline.finance.report import rows

    data = rows(mlflow_server.url, DRAMA, ledger_url=two_episodes["ledger_url"])
    totals = {r["episode"]: r for r in data if r["stage"] == "TOTAL"}
    assert set(totals) == {"ep01", "ep02"}
    for manifest in two_episodes["manifests"]:
        total = totals[manifest["episode"]]
        assert total["run_id"] == two_episodes["mlflow_runs"][manifest["run_id"]].info.run_id
        stages = {r["stage"] for r in data if r["episode"] == manifest["episode"] and r["stage"] != "TOTAL"}
        assert stages == {"script", "translate", "storyboard", "dub", "video", "edit"}, data
        # the same money as the ledger's cost lines, to the last digit (every total is an exact sum)
        assert Decimal(total["cost.total_cny"]) == Decimal(manifest["cost"]["exact_cny"])


def test_report_command_pulls_from_the_server(two_episodes, mlflow_server, tmp_path) -> None:  # noqa: F811
    import csv

    from tests.tiny_jobs import cli

    out = tmp_path / "report.csv"
    res = cli("report", "--drama", DRAMA, "--format", "csv", "--out", str(out), "--tracking-uri", mlflow_server.url,
              "--ledger", two_episodes["ledger_url"])
    assert res.exit_code == 0, res.output
    with out.open(encoding="utf-8") as fh:
        totals = {r["episode"]: r for r in csv.DictReader(fh) if r["stage"] == "TOTAL"}
    assert {m["episode"]: Decimal(m["cost"]["exact_cny"]) for m in two_episodes["manifests"]} == \
        {e: Decimal(r["cost.total_cny.exact"]) for e, r in totals.items()}


def test_artifacts_are_served_by_the_mlflow_server(two_episodes, mlflow_server) -> None:  # noqa: F811
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url)
    run_id = next(iter(two_episodes["mlflow_runs"].values())).info.run_id
    assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    names = {Path(a.path).name for a in client.list_artifacts(run_id, "episode")}
    assert {"episode.mp4", "manifest.json"} <= names
    assert list(mlflow_server.artifacts.rglob("episode.mp4"))  # landed in --artifacts-destination


APPENDER = textwrap.dedent("""
    import json, os, random, sys, time
    from pathlib import Path
    from pipeline.metering.ledger import Ledger
    url, name, other, go = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    ledger = Ledger.open(url)
    while not go.exists():
        time.sleep(0.01)
    got = {}
    for i in range(40):
        e = ledger.append("usage", {"writer": name, "i": i}, f"{name}/{i}")
        got[e.idempotency_key] = e.index
        if i % 2 == 0:  # both processes also append the same 20 shared keys
            e = ledger.append("usage", {"writer": name, "shared": i}, f"shared/{i}")
            got[e.idempotency_key] = e.index
        deadline = time.monotonic() + 60
        while i in (0, 20) and ledger.find(f"{other}/{i}") is None and time.monotonic() < deadline:
            time.sleep(0.005)  # meet the other writer twice, so neither can finish before the other starts
        time.sleep(random.random() * 0.004)
    print(json.dumps(got))
""")


def test_appends_from_two_processes_interleave_without_duplicates(postgres, tmp_path) -> None:  # noqa: F811
    from pipeline.metering.ledger import Ledger

    url = postgres.create_database("ledger_race")
    Ledger.open(url, tmp_path / "ledger.key").close()  # schema in place before the race
    go = tmp_path / "go"
    env = {**os.environ, "MICRODRAMA_LEDGER_KEY_FILE": str(tmp_path / "ledger.key")}
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, url, name, other, str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, other in (("a", "b"), ("b", "a"))]
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    got_a, got_b = (json.loads(o) for o, _ in outs)
    shared = [f"shared/{i}" for i in range(0, 40, 2)]
    assert [got_a[k] for k in shared] == [got_b[k] for k in shared]  # the loser got the winner's entry back
    with Ledger.open(url, tmp_path / "ledger.key") as ledger:
        ledger.checkpoint()
        assert ledger.verify().ok
        entries = ledger.entries()
    assert len(entries) == 40 + 40 + 20
    assert [e.index for e in entries] == list(range(100))
    assert len({e.idempotency_key for e in entries}) == 100
    writers = [e.body["writer"] for e in entries]
    switches = sum(1 for x, y in zip(writers, writers[1:]) if x != y)
    assert switches >= 3, writers  # the two processes' appends interleave
