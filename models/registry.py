"""Backend registry: each stage's backends by name, imported lazily only when a profile picks them."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

# stage -> backend name -> "module:Class". Modules are imported only when the backend is selected.
BACKENDS: dict[str, dict[str, str]] = {
    "script": {
        "fountain": "models.llm.fountain:FountainScript",
        "llm-tiny": "models.llm.transformers_llm:TinyLLM",
        "smollm2": "models.llm.transformers_llm:SmolLM2",
        "hf-causal-lm": "models.llm.transformers_llm:HFCausalLM",
        "openai-api": "models.llm.openai_api:OpenAIScript",
    },
    "storyboard": {
        "procedural": "models.image.procedural:ProceduralStoryboard",
        "flux-tiny": "models.image.diffusers_t2i:FluxTiny",
        "flux-dev": "models.image.diffusers_t2i:FluxDev",
        "sdxl": "models.image.diffusers_t2i:SDXL",
        "flux-kontext-tiny": "models.image.reference:FluxKontextTiny",
        "flux-kontext-dev": "models.image.reference:FluxKontextDev",
        "sdxl-ip-adapter-tiny": "models.image.reference:SDXLIPAdapterTiny",
        "sdxl-ip-adapter": "models.image.reference:SDXLIPAdapter",
        "wan-t2i-api": "models.image.hosted:WanApiImage",
        "seedream-api": "models.image.hosted:SeedreamApiImage",
    },
    "identity": {  # the storyboard's identity check (stages.storyboard.identity.backend)
        "arcface-tiny": "models.image.identity:ArcFaceTiny",
        "arcface-r50": "models.image.identity:ArcFaceR50",
    },
    "video": {
        "camera-move": "models.video.camera:CameraMoveVideo",
        "wan-tiny": "models.video.diffusers_video:WanTiny",
        "wan2.1-i2v-480p": "models.video.diffusers_video:Wan21I2V480P",
        "wan2.1-t2v-1.3b": "models.video.diffusers_video:Wan21T2V13B",
        "wan2.2-ti2v-5b": "models.video.diffusers_video:Wan22TI2V5B",
        "wan2.2-i2v-a14b": "models.video.diffusers_video:Wan22I2VA14B",
        "wan2.2-a14b-tiny": "models.video.diffusers_video:Wan22A14BTiny",
        "ltx-tiny": "models.video.diffusers_video:LTXTiny",
        "ltx-video": "models.video.diffusers_video:LTXVideo",
        "wan-api": "models.video.hosted:WanApiVideo",
        "seedance-api": "models.video.hosted:SeedanceApiVideo",
        "kling-api": "models.video.hosted:KlingApiVideo",
    },
    "dub": {
        "espeak-ng": "models.tts.espeak:EspeakTTS",
        "piper": "models.tts.piper:PiperTTS",
        "vits-tiny": "models.tts.vits:VitsTiny",
        "mms-tts-eng": "models.tts.vits:MmsTtsEng",
        "mms-tts": "models.tts.vits:MmsTts",
        "qwen-tts-api": "models.tts.hosted:QwenTTSApi",
        "f5-tts": "models.tts.f5:F5TTS",
        "f5-tiny": "models.tts.f5:F5Tiny",
    },
    "translate": {
        "none": "models.mt.none:NoTranslation",
        "marian-tiny": "models.mt.marian:MarianTiny",
        "opus-mt-zh-en": "models.mt.marian:OpusMtZhEn",
        "opus-mt-en-zh": "models.mt.marian:OpusMtEnZh",
        "nllb-600m": "models.mt.marian:Nllb600M",
        "llm-api": "models.mt.llm_api:LLMApiTranslate",
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


# Older names of stages: the dub stage's backends were registered as "tts" (and configured under stages.tts).
STAGE_ALIASES = {"tts": "dub"}


def register(stage: str, name: str, target: str) -> None:
    BACKENDS.setdefault(STAGE_ALIASES.get(stage, stage), {})[name] = target


def backend_names(stage: str) -> list[str]:
    return sorted(BACKENDS.get(STAGE_ALIASES.get(stage, stage), {}))


def resolve(stage: str, name: str) -> type:
    """Import and return the backend class; a clear error names the stage, the name and the choices."""
    stage = STAGE_ALIASES.get(stage, stage)
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
