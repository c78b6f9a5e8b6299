"""Faults survived: a worker killed mid-stage, the driver killed mid-episode, a process killed mid-append,
a full disk or unwritable output folder, MLflow unreachable. Nothing lost, nothing billed twice."""
from __future__ import annotations

import json
import os
from decimal import Decimal
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipeline.job import load_job
from pipeline.money import exact_sum
from tests import fault_backends  # noqa: F401  (registers the test-* backends)
from tests.tiny_jobs import check_exactly_once, cli, ledger_entries, places, write_job

ROOT = Path(__file__).resolve().parents[1]


def urls(work: Path) -> dict[str, str]:
    return {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "ledger_url": f"sqlite:///{work / 'ledger.db'}"}


def stage_usage(url: str, stage: str) -> list[dict]:
    return sorted((e.body for e in ledger_entries(url, "usage", stage=stage)), key=lambda b: b["attempt"])


# ---------------------------------------------------------------- 1. a worker killed mid-stage

HEARTBEAT_S = 0.5  # the tests' heartbeat interval (production: 2 s)


@pytest.mark.parametrize("backend", ["test-kill-once", "test-kill-once-resident"])
def test_killed_worker_is_retried_and_billed_to_its_last_heartbeat(tmp_path, ray_session, backend,
                                                                  monkeypatch) -> None:
    """Two shots; the second video to start waited in Ray's queue behind the first, works 2.5 s, then SIGKILLs
    its worker (a killed actor, for the resident backend). Ray re-runs the task (restarts the actor); the
    episode finishes. The killed attempt is billed once, from its start on the worker to its last heartbeat:
    within one heartbeat interval of the work it did, none of the time it queued, no detection delay."""
    import datetime as dt

    from pipeline.episode import run_job
    from pipeline.metering.ledger import Ledger

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact folder (./mlruns)
    monkeypatch.setenv("MICRODRAMA_HEARTBEAT_S", str(HEARTBEAT_S))
    marker = tmp_path / "killed.json"
    video = {"backend": backend, "options": {"marker": str(marker), "work_s": 2.5, "kill_at": 2, "delay_s": 1.0}}
    if backend == "test-kill-once":
        video["num_cpus"] = 2  # the two video tasks run one after the other: the second queues
    job = load_job(write_job(tmp_path / "job", shots=2, stages={"video": video}), places(tmp_path))
    env = urls(tmp_path)
    manifest = run_job(job, quiet=True, **env)

    assert (job.out_path / "episode.mp4").is_file() and len(manifest["shots"]) == 2
    killed = json.loads(marker.read_text())
    usage = stage_usage(env["ledger_url"], "video")
    [dead] = [u for u in usage if u["status"] == "failed"]
    assert sorted((u["shot"], u["attempt"], u["status"]) for u in usage if u["shot"] == dead["shot"]) == [
        (dead["shot"], 1, "failed"), (dead["shot"], 2, "ok")]
    assert dead["error"].startswith("WorkerDied:") and dead["meta"]["pid"] == str(killed["pid"])
    assert dead["cpu_s"] == 0.0 and "last heartbeat" in dead["meta"]["wall_s_method"]
    starts = {(e.body["shot"], e.body["attempt"]): e.body
              for e in ledger_entries(env["ledger_url"], "attempt", stage="video")}
    start = starts[(dead["shot"], 1)]
    assert start["pid"] == killed["pid"] and starts[(dead["shot"], 2)]["ray_attempt"] == 1  # Ray's retry
    began = dt.datetime.fromisoformat(start["started"]).timestamp()
    real = killed["killed_at"] - began  # the work the killed attempt did, on its worker's clock
    assert real >= 2.5
    assert real - HEARTBEAT_S - 0.25 <= dead["wall_s"] <= real + 1e-3, (dead["wall_s"], real)
    # it queued behind the other shot's video: that wait is not billed
    other = [u for u in usage if u["shot"] != dead["shot"]][0]
    assert began >= dt.datetime.fromisoformat(other["ended"]).timestamp() - 1e-3
    submitted = dt.datetime.fromisoformat(stage_usage(env["ledger_url"], "translate")[0]["ended"]).timestamp()
    assert began - submitted > 1.0 and dead["wall_s"] < killed["killed_at"] - submitted - 1.0
    with Ledger.open(env["ledger_url"]) as led:
        beat = led.heartbeat_of(dead["idempotency_key"])
        assert beat.beats >= 3 and beat.interval_s == HEARTBEAT_S and led.open_heartbeats() == []
    by_key = check_exactly_once(env["ledger_url"])
    assert len(by_key) == manifest["cost"]["usage_records"] == 10  # 9 executions + the killed attempt
    billed = {e.body["usage_key"] for e in ledger_entries(env["ledger_url"], "cost")}
    assert dead["idempotency_key"] in billed  # the killed attempt is billed, once
    assert manifest["attempts"]["retried"] == 1
    assert cli("ledger", "verify", "--ledger", env["ledger_url"]).exit_code == 0


