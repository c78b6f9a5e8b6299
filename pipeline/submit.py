"""`microdrama submit`: episode jobs (one, or every job.yaml under a folder) to a Ray cluster — a Ray job through
the dashboard (http://head:8265) or, through Ray Client (ray://head:10001), the same batch run in-process."""
from __future__ import annotations

import json
import shlex
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from pipeline.errors import UserError
from pipeline.services import check_ray_address

ROOT = Path(__file__).resolve().parents[1]
# what never travels to the cluster: environments, outputs, caches, local databases
EXCLUDES = [".venv", "venv", "out", ".cache", "*.db", "*.db-wal", "*.db-shm", ".git", "mlruns", "mlartifacts",
            "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis", "bench/results", "*.key"]
STAGED = "_submitted"  # folder of the staged working dir holding jobs that live outside the project
err = Console(stderr=True)


def submit(target: Path = typer.Argument(..., help="Episode job YAML, or a folder: every job.yaml under it"),
           overrides: list[str] = typer.Argument(None, help="Dotted overrides for every job, e.g. output_dir=/data/out"),
           address: str = typer.Option(..., "--address", envvar="RAY_ADDRESS",
                                       help="http://HEAD:8265 (Ray job) or ray://HEAD:10001 (Ray Client)"),
           tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri",
                                                      help="MLflow server for the cluster (default: the cluster's "
                                                           "$MLFLOW_TRACKING_URI)"),
           ledger: Optional[str] = typer.Option(None, "--ledger", help="Ledger URL for the cluster (default: the "
                                                                       "cluster's $MICRODRAMA_LEDGER)"),
           wait: bool = typer.Option(False, "--wait", help="Wait for the Ray job; exit 0 only if every episode is done"),
           parallel: int = typer.Option(2, "--parallel", min=1, max=256, help="Episodes run at once"),
           min_nodes: int = typer.Option(0, "--min-nodes", min=0, max=10_000,
                                         help="Start once this many Ray nodes are alive"),
           ) -> None:
    """Submit episode jobs to a Ray cluster; prints the submission id (with --wait: the JSON summary)."""
    from pipeline.batch import find_jobs, load_jobs

    try:
        paths = [p.resolve() for p in find_jobs(target)]
        load_jobs(paths, overrides or [])
        check_cluster_urls(tracking_uri, ledger)
        scheme = address.split("://", 1)[0] if "://" in address else ""
        if scheme not in ("http", "https", "ray"):
            raise UserError(f"--address {address!r}: use http://HEAD:8265 (Ray job submission through the "
                            "dashboard) or ray://HEAD:10001 (Ray Client)")
        check_ray_address(address, "--address", schemes=("http", "https", "ray"))  # exit 4 in seconds
    except UserError as exc:
        _fail(exc.problems, exc.exit_code)
    env = {k: v for k, v in (("MLFLOW_TRACKING_URI", tracking_uri), ("MICRODRAMA_LEDGER", ledger)) if v}
    args = Entry(paths=paths, overrides=overrides or [], parallel=parallel, min_nodes=min_nodes)
    if scheme == "ray":
        code = _client_run(address, args, env, tracking_uri, ledger)
    else:
        code = _job_submit(address, args, env, wait)
    raise typer.Exit(code)


@dataclass(frozen=True)
class Entry:
    """What the entrypoint is told: the jobs, overrides for all of them, how many at once, nodes to await."""

    paths: list[Path]
    overrides: list[str]
    parallel: int
    min_nodes: int

    def command(self, relative_paths: list[str]) -> str:
        argv = ["python", "-m", "jobs.entrypoint", "--parallel", str(self.parallel)]
        if self.min_nodes:
            argv += ["--min-nodes", str(self.min_nodes)]
        for o in self.overrides:
            argv += ["--set", o]
        return shlex.join([*argv, "--", *relative_paths])


def check_cluster_urls(tracking_uri: str | None, ledger: str | None) -> None:
    """Relative SQLite paths would land in the job's throwaway working dir on the head: refuse them."""
    from pipeline.services import TRACKING_SCHEMES

    problems = []
    if ledger and not ledger.startswith(("sqlite:///", "postgresql://", "postgres://", "postgresql+psycopg://")):
        problems.append(f"--ledger {ledger.split('@')[-1]!r}: use postgresql://user:pass@host/db or "
                        "sqlite:////abs/path/ledger.db")
    if tracking_uri and "://" in tracking_uri and tracking_uri.split("://")[0].split("+")[0] not in TRACKING_SCHEMES:
        problems.append(f"--tracking-uri {tracking_uri.split('@')[-1]!r}: use http://HOST:5000 or postgresql://…")
    for flag, url in (("--tracking-uri", tracking_uri), ("--ledger", ledger)):
        if url and url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            problems.append(f"{flag} {url}: a relative SQLite path is relative to the Ray job's temporary working "
                            "dir; use postgresql://… (or http://… for MLflow), or sqlite:////abs/path on a "
                            "filesystem every node shares")
    if problems:
        raise UserError(problems)


