"""Video backends on diffusers (Wan2.1/2.2, LTX-Video, tiny Wan and LTX): image or text to a lossless clip per shot.

Wan generates 4k+1 frames (LTX 8k+1), so the frame count the shot needs, round(duration_s × fps), is
rounded up to the next valid count, generated, and the clip keeps exactly the frames the contract asks
for; both counts are reported. Longer shots than `max_frames` are generated at `max_frames` and
retimed (frame-index resampling) to the contract length, which is reported too. Frames are piped to
ffmpeg as raw RGB and written as x264 ``-qp 0`` Matroska (yuv420p, BT.709, as the camera-move backend).

Throughput: the pipeline (with its LoRA fused and graph compiled, models.video.accel) stays resident; text
embeddings are cached per prompt; `render` is thread-safe and, for Wan, holds the GPU lock only while
denoising, so a second caller's denoising runs while the first decodes (on its own VAE copy and CUDA
stream) and writes its clip.
"""
from __future__ import annotations

import copy
import math
import subprocess
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models import hub, options as opt
from models.image.diffusers_t2i import FRAMING_WORDS, check_size
from models.registry import BackendResult
from models.video.accel import DISTILLED_STEPS, Accel
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
    experts: int = 1  # Wan2.2 A14B: a high-noise and a low-noise DiT


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
    # Wan2.2's two-expert 14B-active image-to-video model (27B in all) at 480×832 or 720×1280
    "wan2.2-i2v-a14b": VideoSpec("wan2.2-i2v-a14b", "Wan-AI/Wan2.2-I2V-A14B-Diffusers", "wan", ("i2v",),
                                 steps=40, guidance=3.5, frame_step=4, multiple=16, max_frames=81,
                                 dtype="bfloat16", num_gpus=1, experts=2),
    "wan2.2-a14b-tiny": VideoSpec("wan2.2-a14b-tiny", None, "wan", ("i2v",), steps=2, guidance=3.5, frame_step=4,
                                  multiple=16, max_frames=97, experts=2),
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


class DiffusersVideoOptions(opt.WeightsOptions, opt.AccelOptions):
    dtype: opt.Dtype | None = None  # default: the model's
    steps: int | None = opt.Field(None, ge=1, le=200)  # default: the model's (4 when distilled)
    guidance: float | None = opt.Field(None, ge=0, le=30)
    mode: opt.Literal["i2v", "t2v"] | None = None  # default: the model's first mode
    shift: float | None = opt.Field(None, gt=0, le=30)  # flow-match shift (Wan: 3.0 at 480p)
    max_frames: int | None = opt.Field(None, ge=5, le=1025)
    negative_prompt: opt.Text = NEGATIVE
    style: opt.Text = "vertical cinematic micro-drama"
    max_sequence_length: int | None = opt.Field(None, ge=8, le=4096)  # text tokens
    cpu_offload: bool = False
    text_cache: int = opt.Field(64, ge=0, le=10_000)  # prompts whose embeddings stay cached
    overlap: bool = True  # Wan: decode and write outside the GPU lock


