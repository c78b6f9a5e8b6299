"""Cast stage: a character sheet (front portrait + full figure, both 9:16) for a character without reference
images, drawn once per series by the profile's storyboard backend.

The cache key is the character's bible entry (what it looks like, its names, seed and place in the cast),
the series and the storyboard backend with its settings — never the episode — so every episode of a series
finds the sheet its first episode made. The sheets' paths become `Character.reference_images` for the
storyboard; a person approves or replaces them (`microdrama cast approve`, docs/series.md).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from pipeline.job import Job
from pipeline.script import Character, Script, Shot
from pipeline.stages import StageCall, StageRun, report_all

VERSION = 1
VIEWS = {"portrait": ("close", "front portrait, looking at the camera, neutral expression, plain backdrop"),
         "figure": ("wide", "full figure, standing, front view, head to toe, plain backdrop")}


def character_seed(char: Character) -> int:
    """The character's own seed, else one derived from its name (the same in every episode)."""
    return char.seed if char.seed is not None else zlib.crc32(char.name.encode("utf-8")) % (2**31)


def sheet_shot(char: Character, view: str) -> Shot:
    """The synthetic shot a storyboard backend draws for one view of the sheet: the character alone."""
    framing, pose = VIEWS[view]  # the backend's prompt adds the character's names and description
    return Shot(id=f"cast-{view}", scene=0, index=list(VIEWS).index(view) + 1, location=f"character sheet · {char.name}",
                interior=True, framing=framing, camera="hold", action=pose, characters=(char.name,))


@dataclass(frozen=True)
class CastStage:
    job: Job
    name: str = "cast"
    reads: tuple[str, ...] = ("series.character", "script.characters")
    writes: tuple[str, ...] = ("sheets", "digest")

    def cache_key_parts(self, call: StageCall) -> list[Any]:
        from pipeline.series import character_key

        s = self.job.stages.storyboard
        script: Script = call.inputs["script"]
        name = call.inputs["character"]
        char = script.characters[name]
        look = {k: v for k, v in character_key(char, list(script.characters).index(name)).items()
                if k in ("name", "names", "description", "seed", "cast_index")}
        look["figure"] = {k: char.voice.get(k) for k in ("gender", "age")}  # drawn; the voice ids are not
        return [self.name, VERSION, s.backend, s.options, s.width, s.height, look, call.inputs.get("series", "")]

    def run(self, call: StageCall, run: StageRun) -> dict[str, Any]:
        from pipeline.series import sheet_digest

        s = self.job.stages.storyboard
        script: Script = call.inputs["script"]
        char = script.characters[call.inputs["character"]]
        sheet_script = script.model_copy(update={"title": call.inputs.get("series_title") or script.title,
                                                 "scenes": ()})
        seed = character_seed(char)
        sheets, params = {}, {}
        for view in VIEWS:
            out = run.workdir / f"{view}.png"
            result = run.backend.render(sheet_shot(char, view), sheet_script, out, width=s.width,
                                        height=s.height, seed=seed)
            report_all(run, result.ai_usage)
            sheets[view] = str(out)
            params[view] = result.params
        return {"character": char.name, "sheets": sheets, "digest": sheet_digest(sheets), "seed": seed,
                "params": params}
