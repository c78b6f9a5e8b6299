"""Ray Client sessions the head fails to open: the head forks a server process for each session, and gRPC's fork
handlers in its proxy can kill that process as it starts (ray-project/ray#63202; `bench/bench_client_sessions.py`
measures how often). `init_ray` asks for a new session, which is safe because nothing has run yet, then says
it in one line (exit 4). The cluster's nodes run with GRPC_ENABLE_FORK_SUPPORT=false, which stops the race;
test_multinode checks that the head's proxy really has it.
"""
from __future__ import annotations

import copy
import socket
from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

from pipeline import services
from tests.short_jobs import write_job

ROOT = Path(__file__).resolve().parents[1]
# what Ray Client raises when the head's proxy saw its per-session server die (ray/util/client/worker.py and
# server/proxier.py, Ray 2.60)
SERVER_DIED = ("Initialization failure from server:\nTraceback (most recent call last):\n  File \"…/proxier.py\", "
               "line 772, in Datapath\n    raise RuntimeError(\nRuntimeError: Starting Ray client server failed. "
               "See ray_client_server_23000.err for detailed logs.\n")


class FakeInit:
    """ray.init that fails the first `fails` calls with `error`, then connects; records its calls."""

    def __init__(self, fails: int, error: BaseException):
        self.fails, self.error, self.calls = fails, error, []

    def __call__(self, address=None, **kwargs):
        self.calls.append((address, copy.deepcopy(kwargs)))
        env = kwargs.get("runtime_env")
        if env and "working_dir" in env:  # as Ray does: the folder becomes its uploaded package, excludes go
            env["working_dir"] = "gcs://_ray_pkg_0123456789abcdef.zip"
            env.pop("excludes", None)
        if len(self.calls) <= self.fails:
            raise self.error
        return None


@pytest.fixture(autouse=True)
def shutdowns(monkeypatch):
    """ray.shutdown recorded, not run: this test session's own Ray must stay up."""
    calls = []
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append(1))
    return calls


@pytest.fixture()
def no_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(services.time, "sleep", slept.append)
    return slept


# the proxy's own look at a server that already died (psutil.Process.cmdline() on the zombie)
ZOMBIE = ("Initialization failure from server:\nTraceback (most recent call last):\n  …\npsutil.ZombieProcess: "
          "PID still exists but it's a zombie (pid=1954)\n")


@pytest.mark.parametrize("said", [SERVER_DIED, ZOMBIE])
def test_a_session_whose_server_died_is_asked_for_again(monkeypatch, no_sleep, said) -> None:
    fake = FakeInit(fails=2, error=ConnectionAbortedError(said))
    monkeypatch.setattr(ray, "init", fake)
    env = {"working_dir": "/app", "excludes": [".venv"]}
    services.init_ray("ray://head:10001", namespace="microdrama", runtime_env=env)
    assert len(fake.calls) == 3 and no_sleep == [1.0, 2.0]
    assert env == {"working_dir": "/app", "excludes": [".venv"]}  # each try had its own copy
    assert all(call == ("ray://head:10001", {"namespace": "microdrama", "runtime_env": env}) for call in fake.calls)


def test_a_head_that_never_opens_a_session_is_one_line_naming_the_address_and_the_fix(monkeypatch, no_sleep,
                                                                                     shutdowns) -> None:
    fake = FakeInit(fails=99, error=ConnectionAbortedError(SERVER_DIED))
    monkeypatch.setattr(ray, "init", fake)
    with pytest.raises(services.Unreachable) as caught:
        services.init_ray("ray://head:10001", "--address")
    assert len(fake.calls) == services.CLIENT_SESSION_TRIES == 3
    assert shutdowns == [1]  # client mode is left: the process is not half-connected afterwards
    text = str(caught.value)
    assert "\n" not in text and caught.value.exit_code == 4
    assert text.startswith("--address ray://head:10001: Ray Client could not open a session (3 tries): "
                           "RuntimeError: Starting Ray client server failed.")
    assert "GRPC_ENABLE_FORK_SUPPORT=false" in text and "ray_client_server" in text
    assert "for detailed logs; the head's" in text  # one sentence: Ray's closing period gives way to the hint


