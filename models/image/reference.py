"""Reference-conditioned storyboard backends: FLUX.1 Kontext [dev] and SDXL + IP-Adapter fed the character sheets.

The approved reference images of the shot's characters (`Character.reference_images`) are composed side by
side into one conditioning image — a "reference sheet", as the Kontext multi-reference recipes do — with one
panel per image, in the order of `shot.characters`. Kontext reads it as its context image (its latents join
the transformer's sequence); SDXL reads it through the IP-Adapter's CLIP image encoder. A shot whose
characters have no reference renders from text alone (Kontext without a context image, IP-Adapter scale 0)
and says so in its params. `render(..., try_index=n)` draws another seed for the identity check's re-renders.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from models import hub, options as opt
from models.image.diffusers_t2i import (NEGATIVE, ImageSpec, KeyframeOptions, character_seed, check_size,
                                       keyframe_prompt, retry_seed)
from models.registry import BackendResult
from pipeline.script import Script, Shot

hub.require_packages("torch", "diffusers", "transformers")

IP_ADAPTER_ID = "h94/IP-Adapter"
IP_ADAPTER_SUBFOLDER, IP_ADAPTER_WEIGHTS = "sdxl_models", "ip-adapter_sdxl.safetensors"
MAX_PANELS = 6  # reference images on one sheet; more would shrink every face below what the models see


SPECS = {
    "flux-kontext-tiny": ImageSpec("flux-kontext-tiny", None, "kontext", steps=2, guidance=2.5,
                                 extra={"max_sequence_length": 48}),
    "flux-kontext-dev": ImageSpec("flux-kontext-dev", "black-forest-labs/FLUX.1-Kontext-dev", "kontext", steps=28,
                                guidance=2.5, dtype="bfloat16", num_gpus=1, extra={"max_sequence_length": 512}),
    "sdxl-ip-adapter-tiny": ImageSpec("sdxl-ip-adapter-tiny", None, "sdxl-ip", steps=2, guidance=5.0),
    "sdxl-ip-adapter": ImageSpec("sdxl-ip-adapter", "stabilityai/stable-diffusion-xl-base-1.0", "sdxl-ip", steps=30,
                               guidance=5.0, dtype="float16", num_gpus=1),
}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shot_references(shot: Shot, script: Script) -> list[tuple[str, str]]:
    """(character, image path) for every reference image of the shot's characters, in shot order."""
    refs = []
    for name in shot.characters:
        char = script.characters.get(name)
        refs += [(name, str(p)) for p in (char.reference_images if char else ())]
    return refs[:MAX_PANELS]


