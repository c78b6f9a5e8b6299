"""Ray wiring: the episode DAG (script → translate → cast → per shot storyboard/dub/video → edit), metered and cached.

Shots fan out as Ray tasks that chain through ObjectRefs, so storyboards, dubbing and video of different
shots run in parallel. Stages whose backend holds model weights (`resident = True`) run inside
`StageWorker` replicas of the cluster's shared model pools (pipeline/pools.py), which load the model once and
serve the shots of every episode; GPU stages ask Ray for `num_gpus`.
Every stage execution (cache hit, success, failure, each retry) yields one usage record, sent to the
sink (the ledger writer) from the worker before the result is returned. Before any work an attempt
appends a start entry, so an attempt whose worker is killed is still billed once (metering/attempts.py).
"""
from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import shutil
import socket
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray

from models import options
from models.registry import BACKENDS, register, resolve
from pipeline import secrets
from pipeline.cache import Cache, digest, file_digest
from pipeline.job import Job
from pipeline.metering import attempts as attempt_log
from pipeline.metering import tasks as task_log
from pipeline.metering.meter import Meter
from pipeline.metering.usage import UsageRecord
from pipeline.stages import StageCall, StageRun
from pipeline.stages.cast import CastStage
from pipeline.stages.dub import DubStage
from pipeline.stages.edit import EditStage
from pipeline.stages.script import ScriptStage
from pipeline.stages.storyboard import StoryboardStage
from pipeline.stages.translate import TranslateStage
from pipeline.stages.video import VideoStage
from pipeline.job_backends import SECTIONS, backend_settings  # noqa: F401  (backend_settings: re-exported)

# stage name → (stage class, settings section naming its backend and hosting: pipeline/job_backends.py)
_CLASSES = {"script": ScriptStage, "translate": TranslateStage, "cast": CastStage, "storyboard": StoryboardStage,
            "dub": DubStage, "video": VideoStage, "edit": EditStage}
STAGES: dict[str, tuple[type, str | None]] = {name: (_CLASSES[name], section) for name, section in SECTIONS.items()}
_LOCAL_BACKENDS: dict[str, Any] = {}


@dataclass(frozen=True)
class RunInfo:
    """Per-run facts every stage execution needs (picklable, travels with each Ray task)."""

    run_id: str
    job: Job
    cache_root: str
    sink: Any = None  # a LedgerWriter actor handle, or None
    ledger_url: str | None = None  # where a Ray retry looks up the attempts its dead worker started
    backends: dict[str, dict[str, str]] = field(default_factory=dict)  # the driver's registry (plugins)
    driver: dict[str, Any] = field(default_factory=dict)  # host/pid of the driver (orphaned attempts)
    # every attempt's heartbeat interval, the driver's $MICRODRAMA_HEARTBEAT_S (metering/attempts.py)
    heartbeat_s: float = field(default_factory=attempt_log.heartbeat_interval)


@dataclass
class StageFailed(Exception):
    """A stage execution failed; carries its usage record so the failure is metered too."""

    stage: str
    shot: str | None
    message: str
    record: dict = field(default_factory=dict)
    errno: int | None = None  # of an OSError (ENOSPC: the disk is full)
    retryable: bool = True  # False: the same call would fail the same way or pay again (moderation, budget)

    def __str__(self) -> str:
        where = f"{self.stage}[{self.shot}]" if self.shot else self.stage
        return f"{where}: {self.message}"


def make_backend(job: Job, stage: str) -> Any:
    """A backend instance, one per process per (backend, options) — cheap backends live in workers."""
    settings = backend_settings(job, stage)
    if settings is None:
        return None
    key = digest(STAGES[stage][1], settings.backend, settings.options)  # cast and storyboard share one
    if key not in _LOCAL_BACKENDS:
        cls = resolve(STAGES[stage][1], settings.backend)
        _LOCAL_BACKENDS[key] = options.construct(cls, settings.options)  # through the validated schema
    return _LOCAL_BACKENDS[key]


def make_aux_backends(job: Job, stage: str) -> dict[str, Any]:
    """What a stage uses besides its backend, one per process like backends: the storyboard's identity check
    (`stages.storyboard.identity`), a face model kept resident beside the keyframe model."""
    ident = job.stages.storyboard.identity
    if stage != "storyboard" or ident is None:
        return {}
    key = digest("identity", ident.backend, ident.options)
    if key not in _LOCAL_BACKENDS:
        _LOCAL_BACKENDS[key] = options.construct(resolve("identity", ident.backend), ident.options)
    return {"identity": _LOCAL_BACKENDS[key]}


