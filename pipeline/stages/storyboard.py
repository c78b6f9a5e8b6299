"""Storyboard stage: one 9:16 keyframe per shot, from the shot's framing, place, people and action."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.job import Job
from pipeline.script import Script
from pipeline.series import shot_characters_key
from pipeline.stages import StageCall, StageRun, report_all

VERSION = 2  # 2: characters keyed by bible entry, reference images by content, cast position


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
        # only this shot's characters (bible entries, reference images by content): changing one character
        # re-renders only the shots it is in
        chars = shot_characters_key(call.inputs["script"], shot.characters)
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
