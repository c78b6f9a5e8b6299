"""Ray Client sessions a head opens, with and without GRPC_ENABLE_FORK_SUPPORT=false on its nodes.

    python -m bench.bench_client_sessions                 # 40 sessions, 4 at once, each way
    python -m bench.bench_client_sessions --sessions 100  # more, for a rarer failure

Writes bench/results/client_sessions.json. For each way a fresh `jobs.local_cluster.LocalCluster` head (one
raylet, token auth) is started, and `--sessions` client processes connect to it through ray://, `--at-once`
at a time, each as `microdrama submit ray://…` does (`pipeline.services.init_ray` with the project as the
runtime env, made to try once), and run one task. Counted: sessions that failed, by what the client was told:
the head saw the session's server die as it started ("Starting Ray client server failed", or psutil finding
it a zombie) — ray-project/ray#63202, a gRPC fork race in the head's Ray Client proxy — or never heard from it
("Proxy failed to Connect to backend", after 30 s: the race once the server is running, or any other server
that never answers). The "without" run takes the variable out of the environment too (the image sets it).
This is the figure that says whether the nodes still need the variable after a Ray upgrade.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

from jobs.local_cluster import NODE_ENV, LocalCluster
from pipeline.services import CLIENT_SERVER_DIED

RESULTS = Path(__file__).resolve().parent / "results" / "client_sessions.json"
ROOT = Path(__file__).resolve().parents[1]
# what a failed session's client says: the head saw its server die as it started, or never heard from it (30 s)
REASONS = (*CLIENT_SERVER_DIED, "Proxy failed to Connect to backend")

CLIENT = """
import sys
sys.path.insert(0, sys.argv[2])
import ray
from pipeline import services
from pipeline.submit import ROOT, runtime_env

services.CLIENT_SESSION_TRIES = 1  # count every failed session: no second try
services.init_ray(sys.argv[1], namespace="microdrama", runtime_env=runtime_env(ROOT, {}))
print("ok", ray.get(ray.remote(lambda: 1).remote()))
"""


def run_way(node_env: dict[str, str], sessions: int, at_once: int) -> dict[str, Any]:
    inherited = {k: os.environ.pop(k) for k in NODE_ENV if k not in node_env and k in os.environ}  # (the image
    cluster = LocalCluster(node_env=dict(node_env))                                               # sets them)
    head_env = {k: {**cluster.env, **cluster.node_env}.get(k, "(unset)") for k in NODE_ENV}
    try:
        cluster.start_head(num_cpus=1)

        def one(_: int) -> tuple[int, str]:
            proc = subprocess.run([sys.executable, "-c", CLIENT, cluster.client_address, str(ROOT)],
                                  env=cluster.env, capture_output=True, text=True, timeout=300)
            if not proc.returncode:
                return 0, ""
            last = ([line.strip() for line in proc.stderr.splitlines() if line.strip()] or ["(nothing)"])[-1]
            return proc.returncode, next((r for r in REASONS if r in proc.stderr), f"other: {last[:200]}")

        start = time.monotonic()
        with ThreadPoolExecutor(at_once) as pool:
            results = list(pool.map(one, range(sessions)))
        wall = time.monotonic() - start
    finally:
        cluster.stop()
        os.environ.update(inherited)
    return {"head_env": head_env, "sessions": sessions, "at_once": at_once,
            "failed": sum(1 for code, _ in results if code),
            "failed_by_reason": dict(Counter(reason for code, reason in results if code)),
            "wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_client_sessions")
    ap.add_argument("--sessions", type=int, default=40)
    ap.add_argument("--at-once", type=int, default=4)
    a = ap.parse_args(argv if argv is not None else [])
    result = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, Python {platform.python_version()}",
              "ray": version("ray"), "grpcio": version("grpcio"),
              "without": run_way({}, a.sessions, a.at_once),
              "with": run_way(NODE_ENV, a.sessions, a.at_once)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n", "utf-8")
    print(json.dumps(result, indent=1), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
