"""Resident-model hosting on Ray: one backend per actor, loaded once, serving many shots round-robin.

Ray tasks that ask for GPUs default to ``max_calls=1`` (a fresh worker process per task), which would
reload the weights for every shot; an actor keeps the model in memory for its whole life. `BackendPool`
starts N such actors and hands out calls in turn, returning ObjectRefs so the caller can fan out shots.
"""
from __future__ import annotations

import itertools
import os
from typing import Any

import ray

from models.registry import BackendResult, resolve


class BackendHost:
    """Constructs one backend (the stage's registered name with its options) and forwards calls to it."""

    def __init__(self, stage: str, name: str, options: dict[str, Any] | None = None, warm: bool = False):
        self.stage, self.name = stage, name
        self.backend = resolve(stage, name)(**(options or {}))
        self.constructed = 1
        self.calls = 0
        if warm and hasattr(self.backend, "load"):
            self.backend.load()

    def call(self, method: str, *args: Any, **kwargs: Any) -> BackendResult:
        self.calls += 1
        return getattr(self.backend, method)(*args, **kwargs)

    def call_after(self, _upstream: Any, method: str, *args: Any, **kwargs: Any) -> BackendResult:
        """As `call`, once `_upstream` is ready: Ray resolves an ObjectRef passed here before the call runs."""
        return self.call(method, *args, **kwargs)

    def load_count(self) -> int:
        """Times this actor loaded model weights (the backend's own counter; construction when it has none)."""
        return int(getattr(self.backend, "loads", self.constructed))

    def info(self) -> dict[str, Any]:
        return {"stage": self.stage, "backend": self.name, "pid": os.getpid(), "calls": self.calls,
                "loads": self.load_count()}


BackendActor = ray.remote(BackendHost)


class BackendPool:
    """N resident actors for one backend; `submit` dispatches round-robin and returns an ObjectRef."""

    def __init__(self, stage: str, name: str, options: dict[str, Any] | None = None, *, actors: int = 1,
                 num_gpus: float = 0, num_cpus: float = 1, warm: bool = False):
        if actors < 1:
            raise ValueError(f"stages.{stage}.actors must be >= 1, got {actors}")
        resources: dict[str, Any] = {"num_cpus": num_cpus}
        if num_gpus > 0:
            resources["num_gpus"] = num_gpus
        self.stage, self.name = stage, name
        self.actors = [BackendActor.options(**resources).remote(stage, name, dict(options or {}), warm)
                       for _ in range(actors)]
        self._next = itertools.cycle(range(actors))

    def submit(self, method: str, *args: Any, **kwargs: Any) -> ray.ObjectRef:
        """Call `method` on the next actor in turn; the ObjectRef resolves to a BackendResult."""
        return self.actors[next(self._next)].call.remote(method, *args, **kwargs)

    def submit_after(self, upstream: ray.ObjectRef, method: str, *args: Any, **kwargs: Any) -> ray.ObjectRef:
        """As `submit`, but the call starts only when `upstream` (e.g. the shot's keyframe) is done."""
        return self.actors[next(self._next)].call_after.remote(upstream, method, *args, **kwargs)

    def map(self, method: str, calls: list[tuple[tuple, dict]]) -> list[ray.ObjectRef]:
        """Submit many (args, kwargs) calls, spread over the actors."""
        return [self.submit(method, *args, **kwargs) for args, kwargs in calls]

    def load_counts(self) -> list[int]:
        return ray.get([a.load_count.remote() for a in self.actors])

    def info(self) -> list[dict[str, Any]]:
        return ray.get([a.info.remote() for a in self.actors])

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
