"""What a job says about its stages without running them: each stage's backend settings and the parsed source.

Shared by the runner (orchestrate, stages) and by money code (metering, finance), which must not import the
stages or the runner: it sits beside job.py, below both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.job import Job

# stage name → the settings section naming its backend and hosting (None: no backend, the edit uses ffmpeg)
# (cast draws character sheets with the storyboard's backend and hosting)
SECTIONS: dict[str, str | None] = {"script": "script", "translate": "translate", "cast": "storyboard",
                                   "storyboard": "storyboard", "dub": "dub", "video": "video", "edit": None}
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


def screenplay_text(job: Job) -> str:
    """The job's `screenplay:` file as text, through the one bounded reader (regular file, the screenplay
    size limit, UTF-8): what cache keys and the tuning session digest. An InputError (exit 2) otherwise."""
    from pipeline import safe_io
    from pipeline.screenplay import MAX_BYTES

    return safe_io.read_text(screenplay_path(job), "screenplay", max_bytes=MAX_BYTES)


def is_writer(cls: type) -> bool:
    """A script backend that writes the screenplay (an LLM) rather than reading the writer's file."""
    return hasattr(cls, "write") and not hasattr(cls, "reads_file")


def declares_treatment(path: Path) -> bool:
    """Whether the file says it is a treatment: a `Format: treatment` line in its title page."""
    from pipeline import safe_io

    try:
        text = safe_io.read_text(path, "screenplay", max_bytes=1024 * 1024)
    except safe_io.InputError:
        return False  # unreadable: the parser that reads it next says why
    for line in text.lstrip("\ufeff").splitlines():
        if not line.strip():
            break  # the title page ends at the first blank line
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "format" and value.strip().lower() == "treatment":
            return True
    return False


def is_treatment(job: Job) -> bool:
    """The job's source is a treatment only when the job says so (`treatment: true`) or the file does
    (`Format: treatment`); `treatment: false` overrides the file. Never guessed from the backend."""
    if job.treatment is not None:
        return job.treatment
    return declares_treatment(screenplay_path(job))


def read_source(job: Job) -> Any:
    """What the job's `screenplay:` file is, parsed (ScreenplayError otherwise): a Treatment when the job
    or the file declares one, else a Script; a JobError when the script backend cannot take it (a
    screenwriter given a screenplay would throw its dialogue away; a reader cannot expand beats)."""
    from models.registry import resolve
    from pipeline import screenplay
    from pipeline.errors import JobError

    path = screenplay_path(job)
    backend = job.stages.script.backend
    writer = is_writer(resolve("script", backend))
    if is_treatment(job):
        if not writer:
            raise JobError(f"treatment: {job.screenplay} is a treatment but stages.script.backend {backend!r} "
                           "reads a written screenplay; choose a screenwriter (stages.script.backend=llm-tiny, "
                           "smollm2, hf-causal-lm or openai-api) or give a screenplay")
        return screenplay.load_treatment(path)
    if writer:
        raise JobError(f"treatment: {job.screenplay} is a screenplay (neither the job's treatment: true nor a "
                       f"'Format: treatment' line says it is a treatment) but stages.script.backend {backend!r} "
                       "writes one from a treatment and would drop its dialogue; use it as written with "
                       "stages.script.backend=fountain, or set treatment: true if the file is a treatment")
    return screenplay.load(path, language=job.primary_language)


def planned_shots(job: Job) -> int:
    """Shots the episode will have: the screenplay's, or for a screenwriter one per beat (an estimate)."""
    source = read_source(job)
    return len(source.shots) if hasattr(source, "shots") else max(1, len(source.beats))
