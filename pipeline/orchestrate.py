"""Ray wiring: the episode DAG (script → translate → per shot storyboard/dub/video → edit), metered and cached.

Shots fan out as Ray tasks that chain through ObjectRefs, so storyboards, dubbing and video of different
shots run in parallel. Stages whose backend holds model weights (`resident = True`) run inside
`StageWorker` actors that load the model once and serve many shots; GPU stages ask Ray for `num_gpus`.
Every stage execution (cache hit, success, failure, each retry) yields one usage record, sent to the
sink (the ledger writer) from the worker before the result is returned.
"""
from __future__ import annotations

import functools
import inspect
import os
import socket
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import ray

from models.registry import resolve
from pipeline.cache import Cache, digest, file_digest
from pipeline.job import Job
from pipeline.metering.meter import Meter
from pipeline.metering.usage import UsageRecord
from pipeline.stages import StageCall, StageRun
from pipeline.stages.dub import DubStage
from pipeline.stages.edit import EditStage
from pipeline.stages.script import ScriptStage
from pipeline.stages.storyboard import StoryboardStage
from pipeline.stages.translate import TranslateStage
from pipeline.stages.video import VideoStage

# stage name → (stage class, settings section naming its backend and hosting)
STAGES: dict[str, tuple[type, str | None]] = {
    "script": (ScriptStage, "script"),
    "translate": (TranslateStage, "translate"),
    "storyboard": (StoryboardStage, "storyboard"),
    "dub": (DubStage, "tts"),
    "video": (VideoStage, "video"),
    "edit": (EditStage, None),
}
_LOCAL_BACKENDS: dict[str, Any] = {}


@dataclass(frozen=True)
class RunInfo:
    """Per-run facts every stage execution needs (picklable, travels with each Ray task)."""

    run_id: str
    job: Job
    cache_root: str
    sink: Any = None  # a LedgerWriter actor handle, or None


@dataclass
class StageFailed(Exception):
    """A stage execution failed; carries its usage record so the failure is metered too."""

    stage: str
    shot: str | None
    message: str
    record: dict = field(default_factory=dict)

    def __str__(self) -> str:
        where = f"{self.stage}[{self.shot}]" if self.shot else self.stage
        return f"{where}: {self.message}"


def backend_settings(job: Job, stage: str):
    section = STAGES[stage][1]
    return getattr(job.stages, section) if section else None


def make_backend(job: Job, stage: str) -> Any:
    """A backend instance, one per process per (backend, options) — cheap backends live in workers."""
    settings = backend_settings(job, stage)
    if settings is None:
        return None
    key = digest(stage, settings.backend, settings.options)
    if key not in _LOCAL_BACKENDS:
        cls = resolve(STAGES[stage][1] if stage != "dub" else "tts", settings.backend)
        _LOCAL_BACKENDS[key] = cls(**settings.options)
    return _LOCAL_BACKENDS[key]


def is_resident(job: Job, stage: str) -> bool:
    settings = backend_settings(job, stage)
    if settings is None:
        return False
    cls = resolve(STAGES[stage][1] if stage != "dub" else "tts", settings.backend)
    return bool(getattr(cls, "resident", False)) or settings.num_gpus > 0


@functools.lru_cache(maxsize=None)
def code_version(cls: type) -> str:
    """Digest of the stage's own source file: editing a stage invalidates exactly its cache entries."""
    return file_digest(inspect.getsourcefile(cls))[:16]


def execute(info: RunInfo, stage_name: str, call: StageCall, attempt: int = 1,
            backend: Any = None) -> dict[str, Any]:
    """Run one stage execution through the cache and the meter; always emits exactly one usage record."""
    stage = STAGES[stage_name][0](info.job)
    settings = backend_settings(info.job, stage_name)
    cache = Cache(info.cache_root)
    key = digest(code_version(type(stage)), *stage.cache_key_parts(call))
    meter = Meter(job=info.run_id, drama=info.job.drama, episode=info.job.episode, stage=stage_name,
                  shot=call.shot_id, backend=settings.backend if settings else "ffmpeg", attempt=attempt,
                  gpus=float(settings.num_gpus) if settings else 0.0,
                  cpus=float(settings.num_cpus) if settings else 1.0)
    outputs, error = None, None
    try:
        with meter as m:
            outputs = cache.get(key)
            if outputs is not None:
                m.cache_hit = True
            else:
                staging = cache.staging()
                backend = backend if backend is not None else make_backend(info.job, stage_name)
                run = StageRun(workdir=staging, backend=backend, report_usage=m.add_ai_usage)
                outputs = cache.commit(key, staging, stage.run(call, run))
    except Exception as exc:  # metered below, then re-raised as a StageFailed the driver understands
        error = exc
    record = meter.record
    emit(info, record)
    if error is not None:
        raise StageFailed(stage_name, call.shot_id, f"{type(error).__name__}: {error}",
                          record.model_dump(mode="json")) from error
    return {"outputs": outputs, "record": record.model_dump(mode="json"), "key": key,
            "cache_hit": record.cache_hit}


def emit(info: RunInfo, record: UsageRecord) -> None:
    """Hand the record to the ledger writer (blocking: the record is durable before the result returns)."""
    if info.sink is not None:
        from pipeline.metering.sink import emit_record

        emit_record(info.sink, info.job, record)


@ray.remote
def stage_task(info: RunInfo, stage_name: str, call: StageCall, names: tuple[str, ...],
               *upstream) -> dict:
    """A Ray task for one stage execution; upstream results arrive resolved as positional args."""
    return execute_with_retries(info, stage_name, _bind(call, names, upstream))


@ray.remote
class StageWorker:
    """Keeps one backend's model resident and serves many stage executions."""

    def __init__(self, job: Job, stage_name: str):
        self.job, self.stage_name = job, stage_name
        self.backend = make_backend(job, stage_name)
        self.loads = 1

    def load_count(self) -> int:
        return self.loads

    def execute(self, info: RunInfo, call: StageCall, names: tuple[str, ...], *upstream) -> dict:
        return execute_with_retries(info, self.stage_name, _bind(call, names, upstream), self.backend)


def execute_with_retries(info: RunInfo, stage_name: str, call: StageCall, backend: Any = None) -> dict:
    """Attempts 1..1+max_retries; each attempt is metered once (its own idempotency key)."""
    settings = backend_settings(info.job, stage_name)
    attempts = 1 + (settings.max_retries if settings else 1)
    for attempt in range(1, attempts + 1):
        try:
            result = execute(info, stage_name, call, attempt, backend)
            result["attempts"] = attempt
            return result
        except StageFailed:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _bind(call: StageCall, names: tuple[str, ...], upstream: tuple) -> StageCall:
    """Upstream results arrive in the order of `names`; stages see only their outputs."""
    inputs = dict(call.inputs)
    for name, result in zip(names, upstream):
        inputs[name] = result["outputs"]
    return StageCall(call.shot_id, inputs)


def new_run_id(job: Job) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{job.drama}.{job.episode}.{stamp}.{uuid.uuid4().hex[:6]}"


def node_name() -> str:
    return os.environ.get("MICRODRAMA_NODE") or socket.gethostname()


def format_failure(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, StageFailed):
        return str(cause)
    return "".join(traceback.format_exception_only(type(cause), cause)).strip()
