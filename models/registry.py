"""Backend registry: each stage's backends by name, imported lazily only when a profile picks them."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

# stage -> backend name -> "module:Class". Modules are imported only when the backend is selected.
BACKENDS: dict[str, dict[str, str]] = {
    "script": {
        "fountain": "models.llm.fountain:FountainScript",
    },
    "storyboard": {
        "procedural": "models.image.procedural:ProceduralStoryboard",
    },
    "video": {
        "camera-move": "models.video.camera:CameraMoveVideo",
    },
    "tts": {
        "espeak-ng": "models.tts.espeak:EspeakTTS",
        "piper": "models.tts.piper:PiperTTS",
    },
    "translate": {
        "none": "models.mt.none:NoTranslation",
    },
}


class BackendError(ValueError):
    """A backend name that is unknown or whose optional dependency is missing."""


@dataclass(frozen=True)
class BackendResult:
    """What a backend call produced: files, measured facts, AI usage to meter, params to log."""

    outputs: dict[str, Any] = field(default_factory=dict)
    ai_usage: tuple[dict, ...] = ()  # ({"tool":..., "unit":..., "quantity":...}, ...)
    params: dict[str, Any] = field(default_factory=dict)


def register(stage: str, name: str, target: str) -> None:
    BACKENDS.setdefault(stage, {})[name] = target


def backend_names(stage: str) -> list[str]:
    return sorted(BACKENDS.get(stage, {}))


def resolve(stage: str, name: str) -> type:
    """Import and return the backend class; a clear error names the stage, the name and the choices."""
    table = BACKENDS.get(stage)
    if table is None:
        raise BackendError(f"unknown stage {stage!r}; stages: {', '.join(sorted(BACKENDS))}")
    if name not in table:
        raise BackendError(
            f"stages.{stage}.backend: unknown backend {name!r}; choose one of: {', '.join(sorted(table))}"
        )
    module_name, _, cls_name = table[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # optional dependency missing
        raise BackendError(
            f"stages.{stage}.backend={name!r} needs a package that is not installed ({exc.name}); "
            f"install the models extra: pip install -e '.[models]'"
        ) from exc
    return getattr(module, cls_name)
