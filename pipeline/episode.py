"""One episode job from start to finish: run on Ray, then meter, ledger and MLflow around it."""
from __future__ import annotations

from typing import Any

from pipeline.job import Job
from pipeline.runner import run_episode


def run_job(job: Job, *, quiet: bool = False, address: str | None = None, tracking_uri: str | None = None,
            ledger_url: str | None = None) -> dict[str, Any]:
    return run_episode(job, quiet=quiet, address=address)
