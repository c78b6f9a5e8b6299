"""The call shapes each stage expects of its backends (structural protocols, no shared implementation).

A backend class declares ``Options``, the pydantic schema of its ``stages.<stage>.options`` (models/options.py;
`validate` checks jobs against it), and is constructed once from the options that schema parsed
(``models.options.construct(Backend, options)``, i.e. ``Backend(**validated)``), then called for many shots. Backends that hold model weights set ``resident = True`` and are hosted in a Ray
actor by the orchestrator; ``num_gpus`` says what that actor asks Ray for. Every call returns a
``models.registry.BackendResult`` whose ``ai_usage`` the meter records and whose ``params`` go to MLflow.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from models.registry import BackendResult
from pipeline.script import Script, Shot


class ScriptBackend(Protocol):
    def write(self, *, logline: str, beats: list[str], language: str, seed: int) -> BackendResult:
        """Return outputs={"screenplay": <text in the microdrama Fountain dialect>}."""


class StoryboardBackend(Protocol):
    def render(self, shot: Shot, script: Script, out_path: Path, *, width: int, height: int,
               seed: int) -> BackendResult:
        """Write a keyframe PNG at ``out_path``; outputs={"image": str(out_path)}."""


class VideoBackend(Protocol):
    def render(self, shot: Shot, keyframe: Path, out_path: Path, *, duration_s: float, fps: int,
               width: int, height: int, seed: int) -> BackendResult:
        """Write a silent, visually lossless clip (e.g. x264 -qp 0 in .mkv) of exactly
        round(duration_s*fps) frames; outputs={"clip": str, "frames": int, "width": int, "height": int}.
        The edit stage scales to 1080×1920 and encodes once."""


class TTSBackend(Protocol):
    def speak(self, text: str, out_path: Path, *, lang: str, speaker: str, voice: dict[str, Any],
              emotion: str | None) -> BackendResult:
        """Write a mono WAV; outputs={"wav": str, "duration_s": float, "sample_rate": int}."""


class TranslateBackend(Protocol):
    def translate(self, texts: list[str], *, src: str, tgt: str,
                  glossary: dict[str, str]) -> BackendResult:
        """outputs={"texts": [...]} in the same order; glossary maps source names to target names."""
