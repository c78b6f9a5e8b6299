"""Storyboard backends on diffusers text-to-image (FLUX.1, SDXL, tiny FLUX): one 9:16 keyframe per shot.

The prompt is built from the shot (framing, location, time, action) and a reference prompt per character
(its description, or `options.characters[name]`); the noise seed of a shot follows its first character
(`options.character_seeds[name]`, else a hash of the name), so a character starts from the same noise in
every shot it leads — a cheap consistency aid that needs no adapter. Shots without people use the
stage's per-shot seed.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models import hub, options as opt
from models.registry import BackendResult
from pipeline.script import Script, Shot

hub.require_packages("torch", "diffusers", "transformers")

FRAMING_WORDS = {"wide": "wide establishing shot", "medium": "medium shot", "close": "close-up",
                 "extreme-close": "extreme close-up", "over-shoulder": "over-the-shoulder shot"}


@dataclass(frozen=True)
class ImageSpec:
    """What one registered name means: which weights, which pipeline, which defaults."""

    name: str
    model_id: str | None  # None: the tiny random pipeline from models.tiny
    pipeline: str  # "flux" | "sdxl"; reference.py: "kontext" | "sdxl-ip"
    steps: int
    guidance: float
    dtype: str = "float32"
    num_gpus: float = 0
    extra: dict[str, Any] = field(default_factory=dict)


SPECS = {
    "flux-tiny": ImageSpec("flux-tiny", None, "flux", steps=2, guidance=3.5, extra={"max_sequence_length": 48}),
    "flux-dev": ImageSpec("flux-dev", "black-forest-labs/FLUX.1-dev", "flux", steps=28, guidance=3.5,
                          dtype="bfloat16", num_gpus=1, extra={"max_sequence_length": 512}),
    "sdxl": ImageSpec("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "sdxl", steps=30, guidance=5.0,
                      dtype="float16", num_gpus=1),
}
NEGATIVE = "blurry, low quality, deformed hands, extra fingers, text, watermark, horizontal frame"


def character_seed(name: str, overrides: dict[str, int]) -> int:
    """A stable seed per character: the override when given, else CRC32 of the name."""
    return int(overrides[name]) if name in overrides else zlib.crc32(name.encode("utf-8"))


def retry_seed(seed: int, try_index: int) -> int:
    """The seed of the identity check's re-render number `try_index` (0: the shot's own seed)."""
    return int(seed) if try_index == 0 else (int(seed) + try_index * 1_000_003) % 2**32


def reference_prompt(name: str, script: Script, overrides: dict[str, str]) -> str:
    """How a character looks in every prompt: the override, else name + description from the screenplay."""
    if name in overrides:
        return overrides[name]
    char = script.characters.get(name)
    desc = char.description if char else ""
    lang_names = [n for n in (char.names.values() if char else []) if n != name]
    label = f"{name} ({lang_names[0]})" if lang_names else name
    return f"{label}, {desc}" if desc else label


def keyframe_prompt(shot: Shot, script: Script, overrides: dict[str, str], style: str) -> str:
    """One prompt from framing, people, action and place, ending with the style line."""
    place = ("interior" if shot.interior else "exterior") + f", {shot.location}"
    if shot.time_of_day:
        place += f", {shot.time_of_day}"
    people = "; ".join(reference_prompt(n, script, overrides) for n in shot.characters)
    parts = [FRAMING_WORDS.get(shot.framing, shot.framing), people, shot.action, place, style]
    return ". ".join(p.strip() for p in parts if p and p.strip())


def check_size(width: int, height: int, who: str) -> None:
    if width % 16 or height % 16:
        raise ValueError(f"{who}: width and height must be divisible by 16, got {width}x{height}; "
                         f"use e.g. 144x256, 480x832 or 720x1280 (stages.storyboard.width/height)")


class KeyframeOptions(opt.WeightsOptions):
    dtype: opt.Dtype | None = None  # default: the model's
    steps: int | None = opt.Field(None, ge=1, le=200)  # default: the model's
    guidance: float | None = opt.Field(None, ge=0, le=30)
    style: opt.Text = "vertical 9:16 cinematic film still, micro-drama, dramatic lighting"
    negative_prompt: opt.Text = NEGATIVE
    characters: opt.Characters | None = None  # name → reference prompt
    character_seeds: dict[opt.Name, opt.Seed] | None = opt.Field(None, max_length=200)
    cpu_offload: bool = False


class DiffusersKeyframes:
    """Text-to-image keyframes through a diffusers pipeline kept resident after the first call.

    Options: ``model_id`` (another checkpoint of the same pipeline family), ``weights_dir`` (local folder
    with model_index.json; else the hub cache), ``dtype``
    (float32|float16|bfloat16), ``device`` ("auto", "cpu", "cuda", "cuda:1"), ``steps``, ``guidance``,
    ``style`` (appended to every prompt), ``negative_prompt`` (SDXL only), ``characters`` (name → reference
    prompt), ``character_seeds`` (name → seed), ``cpu_offload`` (diffusers model CPU offload),
    ``tiny_seed`` (weights seed of the tiny model).
    """

    Options = KeyframeOptions
    spec: ImageSpec = SPECS["flux-tiny"]
    resident = True
    draws_dialogue = False  # prompted from framing, people, action and place (keyframe_prompt)
    num_gpus = 0
    identity_retries = True  # render(try_index=n) draws another seed (the identity check's re-renders)

    def __init__(self, *, model_id: str | None = None, weights_dir: str | None = None, dtype: str | None = None,
                 device: str = "auto", steps: int | None = None, guidance: float | None = None,
                 style: str = "vertical 9:16 cinematic film still, micro-drama, dramatic lighting",
                 negative_prompt: str = NEGATIVE, characters: dict[str, str] | None = None,
                 character_seeds: dict[str, int] | None = None, cpu_offload: bool = False,
                 tiny_seed: int = 0) -> None:
        s = self.spec
        self.steps = int(steps if steps is not None else s.steps)
        if self.steps < 1:
            raise ValueError(f"stages.storyboard.options.steps must be >= 1, got {steps}")
        self.guidance = float(guidance if guidance is not None else s.guidance)
        self.dtype = dtype or s.dtype
        hub.torch_dtype(self.dtype)  # validates the name
        self.device = device if s.model_id else "cpu" if device == "auto" else device
        self.style, self.negative_prompt, self.cpu_offload = style, negative_prompt, cpu_offload
        self.characters, self.character_seeds = dict(characters or {}), dict(character_seeds or {})
        self.tiny_seed = tiny_seed
        self.model_id = hub.model_id_option(s.name, s.model_id, model_id, "storyboard")
        self.source = (hub.require_weights("storyboard", s.name, self.model_id, weights_dir, "model_index.json")
                       if self.model_id else None)
        self.loads = 0
        self._pipe: Any = None

    def load(self) -> Any:
        if self._pipe is None:
            if self.model_id is None:
                from models import tiny

                self._pipe = tiny.flux(self.tiny_seed)
            else:
                self._pipe = self._load_real()
            self.loads += 1
        return self._pipe

    def _load_real(self) -> Any:
        import diffusers

        cls = diffusers.FluxPipeline if self.spec.pipeline == "flux" else diffusers.StableDiffusionXLPipeline
        pipe = cls.from_pretrained(self.source, torch_dtype=hub.torch_dtype(self.dtype), local_files_only=True)
        if self.cpu_offload:
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(hub.pick_device(self.device))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def shot_seed(self, shot: Shot, seed: int) -> int:
        return character_seed(shot.characters[0], self.character_seeds) if shot.characters else seed

    def render(self, shot: Shot, script: Script, out_path: Path, *, width: int, height: int,
               seed: int, try_index: int = 0) -> BackendResult:
        check_size(width, height, f"storyboard {self.spec.name}")
        pipe = self.load()
        prompt = keyframe_prompt(shot, script, self.characters, self.style)
        used_seed = retry_seed(self.shot_seed(shot, seed), try_index)
        kwargs: dict[str, Any] = dict(prompt=prompt, height=height, width=width, num_inference_steps=self.steps,
                                      guidance_scale=self.guidance, output_type="pil",
                                      generator=hub.generator(used_seed), **self.spec.extra)
        if self.spec.pipeline == "sdxl":
            kwargs["negative_prompt"] = self.negative_prompt
        image = pipe(**kwargs).images[0]
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        image.save(out_path, format="PNG")
        name = self.spec.name
        return BackendResult(
            outputs={"image": str(out_path)},
            ai_usage=({"tool": name, "unit": "image", "quantity": 1},
                      {"tool": f"{name}:step", "unit": "step", "quantity": self.steps}),
            params={"model": self.model_id or f"tiny-random-flux(seed={self.tiny_seed})", "steps": self.steps,
                    "guidance": self.guidance, "seed": used_seed, "width": width, "height": height,
                    "dtype": self.dtype, "prompt": prompt})


class FluxTiny(DiffusersKeyframes):
    spec = SPECS["flux-tiny"]


class FluxDev(DiffusersKeyframes):
    spec = SPECS["flux-dev"]
    num_gpus = 1


class SDXL(DiffusersKeyframes):
    spec = SPECS["sdxl"]
    num_gpus = 1