def _identity_problems(job: Job) -> list[str]:
    """The identity check's backend must build, and re-renders need a storyboard backend that draws new seeds."""
    from pipeline.errors import UserError

    ident = job.stages.storyboard.identity
    if ident is None:
        return []
    problems = []
    try:
        options.construct(resolve("identity", ident.backend), ident.options)
    except UserError as exc:
        problems += [secrets.redact(p) for p in exc.problems]
    except (TypeError, ValueError, ModuleNotFoundError) as exc:
        problems.append(secrets.redact(f"stages.storyboard.identity: backend {ident.backend!r}: {exc}"))
    board = job.stages.storyboard.backend
    try:
        retries = getattr(resolve("storyboard", board), "identity_retries", False)
    except ValueError:
        retries = True  # an unknown backend is reported on its own
    if ident.max_tries > 1 and not retries:
        problems.append(f"stages.storyboard.identity.max_tries: {ident.max_tries} renders asked, but the storyboard "
                        f"backend {board!r} cannot re-render with another seed; use a diffusers backend "
                        "(flux-kontext-*, sdxl-ip-adapter*, flux-*) or set max_tries: 1")
    return problems


def report_identity(meter: Meter, produced: Any) -> None:
    """Every identity try in the usage record (meta), beside its AI usage: seed, status and scores per try."""
    ident = produced.get("identity") if isinstance(produced, dict) else None
    if not isinstance(ident, dict):
        return
    meter.meta["identity.status"] = str(ident.get("status"))
    meter.meta["identity.tries"] = str(len(ident.get("tries") or []))
    parts = []
    for t in ident.get("tries") or []:
        scores = " ".join(f"{name}={'none' if v['score'] is None else format(v['score'], '.4f')}"
                          for name, v in t["scores"].items())
        parts.append(f"try{t['try']} seed={t['seed']} {t['status']}: {scores}")
    if parts:
        meter.meta["identity.scores"] = "; ".join(parts)[:2000]


def preflight(job: Job) -> list[str]:
    """Build every stage's backend here, before any work, and collect what stops one: weights that are not
    on this machine (naming the model and how to provide a local weights dir), a missing API key, a bad
    option. Backends load their models lazily, so this costs imports, not weights. For a local run (or
    `validate`) this machine is the worker; on a cluster the workers check for themselves."""
    from pipeline.errors import UserError

    problems: list[str] = []
    for section in dict.fromkeys(s for _, s in STAGES.values()):  # cast shares the storyboard's backend
        settings = getattr(job.stages, section) if section else None
        if settings is None:
            continue
        try:
            options.construct(resolve(section, settings.backend), settings.options)
        except UserError as exc:
            problems += [secrets.redact(p) for p in exc.problems]
        except (TypeError, ValueError, ModuleNotFoundError, OSError) as exc:  # OSError: a font or executable not found
            problems.append(secrets.redact(f"stages.{section}: backend {settings.backend!r}: {exc}"))
    from pipeline.finance.plan import preflight_prices

    return problems + _identity_problems(job) + preflight_prices(job)


def is_resident(job: Job, stage: str) -> bool:
    settings = backend_settings(job, stage)
    if settings is None:
        return False
    cls = resolve(STAGES[stage][1], settings.backend)
    return bool(getattr(cls, "resident", False)) or settings.num_gpus > 0


@functools.lru_cache(maxsize=None)
def code_version(cls: type) -> str:
    """Digest of the stage's own source file: editing a stage invalidates exactly its cache entries."""
    return file_digest(inspect.getsourcefile(cls))[:16]


