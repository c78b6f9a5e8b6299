"""Pipeline stages, one per file: script, translate, cast, storyboard, dub, video, edit.

Every stage is a small class with a frozen settings object. It declares what it reads and writes,
computes the cache key of one execution from everything that determines its output, and `run`s that
execution into a private staging folder. Stages share no implementation through inheritance; the
orchestrator meters, caches and places them on Ray.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class StageCall:
    """One execution's inputs: the shot it is for (if any) and its upstream outputs by name."""

    shot_id: str | None
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageRun:
    """What `run` gets besides the call: where to write, the backend to use, a hook for AI usage."""

    workdir: Path
    backend: Any
    report_usage: Callable[[str, str, float], None]
    aux_backends: dict[str, Any] = field(default_factory=dict)


def report_all(run: StageRun, ai_usage: tuple[dict, ...] | list[dict]) -> None:
    for item in ai_usage:
        run.report_usage(item["tool"], item["unit"], float(item["quantity"]))
