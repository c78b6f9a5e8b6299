"""Storyboard stage: one 9:16 keyframe per shot, from the shot's framing, place, people and action."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.job import Job
from pipeline.script import Script, Shot
from pipeline.series import shot_characters_key
from pipeline.stages import StageCall, StageRun, report_all

VERSION = 2  # 2: characters keyed by bible entry, reference images by content, cast position


def shot_seed(job_seed: int, shot_id: str) -> int:
    import zlib

    return (job_seed * 1_000_003 + zlib.crc32(shot_id.encode())) % (2**31)


def draws_dialogue(backend: str) -> bool:
    """Whether a storyboard backend's picture depends on the shot's dialogue (its class says
    `draws_dialogue = False` when not, e.g. text-to-image models prompted from action and place)."""
    from models.registry import resolve

    try:
        return bool(getattr(resolve("storyboard", backend), "draws_dialogue", True))
    except Exception:  # an unknown backend is named by validate(); keep the key conservative
        return True


@dataclass(frozen=True)
class StoryboardStage:
    job: Job
    name: str = "storyboard"
    reads: tuple[str, ...] = ("script.shot",)
    writes: tuple[str, ...] = ("image",)

    def cache_key_parts(self, call: StageCall) -> list[Any]:
        """Everything the backend may draw from: the shot (its dialogue too when the backend draws it:
        `draws_dialogue`, default True — the procedural panel captions a shot without action with its
        first line and stages every speaker), the scene heading, each drawn character's entry in the
        cast (description, names, voice hints) and its place in the cast (it picks the colours)."""
        s = self.job.stages.storyboard
        shot: Shot = call.inputs["shot"]
        script: Script = call.inputs["script"]
        dialogue = draws_dialogue(s.backend)
        visual = shot.model_dump(mode="json", exclude={"source_line", "lines"})
        names = list(shot.characters)
        if dialogue:
            visual["lines"] = [ln.model_dump(mode="json", exclude={"source_line", "parenthetical"})
                               for ln in shot.lines]
            names += [ln.speaker for ln in shot.lines]
        # only this shot's characters (bible entries, reference images by content, place in the cast):
        # changing one character re-renders only the shots it is in
        chars = shot_characters_key(script, dict.fromkeys(names))
        heading = next((sc.heading for sc in script.scenes if sc.number == shot.scene), "")
        return [self.name, VERSION, s.backend, s.options, s.width, s.height, visual, chars, heading,
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
