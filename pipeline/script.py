"""Typed screenplay model shared by every stage: Script → scenes → shots → lines."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

CAMERA_MOVES = ("hold", "push-in", "pull-out", "pan-left", "pan-right", "tilt-up", "tilt-down")
FRAMINGS = ("wide", "medium", "close", "extreme-close", "over-shoulder")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Character(_Frozen):
    """A speaking part: name as written in cues, optional per-language names and voice hints."""

    name: str
    names: dict[str, str] = Field(default_factory=dict)  # lang -> name in that language (glossary)
    voice: dict[str, str] = Field(default_factory=dict)  # e.g. {"gender": "f", "espeak": "cmn+f3"}
    description: str = ""
    reference_images: tuple[str, ...] = ()  # approved reference images (character sheet), absolute paths once resolved
    voice_reference: str | None = None  # a reference clip for voice cloning (absolute path once resolved)
    voice_transcript: str | None = None  # what the reference clip says
    seed: int | None = None  # the character's own seed (face/voice), stable across the series


class Line(_Frozen):
    """One spoken line: who says it, the text per language (first = as written), delivery hints."""

    speaker: str
    text: dict[str, str]
    emotion: str | None = None
    parenthetical: str | None = None
    source_line: int = 0  # 1-based line number in the screenplay file


class Shot(_Frozen):
    """The unit of rendering: one camera set-up with its action and dialogue."""

    id: str  # stable id, e.g. "s01-sh02"
    scene: int
    index: int  # 1-based within scene
    location: str
    time_of_day: str = ""
    interior: bool = True
    location_tags: tuple[str, ...] = ()
    framing: str = "medium"
    camera: str = "hold"
    action: str = ""
    characters: tuple[str, ...] = ()
    lines: tuple[Line, ...] = ()
    duration_s: float | None = None  # explicit duration from a shot note; else follows the dialogue
    notes: str = ""
    source_line: int = 0


class Scene(_Frozen):
    number: int
    heading: str
    location: str
    time_of_day: str = ""
    interior: bool = True
    location_tags: tuple[str, ...] = ()
    shots: tuple[Shot, ...] = ()


class Script(_Frozen):
    title: str = ""
    language: str = "zh"  # language the dialogue is written in
    characters: dict[str, Character] = Field(default_factory=dict)
    scenes: tuple[Scene, ...] = ()

    @property
    def shots(self) -> list[Shot]:
        return [shot for scene in self.scenes for shot in scene.shots]