class DiffusersVideo:
    """Image-to-video (from the keyframe) or text-to-video through a resident diffusers pipeline.

    Options: ``model_id`` (another checkpoint of the family), ``weights_dir``, ``dtype``, ``device``,
    ``steps``, ``guidance``, ``mode`` ("i2v"|"t2v"), ``shift`` (flow-match shift; Wan uses 3.0 at 480p),
    ``max_frames``, ``negative_prompt``, ``style``, ``max_sequence_length`` (text tokens), ``cpu_offload``,
    ``tiny_seed`` (weights seed of the tiny models), ``text_cache`` (prompts whose embeddings stay cached),
    ``overlap`` (Wan: decode and write outside the GPU lock), and the acceleration options of
    models.video.accel (``lora``, ``lora_2``, ``fuse_lora``, ``distilled``, ``quantize``, ``attention``,
    ``compile``, ``vae_tiling``, ``cache``, ``context_parallel``).
    """

    Options = DiffusersVideoOptions
    spec: VideoSpec = SPECS["wan-tiny"]
    resident = True
    num_gpus = 0

    def __init__(self, *, model_id: str | None = None, weights_dir: str | None = None, dtype: str | None = None,
                 device: str = "auto", steps: int | None = None, guidance: float | None = None, mode: str | None = None,
                 shift: float | None = None, max_frames: int | None = None, negative_prompt: str = NEGATIVE,
                 style: str = "vertical cinematic micro-drama", max_sequence_length: int | None = None,
                 cpu_offload: bool = False, tiny_seed: int = 0, text_cache: int = 64, overlap: bool = True,
                 **accel: Any) -> None:
        s = self.spec
        self.mode = mode or s.modes[0]
        if self.mode not in s.modes:
            raise ValueError(f"stages.video.options.mode: {s.name} supports {', '.join(s.modes)}, got {mode!r}")
        self.accel = Accel.parse(**accel)
        distilled = self.accel.distilled
        if distilled and guidance is not None and float(guidance) != 1.0:
            raise ValueError(f"stages.video.options.guidance: {guidance} with distilled: true; the distillation "
                             "removes classifier-free guidance (leave guidance out, or set 1.0)")
        self.steps = int(steps if steps is not None else DISTILLED_STEPS if distilled else s.steps)
        self.max_frames = int(max_frames or s.max_frames)
        if self.steps < 1 or self.max_frames < s.frame_step + 1:
            raise ValueError(f"stages.video.options: steps must be >= 1 and max_frames >= {s.frame_step + 1}")
        self.guidance = 1.0 if distilled else float(guidance if guidance is not None else s.guidance)
        self.dtype = dtype or s.dtype
        hub.torch_dtype(self.dtype)
        self.device = device if s.model_id else "cpu" if device == "auto" else device
        self.shift, self.negative_prompt, self.style = shift, negative_prompt, style
        self.max_sequence_length = max_sequence_length or _default_text_tokens(s)
        self.cpu_offload, self.tiny_seed = cpu_offload, tiny_seed
        if int(text_cache) < 0:
            raise ValueError("stages.video.options.text_cache: how many prompts to keep encoded (>= 0)")
        self.text_cache_size, self.overlap = int(text_cache), bool(overlap)
        self.model_id = hub.model_id_option(s.name, s.model_id, model_id, "video")
        self.source = (hub.require_weights("video", s.name, self.model_id, weights_dir, "model_index.json")
                       if self.model_id else None)
        self.accel.check_files()
        self.loads = 0
        self.text_cache_hits = self.text_cache_misses = 0
        self._calls = threading.local()  # per calling thread: this call's timings
        self._pipe: Any = None
        self._decode_vae: Any = None
        self._text: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()
        self._load_lock, self._gpu, self._decoder = threading.Lock(), threading.Lock(), threading.Lock()

    @property
    def last_timings(self) -> dict[str, float]:
        """Seconds waiting for the GPU, denoising, decoding and writing, of this thread's last render."""
        return dict(getattr(self._calls, "timings", {}))

    @last_timings.setter
    def last_timings(self, value: dict[str, float]) -> None:
        self._calls.timings = dict(value)

    # ------------------------------------------------------------ loading

    @property
    def model_label(self) -> str:
        fam = ("wan2.2-a14b" if self.spec.experts == 2 else "wan2.1") if self.spec.family == "wan" else "ltx-video"
        return self.model_id or f"tiny-random-{fam}(seed={self.tiny_seed})"

    def load(self) -> Any:
        with self._load_lock:
            if self._pipe is None:
                pipe = self._build()
                if self.shift is not None:  # a new pipeline object over the same modules: cached ones stay as built
                    config = pipe.scheduler.config  # UniPC (published Wan) calls it flow_shift, Euler shift
                    key = "flow_shift" if "flow_shift" in config else "shift"
                    scheduler = type(pipe.scheduler).from_config(config, **{key: self.shift})
                    pipe = type(pipe)(**{**pipe.components, "scheduler": scheduler}, **_extra_config(pipe))
                    pipe.set_progress_bar_config(disable=True)
                self.accel.apply(pipe, steps=self.steps)
                if self._splits_decode(pipe):
                    self._decode_vae = copy.deepcopy(pipe.vae)  # its own causal-conv cache: encode ∥ decode
                self._pipe = pipe
                self.loads += 1
        return self._pipe

    def _build(self) -> Any:
        """A fresh pipeline: tiny ones are shared per process, so a copy when options will change its modules."""
        if self.model_id is not None:
            return self._load_real()
        from models import tiny

        s = self.spec
        build = tiny.wan22_i2v_a14b if s.experts == 2 else {
            ("wan", "i2v"): tiny.wan_i2v, ("wan", "t2v"): tiny.wan_t2v,
            ("ltx", "i2v"): tiny.ltx_i2v, ("ltx", "t2v"): tiny.ltx_t2v}[(s.family, self.mode)]
        pipe = build(self.tiny_seed)
        return copy.deepcopy(pipe) if self.accel.changes_modules else pipe

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

    def _splits_decode(self, pipe: Any) -> bool:
        return self.overlap and self.spec.family == "wan" and not self.cpu_offload

    # ------------------------------------------------------------ generation

    def _embeds(self, pipe: Any, prompt: str) -> dict[str, Any]:
        """Wan prompt embeddings, cached per (prompt, negative prompt, length); no negative pass without CFG.
        Encoded with WanPipeline's encoder, which cleans text without `ftfy` when it is absent."""
        from diffusers import WanPipeline

        negative = self.negative_prompt if self.guidance > 1.0 else None
        key = (prompt, negative, self.max_sequence_length)
        if key in self._text:
            self._text.move_to_end(key)
            self.text_cache_hits += 1
            pos, neg = self._text[key]
        else:
            self.text_cache_misses += 1

            def encode(text: str) -> Any:
                return WanPipeline._get_t5_prompt_embeds(pipe, prompt=[text],
                                                         max_sequence_length=self.max_sequence_length,
                                                         device=pipe._execution_device)

            pos, neg = encode(prompt), None if negative is None else encode(negative)
            if self.text_cache_size:
                self._text[key] = (pos, neg)
                while len(self._text) > self.text_cache_size:
                    self._text.popitem(last=False)
        out = {"prompt_embeds": pos, "max_sequence_length": self.max_sequence_length}
        if neg is not None:
            out["negative_prompt_embeds"] = neg
        return out

    def _prompt_kwargs(self, pipe: Any, prompt: str) -> dict[str, Any]:
        if self.spec.family == "wan":
            return self._embeds(pipe, prompt)
        return {"prompt": prompt, "negative_prompt": self.negative_prompt,
                "max_sequence_length": self.max_sequence_length}

    def _generate(self, pipe: Any, prompt: str, keyframe: Path, frames: int, width: int, height: int,
                  seed: int) -> np.ndarray:
        kwargs: dict[str, Any] = dict(height=height, width=width, num_frames=frames, num_inference_steps=self.steps,
                                      guidance_scale=self.guidance, generator=hub.generator(seed))
        if self.mode == "i2v":
            from PIL import Image, ImageOps

            with Image.open(keyframe) as im:
                kwargs["image"] = ImageOps.fit(im.convert("RGB"), (width, height), Image.Resampling.LANCZOS)
        split = self._decode_vae is not None
        t0 = time.perf_counter()
        with self._gpu:  # one denoising at a time on this model; decode and write run outside
            t1 = time.perf_counter()
            out = pipe(**kwargs, **self._prompt_kwargs(pipe, prompt), output_type="latent" if split else "np")
            latents = out.frames
            _sync()
        t2 = time.perf_counter()
        if split:
            with self._decoder:
                video = decode_wan(pipe, self._decode_vae, latents)
        else:
            video = latents[0]
        t3 = time.perf_counter()
        self.last_timings = {"wait_s": t1 - t0, "denoise_s": t2 - t1, "decode_s": t3 - t2}
        return to_uint8(video)

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
        timings = dict(self.last_timings)
        clip = retime(video, needed)
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        write_lossless(clip, out_path, fps)
        self.last_timings = {**timings, "write_s": time.perf_counter() - t}
        params = {"model": self.model_label, "mode": self.mode,
                  "steps": self.steps, "guidance": self.guidance, "seed": seed, "fps": fps,
                  "frames_needed": needed, "frames_generated": len(video),
                  "frames_rule": f"{s.frame_step}k+1", "retimed": len(video) < needed,
                  "width": width, "height": height, "dtype": self.dtype, "prompt": prompt,
                  "accel": self.accel.describe(), "overlap": self._decode_vae is not None,
                  "text_cache": self.text_cache_size}
        if s.experts == 2:
            params["experts"] = 2
            params["boundary_ratio"] = pipe.config.get("boundary_ratio")
        return BackendResult(
            outputs={"clip": str(out_path), "frames": needed, "width": width, "height": height},
            ai_usage=({"tool": s.name, "unit": "second", "quantity": round(needed / fps, 6)},
                      {"tool": f"{s.name}:step", "unit": "step", "quantity": self.steps},
                      {"tool": f"{s.name}:frame", "unit": "frame", "quantity": len(video)}),
            params=params)


