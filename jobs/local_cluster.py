"""A multi-node Ray cluster on one machine — a head and worker raylets started with `ray start --block` — for
tests, benchmarks and trying `microdrama submit` without Kubernetes.

Everything it starts lives in its own temp dir (so `ray.init()` elsewhere never finds it), listens on free
ports, uses token authentication with a fresh token, and is stopped by signalling the `ray start` processes
it started (never `ray stop`, which would stop every Ray instance on the machine).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


# What every node of a cluster should run with (the image sets the same): the head forks a server process for
# each Ray Client session, and gRPC's fork handlers can kill it as it starts (ray-project/ray#63202; 3 to 10
# of 40 sessions, 4 at once, without it; none with it: bench/bench_client_sessions.py).
NODE_ENV = {"GRPC_ENABLE_FORK_SUPPORT": "false"}


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (free when asked; the usual small race applies)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class LocalCluster:
    """`with LocalCluster() as c: c.start_head(...); c.add_worker(...)`; `c.env` is what a client process needs."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mdray-")))  # short: socket paths
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    procs: list[subprocess.Popen] = field(default_factory=list)
    gcs_address: str = ""
    dashboard_url: str = ""
    client_address: str = ""
    node_env: dict[str, str] = field(default_factory=lambda: dict(NODE_ENV))  # what its `ray start`s run with

    def temp_dir(self, name: str) -> Path:
        """One Ray temp dir per node: nodes sharing one would share (and race on) the runtime env folders."""
        return self.root / name

    @property
    def env(self) -> dict[str, str]:
        """Environment for processes that join or talk to this cluster (and for its own processes)."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        bindir = str(Path(sys.executable).parent)
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0",
                   PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1")
        return env

    def _ray(self) -> str:
        found = Path(sys.executable).parent / "ray"
        return str(found) if found.exists() else (shutil.which("ray") or "ray")

    def _start(self, name: str, args: list[str], timeout_s: float) -> None:
        log = self.root / f"{name}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen([self._ray(), "start", "--block", f"--temp-dir={self.temp_dir(name)}",
                                     "--disable-usage-stats", *args], stdout=fh, stderr=subprocess.STDOUT,
                                    env={**self.env, **self.node_env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
                                    start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + timeout_s
        while b"Ray runtime started" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`ray start` ({name}) did not come up; its log {log}:\n"
                                   + log.read_text(errors="replace")[-3000:])
            time.sleep(0.3)

    def start_head(self, num_cpus: int = 1, resources: dict[str, float] | None = None, dashboard: bool = True,
                   timeout_s: float = 120.0) -> None:
        gcs, dash, client, agent = free_ports(4)
        self.gcs_address = f"127.0.0.1:{gcs}"
        self.client_address = f"ray://127.0.0.1:{client}"
        args = ["--head", f"--port={gcs}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
                f"--resources={json.dumps(resources or {})}", f"--ray-client-server-port={client}",
                f"--dashboard-agent-listen-port={agent}", f"--include-dashboard={'true' if dashboard else 'false'}"]
        if dashboard:
            args += ["--dashboard-host=127.0.0.1", f"--dashboard-port={dash}"]
            self.dashboard_url = f"http://127.0.0.1:{dash}"
        self._start("head", args, timeout_s)
        if dashboard:
            self.wait_dashboard(timeout_s)

    def add_worker(self, num_cpus: int = 1, resources: dict[str, float] | None = None,
                   timeout_s: float = 120.0) -> None:
        (agent,) = free_ports(1)
        self._start(f"w{len(self.procs)}", [f"--address={self.gcs_address}", "--node-ip-address=127.0.0.1",
                                   f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources or {})}",
                                   f"--dashboard-agent-listen-port={agent}"], timeout_s)

    def wait_dashboard(self, timeout_s: float = 120.0) -> None:
        """Until the job submission API answers (a 401 means it is up and wants the token)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                req = urllib.request.Request(f"{self.dashboard_url}/api/version",
                                             headers={"Authorization": f"Bearer {self.token}"})
                urllib.request.urlopen(req, timeout=5).read()
                return
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard at {self.dashboard_url} did not answer in {timeout_s:.0f} s")
            time.sleep(0.5)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM each `ray start --block` (workers first): it stops the Ray processes it spawned."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
