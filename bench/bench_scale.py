"""Scale-out benchmark: short episodes per hour on a 1-node vs a 2-node Ray cluster, and ledger appends per
second on SQLite vs PostgreSQL.

    python -m bench.bench_scale                        # tiny profile, 6 episodes per size, best of 2; 400 appends
    python -m bench.bench_scale --quick                # 2 episodes, 100 appends
    python -m bench.bench_scale --profile preview-cpu  # the model-free preview instead

Writes bench/results/scale.json. The cluster is `jobs.local_cluster.LocalCluster` (each node a raylet with
`--num-cpus=1`, on this one machine). The same batch (2 shots; tiny profile at 144×256: tiny random FLUX, Wan2.1,
VITS and Marian in resident actors, or preview-cpu at 270×480) runs through the Ray job
entrypoint with a fresh cache for each run, so every run does the same work, after a warm-up batch (Ray
worker processes started and imports done on every node); the fastest of --repeats runs counts.
Episodes per hour = episodes / batch wall time (connection and cluster start excluded). On one machine the nodes share its cores (ffmpeg's
own threads too), so the ratio shows how well stage tasks spread over raylets, not what new hardware adds.
Ledger appends: one `Ledger.append` per transaction (the writer actor's unit of work: durable before the stage
returns) and `append_many` of 3 (a usage record + its cost lines), SQLite WAL with synchronous=FULL vs
PostgreSQL 15 with fsync and synchronous_commit on, both on this machine's disk.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jobs.local_cluster import LocalCluster
from tests.short_jobs import write_batch

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
ROOT = Path(__file__).resolve().parents[1]


def time_batch(cluster: LocalCluster, jobs: Path, work: Path, tag: str, parallel: int) -> dict:
    """One batch through `python -m jobs.entrypoint` as a driver connected to the cluster."""
    env = {**cluster.env, "RAY_ADDRESS": cluster.gcs_address}
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.entrypoint", str(jobs), "--parallel", str(parallel),
         "--set", f"output_dir={work / tag / 'out'}", "--set", f"cache_dir={work / tag / 'cache'}",
         "--ledger", f"sqlite:///{work / 'ledger.db'}", "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"batch {tag} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    used = set()
    from pipeline.metering.ledger import Ledger

    with Ledger.open(f"sqlite:///{work / 'ledger.db'}", create=False) as ledger:
        for e in summary["episodes"]:
            used |= {u.body["meta"].get("ray_node_id") for u in ledger.entries(kind="usage", where={"job": e["run_id"]})}
    n = len(summary["episodes"])
    return {"episodes": n, "nodes": len(summary["nodes"]), "nodes_used": len(used - {None}),
            "batch_wall_s": summary["wall_s"], "episodes_per_hour": round(n / summary["wall_s"] * 3600, 1),
            "episode_wall_s": [e["wall_s"] for e in summary["episodes"]],
            "output_seconds": sum(e["duration_s"] for e in summary["episodes"])}


def best_of(cluster: LocalCluster, work: Path, tag: str, parallel: int, repeats: int) -> dict:
    """A warm-up batch (workers started, imports done), then `repeats` timed batches, each with a fresh
    cache; the fastest counts (the machine is shared: slower repeats measure other load)."""
    time_batch(cluster, work / "warmup", work, f"{tag}-warmup", parallel)
    runs = [time_batch(cluster, work / "jobs", work, f"{tag}-{i}", parallel) for i in range(repeats)]
    best = min(runs, key=lambda r: r["batch_wall_s"])
    return {**best, "repeats_wall_s": [r["batch_wall_s"] for r in runs]}


def bench_cluster(episodes: int, parallel: int, repeats: int, profile: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        write_batch(work / "jobs", "bench-scale", episodes, profile=profile)
        write_batch(work / "warmup", "bench-warmup", 2, start=episodes, profile=profile)
        with LocalCluster() as cluster:
            cluster.start_head(num_cpus=1, dashboard=False)
            one = best_of(cluster, work, "one-node", parallel, repeats)
            cluster.add_worker(num_cpus=1)
            two = best_of(cluster, work, "two-nodes", parallel, repeats)
        return {"profile": profile, "one_node": one, "two_nodes": two,
                "ratio_two_over_one": round(two["episodes_per_hour"] / one["episodes_per_hour"], 3)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def append_rate(url: str, n: int, batch: int, key_file: Path, repeats: int = 3) -> dict:
    """n entries, `batch` per transaction; the fastest of `repeats` rounds counts."""
    from pipeline.metering.ledger import Ledger

    with Ledger.open(url, key_file) as ledger:
        times = []
        for r in range(repeats):
            prefix = f"bench-{batch}-{r}-{time.monotonic_ns()}"
            body = {"job": prefix, "stage": "video", "wall_s": 1.25, "cpu_s": 1.0, "ai_usage": [], "node": "n1"}
            ledger.append("usage", body, f"{prefix}/warmup")
            t0 = time.perf_counter()
            for i in range(0, n, batch):
                items = [("usage", {**body, "i": i + j}, f"{prefix}/{i + j}") for j in range(batch)]
                ledger.append_many(items) if batch > 1 else ledger.append(*items[0])
            times.append(time.perf_counter() - t0)
    elapsed = min(times)
    return {"entries": n, "per_transaction": batch, "seconds": round(elapsed, 3),
            "rounds_s": [round(t, 3) for t in times],
            "entries_per_s": round(n / elapsed, 1), "transactions_per_s": round(n / batch / elapsed, 1)}


def bench_ledger(n: int) -> dict:
    from tests.pg import PostgresServer

    work = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    pg = PostgresServer(fsync=True).start()
    try:
        pg_url = pg.create_database("ledger")
        key = work / "ledger.key"
        out = {}
        for name, url in (("sqlite", f"sqlite:///{work / 'ledger.db'}"), ("postgresql", pg_url)):
            out[name] = {"single": append_rate(url, n, 1, key), "batch_of_3": append_rate(url, n, 3, key)}
        out["ratio_postgresql_over_sqlite"] = round(out["postgresql"]["single"]["entries_per_s"]
                                                    / out["sqlite"]["single"]["entries_per_s"], 3)
        return out
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_scale", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 episodes per size, 100 appends")
    ap.add_argument("--parallel", type=int, default=4, help="episodes in flight per batch (default 4)")
    ap.add_argument("--repeats", type=int, default=2, help="timed batches per cluster size (the best counts)")
    ap.add_argument("--profile", default="tiny", choices=["tiny", "preview-cpu"], help="episode profile (default tiny)")
    ap.add_argument("--skip-cluster", action="store_true")
    ap.add_argument("--skip-ledger", action="store_true")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    result: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "platform": platform.platform(), "load_avg_start": os.getloadavg()},
                    "quick": a.quick, "how": __doc__}
    if not a.skip_cluster:
        result["cluster"] = bench_cluster(2 if a.quick else 6, a.parallel, 1 if a.quick else a.repeats, a.profile)
        print(json.dumps(result["cluster"], indent=1), flush=True)
    if not a.skip_ledger:
        result["ledger"] = bench_ledger(100 if a.quick else 400)
        print(json.dumps(result["ledger"], indent=1), flush=True)
    result["machine"]["load_avg_end"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1), "utf-8")
    print(f"wrote {RESULTS}")
    return result


if __name__ == "__main__":
    main()