def test_a_replica_lost_for_good_hands_its_shot_to_a_new_one(tmp_path, ray_session, monkeypatch) -> None:
    """The video replica dies three times under the same shot: Ray restarts it twice and retries the shot on
    it, then gives the actor up. The pool sends the shot back to its queue, a new replica runs it, and the
    episode finishes. Each dead attempt is closed and billed once, numbered before the one that worked."""
    from pipeline.episode import run_job

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MICRODRAMA_HEARTBEAT_S", str(HEARTBEAT_S))
    marker = tmp_path / "kills"
    video = {"backend": "test-kill-replica", "options": {"marker": str(marker), "kills": 3}}
    job = load_job(write_job(tmp_path / "job", shots=1, stages={"video": video}), places(tmp_path))
    env = urls(tmp_path)
    manifest = run_job(job, quiet=True, **env)

    assert (job.out_path / "episode.mp4").is_file()
    pids = {(tmp_path / f"kills.pid-{i}").read_text() for i in (1, 2, 3)}
    assert len(pids) == 3  # three processes of the replica died: two restarts, then it was given up
    usage = stage_usage(env["ledger_url"], "video")
    assert [(u["attempt"], u["status"]) for u in usage] == [(1, "failed"), (2, "failed"), (3, "failed"), (4, "ok")]
    assert all(u["error"].startswith("WorkerDied:") for u in usage[:3])
    by_key = check_exactly_once(env["ledger_url"])
    assert len(by_key) == manifest["cost"]["usage_records"]
    billed = {e.body["usage_key"] for e in ledger_entries(env["ledger_url"], "cost")}
    assert {u["idempotency_key"] for u in usage} <= billed


# ---------------------------------------------------------------- 2. the driver killed mid-episode

def test_killed_driver_resumes_from_cache_and_bills_once(tmp_path, ray_session, monkeypatch) -> None:
    """`microdrama run` is SIGKILLed after some shots finished; running it again finishes the episode."""
    monkeypatch.chdir(tmp_path)
    shots = 4
    path = write_job(tmp_path / "job", shots=shots, stages={"video": {"backend": "test-slow",
                                                                       "options": {"delay_s": 2.0, "stagger": True}}})
    env = urls(tmp_path)
    args = ["run", str(path), *places(tmp_path), "--quiet", "--ledger", env["ledger_url"],
            "--tracking-uri", env["tracking_uri"]]
    out = load_job(path, places(tmp_path)).out_path
    child_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    child_env["PYTHONPATH"] = str(ROOT)  # the driver and its workers import tests.fault_backends
    boot = "import sys, tests.fault_backends; from pipeline.cli import main; sys.argv[0] = 'microdrama'; main()"
    proc = subprocess.Popen([sys.executable, "-c", boot, *args], cwd=tmp_path, env=child_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cluster: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            assert not out.exists(), "the output folder appeared before the run finished"
            if (tmp_path / "ledger.db").exists() and len(_ok(env["ledger_url"], "video")) >= 1:
                break
            time.sleep(0.3)
        assert proc.poll() is None, "the run ended before it could be killed"
        cluster = psutil.Process(proc.pid).children(recursive=True)  # the local Ray cluster it started
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: workers may still finish and write records
        proc.wait(timeout=30)
    finally:
        _reap(proc, cluster)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*"))  # nothing looks finished

    first = ledger_entries(env["ledger_url"], "usage")
    first_run = {u.body["job"] for u in first}.pop()
    finished = {(u.body["stage"], u.body["shot"]) for u in first if u.body["status"] == "ok"}
    assert any(stage == "video" for stage, _ in finished)
    open_starts = [e.body for e in ledger_entries(env["ledger_url"], "attempt", job=first_run)
                   if not any(u.idempotency_key == e.body["usage_key"] for u in first)]

    assert open_starts, "no attempt was under way when the driver died"
    res = cli(*args)
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["shots"]) == shots
    by_key = check_exactly_once(env["ledger_url"])  # one record per attempt of both runs, none twice
    second = [u for u in by_key.values() if u["job"] == manifest["run_id"]]
    resumed = {(u["stage"], u["shot"]) for u in second if u["cache_hit"]}
    assert finished <= resumed  # what the killed run finished is served from the cache
    for s in open_starts:  # the killed run's attempts in flight are billed once, as dead
        u = by_key[s["usage_key"]]
        assert u["status"] == "failed" and "driver of run" in u["error"], u
    again = [u for u in by_key.values() if u["job"] == first_run and u["status"] == "ok"]
    assert {(u["stage"], u["shot"]) for u in again} == finished
    assert cli("ledger", "verify", "--ledger", env["ledger_url"]).exit_code == 0


