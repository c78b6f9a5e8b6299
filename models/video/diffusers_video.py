"""Video backends on diffusers (Wan2.1/2.2, LTX-Video, tiny Wan and LTX): image or text to a lossless clip per shot.

Wan generates 4k+1 frames (LTX 8k+1), so the frame count the shot needs, round(duration_s × fps), is
rounded up to the next valid count, generated, and the clip keeps exactly the frames the contract asks
for; both counts are reported. Longer shots than `max_frames` are generated at `max_frames` and
retimed (frame-index resampling) to the contract length, which is reported too. Frames are piped to
ffmpeg as raw RGB and written as x264 ``-qp 0`` Matroska (yuv420p, BT.709, as the camera-move backend).
"""
from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models import hub
from models.image.diffusers_t2i import FRAMING_WORDS, check_size
from models.registry import BackendResult
from pipeline.script import Shot

hub.require_packages("torch", "diffusers", "transformers")

CAMERA_WORDS = {"hold": "static camera", "push-in": "slow push-in", "pull-out": "slow pull-out",
                "pan-left": "camera pans left", "pan-right": "camera pans right", "tilt-up": "camera tilts up",
                "tilt-down": "camera tilts down"}
NEGATIVE = ("static, blurred details, subtitles, worst quality, low quality, JPEG artifacts, deformed, "
            "disfigured, extra fingers, still picture, cluttered background")


@dataclass(frozen=True)
class VideoSpec:
    """What one registered name means: weights, pipeline family, frame rule and published defaults."""

    name: str
    model_id: str | None  # None: tiny random Wan from models.tiny
    family: str  # "wan" | "ltx"
    modes: tuple[str, ...]  # "i2v", "t2v"
    steps: int
    guidance: float
    frame_step: int  # valid frame counts are frame_step*k + 1
    multiple: int  # width and height must be multiples of this
    max_frames: int
    dtype: str = "float32"
    num_gpus: float = 0


SPECS = {
    "wan-tiny": VideoSpec("wan-tiny", None, "wan", ("i2v", "t2v"), steps=2, guidance=5.0, frame_step=4,
                          multiple=16, max_frames=97),
    "wan2.1-i2v-480p": VideoSpec("wan2.1-i2v-480p", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "wan", ("i2v",),
                                 steps=40, guidance=5.0, frame_step=4, multiple=16, max_frames=81,
                                 dtype="bfloat16", num_gpus=1),
    "wan2.1-t2v-1.3b": VideoSpec("wan2.1-t2v-1.3b", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "wan", ("t2v",),
                                 steps=50, guidance=5.0, frame_step=4, multiple=16, max_frames=81,
                                 dtype="bfloat16", num_gpus=1),
    # Wan2.2's dense 5B text+image-to-video model at 704×1280 (its VAE compresses 16× and patchifies 2×: /32)
    "wan2.2-ti2v-5b": VideoSpec("wan2.2-ti2v-5b", "Wan-AI/Wan2.2-TI2V-5B-Diffusers", "wan", ("i2v", "t2v"),
                                steps=50, guidance=5.0, frame_step=4, multiple=32, max_frames=121,
                                dtype="bfloat16", num_gpus=1),
    "ltx-tiny": VideoSpec("ltx-tiny", None, "ltx", ("i2v", "t2v"), steps=2, guidance=3.0, frame_step=8,
                          multiple=32, max_frames=97),
    "ltx-video": VideoSpec("ltx-video", "Lightricks/LTX-Video", "ltx", ("i2v", "t2v"), steps=50, guidance=3.0,
                           frame_step=8, multiple=32, max_frames=161, dtype="bfloat16", num_gpus=1),
}


def valid_frames(needed: int, step: int) -> int:
    """The smallest step*k+1 frame count >= needed (Wan: 4k+1, e.g. 24 → 25, 25 → 25, 26 → 29)."""
    return step * max(0, math.ceil((max(needed, 1) - 1) / step)) + 1


def motion_prompt(shot: Shot, script_style: str) -> str:
    people = ", ".join(shot.characters)
    parts = [FRAMING_WORDS.get(shot.framing, shot.framing), CAMERA_WORDS.get(shot.camera, shot.camera),
             people, shot.action, shot.location, script_style]
    return ". ".join(p.strip() for p in parts if p and p.strip())


def retime(frames: np.ndarray, n: int) -> np.ndarray:
    """Exactly n frames: the first n when there are enough, else nearest-index resampling over all."""
    if len(frames) >= n:
        return frames[:n]
    idx = np.minimum((np.arange(n) * len(frames) / n).astype(int), len(frames) - 1)
    return frames[idx]


