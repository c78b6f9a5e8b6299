"""Episode batches on a Ray cluster: find and check the jobs, connect, run them with one ledger writer for the
whole cluster, and sum up — the logic behind `jobs/entrypoint.py` (a Ray job) and `microdrama submit ray://…`."""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pipeline import stopping
from pipeline.errors import UserError
from pipeline.job import Job

NAMESPACE = "microdrama"  # the namespace ensure_ray uses: named actors (the ledger writer) live there
SKIP_DIRS = {".venv", "out", ".cache", ".git", "node_modules", "__pycache__", "mlruns", "mlartifacts"}
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def find_jobs(target: Path) -> list[Path]:
    """A job file itself, or every job.yaml under a folder (sorted; output, cache and venv folders skipped)."""
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise UserError(f"{target}: no such job file or folder")
    found = sorted(p for p in target.rglob("job.yaml")
                   if not SKIP_DIRS.intersection(p.relative_to(target).parts[:-1]))
    if not found:
        raise UserError(f"{target}: no job.yaml under this folder; pass a job file or a folder of job folders")
    return found


def load_jobs(paths: list[Path], overrides: list[str]) -> list[Job]:
    """Load and check every job (schema, profile, screenplay); raises one UserError naming every problem."""
    from pipeline import screenplay
    from pipeline.job import load_job
    from pipeline.stages.script import read_source

    loaded, problems = [], []
    for path in paths:
        try:
            job = load_job(path, overrides)
            read_source(job)  # the screenplay (or treatment) parses and supplies the job's languages
            loaded.append((path, job))
        except (UserError, screenplay.ScreenplayError) as exc:
            problems.extend(f"{path}: {line}" for line in str(exc).splitlines())
    seen: dict[tuple[str, str], Path] = {}
    for path, job in loaded:
        key = (job.drama, job.episode)
        if key in seen:
            problems.append(f"{path}: {job.drama}/{job.episode} is also the episode of {seen[key]}; "
                            "every job of a batch needs its own drama/episode")
        seen[key] = path
    if problems:
        raise UserError(problems)
    return [job for _, job in loaded]


def connect(address: str | None = "auto", runtime_env: dict[str, Any] | None = None) -> None:
    """Join the cluster: `auto` inside a Ray job (the job's runtime env is inherited) or `ray://…` (Ray
    Client, with `runtime_env` carrying the project to the workers)."""
    import ray

    from pipeline.services import init_ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"namespace": NAMESPACE}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    if not str(address).startswith("ray://"):
        kwargs.update(log_to_driver=False, configure_logging=False)
    init_ray(address, **kwargs)


def wait_for_nodes(count: int, timeout_s: float = 300.0) -> list[dict[str, Any]]:
    """Block until `count` nodes are alive (workers still joining); returns the alive nodes."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        if len(alive) >= count or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if len(alive) < count:
        raise RuntimeError(f"--min-nodes {count}: only {len(alive)} Ray node(s) alive after {timeout_s:.0f} s; "
                           "check that the workers can reach the head (ray status)")
    return alive


def cluster_writer(ledger_url: str) -> Any:
    """The cluster's one writer of `ledger_url`: a detached named actor, so concurrent Ray jobs (each its own
    driver) share it and it outlives the job that started it. run_job finds it by the same name."""
    from pipeline.episode import ledger_writer_name
    from pipeline.metering.ledger_actor import get_or_create_writer

    return get_or_create_writer(ledger_url, name=ledger_writer_name(ledger_url), namespace=NAMESPACE,
                                detached=True)


def run_one(path: Path, job: Job, *, tracking_uri: str | None, ledger_url: str) -> dict[str, Any]:
    """Run one episode; never raises: the outcome is in the returned summary."""
    from pipeline.episode import run_job
    from pipeline.orchestrate import format_failure

    item: dict[str, Any] = {"job": str(path), "drama": job.drama, "episode": job.episode}
    started = time.monotonic()
    if stopping.STOP.is_set():  # `ray job stop` came before this episode's turn: it is not started
        item.update(status="stopped", error="not started: the batch was told to stop", wall_s=0.0)
        return item
    try:
        manifest = run_job(job, quiet=True, tracking_uri=tracking_uri, ledger_url=ledger_url)
    except stopping.Stopped as exc:  # its work cancelled, its open attempts closed and billed, checkpointed
        item.update(status="stopped", error=f"stopped: {exc.why}; finished stages are cached, run it again")
    except UserError as exc:  # budget stop, bad input found late
        item.update(status="stopped", error=str(exc), exit_code=exc.exit_code)
    except Exception as exc:  # a stage failed after its retries
        item.update(status="failed", error=format_failure(exc))
    else:
        item.update(status="done", run_id=manifest["run_id"], output=str(job.out_path.resolve()),
                    duration_s=manifest["duration_s"], shots=len(manifest["shots"]),
                    cache=manifest["cache"], cost=manifest["cost"], ledger=manifest["ledger"],
                    mlflow=manifest["mlflow"])
    item["wall_s"] = round(time.monotonic() - started, 3)
    return item


def run_batch(paths: list[Path], jobs: list[Job], *, tracking_uri: str | None = None,
              ledger_url: str | None = None, parallel: int = 2) -> dict[str, Any]:
    """Run every job on the connected cluster, `parallel` episodes at a time (threads of this driver: each
    episode's stages are Ray tasks; run_job serialises the MLflow logging), and return the summary."""
    import ray

    from pipeline.episode import ledger_writer_name, resolve_ledger_url, tracking_uri_of
    from pipeline.metering.ledger_store import redact_url

    url = resolve_ledger_url(ledger_url)
    writer = cluster_writer(url)
    started = time.monotonic()
    closed = close_dead(url, writer)  # attempts a killed driver or lost node left open, from any host
    with stopping.stop_on_signals(), ThreadPoolExecutor(max_workers=max(1, min(parallel, len(jobs)))) as pool:
        episodes = list(pool.map(lambda pj: run_one(pj[0], pj[1], tracking_uri=tracking_uri, ledger_url=url),
                                 zip(paths, jobs)))
        stopped = stopping.STOP.is_set()
    return {
        "ok": all(e["status"] == "done" for e in episodes),
        "stopped": stopped,
        "closed_dead_attempts": closed,
        "episodes": episodes,
        "ledger": {"url": redact_url(url), "writer": ledger_writer_name(url),
                   "size": ray.get(writer.size.remote())},
        "tracking_uri": redact_url(tracking_uri_of(tracking_uri)),
        "nodes": [{"node_id": n["NodeID"], "address": n.get("NodeManagerAddress"),
                   "resources": n.get("Resources", {})} for n in ray.nodes() if n.get("Alive")],
        "wall_s": round(time.monotonic() - started, 3),
    }


def close_dead(url: str, writer: Any) -> int:
    """Close and bill, once, every attempt of the ledger whose heartbeat stopped (metering/attempts.py)."""
    import socket

    from pipeline.metering import attempts
    from pipeline.metering.ledger import Ledger

    with Ledger.open(url) as ledger:
        return attempts.close_dead(ledger, writer, closer=f"a batch on {socket.gethostname()}")


def exit_code(summary: dict[str, Any]) -> int:
    return EXIT_OK if summary["ok"] else EXIT_FAILED