def test_other_session_failures_are_not_asked_for_again(monkeypatch, no_sleep) -> None:
    fake = FakeInit(fails=99, error=ConnectionAbortedError("Initialization failure from server:\nRuntimeError: "
                                                           "Proxy failed to Connect to backend!"))
    monkeypatch.setattr(ray, "init", fake)
    with pytest.raises(services.Unreachable, match=r"Proxy failed to Connect to backend!; the head's "
                                                   r"ray_client_server\*\.err logs .* say why, or submit through"):
        services.init_ray("ray://head:10001")
    assert len(fake.calls) == 1 and no_sleep == []


@pytest.mark.parametrize("address", [None, "auto", "127.0.0.1:6379"])
def test_addresses_that_are_not_ray_client_go_straight_to_ray_init(monkeypatch, no_sleep, address) -> None:
    fake = FakeInit(fails=1, error=ConnectionError("GCS unreachable"))
    monkeypatch.setattr(ray, "init", fake)
    with pytest.raises(ConnectionError, match="GCS unreachable"):  # unchanged: not a Ray Client session
        services.init_ray(address, namespace="x")
    assert fake.calls == [(address, {"namespace": "x"})]


def test_submit_through_ray_client_says_it_in_one_line_and_exits_4(monkeypatch, no_sleep, tmp_path) -> None:
    from pipeline import cli as cli_mod

    job = write_job(tmp_path / "jobs", "client", "ep01")
    fake = FakeInit(fails=99, error=ConnectionAbortedError(SERVER_DIED))
    monkeypatch.setattr(ray, "init", fake)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # this test session's own Ray stays as it is
    if not any(c.name == "submit" for c in cli_mod.app.registered_commands):
        cli_mod._mount()
    with socket.socket() as head:  # the address must accept TCP (checked first, exit 4 in seconds otherwise)
        head.bind(("127.0.0.1", 0))
        head.listen()
        address = f"ray://127.0.0.1:{head.getsockname()[1]}"
        res = CliRunner().invoke(cli_mod.app, ["submit", str(job), f"output_dir={tmp_path / 'out'}",
                                               "--address", address])
    assert res.exit_code == 4, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "Traceback" not in res.output and "error:" in res.output
    assert f"{address}: Ray Client could not open a session (3 tries)" in " ".join(res.output.split())
    assert len(fake.calls) == 3 and not (tmp_path / "out").exists()


def test_the_image_and_local_clusters_run_nodes_without_grpc_fork_handlers() -> None:
    from jobs.local_cluster import NODE_ENV, LocalCluster

    assert NODE_ENV == {"GRPC_ENABLE_FORK_SUPPORT": "false"}
    assert LocalCluster.__dataclass_fields__["node_env"].default_factory() == NODE_ENV
    dockerfile = (ROOT / "Dockerfile").read_text("utf-8")
    base = dockerfile.split("FROM debian", 1)[1].split("\nFROM ", 1)[0]  # the stage every image builds on
    assert "GRPC_ENABLE_FORK_SUPPORT=false" in base


def test_run_on_a_cluster_uploads_the_project_as_submit_does(monkeypatch) -> None:
    """`run --address ray://…` carries the project to the cluster with submit's excludes: never a signing key,
    a database or a venv (it had its own shorter list, which uploaded *.key files)."""
    from pipeline.runner import ensure_ray
    from pipeline.submit import EXCLUDES

    fake = FakeInit(fails=0, error=ConnectionError())
    monkeypatch.setattr(ray, "init", fake)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    ensure_ray("ray://head:10001")
    ((address, kwargs),) = fake.calls
    assert address == "ray://head:10001" and kwargs["runtime_env"]["working_dir"] == str(ROOT)
    assert kwargs["runtime_env"]["excludes"] == EXCLUDES and {"*.key", "*.db", ".venv"} <= set(EXCLUDES)