def write_lossless(frames: np.ndarray, out_path: Path, fps: int) -> None:
    """uint8 RGB frames (N, H, W, 3) → x264 -qp 0 Matroska, yuv420p BT.709 limited range."""
    n, h, w, _ = frames.shape
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", str(fps), "-i", "-", "-vf", "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p",
           "-frames:v", str(n), "-c:v", "libx264", "-qp", "0", "-preset", "ultrafast", "-colorspace", "bt709",
           "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv", "-an", "-f", "matroska",
           str(out_path)]
    proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed writing {out_path}: {proc.stderr.decode(errors='replace')[-500:]}")


def _default_text_tokens(spec: VideoSpec) -> int:
    if spec.model_id is None:
        return 32  # tiny encoder
    return 128 if spec.family == "ltx" else 512  # the lengths the models were trained with


def to_uint8(video: Any) -> np.ndarray:
    arr = np.asarray(video, dtype=np.float32)
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class DiffusersVideo:
    """Image-to-video (from the keyframe) or text-to-video through a resident diffusers pipeline.

    Options: ``model_id`` (another checkpoint of the family), ``weights_dir``, ``dtype``, ``device``,
    ``steps``, ``guidance``, ``mode`` ("i2v"|"t2v"), ``shift`` (flow-match shift; Wan uses 3.0 at 480p),
    ``max_frames``, ``negative_prompt``, ``style``, ``max_sequence_length`` (text tokens), ``cpu_offload``,
    ``tiny_seed`` (weights seed of wan-tiny).
    """

    spec: VideoSpec = SPECS["wan-tiny"]
    resident = True
    num_gpus = 0

    def __init__(self, *, model_id: str | None = None, weights_dir: str | None = None, dtype: str | None = None,
                 device: str = "auto", steps: int | None = None, guidance: float | None = None, mode: str | None = None,
                 shift: float | None = None, max_frames: int | None = None, negative_prompt: str = NEGATIVE,
                 style: str = "vertical cinematic micro-drama", max_sequence_length: int | None = None,
                 cpu_offload: bool = False, tiny_seed: int = 0) -> None:
        s = self.spec
        self.mode = mode or s.modes[0]
        if self.mode not in s.modes:
            raise ValueError(f"stages.video.options.mode: {s.name} supports {', '.join(s.modes)}, got {mode!r}")
        self.steps = int(steps if steps is not None else s.steps)
        self.max_frames = int(max_frames or s.max_frames)
        if self.steps < 1 or self.max_frames < s.frame_step + 1:
            raise ValueError(f"stages.video.options: steps must be >= 1 and max_frames >= {s.frame_step + 1}")
        self.guidance = float(guidance if guidance is not None else s.guidance)
        self.dtype = dtype or s.dtype
        hub.torch_dtype(self.dtype)
        self.device = device if s.model_id else "cpu" if device == "auto" else device
        self.shift, self.negative_prompt, self.style = shift, negative_prompt, style
        self.max_sequence_length = max_sequence_length or _default_text_tokens(s)
        self.cpu_offload, self.tiny_seed = cpu_offload, tiny_seed
        self.model_id = hub.model_id_option(s.name, s.model_id, model_id, "video")
        self.source = (hub.require_weights("video", s.name, self.model_id, weights_dir, "model_index.json")
                       if self.model_id else None)
        self.loads = 0
        self._pipe: Any = None

    # ------------------------------------------------------------ loading

    def load(self) -> Any:
        if self._pipe is None:
            if self.model_id is None:
                from models import tiny

                build = {("wan", "i2v"): tiny.wan_i2v, ("wan", "t2v"): tiny.wan_t2v,
                         ("ltx", "i2v"): tiny.ltx_i2v, ("ltx", "t2v"): tiny.ltx_t2v}[(self.spec.family, self.mode)]
                self._pipe = build(self.tiny_seed)
            else:
                self._pipe = self._load_real()
            if self.shift is not None:  # a new pipeline object over the same modules: cached ones stay as built
                config = self._pipe.scheduler.config  # UniPC (published Wan) calls it flow_shift, Euler shift
                key = "flow_shift" if "flow_shift" in config else "shift"
                scheduler = type(self._pipe.scheduler).from_config(config, **{key: self.shift})
                self._pipe = type(self._pipe)(**{**self._pipe.components, "scheduler": scheduler})
                self._pipe.set_progress_bar_config(disable=True)
            self.loads += 1
        return self._pipe

    def _load_real(self) -> Any:
        import diffusers
        import torch

        dtype = hub.torch_dtype(self.dtype)
        if self.spec.family == "ltx":
            cls = diffusers.LTXImageToVideoPipeline if self.mode == "i2v" else diffusers.LTXPipeline
            pipe = cls.from_pretrained(self.source, torch_dtype=dtype, local_files_only=True)
        else:
            cls = diffusers.WanImageToVideoPipeline if self.mode == "i2v" else diffusers.WanPipeline
            # the Wan VAE decodes best in float32 (diffusers' Wan guidance); the DiT runs in `dtype`
            vae = diffusers.AutoencoderKLWan.from_pretrained(self.source, subfolder="vae", torch_dtype=torch.float32,
                                                             local_files_only=True)
            pipe = cls.from_pretrained(self.source, vae=vae, torch_dtype=dtype, local_files_only=True)
        if self.cpu_offload:
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(hub.pick_device(self.device))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # ------------------------------------------------------------ generation

    def _prompt_kwargs(self, pipe: Any, prompt: str) -> dict[str, Any]:
        """Prompt arguments; pre-encoded when Wan I2V would need `ftfy` and it is not installed."""
        from diffusers.utils import is_ftfy_available

        if self.spec.family != "wan" or self.mode != "i2v" or is_ftfy_available():
            return {"prompt": prompt, "negative_prompt": self.negative_prompt,
                    "max_sequence_length": self.max_sequence_length}
        from diffusers import WanPipeline

        def encode(text: str) -> Any:  # WanPipeline's encoder cleans text without ftfy when it is absent
            return WanPipeline._get_t5_prompt_embeds(pipe, prompt=[text], max_sequence_length=self.max_sequence_length)

        return {"prompt_embeds": encode(prompt), "negative_prompt_embeds": encode(self.negative_prompt),
                "max_sequence_length": self.max_sequence_length}

    def _generate(self, pipe: Any, prompt: str, keyframe: Path, frames: int, width: int, height: int,
                  seed: int) -> np.ndarray:
        kwargs: dict[str, Any] = dict(height=height, width=width, num_frames=frames, num_inference_steps=self.steps,
                                      guidance_scale=self.guidance, output_type="np",
                                      generator=hub.generator(seed), **self._prompt_kwargs(pipe, prompt))
        if self.mode == "i2v":
            from PIL import Image, ImageOps

            with Image.open(keyframe) as im:
                kwargs["image"] = ImageOps.fit(im.convert("RGB"), (width, height), Image.Resampling.LANCZOS)
        return to_uint8(pipe(**kwargs).frames[0])

    def render(self, shot: Shot, keyframe: Path, out_path: Path, *, duration_s: float, fps: int,
               width: int, height: int, seed: int) -> BackendResult:
        s = self.spec
        check_size(width, height, f"video {s.name}")
        if width % s.multiple or height % s.multiple:
            raise ValueError(f"video {s.name}: width and height must be multiples of {s.multiple}, "
                             f"got {width}x{height}")
        if self.mode == "i2v" and not Path(keyframe).is_file():
            raise FileNotFoundError(f"video {s.name}: keyframe {keyframe} not found (i2v starts from it)")
        needed = max(1, round(duration_s * fps))
        cap = s.frame_step * ((self.max_frames - 1) // s.frame_step) + 1  # largest valid count <= max_frames
        generated = min(valid_frames(needed, s.frame_step), cap)
        pipe = self.load()
        prompt = motion_prompt(shot, self.style)
        video = self._generate(pipe, prompt, Path(keyframe), generated, width, height, seed)
        clip = retime(video, needed)
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_lossless(clip, out_path, fps)
        return BackendResult(
            outputs={"clip": str(out_path), "frames": needed, "width": width, "height": height},
            ai_usage=({"tool": s.name, "unit": "second", "quantity": round(needed / fps, 6)},
                      {"tool": f"{s.name}:step", "unit": "step", "quantity": self.steps},
                      {"tool": f"{s.name}:frame", "unit": "frame", "quantity": len(video)}),
            params={"model": self.model_id or f"tiny-random-{'wan2.1' if s.family == 'wan' else 'ltx-video'}"
                                              f"(seed={self.tiny_seed})", "mode": self.mode,
                    "steps": self.steps, "guidance": self.guidance, "seed": seed, "fps": fps,
                    "frames_needed": needed, "frames_generated": len(video),
                    "frames_rule": f"{s.frame_step}k+1", "retimed": len(video) < needed,
                    "width": width, "height": height, "dtype": self.dtype, "prompt": prompt})


class WanTiny(DiffusersVideo):
    spec = SPECS["wan-tiny"]


class Wan21I2V480P(DiffusersVideo):
    spec = SPECS["wan2.1-i2v-480p"]
    num_gpus = 1


class Wan21T2V13B(DiffusersVideo):
    spec = SPECS["wan2.1-t2v-1.3b"]
    num_gpus = 1


class Wan22TI2V5B(DiffusersVideo):
    spec = SPECS["wan2.2-ti2v-5b"]
    num_gpus = 1


class LTXTiny(DiffusersVideo):
    spec = SPECS["ltx-tiny"]


class LTXVideo(DiffusersVideo):
    spec = SPECS["ltx-video"]
    num_gpus = 1