@contextmanager
def working_dir(paths: list[Path]) -> Iterator[tuple[Path, list[str]]]:
    """(working dir to upload, job paths relative to it): the project itself when every job lives inside it,
    else a staged copy of the project with the outside job folders under _submitted/."""
    if all(p.is_relative_to(ROOT) for p in paths):
        yield ROOT, [p.relative_to(ROOT).as_posix() for p in paths]
        return
    ignore = shutil.ignore_patterns(*EXCLUDES)
    with tempfile.TemporaryDirectory(prefix="microdrama-submit-") as tmp:
        stage = Path(tmp) / "project"
        shutil.copytree(ROOT, stage, ignore=ignore)
        relative = []
        for i, path in enumerate(paths):
            if path.is_relative_to(ROOT):
                relative.append(path.relative_to(ROOT).as_posix())
                continue
            dest = stage / STAGED / f"{i:03d}"
            shutil.copytree(path.parent, dest, ignore=ignore)
            relative.append((dest / path.name).relative_to(stage).as_posix())
        yield stage, relative


def runtime_env(directory: Path, env: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"working_dir": str(directory), "excludes": EXCLUDES}
    if env:
        out["env_vars"] = dict(env)
    return out


def _job_submit(address: str, entry: Entry, env: dict[str, str], wait: bool) -> int:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    sid = f"microdrama-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    with working_dir(entry.paths) as (directory, relative):
        client.submit_job(entrypoint=entry.command(relative), runtime_env=runtime_env(directory, env),
                          submission_id=sid, metadata={"microdrama.jobs": str(len(relative)),
                                                       "microdrama.first": relative[0]})
    if not wait:
        typer.echo(sid)
        err.print(f"submitted {len(relative)} episode job(s) as {sid}; follow with: "
                  f"ray job logs --follow --address {address} {sid}", highlight=False)
        return 0
    return _wait(client, sid)


def _wait(client: Any, sid: str, poll_s: float = 1.0) -> int:
    from ray.job_submission import JobStatus

    status = client.get_job_status(sid)
    while not status.is_terminal():
        time.sleep(poll_s)
        status = client.get_job_status(sid)
    logs = client.get_job_logs(sid)
    summary = last_json(logs)
    if summary is not None:
        typer.echo(json.dumps(summary, ensure_ascii=False))
    if status != JobStatus.SUCCEEDED:
        tail = "\n".join(logs.splitlines()[-40:])
        err.print(f"[bold red]error:[/] Ray job {sid} {status.value}\n{escape(tail)}", highlight=False, markup=True)
        return 1
    return 0 if summary is not None and summary.get("ok") else 1


def last_json(logs: str) -> dict[str, Any] | None:
    """The entrypoint's summary: the last log line that is a JSON object with episodes or errors."""
    for line in reversed(logs.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and ("episodes" in doc or "errors" in doc):
                return doc
    return None


def _client_run(address: str, entry: Entry, env: dict[str, str], tracking_uri: str | None,
                ledger: str | None) -> int:
    """Ray Client: this process is the driver; the project travels to the workers as the runtime env.
    Job folders, output_dir and cache_dir must be at the same paths on the cluster (a shared filesystem)."""
    from pipeline.batch import connect, exit_code, load_jobs, run_batch, wait_for_nodes

    jobs = load_jobs(entry.paths, entry.overrides)
    try:
        connect(address, runtime_env(ROOT, env))
    except UserError as exc:  # the head could not open a Ray Client session: one line, exit 4
        _fail(exc.problems, exc.exit_code)
    if entry.min_nodes:
        wait_for_nodes(entry.min_nodes)
    summary = run_batch(entry.paths, jobs, tracking_uri=tracking_uri, ledger_url=ledger, parallel=entry.parallel)
    typer.echo(json.dumps(summary, ensure_ascii=False))
    return exit_code(summary)


def _fail(problems: list[str], code: int) -> None:
    for line in problems:
        err.print(f"[bold red]error:[/] {escape(line)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)
