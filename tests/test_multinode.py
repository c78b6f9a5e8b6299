"""Two Ray nodes on one machine (a head and a worker raylet, each `ray start` in its own temp dir, run in
subprocesses apart from this session's in-process Ray): `microdrama submit` sends a batch of two episodes as a
Ray job; their stages spread over both nodes, one ledger writer serves the cluster, every usage record is in
the ledger exactly once and the ledger verifies. Then the same batch through Ray Client (ray://) is all cache.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from jobs.local_cluster import LocalCluster
from tests.short_jobs import write_batch

DRAMA = "multinode"
STAGES = ("script", "translate", "storyboard", "dub", "video", "edit")


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster()
    try:
        c.start_head(num_cpus=1, resources={"head_node": 1})
        c.add_worker(num_cpus=1, resources={"render": 2})
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multinode")
    write_batch(tmp / "jobs", DRAMA, 2)
    return {"tmp": tmp, "jobs": tmp / "jobs", "ledger": f"sqlite:///{tmp / 'ledger.db'}",
            "tracking": f"sqlite:///{tmp / 'mlflow.db'}",
            "overrides": [f"output_dir={tmp / 'out'}", f"cache_dir={tmp / 'cache'}",
                          "stages.video.resources={render: 1}",  # video only where `render` is
                          "stages.edit.resources={render: 1}", "stages.edit.num_cpus=0"]}  # and the edit task


def _submit(cluster: LocalCluster, work: dict, address: str, *extra: str, jobs=None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "submit", str(jobs or work["jobs"]), *work["overrides"], "--address", address,
         "--ledger", work["ledger"], "--tracking-uri", work["tracking"], *extra],
        env=cluster.env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def submitted(cluster, work):
    return _submit(cluster, work, cluster.dashboard_url, "--wait", "--min-nodes", "2", "--parallel", "2")


def _usage(work: dict, run_id: str) -> list:
    from pipeline.metering.ledger import Ledger

    with Ledger.open(work["ledger"], create=False) as ledger:
        return ledger.entries(kind="usage", where={"job": run_id})


def test_batch_runs_as_a_ray_job(submitted, work) -> None:
    assert submitted["ok"] is True
    assert [e["status"] for e in submitted["episodes"]] == ["done", "done"]
    for e in submitted["episodes"]:
        assert (work["tmp"] / "out" / DRAMA / e["episode"] / "episode.mp4").stat().st_size > 0
        assert e["mlflow"]["status"] == "logged"
    assert len(submitted["nodes"]) == 2


def test_stages_spread_over_both_nodes(submitted, work) -> None:
    cluster_nodes = {n["node_id"] for n in submitted["nodes"]}
    used = set()
    for e in submitted["episodes"]:
        used |= {u.body["meta"]["ray_node_id"] for u in _usage(work, e["run_id"])}
    assert used == cluster_nodes, (used, cluster_nodes)


def test_a_custom_resource_pins_its_stages_to_the_nodes_that_have_it(submitted, work) -> None:
    (render,) = [n["node_id"] for n in submitted["nodes"] if n["resources"].get("render")]
    for e in submitted["episodes"]:
        video = [u.body for u in _usage(work, e["run_id"]) if u.body["stage"] == "video"]
        assert len(video) == 2 and {u["meta"]["ray_node_id"] for u in video} == {render}
        (edit,) = [u.body for u in _usage(work, e["run_id"]) if u.body["stage"] == "edit"]  # a plain task
        assert edit["meta"]["ray_node_id"] == render


def test_every_usage_record_is_in_the_ledger_exactly_once(submitted, work) -> None:
    from pipeline.metering.ledger import Ledger

    for e in submitted["episodes"]:
        usage = _usage(work, e["run_id"])
        keys = [u.idempotency_key for u in usage]
        expected = {f"{e['run_id']}/{s}/{shot}/attempt-1" for s in STAGES
                    for shot in (["s01-sh01", "s01-sh02"] if s in ("storyboard", "dub", "video") else ["-"])}
        assert sorted(keys) == sorted(expected)  # 9 records, none missing, none twice
        assert [u.body["idempotency_key"] for u in usage] == keys
        assert len(usage) == e["cost"]["usage_records"]
    with Ledger.open(work["ledger"], create=False) as ledger:
        report = ledger.verify()
        assert report.ok, report.problems
        all_keys = [x.idempotency_key for x in ledger.entries()]
        assert len(all_keys) == len(set(all_keys)) == submitted["ledger"]["size"]


NAMED_ACTORS = textwrap.dedent("""
    import json, sys, ray
    ray.init(address=sys.argv[1], log_to_driver=False)
    print(json.dumps([a for a in ray.util.list_named_actors(all_namespaces=True)
                      if a["name"].startswith("microdrama-ledger")]))
