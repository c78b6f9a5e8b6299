"""One episode job from start to finish: the single ledger writer, the Ray run, the signed checkpoint,
the published outputs and the MLflow runs — in that order, so that what looks finished is finished."""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pipeline.job import Job
from pipeline.metering.mlflow_sink import DEFAULT_URI, absolute_sqlite, tracking_uri_of  # noqa: F401  (re-exported)
from pipeline.money import exact_sum
from pipeline.runner import ensure_ray, publish, run_episode
from pipeline.orchestrate import new_run_id

log = logging.getLogger(__name__)
MLFLOW_LOCK = threading.Lock()  # episodes run from threads of one driver log to MLflow one at a time
_WRITERS: dict[tuple[str, str], "_Writer"] = {}  # (ledger url, Ray job) -> its writer actor
_WRITERS_LOCK = threading.Lock()
LINGER_S = 60.0  # an idle writer is kept this long for the next episode on the same ledger


def resolve_ledger_url(url: str | None) -> str:
    from pipeline.metering.ledger import default_ledger_url

    return absolute_sqlite(url or default_ledger_url())



def ledger_writer_name(url: str) -> str:
    """The Ray actor name of the writer for `url`, the same in every process (str hash() is salted per
    process), so every driver of a cluster finds the one writer of a ledger."""
    return f"microdrama-ledger-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def run_job(job: Job, *, quiet: bool = False, address: str | None = None, tracking_uri: str | None = None,
            ledger_url: str | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Run, checkpoint, publish, log; returns the manifest. Safe to call from several threads at once."""
    url = resolve_ledger_url(ledger_url)
    check_ledger(url)
    ensure_ray(address)
    guard_secrets(job)
    with shared_writer(url) as writer:
        return _run(job, writer, url, quiet=quiet, address=address, tracking_uri=tracking_uri, run_id=run_id)


def check_ledger(url: str) -> None:
    """Open the ledger here, once, before any writer or work: a bad URL or corrupt file is a UserError (exit
    2), a database server that does not answer is `Unreachable` (exit 4)."""
    from pipeline.errors import UserError
    from pipeline.metering.ledger import Ledger
    from pipeline.metering.ledger_store import StoreUnreachable
    from pipeline.services import Unreachable, check_ledger_url

    check_ledger_url(url, "--ledger")
    try:
        Ledger.open(url).close()
    except StoreUnreachable as exc:
        raise Unreachable(f"--ledger: {exc}") from None
    except (ValueError, ImportError, OSError) as exc:
        raise UserError(f"--ledger {_public_url(url)}: {exc}") from None


@dataclass
class _Writer:
    handle: Any
    created: bool  # started by this driver (else found by name: someone else's, e.g. a batch's detached one)
    users: int = 0
    last_used: float = 0.0


@contextmanager
def shared_writer(url: str) -> Iterator[Any]:
    """The ledger's writer actor, shared by every episode this driver runs, at once or one after another.

    Ray ends a non-detached actor as soon as its creator's handle is dropped (handles found by name do
    not count), while another thread may still use it, or the next run may find it by name while it is
    dying. So the handle is kept here while episodes use it and for LINGER_S after; a writer this driver
    started is then ended deliberately, and its name is free before anyone can look it up again."""
    import ray

    key = (url, ray.get_runtime_context().get_job_id())
    with _WRITERS_LOCK:
        _drop_idle(keep=key)
        writer = _WRITERS.get(key)
        if writer is None:
            writer = _WRITERS[key] = _new_writer(url)
        writer.users += 1
    try:
        yield writer.handle
    finally:
        with _WRITERS_LOCK:
            writer.users -= 1
            writer.last_used = time.monotonic()


def _new_writer(url: str) -> _Writer:
    import ray

    from pipeline.metering.ledger_actor import get_or_create_writer

    name = ledger_writer_name(url)
    try:
        ray.get_actor(name)
        existed = True
    except ValueError:
        existed = False
    return _Writer(get_or_create_writer(url, name=name), created=not existed)


def _drop_idle(keep: tuple[str, str]) -> None:
    """Forget writers idle for LINGER_S (called with _WRITERS_LOCK held); end those this driver started."""
    import ray

    now = time.monotonic()
    for key, writer in list(_WRITERS.items()):
        if key == keep or writer.users or now - writer.last_used < LINGER_S:
            continue
        del _WRITERS[key]
        if not writer.created:
            continue
        name = ledger_writer_name(key[0])
        try:
            ray.kill(writer.handle)
            deadline = now + 10.0
            while time.monotonic() < deadline:
                ray.get_actor(name)  # raises ValueError once the name is free
                time.sleep(0.05)
        except Exception:  # gone already, or a Ray session that has ended
            pass


def _run(job: Job, writer: Any, url: str, *, quiet: bool, address: str | None, tracking_uri: str | None,
         run_id: str | None) -> dict[str, Any]:
    from pipeline.metering.ledger import Ledger

    run_id = run_id or new_run_id(job)
    import ray

    close_attempts(url, writer, job, run_id, orphans=True)
    guard = None
    if job.budget.max_cny is not None:
        from pipeline.finance.estimate import BudgetGuard

        with MLFLOW_LOCK:
            guard = BudgetGuard(job, run_id, url, tracking_uri_of(tracking_uri))
    try:
        manifest, edit = run_episode(job, quiet=quiet, address=address, sink=writer, run_id=run_id,
                                     before_stage=guard, ledger_url=url)
    finally:  # attempts that died without a record are billed, then the signed checkpoint covers them
        try:
            close_attempts(url, writer, job, run_id)
        except Exception as exc:  # never hide the run's own error; the next run of the episode retries this
            log.warning("could not close the dead attempts of run %s: %s", run_id, exc)
        checkpoint = ray.get(writer.checkpoint.remote()).to_dict()
    ledger = Ledger.open(url)
    usage = [e.body for e in ledger.entries(kind="usage", where={"job": run_id})]
    costs = [e.body for e in ledger.entries(kind="cost", where={"job": run_id})]
    ledger.close()
    total = exact_sum(c["amount"] for c in costs)
    manifest["cost"] = {"total_cny": str(total.quantize(Decimal("0.01"))), "exact_cny": str(total),
                        "usage_records": len(usage), "cost_lines": len(costs)}
    manifest["ledger"] = {"url": _public_url(url), "tree_size": checkpoint["tree_size"],
                          "root_hash": checkpoint["root_hash"], "key_id": checkpoint["key_id"],
                          "checkpoint": checkpoint["note"]}  # the whole signed note: a holder can check it later
    out = publish(job, edit, manifest)
    from pipeline.metering.mlflow_queue import log_or_queue

    with MLFLOW_LOCK:  # MLflow's tracking URI and active experiment are process-wide
        manifest["mlflow"] = log_or_queue(tracking_uri=tracking_uri_of(tracking_uri), job=job, manifest=manifest,
                                          usage=usage, costs=costs, out_dir=out, checkpoint=checkpoint)
    return manifest


def guard_secrets(job: Job) -> None:
    """Mask, in this driver's logs and error texts, every key the job's backend options point at."""
    from pipeline import secrets

    secrets.install_log_redaction()
    for settings in job.stages.backends().values():
        secrets.register_from_options(settings.options)


def close_attempts(url: str, writer: Any, job: Job, run_id: str, orphans: bool = False) -> int:
    """Bill attempts that started but whose process died before writing their usage record: this run's
    (after it ends), or with `orphans` those of earlier runs of this episode whose driver is gone."""
    from pipeline.metering import attempts
    from pipeline.metering.ledger import Ledger

    with Ledger.open(url) as ledger:
        if orphans:
            return attempts.close_orphans(ledger, writer, drama=job.drama, episode=job.episode,
                                          current_run=run_id)
        return attempts.close_run(ledger, writer, run_id,
                                  why="the run ended before the attempt reported: its worker died or was "
                                      "cancelled when the run failed")


def _public_url(url: str) -> str:
    """A ledger URL without credentials (postgresql://user:pw@host → postgresql://host)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return url