def test_stopped_driver_closes_and_bills_its_open_attempts(tmp_path, ray_session, monkeypatch) -> None:
    """`ray job stop` sends the driver SIGTERM: it stops waiting, cancels its executions, closes every open
    attempt (billed to its last heartbeat), signs a checkpoint and exits 143, without any later run's help."""
    from pipeline.metering.ledger import Ledger

    monkeypatch.chdir(tmp_path)
    path = write_job(tmp_path / "job", shots=3, stages={"video": {"backend": "test-slow",
                                                                   "options": {"delay_s": 3.0, "stagger": True}}})
    env = urls(tmp_path)
    out = load_job(path, places(tmp_path)).out_path
    child_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    child_env.update(PYTHONPATH=str(ROOT), MICRODRAMA_HEARTBEAT_S="0.5")
    boot = "import sys, tests.fault_backends; from pipeline.cli import main; sys.argv[0] = 'microdrama'; main()"
    proc = subprocess.Popen([sys.executable, "-c", boot, "run", str(path), *places(tmp_path), "--quiet",
                             "--ledger", env["ledger_url"], "--tracking-uri", env["tracking_uri"]], cwd=tmp_path,
                            env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    cluster: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if (tmp_path / "ledger.db").exists() and _started(env["ledger_url"], "video") >= 2:
                break
            time.sleep(0.3)
        assert proc.poll() is None, "the run ended before it could be stopped"
        time.sleep(1.2)  # a few heartbeats into the video stage
        cluster = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, signal.SIGTERM)  # what `ray job stop` does to the entrypoint
        output = proc.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        _reap(proc, cluster)
    assert proc.returncode == 143, output[-3000:]
    assert "stopped:" in output and "Traceback" not in output, output[-3000:]
    assert not out.exists()
    by_key = check_exactly_once(env["ledger_url"])  # every attempt that started has its one record: none open
    dead = [u for u in by_key.values() if u["status"] == "failed"]
    assert dead and all("last heartbeat" in u["meta"]["wall_s_method"] for u in dead)
    with Ledger.open(env["ledger_url"]) as led:
        assert led.open_heartbeats() == []
        assert led.latest_checkpoint().tree_size == led.size()  # the stop was signed, closing records included
    assert cli("ledger", "verify", "--ledger", env["ledger_url"]).exit_code == 0


def _started(url: str, stage: str) -> int:
    try:
        return len(ledger_entries(url, "attempt", stage=stage))
    except Exception:  # the driver is creating the ledger right now
        return 0


def _ok(url: str, stage: str) -> list[dict]:
    try:
        return [e.body for e in ledger_entries(url, "usage", stage=stage) if e.body["status"] == "ok"]
    except Exception:  # the driver is creating the ledger right now
        return []


def _reap(proc: subprocess.Popen, cluster: list[psutil.Process]) -> None:
    """Kill what is left of the killed driver's Ray cluster (GCS, raylet and every worker under it — workers
    rename themselves ray::…, so they are found as descendants, not by name) and wait until all are gone."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)
    doomed = {p.pid: p for p in cluster}
    for p in cluster:
        try:
            doomed.update((c.pid, c) for c in p.children(recursive=True))
        except psutil.Error:
            pass
    for p in doomed.values():
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(doomed.values()), timeout=30)


# ---------------------------------------------------------------- 3. a process killed during a ledger append

APPEND = """
import os, signal, sys
from pipeline.metering import ledger_store
from pipeline.metering.ledger import Ledger
led = Ledger.open(sys.argv[1])
led.append_many([("usage", {"n": i}, f"before/{i}") for i in range(3)])
led.checkpoint()
mode, inserted = sys.argv[2], []
real = ledger_store.Tx.insert
def insert(self, row):
    real(self, row)
    inserted.append(row)
    if mode == "mid" and len(inserted) == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # inside the transaction: rows 0-2 of 5 written, not committed
