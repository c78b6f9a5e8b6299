"""Model pools shared by every episode on the cluster: resident model replicas per backend configuration, fed
from one queue per pool, so a model loads once per replica, not once per episode.

One named, detached async Ray actor per namespace (`ModelPools`, found with `get_if_exists=True` by every
driver and every episode thread) keeps, per pool key (stage, backend, options and the Ray resources asked),
a set of `StageWorker` replicas and an `asyncio.Queue` of stage executions — the same primitive as
`ray.util.queue.Queue`, kept inside the pool's actor because each request's reply is awaited there. Each
replica has one puller that takes the next request only when the replica is free: shots are pulled, never
dealt out up front, and a slow shot never holds others behind it on a busy replica.

- A request reaches the queue only once its upstream ObjectRefs are done (Ray resolves them before it calls
  the actor), so a queued shot is always ready to run and a replica never waits on another stage.
- Every execution is metered inside its replica exactly as before (`execute_with_retries` with the request's
  own RunInfo): usage records and cost lines belong to the run that asked. A replica killed mid-shot is
  restarted by Ray and the shot retried there (`max_restarts`, `max_task_retries`): Ray's retry closes the
  dead attempt first (orchestrate.previous_attempts). A replica lost for good under a shot (its node gone,
  restarts used up, unreachable while Ray notices) sends the shot back to the queue for another replica,
  which closes the dead attempt the same way (`resumed`), up to `MAX_REQUEUES` times.
- Size: `actors` replicas per pool, grown up to `max_actors` while the queue is deeper than the idle
  replicas; replicas above `actors` retire after `SCALE_DOWN_S` idle.
- An episode claims a pool while it has work for the stage and lets go when its stage is done. A pool no
  episode claims keeps its replicas (and their GPUs) for `MICRODRAMA_POOL_LINGER_S` for the next episode,
  then retires them (idle GPUs go back to the autoscaler). Earlier only where the pools together hold more
  of a resource than the cluster has — another pool's replica, or a plain task (script, edit), could never
  be placed: then unclaimed idle pools give theirs back, so a small cluster still runs every stage. On a
  cluster sized for its pools nothing is evicted and a model loads once per replica.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from pipeline.cache import digest
from pipeline.job import Job
from pipeline.job_backends import backend_settings

POOLS_NAME = "microdrama-model-pools"
LINGER_S = float(os.environ.get("MICRODRAMA_POOL_LINGER_S", "300"))
SCALE_DOWN_S = 30.0
MAX_REQUEUES = 2  # a shot whose replica is lost under it runs again on another, at most this many times
PENDING_EVICT_S = 2.0  # a replica not placed after this long asks unclaimed pools for their resources
PLAIN_WAIT_S = 600.0  # how long a plain task's unmet ask keeps unclaimed pools from holding what it needs
CLAIM_TTL_S = 3600.0  # a claim whose run made no request this long is stale (its driver died)


@dataclass(frozen=True)
class PoolSpec:
    """What a pool is (its key) and how to build a replica (the settings of the first job that asked)."""

    key: str
    stage: str
    job: Job
    backends: dict[str, dict[str, str]]
    actors: int
    max_actors: int
    num_cpus: float
    num_gpus: float
    resources: dict[str, float]
    linger_s: float = LINGER_S


def pool_spec(job: Job, stage: str, backends: dict[str, dict[str, str]] | None = None) -> PoolSpec:
    """The pool a resident stage of `job` runs in: the same key for every job with the same backend,
    options and resources, whatever its drama or episode."""
    s = backend_settings(job, stage)
    resources = dict(s.resources)
    key = digest("pool", stage, s.backend, s.options, float(s.num_cpus), float(s.num_gpus), resources)[:12]
    return PoolSpec(key=f"{stage}-{key}", stage=stage, job=job, backends=dict(backends or {}),
                    actors=s.actors, max_actors=max(s.actors, s.max_actors or s.actors), num_cpus=float(s.num_cpus),
                    num_gpus=float(s.num_gpus), resources=resources,
                    linger_s=float(os.environ.get("MICRODRAMA_POOL_LINGER_S", LINGER_S)))


def replica_options(spec: PoolSpec) -> dict[str, Any]:
    """What a replica asks Ray for: the stage's GPUs, CPUs and custom resources (which pin it to the worker
    group advertising them); a replica killed mid-shot is restarted and the shot retried on it."""
    return {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus, "resources": dict(spec.resources) or None,
            "max_restarts": 2, "max_task_retries": 2, "max_concurrency": 2}  # 2: stats answer while a shot runs


def get_pools() -> Any:
    """The namespace's one ModelPools actor (created by the first caller; detached, on the head node when the
    cluster marks one, so it outlives any one driver and every Ray job of the cluster shares it)."""
    opts: dict[str, Any] = dict(name=POOLS_NAME, lifetime="detached", get_if_exists=True, num_cpus=0,
                                max_concurrency=100_000)
    if any("node:__internal_head__" in n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")):
        opts["resources"] = {"node:__internal_head__": 0.001}
    return ModelPools.options(**opts).remote()


@dataclass
class _Request:
    info: Any
    call: Any
    names: tuple[str, ...]
    upstream: tuple
    reply: asyncio.Future
    requeues: int = 0  # times its replica was lost under it and it went back to the queue


@dataclass
class _Replica:
    index: int
    handle: Any
    puller: asyncio.Task | None = None
    busy: bool = False
    placed: bool = False
    last_used: float = field(default_factory=time.monotonic)
    runs: dict[str, int] = field(default_factory=dict)  # run id -> executions served for it
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Pool:
    spec: PoolSpec
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    replicas: list[_Replica] = field(default_factory=list)
    retired: list[_Replica] = field(default_factory=list)
    claims: dict[str, float] = field(default_factory=dict)  # run id -> last request time
    made: int = 0
    failures: int = 0  # replicas that died before serving (a constructor that raises, weights missing)
    broken: BaseException | None = None
    last_used: float = field(default_factory=time.monotonic)

    def claimed(self, now: float) -> bool:
        return any(now - t < CLAIM_TTL_S for t in self.claims.values())

    def idle(self) -> bool:
        return self.queue.empty() and not any(r.busy for r in self.replicas)

    def holds(self) -> dict[str, float]:
        per = {"CPU": self.spec.num_cpus, "GPU": self.spec.num_gpus, **self.spec.resources}
        return {k: v * len(self.replicas) for k, v in per.items() if v > 0}


@ray.remote
class ModelPools:
    """Every model pool of the namespace; see the module docstring."""

    def __init__(self) -> None:
        self.pools: dict[str, _Pool] = {}
        self.plain_need: tuple[dict[str, float], float] = ({}, 0.0)
        self._janitor: asyncio.Task | None = None

    # ------------------------------------------------------------ driver side
    async def claim(self, spec: PoolSpec, run_id: str) -> str:
        """Run `run_id` will send executions to this pool (created with its first replicas if new)."""
        pool = self._pool(spec)
        pool.claims[run_id] = time.monotonic()
        pool.broken, pool.failures = None, 0  # a new run tries again (the node at fault may be gone)
        if not pool.replicas:
            for _ in range(spec.actors):
                self._add_replica(pool)
        return spec.key

    async def release(self, key: str, run_id: str) -> list[dict[str, Any]]:
        """Run `run_id` is done with the pool; returns the replicas that served it (pid, node, loads,
        executions in all and for this run)."""
        pool = self.pools.get(key)
        if pool is None:
            return []
        pool.claims.pop(run_id, None)
        pool.last_used = time.monotonic()
        return await self._report(pool, run_id)

    async def call(self, key: str, info: Any, call: Any, names: tuple[str, ...], *upstream: Any) -> dict:
        """One stage execution, queued until a replica of the pool pulls it; returns its result (or raises the
        stage's StageFailed)."""
        pool = self.pools[key]
        if pool.broken is not None:
            raise pool.broken
        pool.claims[info.run_id] = pool.last_used = time.monotonic()
        if not pool.replicas:  # retired since the claim: bring the pool back
            for _ in range(pool.spec.actors):
                self._add_replica(pool)
        reply = asyncio.get_running_loop().create_future()
        await pool.queue.put(_Request(info, call, names, upstream, reply))
        idle = sum(1 for r in pool.replicas if not r.busy and r.placed)
        if pool.queue.qsize() > idle and len(pool.replicas) < pool.spec.max_actors:
            self._add_replica(pool)  # queue-depth autoscaling, up to max_actors
        try:
            return await asyncio.shield(reply)
        except asyncio.CancelledError:  # the run gave up (settle): a request not started yet never runs
            reply.cancel()
            raise

    async def make_room(self, need: dict[str, float]) -> int:
        """A plain task (script, edit) asks for `need`: if the pools hold so much of a resource that it could
        never run, the pools no run claims give theirs back (now, and for a while as runs let go)."""
        self.plain_need = (dict(need), time.monotonic())
        return await self._evict_for(need)

    async def _evict_for(self, need: dict[str, float], keep: str | None = None) -> int:
        """Retire unclaimed, idle pools holding resource k while the pools' hold on k (pending replicas
        included) plus `need` exceeds the cluster's total of k; returns how many replicas went."""
        total, now, gone = ray.cluster_resources(), time.monotonic(), 0
        for k in {k for k in need} | {k for p in self.pools.values() for k in p.holds()}:
            over = sum(p.holds().get(k, 0) for p in self.pools.values()) + need.get(k, 0) - total.get(k, 0)
            for key, pool in list(self.pools.items()):
                if over <= 1e-9:
                    break
                held = pool.holds().get(k, 0)
                if key == keep or not held or pool.claimed(now) or not pool.idle():
                    continue
                gone += await self._retire(pool, list(pool.replicas))
                over -= held
        return gone

    async def stats(self) -> dict[str, Any]:
        """Per pool: its replicas (live and retired) with pid, node, loads and executions; queue depth; claims."""
        out = {}
        for key, pool in self.pools.items():
            out[key] = {"stage": pool.spec.stage, "backend": backend_settings(pool.spec.job, pool.spec.stage).backend,
                        "queued": pool.queue.qsize(), "claims": sorted(pool.claims),
                        "replicas": [await self._stats(r) for r in pool.replicas],
                        "retired": [r.stats for r in pool.retired]}
        return out

    async def shutdown(self) -> int:
        """Retire every replica of every pool (tests, benchmarks); returns how many."""
        return sum([await self._retire(p, list(p.replicas)) for p in self.pools.values()])

    # ------------------------------------------------------------ replicas
    def _pool(self, spec: PoolSpec) -> _Pool:
        if spec.key not in self.pools:
            self.pools[spec.key] = _Pool(spec)
        if self._janitor is None:
            self._janitor = asyncio.get_running_loop().create_task(self._janitor_loop())
        return self.pools[spec.key]

    def _add_replica(self, pool: _Pool) -> None:
        from pipeline.orchestrate import StageWorker

        s = pool.spec
        handle = StageWorker.options(**replica_options(s)).remote(s.job, s.stage, s.backends)
        replica = _Replica(pool.made, handle)
        pool.made += 1
        pool.replicas.append(replica)
        replica.puller = asyncio.get_running_loop().create_task(self._pull(pool, replica))

    async def _pull(self, pool: _Pool, replica: _Replica) -> None:
        """The replica's loop: once placed, take the next request whenever free, run it, reply."""
        placed = asyncio.wrap_future(replica.handle.stats.remote().future())
        while True:
            done, _ = await asyncio.wait({placed}, timeout=PENDING_EVICT_S)
            if done:
                break
            await self._evict_for({}, keep=pool.spec.key)  # the pools together do not fit: unclaimed ones go
        try:
            replica.stats = placed.result()
        except ray.exceptions.RayError as exc:  # the replica could not start (its backend raised)
            pool.failures += 1
            if pool.failures >= 3:
                self._fail_queued(pool, exc)
            self._lost(pool, replica)
            return
        replica.placed = True
        while True:
            request = await pool.queue.get()
            if request.reply.done():  # cancelled while queued
                continue
            replica.busy = True
            run_id = request.info.run_id
            replica.runs[run_id] = replica.runs.get(run_id, 0) + 1
            try:
                result = await replica.handle.execute.remote(request.info, request.call, request.names,
                                                             *request.upstream, resumed=request.requeues)
                _settle(request.reply, result=result)
            except ray.exceptions.RayTaskError as exc:  # the stage failed: hand the caller its StageFailed
                cause = exc.cause if isinstance(exc.cause, Exception) else exc
                _settle(request.reply, error=cause)
            except ray.exceptions.RayActorError as exc:
                # the replica is gone under the shot (its node lost, restarts used up, or unreachable while Ray
                # notices): the shot goes back to the queue for another replica, which closes and bills the dead
                # attempt first and numbers its own after it; after MAX_REQUEUES losses the shot fails
                if request.requeues < MAX_REQUEUES and not request.reply.done():
                    request.requeues += 1
                    pool.queue.put_nowait(request)
                else:
                    _settle(request.reply, error=exc)
                self._lost(pool, replica)
                return
            finally:
                replica.busy = False
                replica.last_used = pool.last_used = time.monotonic()

    def _lost(self, pool: _Pool, replica: _Replica) -> None:
        """A replica Ray could not keep alive: replace it while runs need the pool (unless it is broken)."""
        if replica in pool.replicas:
            pool.replicas.remove(replica)
            pool.retired.append(replica)
        if pool.broken is None and pool.claimed(time.monotonic()) and len(pool.replicas) < pool.spec.actors:
            self._add_replica(pool)

    def _fail_queued(self, pool: _Pool, error: BaseException) -> None:
        """Replicas keep dying before they serve: every queued request fails with the reason, and so do new
        ones until a run claims the pool again."""
        pool.broken = error
        while not pool.queue.empty():
            _settle(pool.queue.get_nowait().reply, error=error)

    async def _retire(self, pool: _Pool, replicas: list[_Replica]) -> int:
        replicas = [r for r in replicas if r in pool.replicas]
        for r in replicas:
            r.stats = await self._stats(r)
            if r.puller is not None:
                r.puller.cancel()
            ray.kill(r.handle)
            pool.replicas.remove(r)
            pool.retired.append(r)
        return len(replicas)

    async def _stats(self, r: _Replica) -> dict[str, Any]:
        if r.placed:
            try:
                r.stats = await asyncio.wait_for(asyncio.wrap_future(r.handle.stats.remote().future()), 10)
            except (ray.exceptions.RayError, asyncio.TimeoutError):
                pass
        return {**r.stats, "replica": r.index, "placed": r.placed, "runs": len(r.runs)}

    async def _report(self, pool: _Pool, run_id: str) -> list[dict[str, Any]]:
        out = []
        for r in pool.replicas + pool.retired:
            if run_id in r.runs:
                facts = await self._stats(r) if r in pool.replicas else r.stats
                out.append({**facts, "replica": r.index, "for_run": r.runs[run_id]})
        return out

    async def _janitor_loop(self) -> None:
        """Every second: retire replicas above `actors` idle for SCALE_DOWN_S, pools unclaimed and idle for
        their linger time, and unclaimed idle pools holding a resource the cluster has none left of."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._tidy(time.monotonic())
            except Exception:  # the GCS restarting, a replica gone mid-call: try again next round
                pass

    async def _tidy(self, now: float) -> None:
        for pool in list(self.pools.values()):
            extra = [r for r in pool.replicas[pool.spec.actors:] if not r.busy and now - r.last_used > SCALE_DOWN_S]
            if extra:
                await self._retire(pool, extra)
            if pool.replicas and not pool.claimed(now) and pool.idle() and now - pool.last_used > pool.spec.linger_s:
                await self._retire(pool, list(pool.replicas))
        need, asked = self.plain_need
        if need and now - asked < PLAIN_WAIT_S:  # a plain task may still wait for what idle pools hold
            await self._evict_for(need)


def _settle(reply: asyncio.Future, *, result: Any = None, error: BaseException | None = None) -> None:
    if reply.done():
        return
    if error is not None:
        reply.set_exception(error)
    else:
        reply.set_result(result)
