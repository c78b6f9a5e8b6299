"""One episode job from start to finish: the single ledger writer, the Ray run, the signed checkpoint,
the published outputs and the MLflow runs — in that order, so that what looks finished is finished."""
from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.job import Job
from pipeline.metering.mlflow_sink import DEFAULT_URI
from pipeline.runner import ensure_ray, publish, run_episode
from pipeline.orchestrate import new_run_id


def absolute_sqlite(url: str) -> str:
    """sqlite:///relative.db → sqlite:////abs/relative.db, so Ray workers with another cwd agree."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str(Path(url[len(prefix):]).resolve())
    return url


def resolve_ledger_url(url: str | None) -> str:
    return absolute_sqlite(url or os.environ.get("MICRODRAMA_LEDGER") or "sqlite:///ledger.db")


def tracking_uri_of(uri: str | None) -> str:
    return absolute_sqlite(uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI)


def run_job(job: Job, *, quiet: bool = False, address: str | None = None, tracking_uri: str | None = None,
            ledger_url: str | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Run, checkpoint, publish, log; returns the manifest."""
    from pipeline.metering.ledger import Ledger
    from pipeline.metering.ledger_actor import get_or_create_writer

    ensure_ray(address)
    url = resolve_ledger_url(ledger_url)
    writer = get_or_create_writer(url, name=f"microdrama-ledger-{abs(hash(url)) % 10**8}")
    run_id = run_id or new_run_id(job)
    import ray

    guard = None
    if job.budget.max_cny is not None:
        from pipeline.finance.estimate import BudgetGuard

        guard = BudgetGuard(job, run_id, url, tracking_uri_of(tracking_uri))
    try:
        manifest, edit = run_episode(job, quiet=quiet, address=address, sink=writer, run_id=run_id,
                                     before_stage=guard)
    finally:
        checkpoint = ray.get(writer.checkpoint.remote()).to_dict()
    ledger = Ledger.open(url)
    usage = [e.body for e in ledger.entries(kind="usage", where={"job": run_id})]
    costs = [e.body for e in ledger.entries(kind="cost", where={"job": run_id})]
    ledger.close()
    total = sum((Decimal(c["amount"]) for c in costs), Decimal(0))
    manifest["cost"] = {"total_cny": str(total.quantize(Decimal("0.01"))), "exact_cny": str(total),
                        "usage_records": len(usage), "cost_lines": len(costs)}
    manifest["ledger"] = {"url": _public_url(url), "tree_size": checkpoint["tree_size"],
                          "root_hash": checkpoint["root_hash"], "key_id": checkpoint["key_id"]}
    out = publish(job, edit, manifest)
    from pipeline.metering.mlflow_queue import log_or_queue

    manifest["mlflow"] = log_or_queue(tracking_uri=tracking_uri_of(tracking_uri), job=job, manifest=manifest,
                                      usage=usage, costs=costs, out_dir=out, checkpoint=checkpoint)
    return manifest


def _public_url(url: str) -> str:
    """A ledger URL without credentials (postgresql://user:pw@host → postgresql://host)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return url
