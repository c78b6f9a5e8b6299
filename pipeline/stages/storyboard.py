"""Storyboard stage: one 9:16 keyframe per shot, from the shot's framing, place, people and action."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.job import Job
from pipeline.script import Script
from pipeline.stages import StageCall, StageRun, report_all

VERSION = 1


def shot_seed(job_seed: int, shot_id: str) -> int:
    import zlib

    return (job_seed * 1_000_003 + zlib.crc32(shot_id.encode())) % (2**31)


@dataclass(frozen=True)
class StoryboardStage:
    job: Job
    name: str = "storyboard"
    reads: tuple[str, ...] = ("script.shot",)
    writes: tuple[str, ...] = ("image",)

    def cache_key_parts(self, call: StageCall) -> list[Any]:
        s = self.job.stages.storyboard
        shot = call.inputs["shot"]
        # dialogue does not change the picture: a changed line re-renders only dub (and video if timing moves)
        visual = {k: v for k, v in shot.model_dump(mode="json").items() if k not in ("lines", "source_line")}
        chars = {n: call.inputs["script"].characters[n].model_dump(mode="json")
                 for n in shot.characters if n in call.inputs["script"].characters}
        return [self.name, VERSION, s.backend, s.options, s.width, s.height, visual, chars,
                shot_seed(self.job.seed, shot.id)]

    def run(self, call: StageCall, run: StageRun) -> dict[str, Any]:
        s = self.job.stages.storyboard
        shot = call.inputs["shot"]
        script: Script = call.inputs["script"]
        out = run.workdir / f"{shot.id}.png"
        result = run.backend.render(shot, script, out, width=s.width, height=s.height,
                                    seed=shot_seed(self.job.seed, shot.id))
        report_all(run, result.ai_usage)
        return {"image": str(out), "seed": shot_seed(self.job.seed, shot.id), "params": result.params}
