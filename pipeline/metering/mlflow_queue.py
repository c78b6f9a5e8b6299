"""MLflow outages do not lose runs: a run that cannot be logged is queued on disk and flushed later."""
from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

QUEUE = Path(".cache/microdrama/mlflow-queue")  # under $MICRODRAMA_STATE_DIR when set (pipeline/state.py)


def queue_dir() -> Path:
    from pipeline import state

    return Path(os.environ.get("MICRODRAMA_MLFLOW_QUEUE") or state.state_path(QUEUE)).resolve()


def log_or_queue(*, tracking_uri: str, job: Any, manifest: dict, usage: list[dict], costs: list[dict],
                 out_dir: Path, checkpoint: dict | None) -> dict[str, Any]:
    """Log now; on any tracking-server failure write the payload to the queue and say so."""
    from pipeline.metering.mlflow_sink import log_episode

    flush(tracking_uri)
    try:
        if not reachable(tracking_uri):  # fail in seconds, not after MLflow's minutes of HTTP retries
            raise ConnectionError(f"MLflow tracking server {_safe(tracking_uri)} does not answer")
        run_id = log_episode(tracking_uri=tracking_uri, job=job, manifest=manifest, usage=usage,
                             costs=costs, out_dir=out_dir, checkpoint=checkpoint)
        return {"status": "logged", "run_id": run_id, "tracking_uri": _safe(tracking_uri)}
    except Exception as exc:  # unreachable server, auth, disk: never lose the run
        path = _enqueue(tracking_uri, job, manifest, usage, costs, out_dir, checkpoint, repr(exc))
        return {"status": "queued", "queue_file": str(path), "reason": f"{type(exc).__name__}"}


def _enqueue(tracking_uri: str, job: Any, manifest: dict, usage: list[dict], costs: list[dict],
             out_dir: Path, checkpoint: dict | None, reason: str) -> Path:
    q = queue_dir()
    q.mkdir(parents=True, exist_ok=True)
    # the server without credentials: never a password in a file on disk (flush takes them from the caller)
    payload = {"tracking_uri": _safe(tracking_uri), "job": job.model_dump(mode="json"), "manifest": manifest,
               "usage": usage, "costs": costs, "out_dir": str(out_dir), "checkpoint": checkpoint,
               "queued_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "reason": reason[:500]}
    tmp = q / f".{uuid.uuid4().hex}.tmp"
    tmp.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    final = q / f"{manifest['run_id']}.json"
    os.replace(tmp, final)
    return final


def pending() -> list[Path]:
    q = queue_dir()
    return sorted(q.glob("*.json")) if q.exists() else []


def flush(tracking_uri: str | None = None) -> list[str]:
    """Log every queued run whose server now answers; each is tagged as delayed. Returns run ids logged."""
    from pipeline.job import Job
    from pipeline.metering.mlflow_sink import log_episode

    logged = []
    for path in pending():
        payload = json.loads(path.read_text(encoding="utf-8"))
        # the queue keeps the server without credentials: they come back from the caller or the environment
        given = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if given and _safe(given) == payload["tracking_uri"]:
            uri = given
        else:
            uri = None if tracking_uri else payload["tracking_uri"]
        if uri is None:
            continue
        if not reachable(uri):
            break  # still down: keep the queue as it is
        job = Job.model_validate(payload["job"])
        try:
            run_id = log_episode(tracking_uri=uri, job=job, manifest=payload["manifest"], usage=payload["usage"],
                                 costs=payload["costs"], out_dir=Path(payload["out_dir"]),
                                 checkpoint=payload["checkpoint"], delayed_from=payload["queued_at"])
        except Exception:
            break  # still down: keep the queue as it is
        path.unlink()
        logged.append(run_id)
    return logged


def reachable(uri: str, timeout_s: float = 3.0) -> bool:
    """Whether an http(s) tracking server accepts connections (other URIs, e.g. sqlite, count as reachable)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return True
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # not a port number
        return False
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _safe(uri: str) -> str:
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return uri