""")


def test_one_ledger_writer_serves_the_cluster(submitted, cluster) -> None:
    proc = subprocess.run([sys.executable, "-c", NAMED_ACTORS, cluster.gcs_address], env=cluster.env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    writers = json.loads(proc.stdout.strip().splitlines()[-1])
    assert writers == [{"name": submitted["ledger"]["writer"], "namespace": "microdrama"}]


def test_the_heads_ray_client_proxy_runs_without_grpc_fork_handlers(cluster) -> None:
    """The proxy forks a server per Ray Client session; with gRPC's fork handlers on, 3 to 10 in 40 died as
    they started (ray-project/ray#63202, bench/bench_client_sessions.py). The variable must reach that process."""
    import psutil

    port = cluster.client_address.rsplit(":", 1)[1]
    proxies = []
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        if "ray.util.client.server" in argv and "--mode=proxy" in argv and f"--port={port}" in argv:
            proxies.append(proc.environ())
    assert len(proxies) == 1, proxies
    assert proxies[0].get("GRPC_ENABLE_FORK_SUPPORT") == "false"
    assert proxies[0].get("RAY_AUTH_TOKEN") == cluster.token  # this cluster's head, not another on the machine


def test_ray_client_runs_the_same_batch_from_cache(submitted, cluster, work) -> None:
    again = _submit(cluster, work, cluster.client_address)
    assert again["ok"] is True
    assert again["ledger"]["writer"] == submitted["ledger"]["writer"]  # found the cluster's writer by name
    for e in again["episodes"]:
        assert e["cache"]["all_cached"] is True
        assert all(u.body["cache_hit"] for u in _usage(work, e["run_id"]))


def test_a_single_job_file_is_submitted_as_well(submitted, cluster, work) -> None:
    one = _submit(cluster, work, cluster.dashboard_url, "--wait", jobs=work["jobs"] / "ep02" / "job.yaml")
    assert one["ok"] is True and [e["episode"] for e in one["episodes"]] == ["ep02"]
    assert one["episodes"][0]["cache"]["all_cached"] is True  # the batch rendered it already


def test_submit_checks_jobs_and_urls_before_contacting_the_cluster(tmp_path) -> None:
    import typer

    from pipeline.submit import submit

    app = typer.Typer()
    app.command()(submit)
    write_batch(tmp_path / "jobs", DRAMA, 1)
    (tmp_path / "jobs" / "ep01" / "episode.fountain").unlink()
    bad = CliRunner().invoke(app, [str(tmp_path / "jobs"), "--address", "http://127.0.0.1:9"])
    assert bad.exit_code == 2 and "episode.fountain" in bad.output
    write_batch(tmp_path / "jobs", DRAMA, 1)
    rel = CliRunner().invoke(app, [str(tmp_path / "jobs"), "--address", "http://127.0.0.1:9", "--ledger",
                                   "sqlite:///ledger.db"])
    assert rel.exit_code == 2 and "relative SQLite path" in rel.output
    scheme = CliRunner().invoke(app, [str(tmp_path / "jobs"), "--address", "127.0.0.1:6379"])
    assert scheme.exit_code == 2 and "ray://" in scheme.output


def test_entrypoint_bad_input_exits_2_with_json(tmp_path, capsys) -> None:
    from jobs.entrypoint import main

    assert main([str(tmp_path / "missing.yaml")]) == 2
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["ok"] is False and "no such job file" in doc["errors"][0]


def test_batch_folders_and_duplicate_episodes(tmp_path) -> None:
    from pipeline.batch import find_jobs, load_jobs
    from pipeline.errors import UserError

    paths = write_batch(tmp_path / "batch", DRAMA, 2)
    write_batch(tmp_path / "batch" / "out", DRAMA, 1)  # an output folder's copies are never jobs
    assert find_jobs(tmp_path / "batch") == paths
    twin = tmp_path / "batch" / "zz-twin"
    twin.mkdir()
    (twin / "job.yaml").write_text(paths[0].read_text())
    (twin / "episode.fountain").write_text((paths[0].parent / "episode.fountain").read_text())
    with pytest.raises(UserError, match="also the episode of"):
        load_jobs(find_jobs(tmp_path / "batch"), [])


def test_a_failed_episode_fails_the_batch(tmp_path, monkeypatch) -> None:
    import pipeline.episode
    from pipeline.batch import exit_code, load_jobs, run_one

    (path,) = write_batch(tmp_path, DRAMA, 1)
    (job,) = load_jobs([path], [])

    def broken(*args, **kwargs):
        raise RuntimeError("video[s01-sh02]: out of memory")

    monkeypatch.setattr(pipeline.episode, "run_job", broken)
    item = run_one(path, job, tracking_uri=None, ledger_url="sqlite:///unused.db")
    assert item["status"] == "failed" and "out of memory" in item["error"]
    assert exit_code({"ok": False, "episodes": [item]}) == 1
