"""Farm benchmark: a season of episodes on a local multi-node Ray cluster — episodes per hour against one node,
model loads against pool replicas, and one worker node killed mid-season with every attempt billed once.

    python -m bench.bench_farm                  # 20 episodes: 1 node, 3 nodes, 3 nodes with a worker killed
    python -m bench.bench_farm --episodes 6     # a shorter season (the same three runs)
    python -m bench.bench_farm --skip-kill      # throughput and model loads only

Writes bench/results/farm.json. Each run is a fresh `jobs.local_cluster.LocalCluster` (head + workers, each
a raylet with --num-cpus=3 on this one machine) with a fresh cache and ledger, and the season goes through
the Ray job entrypoint (`python -m jobs.entrypoint SEASON --parallel 4`) as on a real cluster: tiny profile
(tiny random FLUX, ArcFace, Wan2.1, VITS and Marian; 2 shots an episode at 144x256). The model stages ask
0.5 CPU a replica, as GPU stages ask little CPU on a GPU farm; the pools are sized by config: one replica a
pool on one node, up to 3 video and 2 storyboard replicas (grown from queue depth) on three.

Measured per run:
- episodes per hour = episodes / season wall time (cluster start excluded, cold model loads included);
- model loads per pool, read from the cluster's ModelPools actor after the season, against its replicas
  and against the episodes it served (a model loaded per episode would show loads = episodes);
- with a worker killed (the kill run): the worker's raylet and every process under it are SIGKILLed when at
  least a quarter of the season is done and one of its processes holds an open attempt (started, no usage
  record): a node lost mid-shot. Then: did every episode finish, does every started attempt have exactly one
  usage record and every cost line a usage record, and how were the dead attempts billed (to their last
  heartbeat: the billed end against the moment of the kill).

On one machine the nodes share its 2 cores, so episodes per hour measure how the season spreads over raylets
and how pools keep models resident, not what more hardware adds.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from jobs.local_cluster import LocalCluster
from tests.short_jobs import write_batch

RESULTS = Path(__file__).resolve().parent / "results" / "farm.json"
ROOT = Path(__file__).resolve().parents[1]
RESIDENT = ("storyboard", "video", "dub", "translate")
NODE_CPUS = 3
PARALLEL = 4


def season_overrides(nodes: int) -> list[str]:
    """Per-run settings for every job: half a CPU a model replica; pools sized to the cluster."""
    sets = [f"stages.{s}.num_cpus=0.5" for s in RESIDENT]
    if nodes > 1:
        sets += ["stages.video.max_actors=3", "stages.storyboard.max_actors=2"]
    return sets


def start_batch(cluster: LocalCluster, season: Path, work: Path, overrides: list[str]) -> subprocess.Popen:
    env = {**cluster.env, "RAY_ADDRESS": cluster.gcs_address}
    args = [sys.executable, "-m", "jobs.entrypoint", str(season), "--parallel", str(PARALLEL),
            "--set", f"output_dir={work / 'out'}", "--set", f"cache_dir={work / 'cache'}",
            "--ledger", f"sqlite:///{work / 'ledger.db'}", "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"]
    for s in overrides:
        args += ["--set", s]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=(work / "batch.out").open("wb"),
                            stderr=(work / "batch.err").open("wb"))


def finish_batch(proc: subprocess.Popen, work: Path, timeout_s: float = 3600) -> dict:
    proc.wait(timeout=timeout_s)
    out = (work / "batch.out").read_text(errors="replace")
    summary = None
    for line in reversed(out.strip().splitlines()):  # the summary line; Ray's own log lines may follow it
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict) and "episodes" in doc:
            summary = doc
            break
    if summary is None:
        raise RuntimeError(f"the season printed no summary (exit {proc.returncode}):\n{out[-2000:]}\n"
                           + (work / "batch.err").read_text(errors="replace")[-4000:])
    summary["exit_code"] = proc.returncode
    return summary


POOL_STATS = """
import json, ray
from pipeline.batch import NAMESPACE
from pipeline.pools import POOLS_NAME
ray.init(address="auto", namespace=NAMESPACE, log_to_driver=False, configure_logging=False)
print(json.dumps(ray.get(ray.get_actor(POOLS_NAME).stats.remote()), default=str))
"""


def pool_loads(cluster: LocalCluster) -> dict[str, Any]:
    """Per resident stage: replicas made, model loads, executions served — from the cluster's ModelPools
    (asked by a driver process of its own: Ray reads its token settings once, at import)."""
    proc = subprocess.run([sys.executable, "-c", POOL_STATS], cwd=ROOT, capture_output=True, text=True,
                          env={**cluster.env, "RAY_ADDRESS": cluster.gcs_address}, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"could not read the model pools:\n{proc.stderr[-3000:]}")
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    out: dict[str, Any] = {}
    for pool in stats.values():
        replicas = pool["replicas"] + pool["retired"]
        out[pool["stage"]] = {"backend": pool["backend"], "replicas": len(replicas),
                              "model_loads": sum(int(r.get("loads", 0)) for r in replicas),
                              "executions": sum(int(r.get("executions", 0)) for r in replicas),
                              "replica_nodes": len({r.get("node") for r in replicas})}
    return out


def ledger_entries(url: str, kind: str) -> list[dict]:
    from pipeline.metering.ledger import Ledger

    with Ledger.open(url, create=False) as ledger:
        return [e.body for e in ledger.entries(kind=kind)]


def exactly_once(url: str) -> dict[str, Any]:
    """The ledger's accounting of the season: every started attempt has one usage record, no usage key twice,
    every cost line prices a usage record (the same rules as tests/tiny_jobs.check_exactly_once, counted)."""
    starts = {b["usage_key"]: b for b in ledger_entries(url, "attempt")}
    usage = ledger_entries(url, "usage")
    keys = Counter(u["idempotency_key"] for u in usage)
    costs = ledger_entries(url, "cost")
    orphan_costs = [c["usage_key"] for c in costs if c["usage_key"] not in keys and not c["usage_key"].startswith("idle/")]
    return {"attempts_started": len(starts), "usage_records": len(usage),
            "usage_keys_twice": sorted(k for k, n in keys.items() if n > 1),
            "attempts_without_record": sorted(set(starts) - set(keys)),
            "records_without_attempt": sorted(set(keys) - set(starts)),
            "cost_lines": len(costs), "cost_lines_without_record": orphan_costs,
            "ok": not any(n > 1 for n in keys.values()) and set(starts) == set(keys) and not orphan_costs}


def episodes_done(url: str) -> int:
    try:
        return sum(1 for u in ledger_entries(url, "usage") if u["stage"] == "edit" and u["status"] == "ok")
    except Exception:  # noqa: BLE001 - the ledger not created yet
        return 0


def tree_pids(pid: int) -> set[int]:
    import psutil

    try:
        root = psutil.Process(pid)
        return {pid, *(p.pid for p in root.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def kill_when_busy(cluster: LocalCluster, victim: subprocess.Popen, url: str, episodes: int,
                   batch: subprocess.Popen, timeout_s: float = 1800) -> dict[str, Any]:
    """SIGKILL the victim node (its raylet and everything under it) once a quarter of the season is done and
    one of its processes holds an open attempt; returns when and what it was working on."""
    from pipeline.metering.ledger import Ledger

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and batch.poll() is None:
        if episodes_done(url) >= max(1, episodes // 4):
            pids = tree_pids(victim.pid)
            with Ledger.open(url, create=False) as ledger:
                starts = [e.body for e in ledger.entries(kind="attempt")]
                open_here = [s for s in starts if s.get("pid") in pids and ledger.find(s["usage_key"]) is None]
            if open_here:
                import psutil

                procs = [psutil.Process(p) for p in pids if psutil.pid_exists(p)]
                killed_at = dt.datetime.now(dt.timezone.utc)
                for p in procs:
                    try:
                        p.kill()
                    except psutil.NoSuchProcess:
                        pass
                victim.wait(timeout=30)
                return {"killed_at": killed_at.isoformat(timespec="microseconds"), "processes": len(procs),
                        "episodes_done_before": episodes_done(url),
                        "open_attempts_on_it": [{"stage": s["stage"], "shot": s.get("shot"), "episode": s["episode"],
                                                 "usage_key": s["usage_key"], "started": s["started"]}
                                                for s in open_here]}
        time.sleep(0.3)
    raise RuntimeError("the season ended before the victim node had an open attempt to lose")


def dead_attempts(url: str, killed_at: str) -> list[dict[str, Any]]:
    """The closing records of attempts that died, with how far their billed end is from the kill."""
    kill = dt.datetime.fromisoformat(killed_at)
    starts = {b["usage_key"]: b for b in ledger_entries(url, "attempt")}
    out = []
    for u in ledger_entries(url, "usage"):
        if not str(u.get("error") or "").startswith("WorkerDied"):
            continue
        ended = dt.datetime.fromisoformat(u["ended"])
        s = starts.get(u["idempotency_key"], {})
        out.append({"stage": u["stage"], "shot": u.get("shot"), "episode": u["episode"], "attempt": u["attempt"],
                    "billed_wall_s": u["wall_s"], "heartbeat_s": s.get("heartbeat_s"),
                    "kill_minus_billed_end_s": round((kill - ended).total_seconds(), 3),
                    "method": (u.get("meta") or {}).get("wall_s_method", "")})
    return out


def run_season(season: Path, episodes: int, nodes: int, kill: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-farm-"))
    url = f"sqlite:///{work / 'ledger.db'}"
    try:
        with LocalCluster() as cluster:
            cluster.start_head(num_cpus=NODE_CPUS, dashboard=False)
            for _ in range(nodes - 1):
                cluster.add_worker(num_cpus=NODE_CPUS)
            overrides = season_overrides(nodes)
            batch = start_batch(cluster, season, work, overrides)
            killed = kill_when_busy(cluster, cluster.procs[-1], url, episodes, batch) if kill else None
            summary = finish_batch(batch, work)
            loads = pool_loads(cluster)
        done = [e for e in summary["episodes"] if e["status"] == "done"]
        result: dict[str, Any] = {
            "nodes": nodes, "node_cpus": NODE_CPUS, "parallel": PARALLEL, "overrides": overrides,
            "episodes": len(summary["episodes"]), "episodes_done": len(done), "exit_code": summary["exit_code"],
            "season_wall_s": summary["wall_s"],
            "episodes_per_hour": round(len(done) / summary["wall_s"] * 3600, 1),
            "output_seconds": round(sum(e["duration_s"] for e in done), 3),
            "pools": loads, "ledger": exactly_once(url),
            "failed": [{k: e.get(k) for k in ("episode", "status", "error")} for e in summary["episodes"]
                       if e["status"] != "done"],
        }
        if killed:
            result["killed_node"] = killed
            result["dead_attempts"] = dead_attempts(url, killed["killed_at"])
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_farm", description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=20, help="episodes in the season (default 20)")
    ap.add_argument("--nodes", type=int, default=3, help="nodes of the farm run (default 3; 2 or more)")
    ap.add_argument("--skip-kill", action="store_true", help="no run with a worker killed")
    ap.add_argument("--only", choices=("one_node", "farm", "farm_node_killed"),
                    help="run only this one and merge it into the existing farm.json")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if a.nodes < 2:
        ap.error("--nodes must be 2 or more (one node is the reference run)")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    season_dir = Path(tempfile.mkdtemp(prefix="bench-season-"))
    write_batch(season_dir, "bench-farm", a.episodes, profile="tiny")
    result: dict[str, Any] = {"bench": "farm", "how": __doc__,
                              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                          "platform": platform.platform(), "load_avg_start": os.getloadavg()}}
    if a.only:
        runs = {"one_node": (1, False), "farm": (a.nodes, False), "farm_node_killed": (a.nodes, True)}
        nodes, kill = runs[a.only]
        result = json.loads(RESULTS.read_text("utf-8")) if RESULTS.exists() else result
        try:
            result[a.only] = run_season(season_dir, a.episodes, nodes, kill=kill)
        finally:
            shutil.rmtree(season_dir, ignore_errors=True)
        print(json.dumps(result[a.only], indent=1), flush=True)
        if "one_node" in result and "farm" in result:
            result["ratio_farm_over_one_node"] = round(result["farm"]["episodes_per_hour"]
                                                       / result["one_node"]["episodes_per_hour"], 3)
        RESULTS.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", "utf-8")
        print(f"wrote {RESULTS}")
        return result
    try:
        result["one_node"] = run_season(season_dir, a.episodes, 1, kill=False)
        print(json.dumps(result["one_node"], indent=1), flush=True)
        result["farm"] = run_season(season_dir, a.episodes, a.nodes, kill=False)
        print(json.dumps(result["farm"], indent=1), flush=True)
        result["ratio_farm_over_one_node"] = round(result["farm"]["episodes_per_hour"]
                                                   / result["one_node"]["episodes_per_hour"], 3)
        if not a.skip_kill:
            result["farm_node_killed"] = run_season(season_dir, a.episodes, a.nodes, kill=True)
            print(json.dumps(result["farm_node_killed"], indent=1), flush=True)
    finally:
        shutil.rmtree(season_dir, ignore_errors=True)
    result["machine"]["load_avg_end"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", "utf-8")
    print(f"wrote {RESULTS}")
    return result


if __name__ == "__main__":
    main()
