"""Script stage: the screenplay (a writer's file, or one an LLM writes from a treatment: a logline and a beat
sheet as a Fountain outline, see docs/screenplay.md) → typed Script."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.job import Job
from pipeline.job_backends import (  # noqa: F401  (is_writer: re-exported)
    is_treatment, is_writer, screenplay_path, screenplay_text)
from pipeline.job_backends import read_source as _parse_source
from pipeline.script import Script
from pipeline.stages import StageCall, StageRun, report_all

VERSION = 2  # 2: Fountain 1.1 in full (opening and establishing shots, two-space lines, …)


@dataclass(frozen=True)
class ScriptStage:
    job: Job
    name: str = "script"
    reads: tuple[str, ...] = ("job.screenplay",)
    writes: tuple[str, ...] = ("script",)

    def screenplay_path(self) -> Path:
        return screenplay_path(self.job)

    def cache_key_parts(self, call: StageCall) -> list[Any]:
        s = self.job.stages.script
        text = screenplay_text(self.job)  # bounded, regular file, UTF-8 (pipeline/safe_io.py)
        from models.registry import resolve

        writes = is_writer(resolve("script", s.backend))  # only a writer model samples with the seed
        return [self.name, VERSION, s.backend, s.options, text, self.job.languages[0],
                self.job.seed if writes else None]

    def run(self, call: StageCall, run: StageRun) -> dict[str, Any]:
        from pipeline import screenplay

        backend = run.backend
        source = self.screenplay_path()
        if is_writer(type(backend)) and is_treatment(self.job):  # read_source refused every other pairing
            treatment = screenplay.load_treatment(source)
            result = backend.write(logline=treatment.logline or treatment.title or self.job.title,
                                   beats=list(treatment.beats), language=treatment.language or self.job.primary_language,
                                   seed=self.job.seed)
            report_all(run, result.ai_usage)
            text = result.outputs["screenplay"]
            (run.workdir / "screenplay.fountain").write_text(text, encoding="utf-8")
            script = screenplay.parse(text, source="generated screenplay")
        else:
            script = screenplay.load(source, language=self.job.primary_language)
        out = run.workdir / "script.json"
        out.write_text(script.model_dump_json(indent=1), encoding="utf-8")
        return {"script": str(out), "shots": [s.id for s in script.shots]}


def read_source(job: Job) -> Any:
    """The job's source parsed (`job_backends.read_source`), and checked against the job's languages: a
    treatment in the primary language; a screenplay that, with the translate backend, supplies every one
    and, for a series episode, whose characters are all in the series bible."""
    from models.mt.none import same_language
    from pipeline.errors import JobError
    from pipeline.stages.translate import supply_problems

    source = _parse_source(job)
    if not hasattr(source, "shots"):
        if source.language and not same_language(source.language, job.primary_language):
            raise JobError(f"languages: the treatment is in {source.language!r} (its Language: line) but "
                           f"languages starts with {job.primary_language!r}; put {source.language!r} first")
        return source
    problems = supply_problems(job, source)
    if job.series is not None:  # every character of a series episode is in its bible
        from pipeline import series

        problems += series.cast_problems(source, series.for_job(job))
    if problems:
        raise JobError(problems)
    return source


def load_script(outputs: dict[str, Any]) -> Script:
    return Script.model_validate(json.loads(Path(outputs["script"]).read_text(encoding="utf-8")))
