"""What a job says about its stages without running them: each stage's backend settings and the parsed source.

Shared by the runner (orchestrate, stages) and by money code (metering, finance), which must not import the
stages or the runner: it sits beside job.py, below both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.job import Job

# stage name → the settings section naming its backend and hosting (None: no backend, the edit uses ffmpeg)
SECTIONS: dict[str, str | None] = {"script": "script", "translate": "translate", "storyboard": "storyboard",
                                   "dub": "dub", "video": "video", "edit": None}
NO_BACKEND = "ffmpeg"


def backend_settings(job: Job, stage: str) -> Any:
    """The job's BackendSettings for `stage` (None for a stage without a backend)."""
    section = SECTIONS[stage]
    return getattr(job.stages, section) if section else None


def backend_name(job: Job, stage: str) -> str:
    """The backend `stage` runs with ("ffmpeg" for the edit)."""
    settings = backend_settings(job, stage)
    return settings.backend if settings is not None else NO_BACKEND


def backend_planner(section: str, backend: str) -> Any:
    """The backend class's `planned(options, **facts)` (the AI-tool units one call bills, known from its
    options alone), or None for a backend that bills no AI tool."""
    from models.registry import resolve

    return getattr(resolve(section, backend), "planned", None)


def screenplay_path(job: Job) -> Path:
    return (job.job_dir / job.screenplay).resolve()


def is_writer(cls: type) -> bool:
    """A script backend that writes the screenplay (an LLM) rather than reading the writer's file."""
    return hasattr(cls, "write") and not hasattr(cls, "reads_file")


def read_source(job: Job) -> Any:
    """What the job's `screenplay:` file must be for its script backend, parsed (ScreenplayError otherwise):
    a Script for a file-reading backend, a Treatment for a screenwriter."""
    from models.registry import resolve
    from pipeline import screenplay

    path = screenplay_path(job)
    if is_writer(resolve("script", job.stages.script.backend)):
        return screenplay.load_treatment(path)
    return screenplay.load(path, language=job.primary_language)


def planned_shots(job: Job) -> int:
    """Shots the episode will have: the screenplay's, or for a screenwriter one per beat (an estimate)."""
    source = read_source(job)
    return len(source.shots) if hasattr(source, "shots") else max(1, len(source.beats))