def _extra_config(pipe: Any) -> dict[str, Any]:
    """Pipeline config that is not a component (Wan2.2: boundary_ratio, expand_timesteps)."""
    return {k: pipe.config[k] for k in ("boundary_ratio", "expand_timesteps") if k in pipe.config}


def _sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def decode_wan(pipe: Any, vae: Any, latents: Any) -> np.ndarray:
    """Wan latents → float frames (F, H, W, 3) in [0, 1], as the pipeline's own tail does, with `vae`
    (a copy of the pipeline's) on a side CUDA stream when on a GPU."""
    import contextlib

    import torch

    stream = None
    if latents.is_cuda:
        stream = torch.cuda.Stream(device=latents.device)
        stream.wait_stream(torch.cuda.current_stream(latents.device))
        latents.record_stream(stream)
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext(), torch.no_grad():
        z = latents.to(dtype=vae.dtype)
        cfg = vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(z.device, z.dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(z.device, z.dtype)
        video = vae.decode(z / inv_std + mean, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="np")[0]
    if stream is not None:
        stream.synchronize()
    return frames


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


class Wan22I2VA14B(DiffusersVideo):
    spec = SPECS["wan2.2-i2v-a14b"]
    num_gpus = 1


class Wan22A14BTiny(DiffusersVideo):
    spec = SPECS["wan2.2-a14b-tiny"]


class LTXTiny(DiffusersVideo):
    spec = SPECS["ltx-tiny"]


class LTXVideo(DiffusersVideo):
    spec = SPECS["ltx-video"]
    num_gpus = 1
