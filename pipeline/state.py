"""Where a run's state lives: the stage cache, the ledger, MLflow, its queue and the episode outputs.

By default every one of them is relative to the current directory (`.cache/microdrama/`, `ledger.db`,
`mlflow.db`, `out/`), as they always were. `$MICRODRAMA_STATE_DIR` moves them all at once: the defaults,
and the relative `output_dir` / `cache_dir` of a job, then resolve against that folder instead, so runs
started from any directory share one cache, ledger and MLflow. Explicit URLs and absolute paths
(`--ledger`, `--tracking-uri`, `$MICRODRAMA_LEDGER`, `$MLFLOW_TRACKING_URI`, `output_dir=/data/out`)
always win. See "Where state lives" in README.md.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV = "MICRODRAMA_STATE_DIR"
CACHE_DIR = Path(".cache/microdrama")
LEDGER_FILE = "ledger.db"
MLFLOW_FILE = "mlflow.db"
QUEUE_DIR = CACHE_DIR / "mlflow-queue"


def state_dir() -> Path | None:
    """The folder $MICRODRAMA_STATE_DIR names (absolute), or None: then state is relative to the cwd."""
    raw = os.environ.get(ENV, "").strip()
    return Path(raw).expanduser().resolve() if raw else None


def state_path(path: str | Path) -> Path:
    """A state path: absolute ones as given; relative ones under the state dir when one is set, else as
    given (relative to the current directory, the default)."""
    path = Path(path)
    root = state_dir()
    return path if path.is_absolute() or root is None else root / path


def default_ledger_url() -> str:
    return f"sqlite:///{state_path(LEDGER_FILE)}"


def default_tracking_uri() -> str:
    return f"sqlite:///{state_path(MLFLOW_FILE)}"
