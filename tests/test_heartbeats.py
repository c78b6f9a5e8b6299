"""Heartbeat billing without Ray: liveness rows outside the Merkle log, dead attempts found and closed from any
host by heartbeat age, exactly once even with several closers at once (pipeline/metering/attempts.py)."""
from __future__ import annotations

import datetime as dt
import json
import threading
import time
from decimal import Decimal

from pipeline.metering import attempts
from pipeline.metering.ledger import Ledger
from tests.tiny_jobs import check_exactly_once, cli


def _start(led, *, job="run-a", shot="s1", interval=2.0, host="pod-gone", gpus=0.0) -> dict:
    body = attempts.start_body(job=job, drama="d", episode="e1", stage="video", shot=shot, backend="camera-move",
                               attempt=1, gpus=gpus, cpus=1.0, heartbeat_s=interval,
                               driver={"host": host, "pid": 1, "created": 0.0})
    body["node"] = host  # a worker of another host (a KubeRay pod that is gone)
    attempts.begin(led, body)
    return body


def _at(body: dict, seconds: float) -> str:
    return (dt.datetime.fromisoformat(body["started"]) + dt.timedelta(seconds=seconds)).isoformat(
        timespec="microseconds")


def test_heartbeats_stay_out_of_the_log_and_only_move_forward(tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    with Ledger.open(url) as led:
        body = _start(led)
        size, root = led.size(), led.root_hash()
        assert [b.usage_key for b in led.open_heartbeats()] == [body["usage_key"]]
        assert led.heartbeat(body["usage_key"], _at(body, 4.0))
        assert not led.heartbeat(body["usage_key"], _at(body, 2.0))  # a late, older beat never moves it back
        assert not led.heartbeat("run-x/video/s9/attempt-1", _at(body, 2.0))  # no such attempt
        beat = led.heartbeat_of(body["usage_key"])
        assert (beat.beat, beat.beats, beat.interval_s) == (_at(body, 4.0), 1, 2.0)
        assert (led.size(), led.root_hash()) == (size, root)  # liveness is not evidence: the log is unchanged
        assert led.verify().ok


def test_dead_attempt_is_billed_to_its_last_heartbeat_once_by_racing_closers(tmp_path):
    """An attempt of a driver and worker on a host that is gone: its last heartbeat came 8.0 s after its start,
    then silence. Four closers on their own connections race; one closing record, billed 8.0 s, not the
    minutes until anyone noticed."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    with Ledger.open(url) as led:
        dead = _start(led, interval=2.0)
        for k in range(1, 5):
            led.heartbeat(dead["usage_key"], _at(dead, 2.0 * k))
        alive = _start(led, job="run-b", interval=2.0, host="pod-alive")
    now = dt.datetime.fromisoformat(dead["started"]) + dt.timedelta(minutes=5)
    with Ledger.open(url) as led:  # the live attempt beat just now
        led.heartbeat(alive["usage_key"], (now - dt.timedelta(seconds=1)).isoformat(timespec="microseconds"))
    closed, gate = [], threading.Barrier(4)

    def closer(i: int) -> None:
        with Ledger.open(url) as led:
            gate.wait()
            closed.append(attempts.close_dead(led, led, closer=f"closer {i}", now=now))

    threads = [threading.Thread(target=closer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(closed) == [0, 0, 0, 1]
    with Ledger.open(url) as led:
        [record] = [e.body for e in led.entries(kind="usage")]
        assert record["idempotency_key"] == dead["usage_key"] and record["status"] == "failed"
        assert record["wall_s"] == 8.0 and record["ended"] == _at(dead, 8.0)
        assert "last heartbeat" in record["meta"]["wall_s_method"] and "no heartbeat for" in record["error"]
        costs = [e.body for e in led.entries(kind="cost")]
        assert costs and {c["usage_key"] for c in costs} == {dead["usage_key"]}
        assert [b.usage_key for b in led.open_heartbeats()] == [alive["usage_key"]]  # still at work: left alone
        assert led.find(alive["usage_key"]) is None


def test_close_dead_command_closes_from_any_host(tmp_path, monkeypatch):
    """`microdrama ledger close-dead` on a host that never ran the attempt closes it by heartbeat age alone."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    with Ledger.open(url) as led:
        body = _start(led, interval=0.05)  # silent for more than 12 × 0.05 s after this sleep
        led.heartbeat(body["usage_key"], _at(body, 0.05))
    time.sleep(0.8)
    res = cli("ledger", "close-dead", "--ledger", url, "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert [d["usage_key"] for d in out["dead"]] == [body["usage_key"]] and out["closed"] == 0
    res = cli("ledger", "close-dead", "--ledger", url, "--json")
    out = json.loads(res.output)
    assert res.exit_code == 0 and out["closed"] == 1 and out["billed_wall_s"] == {body["usage_key"]: 0.05}
    again = json.loads(cli("ledger", "close-dead", "--ledger", url, "--json").output)
    assert again["dead"] == [] and again["closed"] == 0  # closed once
    check_exactly_once(url)
    monkeypatch.setenv("MICRODRAMA_HEARTBEAT_DEAD_AFTER", "many")
    res = cli("ledger", "close-dead", "--ledger", url)
    assert res.exit_code == 2 and "MICRODRAMA_HEARTBEAT_DEAD_AFTER" in res.output and "Traceback" not in res.output


def test_a_closing_record_keeps_the_gpu_model_the_worker_started_on(tmp_path):
    """A GPU attempt that dies is priced at its GPU's rate (the start entry names the model), not refused."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    with Ledger.open(url) as led:
        body = _start(led, gpus=1.0)
        body_key = body["usage_key"]
        start = led.find(attempts.start_key(body_key)).body
        start["gpu_model"] = "NVIDIA H100 80GB HBM3"  # what NVML names on a KubeRay GPU pod
        led.heartbeat(body_key, _at(body, 3600.0))
        assert attempts.close(led, [start], why="test", ledger=led) == 1
        record = led.find(body_key).body
        [gpu] = [e.body for e in led.entries(kind="cost") if e.body["item"].startswith("gpu-")]
        assert record["gpu_s"] == 3600.0 and gpu["item"] == "gpu-h100" and Decimal(gpu["quantity"]) == 1
