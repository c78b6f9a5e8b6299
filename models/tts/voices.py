"""The schema of a character's voice hints (`stages.dub.voices.<character>`), per dub backend.

Every backend reads a few keys; a key that no backend reads is a typo that would silently do nothing, so it
is refused with the keys the job's backend does read. Kept free of model imports: `validate` runs it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Key:
    """One voice hint: its kind ("choice", "int", "float", "text") and bounds, and what it does."""

    kind: str
    help: str
    low: float = 0
    high: float = 0
    choices: tuple[str, ...] = ()

    def problem(self, value: Any) -> str | None:
        if self.kind == "choice":
            ok = str(value).lower() in self.choices
            return None if ok else f"must be one of {', '.join(self.choices)}, got {value!r}"
        if self.kind == "text":
            if not isinstance(value, str) or not value.strip() or len(value) > self.high:
                return f"must be text of 1–{int(self.high)} characters, got {value!r}"
            if any(ord(c) < 32 for c in value):
                return "must be on one line (no control characters)"
            return None
        try:
            number = float(value)  # screenplay hints arrive as text ("22")
        except (TypeError, ValueError):
            return f"must be a number in [{self.low:g}, {self.high:g}], got {value!r}"
        if isinstance(value, bool) or not self.low <= number <= self.high or (
                self.kind == "int" and number != int(number)):
            return f"must be {'a whole number' if self.kind == 'int' else 'a number'} in " \
                   f"[{self.low:g}, {self.high:g}], got {value!r}"
        return None


GENDER = Key("choice", "f or m: picks a voice of that gender", choices=("f", "m"))
AGE = Key("int", "the character's age (a hint; recorded)", 1, 120)
ESPEAK = Key("text", "an espeak-ng voice, e.g. cmn+f3", high=64)
PITCH = Key("int", "espeak-ng pitch, 0–99", 0, 99)
SPEED = Key("int", "espeak-ng words per minute", 80, 450)
PACE = Key("float", "speaking pace multiplier, >1 faster", 0.5, 2.0)

SCHEMAS: dict[str, dict[str, Key]] = {
    "espeak-ng": {"gender": GENDER, "age": AGE, "espeak": ESPEAK, "pitch": PITCH, "speed": SPEED},
    "piper": {"gender": GENDER, "age": AGE, "pace": PACE},
    "vits-tiny": {"gender": GENDER, "age": AGE, "rate": Key("float", "VITS speaking rate, >1 faster", 0.25, 4.0)},
    "qwen-tts-api": {"gender": GENDER, "age": AGE, "qwen": Key("text", "a Qwen-TTS voice name, e.g. Cherry",
                                                               high=64)},
}
SCHEMAS["mms-tts"] = SCHEMAS["mms-tts-eng"] = SCHEMAS["vits-tiny"]
# F5-TTS clones the reference clip; without one, a default clip is spoken once with espeak-ng from the
# espeak keys (so those are read too). The reference clip and transcript normally come from the series bible
# (Character.voice_reference / voice_transcript); these keys set or override them per job.
SCHEMAS["f5-tts"] = SCHEMAS["f5-tiny"] = {
    "gender": GENDER, "age": AGE, "espeak": ESPEAK, "pitch": PITCH, "speed": SPEED, "pace": PACE,
    "reference": Key("text", "a reference clip for voice cloning (3–15 s, mono), beside the job", high=1024),
    "transcript": Key("text", "exactly what the reference clip says", high=1000),
    "seed": Key("int", "the voice's seed (default: the character's seed)", 0, 2**63 - 1),
}


def voice_problems(backend: str, voices: dict[str, dict[str, Any]], where: str) -> list[str]:
    """Every problem with `voices` (character → hints) for `backend`, each naming the key and the fix.

    A key that no shipped backend reads is refused, listing what `backend` reads. A key another backend
    reads (a job tuned on espeak-ng run once with the tiny profile) is checked against that backend's
    bounds and ignored by this one. A backend without a schema here (a plugin) reads whatever it likes."""
    schema = SCHEMAS.get(backend)
    if schema is None:
        return []
    others = {k: spec for name, keys in SCHEMAS.items() for k, spec in keys.items()}
    problems = []
    for character, hints in voices.items():
        for key, value in hints.items():
            spec = schema.get(key) or others.get(key)
            if spec is None:
                problems.append(f"{where}.{character}.{key}: unknown voice key for backend {backend!r}; "
                                f"it reads: {', '.join(sorted(schema))}")
            elif (problem := spec.problem(value)) is not None:
                problems.append(f"{where}.{character}.{key}: {problem}")
    return problems
