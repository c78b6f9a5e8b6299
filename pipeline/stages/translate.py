"""Translate stage: fills every line's missing job languages (screenplay translations win), glossary-aware."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.job import Job
from pipeline.script import Script
from pipeline.stages import StageCall, StageRun, report_all

VERSION = 1


@dataclass(frozen=True)
class TranslateStage:
    job: Job
    name: str = "translate"
    reads: tuple[str, ...] = ("script",)
    writes: tuple[str, ...] = ("script",)

    def cache_key_parts(self, call: StageCall) -> list[Any]:
        s = self.job.stages.translate
        script_text = Path(call.inputs["script"]["script"]).read_text(encoding="utf-8")
        return [self.name, VERSION, s.backend, s.options, s.glossary, self.job.languages, script_text,
                *([bible_names(self.job)] if self.job.series is not None else [])]

    def run(self, call: StageCall, run: StageRun) -> dict[str, Any]:
        script = Script.model_validate_json(Path(call.inputs["script"]["script"]).read_text("utf-8"))
        src = script.language
        filled: dict[tuple[int, int, int], dict[str, str]] = {}
        lines = [(si, hi, li, line) for si, sc in enumerate(script.scenes)
                 for hi, sh in enumerate(sc.shots) for li, line in enumerate(sh.lines)]
        for lang in self.job.languages:
            todo = [(k, line) for *k, line in lines if lang not in line.text]
            if not todo:
                continue
            glossary = _glossary(script, src, lang, self.job.stages.translate.glossary.get(lang, {}),
                                 bible_names(self.job) if self.job.series is not None else {})
            result = run.backend.translate([line.text[src] for _, line in todo], src=src, tgt=lang,
                                           glossary=glossary)
            report_all(run, result.ai_usage)
            for (k, _line), text in zip(todo, result.outputs["texts"]):
                filled.setdefault(tuple(k), {})[lang] = text
        script = _apply(script, filled)
        out = run.workdir / "script.json"
        out.write_text(script.model_dump_json(indent=1), encoding="utf-8")
        return {"script": str(out), "translated_lines": len(filled)}


def supply_problems(job: Job, script: Script) -> list[str]:
    """What stops the job's languages from being supplied, before any work: the primary language is the one
    the screenplay is written in, and every other language is either written in the screenplay for every
    line ([[xx: …]]) or the translate backend can translate into it from the screenplay's language."""
    from models.mt.none import same_language
    from models.registry import resolve

    src, problems = script.language, []
    if not same_language(src, job.primary_language):
        problems.append(f"languages: the screenplay is written in {src!r} (its Language: line) but languages "
                        f"starts with {job.primary_language!r}; put {src!r} first, e.g. "
                        f"[{', '.join([src, *[x for x in job.languages if x != src]])}]")
    lines = [line for shot in script.shots for line in shot.lines]
    name = job.stages.translate.backend
    try:
        cls = resolve("translate", name)
    except Exception:  # an unknown backend is named by validate()
        return problems
    pair_problem = getattr(cls, "pair_problem", None)  # a model that translates some pairs or languages only
    for lang in job.languages:
        missing = sum(lang not in line.text for line in lines)
        if not missing or same_language(src, lang):
            continue
        if not getattr(cls, "machine_translates", True):
            problems.append(f"languages: {missing} of {len(lines)} line(s) have no {lang!r} text and "
                            f"stages.translate.backend {name!r} does not machine-translate; add [[{lang}: …]] "
                            f"translations to the screenplay, drop {lang!r}, or pick a translate backend")
        elif pair_problem and (why := pair_problem(src, lang, job.stages.translate.options)):
            problems.append(f"languages: {missing} of {len(lines)} line(s) have no {lang!r} text and "
                            f"stages.translate.backend {name!r} {why}")
    return problems


def bible_names(job: Job) -> dict[str, dict[str, str]]:
    """A series episode's character names per language from its bible (only names: a changed description
    does not re-translate)."""
    from pipeline import series

    return {name: dict(char.names) for name, char in series.for_job(job).characters.items()}


def _glossary(script: Script, src: str, tgt: str, extra: dict[str, str],
              bible: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    names = {c.names.get(src, c.name): c.names[tgt] for c in script.characters.values() if tgt in c.names}
    from_bible = {names_.get(src, name): names_[tgt] for name, names_ in (bible or {}).items() if tgt in names_}
    return {**names, **from_bible, **extra}


def _apply(script: Script, filled: dict[tuple[int, int, int], dict[str, str]]) -> Script:
    if not filled:
        return script
    data = json.loads(script.model_dump_json())
    for (si, hi, li), texts in filled.items():
        data["scenes"][si]["shots"][hi]["lines"][li]["text"].update(texts)
    return Script.model_validate(data)
