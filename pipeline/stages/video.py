"""Video stage: the keyframe set in motion for exactly the shot's duration, as a lossless intermediate."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.cache import file_digest
from pipeline.job import Job
from pipeline.stages import StageCall, StageRun, report_all
from pipeline.stages.storyboard import shot_seed

VERSION = 1


@dataclass(frozen=True)
class VideoStage:
    job: Job
    name: str = "video"
    reads: tuple[str, ...] = ("storyboard.image", "dub.duration_s")
    writes: tuple[str, ...] = ("clip",)

    def cache_key_parts(self, call: StageCall) -> list[Any]:
        s = self.job.stages.video
        shot = call.inputs["shot"]
        motion = {k: shot.model_dump(mode="json")[k] for k in ("id", "camera", "framing", "action", "characters")}
        return [self.name, VERSION, s.backend, s.options, s.width, s.height, s.fps, motion,
                file_digest(call.inputs["storyboard"]["image"]), call.inputs["dub"]["duration_s"],
                shot_seed(self.job.seed, shot.id)]

    def run(self, call: StageCall, run: StageRun) -> dict[str, Any]:
        s = self.job.stages.video
        shot = call.inputs["shot"]
        out = run.workdir / f"{shot.id}.mkv"
        result = run.backend.render(shot, Path(call.inputs["storyboard"]["image"]), out,
                                    duration_s=call.inputs["dub"]["duration_s"], fps=s.fps,
                                    width=s.width, height=s.height, seed=shot_seed(self.job.seed, shot.id))
        report_all(run, result.ai_usage)
        outputs = dict(result.outputs)
        outputs["clip"] = str(out)
        outputs["params"] = result.params
        return outputs