def compose_sheet(paths: list[str], max_area: int, multiple: int = 16) -> Any:
    """The reference images side by side at one height, scaled to fit `max_area` pixels, sides rounded
    down to `multiple` (what the VAE and the packed latents need)."""
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in paths]
    h = max(im.height for im in images)
    panels = [im.resize((max(1, round(im.width * h / im.height)), h), Image.Resampling.LANCZOS) for im in images]
    sheet = Image.new("RGB", (sum(p.width for p in panels), h), (255, 255, 255))
    x = 0
    for p in panels:
        sheet.paste(p, (x, 0))
        x += p.width
    scale = min(1.0, (max_area / (sheet.width * sheet.height)) ** 0.5)
    w = max(multiple, int(sheet.width * scale) // multiple * multiple)
    hh = max(multiple, int(sheet.height * scale) // multiple * multiple)
    return sheet.resize((w, hh), Image.Resampling.LANCZOS)


def reference_line(refs: list[tuple[str, str]]) -> str:
    """Tell Kontext which panel is whom (its multi-reference prompts name the people and the panels)."""
    if not refs:
        return ""
    panels = ", ".join(f"{name} (panel {i + 1})" for i, (name, _) in enumerate(refs))
    return f"The same people as in the reference sheet, faces and clothes unchanged: {panels}"


class ReferenceOptions(KeyframeOptions):
    ip_adapter_dir: opt.FilePath | None = None  # SDXL: a local copy of h94/IP-Adapter holding sdxl_models/
    ip_adapter_scale: float = opt.Field(0.6, ge=0, le=2)  # SDXL: how strongly the sheets steer the picture


class ReferenceKeyframes:
    """Keyframes conditioned on the shot's character sheets, through a diffusers pipeline kept resident.

    Options: ``model_id``, ``weights_dir`` (local folder with model_index.json), ``ip_adapter_dir``
    (SDXL: a local copy of h94/IP-Adapter holding ``sdxl_models/``), ``ip_adapter_scale`` (SDXL, default
    0.6), ``dtype``, ``device``, ``steps``, ``guidance``, ``style``, ``negative_prompt`` (SDXL),
    ``characters`` (name → reference prompt), ``character_seeds`` (name → seed), ``cpu_offload``,
    ``tiny_seed`` (weights seed of the tiny model).
    """

    spec: ImageSpec = SPECS["flux-kontext-tiny"]
    Options = ReferenceOptions
    resident = True
    num_gpus = 0
    identity_retries = True  # render(try_index=n) draws another seed (the identity check's re-renders)

    def __init__(self, *, model_id: str | None = None, weights_dir: str | None = None,
                 ip_adapter_dir: str | None = None, ip_adapter_scale: float = 0.6, dtype: str | None = None,
                 device: str = "auto", steps: int | None = None, guidance: float | None = None,
                 style: str = "vertical 9:16 cinematic film still, micro-drama, dramatic lighting",
                 negative_prompt: str = NEGATIVE, characters: dict[str, str] | None = None,
                 character_seeds: dict[str, int] | None = None, cpu_offload: bool = False,
                 tiny_seed: int = 0) -> None:
        s = self.spec
        self.steps = int(steps if steps is not None else s.steps)
        if self.steps < 1:
            raise ValueError(f"stages.storyboard.options.steps must be >= 1, got {steps}")
        if not 0 <= float(ip_adapter_scale) <= 2:
            raise ValueError(f"stages.storyboard.options.ip_adapter_scale must be in [0, 2], got {ip_adapter_scale}")
        self.guidance = float(guidance if guidance is not None else s.guidance)
        self.ip_adapter_scale = float(ip_adapter_scale)
        self.dtype = dtype or s.dtype
        hub.torch_dtype(self.dtype)
        self.device = device if s.model_id else "cpu" if device == "auto" else device
        self.style, self.negative_prompt, self.cpu_offload = style, negative_prompt, cpu_offload
        self.characters, self.character_seeds = dict(characters or {}), dict(character_seeds or {})
        self.tiny_seed = tiny_seed
        self.model_id = hub.model_id_option(s.name, s.model_id, model_id, "storyboard")
        self.source = (hub.require_weights("storyboard", s.name, self.model_id, weights_dir, "model_index.json")
                       if self.model_id else None)
        self.ip_source = (hub.require_weights("storyboard", s.name, IP_ADAPTER_ID, ip_adapter_dir,
                                              f"{IP_ADAPTER_SUBFOLDER}/{IP_ADAPTER_WEIGHTS}")
                          if self.model_id and s.pipeline == "sdxl-ip" else None)
        self.loads = 0
        self._pipe: Any = None

    def load(self) -> Any:
        if self._pipe is None:
            from models import tiny

            if self.model_id is None:
                self._pipe = tiny.flux_kontext(self.tiny_seed) if self.spec.pipeline == "kontext" else \
                    tiny.sdxl_ip_adapter(self.tiny_seed)
            else:
                self._pipe = self._load_real()
            self.loads += 1
        return self._pipe

    def _load_real(self) -> Any:
        import diffusers

        dtype = hub.torch_dtype(self.dtype)
        if self.spec.pipeline == "kontext":
            pipe = diffusers.FluxKontextPipeline.from_pretrained(self.source, torch_dtype=dtype,
                                                                 local_files_only=True)
        else:
            pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(self.source, torch_dtype=dtype,
                                                                       local_files_only=True)
            pipe.load_ip_adapter(self.ip_source, subfolder=IP_ADAPTER_SUBFOLDER, weight_name=IP_ADAPTER_WEIGHTS,
                                 local_files_only=True)  # the image encoder follows the pipeline's dtype
        if self.cpu_offload:
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(hub.pick_device(self.device))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def shot_seed(self, shot: Shot, script: Script, seed: int) -> int:
        """The lead character's own seed (Character.seed, else options.character_seeds, else a name hash)."""
        if not shot.characters:
            return seed
        lead = script.characters.get(shot.characters[0])
        if lead is not None and lead.seed is not None and shot.characters[0] not in self.character_seeds:
            return int(lead.seed)
        return character_seed(shot.characters[0], self.character_seeds)

    def render(self, shot: Shot, script: Script, out_path: Path, *, width: int, height: int, seed: int,
               try_index: int = 0) -> BackendResult:
        check_size(width, height, f"storyboard {self.spec.name}")
        pipe = self.load()
        refs = shot_references(shot, script)
        sheet = compose_sheet([p for _, p in refs], width * height) if refs else None
        prompt = keyframe_prompt(shot, script, self.characters, self.style)
        used_seed = retry_seed(self.shot_seed(shot, script, seed), try_index)
        kwargs: dict[str, Any] = dict(height=height, width=width, num_inference_steps=self.steps,
                                      guidance_scale=self.guidance, output_type="pil",
                                      generator=hub.generator(used_seed), **self.spec.extra)
        if self.spec.pipeline == "kontext":
            prompt = ". ".join(p for p in (reference_line(refs), prompt) if p)
            # max_area = the keyframe's own area keeps our 9:16 size; the tiny twin keeps the sheet's size
            kwargs.update(image=sheet, max_area=width * height, _auto_resize=self.model_id is not None)
        else:
            from PIL import Image

            pipe.set_ip_adapter_scale(self.ip_adapter_scale if sheet is not None else 0.0)
            kwargs.update(negative_prompt=self.negative_prompt,
                          ip_adapter_image=sheet if sheet is not None else Image.new("RGB", (64, 64), (127,) * 3))
        image = pipe(prompt=prompt, **kwargs).images[0]
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        image.save(out_path, format="PNG")
        name = self.spec.name
        return BackendResult(
            outputs={"image": str(out_path)},
            ai_usage=({"tool": name, "unit": "image", "quantity": 1},
                      {"tool": f"{name}:step", "unit": "step", "quantity": self.steps}),
            params={"model": self.model_id or f"tiny-random-{self.spec.pipeline}(seed={self.tiny_seed})",
                    "steps": self.steps, "guidance": self.guidance, "seed": used_seed, "try": try_index,
                    "width": width, "height": height, "dtype": self.dtype, "prompt": prompt,
                    "references": [{"character": c, "path": p, "sha256": file_sha256(p)} for c, p in refs],
                    "reference_sheet": list(sheet.size) if sheet is not None else None,
                    **({"ip_adapter": self.ip_source or "tiny-random-ip-adapter",
                        "ip_adapter_scale": self.ip_adapter_scale if sheet is not None else 0.0}
                       if self.spec.pipeline == "sdxl-ip" else {})})


class FluxKontextTiny(ReferenceKeyframes):
    spec = SPECS["flux-kontext-tiny"]


class FluxKontextDev(ReferenceKeyframes):
    spec = SPECS["flux-kontext-dev"]
    num_gpus = 1


class SDXLIPAdapterTiny(ReferenceKeyframes):
    spec = SPECS["sdxl-ip-adapter-tiny"]


class SDXLIPAdapter(ReferenceKeyframes):
    spec = SPECS["sdxl-ip-adapter"]
    num_gpus = 1