def execute(info: RunInfo, stage_name: str, call: StageCall, attempt: int = 1,
            backend: Any = None) -> dict[str, Any]:
    """Run one stage execution through the cache and the meter; always emits exactly one usage record,
    preceded by the attempt's start entry (durable before any work, so a killed worker is billed too)."""
    stage = STAGES[stage_name][0](info.job)
    settings = backend_settings(info.job, stage_name)
    secrets.install_log_redaction()
    if settings is not None:
        secrets.register_from_options(settings.options)
    cache = Cache(info.cache_root)
    key = digest(code_version(type(stage)), *stage.cache_key_parts(call))
    meter = Meter(job=info.run_id, drama=info.job.drama, episode=info.job.episode, stage=stage_name,
                  shot=call.shot_id, backend=settings.backend if settings else "ffmpeg", attempt=attempt,
                  gpus=float(settings.num_gpus) if settings else 0.0,
                  cpus=float(settings.num_cpus) if settings else 1.0,
                  meta={"cache_key": key})  # finance attributes a cache hit to the run that built the entry
    beating = begin_attempt(info, meter)
    outputs, error, staging, corrupt = None, None, None, None
    try:
        with beating, meter as m:
            found = cache.lookup(key)
            outputs, corrupt = found.outputs, found.problem
            if corrupt:  # a hit whose files no longer match their digests is a miss: re-rendered, reported
                m.meta["cache_corrupt"] = corrupt[:500]
                cache.remove(key)
            if outputs is not None:
                m.cache_hit = True
            else:
                staging = cache.staging()
                backend = backend if backend is not None else make_backend(info.job, stage_name)
                run = StageRun(workdir=staging, backend=backend, report_usage=m.add_ai_usage,
                               aux_backends=make_aux_backends(info.job, stage_name))
                with task_log.bound(journal(info, meter)):
                    try:
                        produced = stage.run(call, run)
                    except Exception as exc:  # a provider billed a call that then failed: meter it anyway
                        for item in getattr(exc, "ai_usage", ()):
                            m.add_ai_usage(item["tool"], item["unit"], float(item["quantity"]))
                        raise
                report_plan_difference(m, produced)
                report_identity(m, produced)
                outputs = cache.commit(key, staging, secrets.redact_obj(produced))
    except Exception as exc:  # metered below, then re-raised as a StageFailed the driver understands
        error = exc
        if staging is not None:  # a half-written build never lingers (nor keeps a full disk full)
            shutil.rmtree(staging, ignore_errors=True)
    record = meter.record
    if record.error is not None:
        record = record.model_copy(update={"error": secrets.redact(record.error)})
    emit(info, record)
    if error is not None:
        message = describe_error(error, staging or info.cache_root)
        failed = StageFailed(stage_name, call.shot_id, message, record.model_dump(mode="json"),
                             error.errno if isinstance(error, OSError) else None,
                             bool(getattr(error, "retryable", True)))
        if secrets.redact(str(error)) != str(error):
            raise failed from None  # the original text holds a secret: keep it out of chained tracebacks
        raise failed from error
    return {"outputs": outputs, "record": record.model_dump(mode="json"), "key": key,
            "cache_hit": record.cache_hit, "cache_corrupt": corrupt}