ledger_store.Tx.insert = insert
led.append_many([("usage", {"n": i}, f"batch/{i}") for i in range(5)])
os.kill(os.getpid(), signal.SIGKILL)  # mode "after": committed, killed before anyone heard back
"""


@pytest.mark.parametrize("mode", ["mid", "after"])
def test_process_killed_during_ledger_append(tmp_path, mode) -> None:
    from pipeline.metering.ledger import Ledger

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    proc = subprocess.run([sys.executable, "-c", APPEND, url, mode], cwd=ROOT, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    batch = [("usage", {"n": i}, f"batch/{i}") for i in range(5)]
    with Ledger.open(url) as led:
        report = led.verify()
        assert report.ok, report.problems
        assert led.size() == (3 if mode == "mid" else 8)  # all of the append, or none of it
        old = led.latest_checkpoint()
        led.append_many(batch)  # the resumed writer sends the same keys again
        led.append_many(batch)
        assert led.size() == 8
        assert sorted(e.idempotency_key for e in led.entries()) == sorted(
            [f"before/{i}" for i in range(3)] + [f"batch/{i}" for i in range(5)])
        new = led.checkpoint()
        assert led.verify().ok
        from pipeline.metering.ledger import verify_checkpoint_consistency

        proof = led.consistency_proof(old.tree_size, new.tree_size)
        assert verify_checkpoint_consistency(old, new, proof, led.public_key())


# ---------------------------------------------------------------- 4. unwritable output folder, full disk

def _mount_tmpfs(where: Path, *options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(where)],
                              capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=20)


def test_unwritable_output_dir_is_refused_up_front(tmp_path) -> None:
    path = write_job(tmp_path / "job")
    (tmp_path / "a-file").write_text("not a folder")
    res = cli("run", str(path), f"output_dir={tmp_path / 'a-file' / 'out'}", f"cache_dir={tmp_path / 'cache'}")
    assert res.exit_code == 2 and "output_dir:" in res.output and "is a file" in res.output, res.output
    assert "Traceback" not in res.output

    ro = tmp_path / "ro"
    if os.geteuid() == 0:
        if not _mount_tmpfs(ro, "ro", "size=64k"):
            pytest.skip("root without mount: cannot make a folder root may not write to")
    else:
        ro.mkdir()
        ro.chmod(0o500)
    try:
        res = cli("validate", str(path), f"output_dir={ro / 'out'}", f"cache_dir={tmp_path / 'cache'}")
        assert res.exit_code == 2 and "output_dir: cannot write to" in res.output, res.output
        res = cli("run", str(path), f"output_dir={ro}", f"cache_dir={tmp_path / 'cache'}")
        assert res.exit_code == 2 and "read-only" in res.output and not (tmp_path / "cache").exists()
    finally:
        _umount(ro) if os.geteuid() == 0 else ro.chmod(0o700)


def test_full_disk_mid_stage_fails_cleanly(tmp_path, ray_session) -> None:
    """A stage hits ENOSPC: exit 1 naming the path, no half-written build left, nothing published."""
    path = write_job(tmp_path / "job", stages={"video": {"backend": "test-no-space", "max_retries": 0}})
    env = urls(tmp_path)
    res = cli("run", str(path), *places(tmp_path), "--quiet", "--ledger", env["ledger_url"],
              "--tracking-uri", env["tracking_uri"])
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert "no space left on device writing" in text and "s01-sh01.mkv" in text and "Traceback" not in text
    job = load_job(path, places(tmp_path))
    assert not job.out_path.exists() and not list(job.out_path.parent.glob(".*"))
    assert not list((tmp_path / "cache" / "tmp").iterdir())  # the failed build was removed
    assert [u["status"] for u in stage_usage(env["ledger_url"], "video")] == ["failed"]
    check_exactly_once(env["ledger_url"])


def test_full_disk_at_publish_fails_cleanly(tmp_path, ray_session) -> None:
    """A real full disk: output_dir on a 16 KB tmpfs; the episode renders, publishing it cannot fit."""
    if os.geteuid() != 0 or not _mount_tmpfs(tmp_path / "small", "size=16k"):
        pytest.skip("needs root and tmpfs to make a tiny disk")
    try:
        path = write_job(tmp_path / "job")
        env = urls(tmp_path)
        res = cli("run", str(path), f"output_dir={tmp_path / 'small'}", f"cache_dir={tmp_path / 'cache'}",
                  "--quiet", "--ledger", env["ledger_url"], "--tracking-uri", env["tracking_uri"])
        text = " ".join(res.output.split())
        assert res.exit_code == 1 and "no space left on device writing" in text, res.output
        assert str(tmp_path / "small") in text and "Traceback" not in text
        assert list((tmp_path / "small").rglob("*")) == [tmp_path / "small" / "fault-drama"]  # no episode
    finally:
        _umount(tmp_path / "small")
    assert cli("ledger", "verify", "--ledger", env["ledger_url"]).exit_code == 0  # every stage billed, signed


# ---------------------------------------------------------------- 5. MLflow unreachable

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVER = """
import sys
from mlflow.server import app
from werkzeug.serving import make_server
make_server("127.0.0.1", int(sys.argv[1]), app, threaded=True).serve_forever()
"""


def test_mlflow_unreachable_queues_then_flushes_marked_delayed(tmp_path, ray_session, monkeypatch) -> None:
    from pipeline.finance.report import rows
    from pipeline.metering.mlflow_queue import reachable

    port = _free_port()
    uri = f"http://alice:pw-{port}-never-on-disk@127.0.0.1:{port}"  # credentials in the URI stay out of the queue
    monkeypatch.setenv("MICRODRAMA_MLFLOW_QUEUE", str(tmp_path / "queue"))
    path = write_job(tmp_path / "job")
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    started = time.monotonic()
    res = cli("run", str(path), *places(tmp_path), "--quiet", "--ledger", ledger, "--tracking-uri", uri)
    assert res.exit_code == 0, res.output
    assert time.monotonic() - started < 90  # not MLflow's four minutes of HTTP retries
    manifest = json.loads((load_job(path, places(tmp_path)).out_path / "manifest.json").read_text())
    queued = list((tmp_path / "queue").glob("*.json"))
    payload = json.loads(queued[0].read_text()) if len(queued) == 1 else {}
    assert payload["manifest"]["run_id"] == manifest["run_id"] and "does not answer" in payload["reason"]
    assert payload["tracking_uri"] == f"http://127.0.0.1:{port}" and "never-on-disk" not in queued[0].read_text()
    assert "1 run(s) queued" in cli("mlflow", "pending").output
    assert cli("mlflow", "flush").exit_code == 1  # still down: kept

    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], cwd=tmp_path, env={
        **os.environ, "_MLFLOW_SERVER_FILE_STORE": f"sqlite:///{tmp_path / 'server.db'}",
        "_MLFLOW_SERVER_ARTIFACT_ROOT": str(tmp_path / "artifacts"), "_MLFLOW_SERVER_SERVE_ARTIFACTS": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not reachable(uri, 1.0) and time.monotonic() < deadline:
            assert server.poll() is None, "the MLflow server did not start"
            time.sleep(0.5)
        # the next run to the same server flushes the queue before logging itself
        second = write_job(tmp_path / "job2", episode="ep02")
        res = cli("run", str(second), *places(tmp_path), "--quiet", "--ledger", ledger, "--tracking-uri", uri)
        assert res.exit_code == 0, res.output
        assert not queued[0].exists() and "0 run(s) queued" in cli("mlflow", "pending").output
        flushed = cli("mlflow", "flush")
        assert flushed.exit_code == 0 and "0 run(s) flushed, 0 still queued" in flushed.output, flushed.output
        report = rows(uri, "fault-drama", ledger_url=ledger)
    finally:
        server.terminate()
        server.wait(timeout=30)
    total = {r["episode"]: r for r in report if r["stage"] == "TOTAL"}
    assert sorted(total) == ["ep01", "ep02"]
    assert {r["delayed"] for r in report if r["episode"] == "ep01"} == {payload["queued_at"]}  # finance sees
    assert {r["delayed"] for r in report if r["episode"] == "ep02"} == {""}                  # which came late
    ledger_total = exact_sum(e.body["amount"] for e in ledger_entries(ledger, "cost", episode="ep01"))
    assert Decimal(total["ep01"]["cost.total_cny"]) == ledger_total  # to the last digit the ledger carries