def describe_error(error: BaseException, where: str | Path) -> str:
    """The failure text for users and the ledger: secrets masked; a full disk says where and what to do."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        text = (f"no space left on device writing {error.filename or where} ({text}); free space there or "
                "point cache_dir/output_dir at a bigger disk: finished stages are cached and a re-run resumes")
    return secrets.redact(text)


def begin_attempt(info: RunInfo, meter: Meter) -> Any:
    """Append the attempt's start entry and liveness row before any work, and return its heartbeat (a
    context manager: beats from this worker while the attempt works; see pipeline/metering/attempts.py)."""
    if info.sink is None:
        return contextlib.nullcontext()
    ids = meter.ids
    body = attempt_log.start_body(job=ids["job"], drama=ids["drama"], episode=ids["episode"], stage=ids["stage"],
                                  shot=ids["shot"], backend=ids["backend"], attempt=ids["attempt"],
                                  gpus=meter.gpus, cpus=meter.cpus, driver=info.driver,
                                  heartbeat_s=info.heartbeat_s)
    attempt_log.begin(info.sink, body)
    return attempt_log.Heartbeat(info.sink, body["usage_key"], info.heartbeat_s)


def report_plan_difference(meter: Meter, produced: Any) -> None:
    """A hosted call billed other than planned says so in its usage record (meta.billed_vs_planned)."""
    params = produced.get("params") if isinstance(produced, dict) else None
    diff = params.get("billed_vs_planned") if isinstance(params, dict) else None
    if diff and diff != "as planned":
        meter.meta["billed_vs_planned"] = str(diff)[:500]


def journal(info: RunInfo, meter: Meter) -> Any:
    """The attempt's provider-task journal (pipeline/metering/tasks.py): facts through the ledger writer,
    read back from the ledger; without a ledger, a journal that records nothing."""
    if info.sink is None or info.ledger_url is None:
        return task_log.NoJournal()
    from pipeline.metering.ledger import Ledger

    ids = meter.ids
    key = attempt_log.idempotency_key(ids["job"], ids["stage"], ids["shot"], ids["attempt"])
    return task_log.Journal(sink=info.sink, reader=lambda: Ledger.open(info.ledger_url, create=False),
                            ids={"job": ids["job"], "drama": ids["drama"], "episode": ids["episode"],
                                 "stage": ids["stage"], "shot": ids["shot"], "attempt": ids["attempt"],
                                 "usage_key": key}, limit=info.job.budget.max_cny)



def emit(info: RunInfo, record: UsageRecord) -> None:
    """Hand the record to the ledger writer (blocking: the record is durable before the result returns)."""
    if info.sink is not None:
        from pipeline.metering.sink import emit_record

        emit_record(info.sink, info.job, record)


def registry_snapshot() -> dict[str, dict[str, str]]:
    """The driver's backend registry, so backends registered there (plugins, test backends) resolve in
    workers too. Names map to import targets fixed in code, never taken from a job file."""
    return {stage: dict(table) for stage, table in BACKENDS.items()}


def register_backends(snapshot: dict[str, dict[str, str]] | None) -> None:
    for stage, table in (snapshot or {}).items():
        for name, target in table.items():
            if name not in BACKENDS.get(stage, {}):
                register(stage, name, target)


@ray.remote
def stage_task(info: RunInfo, stage_name: str, call: StageCall, names: tuple[str, ...],
               *upstream) -> dict:
    """A Ray task for one stage execution; upstream results arrive resolved as positional args."""
    register_backends(info.backends)
    return execute_with_retries(info, stage_name, _bind(call, names, upstream))


@ray.remote
class StageWorker:
    """Keeps one backend's model resident and serves many stage executions."""

    def __init__(self, job: Job, stage_name: str, backends: dict[str, dict[str, str]] | None = None):
        register_backends(backends)
        self.job, self.stage_name = job, stage_name
        self.backend = make_backend(job, stage_name)
        self.executions = 0

    def load_count(self) -> int:
        """How many times this actor loaded its model: the backend's own counter (lazy loaders count
        each load); a backend without one loaded at construction, once."""
        return int(getattr(self.backend, "loads", 1))

    def stats(self) -> dict[str, Any]:
        """pid, node, executions, model loads — and, for the tiny models (models/tiny.py), the models this
        process built, by kind (each should be 1: a model is built once per replica)."""
        import sys

        tiny = sys.modules.get("models.tiny")
        out: dict[str, Any] = {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                               "executions": self.executions, "loads": self.load_count()}
        if tiny is not None and tiny.BUILDS:
            out["tiny_builds"] = dict(tiny.BUILDS)
        return out

    def execute(self, info: RunInfo, call: StageCall, names: tuple[str, ...], *upstream,
                resumed: int = 0) -> dict:
        """One execution; `resumed`: how many replicas were lost running it before (pipeline/pools.py)."""
        self.executions += 1
        return execute_with_retries(info, self.stage_name, _bind(call, names, upstream), self.backend,
                                    resumed=resumed)


def execute_with_retries(info: RunInfo, stage_name: str, call: StageCall, backend: Any = None,
                         resumed: int = 0) -> dict:
    """Attempts 1..1+max_retries; each attempt is metered once (its own idempotency key). When Ray re-runs
    the task because its worker died, or a model pool hands it to another replica (`resumed`), the dead
    worker's attempts are closed first and numbering goes on after them (attempts 1, 2 died → 3, 4, …)."""
    settings = backend_settings(info.job, stage_name)
    attempts = 1 + (settings.max_retries if settings else 1)
    first = 1 + previous_attempts(info, stage_name, call.shot_id, attempts, resumed)
    for attempt in range(first, first + attempts):
        try:
            result = execute(info, stage_name, call, attempt, backend)
            result["attempts"] = attempt
            return result
        except StageFailed as failed:
            if attempt == first + attempts - 1 or not failed.retryable:
                raise
    raise AssertionError("unreachable")


def previous_attempts(info: RunInfo, stage_name: str, shot: str | None, per_run: int,
                      resumed: int = 0) -> int:
    """0 on a task's first run; on a Ray retry (or a resumed pool execution), the highest attempt number its
    dead predecessors used."""
    number, _ = attempt_log.ray_attempt()
    if number == 0 and not resumed:
        return 0
    if info.sink is None or info.ledger_url is None:  # no ledger to ask: still never reuse a key
        return (number + resumed) * per_run
    from pipeline.metering.ledger import Ledger

    try:
        ledger = Ledger.open(info.ledger_url, create=False)
    except (OSError, ValueError, ImportError):  # a node without the ledger's file: the driver closes them
        return (number + resumed) * per_run
    with ledger:
        return attempt_log.close_before_retry(ledger, info.sink, job=info.run_id, stage=stage_name, shot=shot)


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
    """One line for the user: which stage failed and why (secrets masked, a full disk named)."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, StageFailed):
        return secrets.redact(str(cause))
    if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
        return describe_error(cause, cause.filename or "the output or cache folder")
    return secrets.redact("".join(traceback.format_exception_only(type(cause), cause)).strip())
