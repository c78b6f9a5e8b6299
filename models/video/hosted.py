"""Hosted video backends — `wan-api` (DashScope), `seedance-api` (Volcengine Ark), `kling-api` — one clip per shot.

Each call goes through `models.video.task_flow.run_video_task`: the request is digested, an open task for
the same request (left by a killed worker or driver) is polled instead of submitting a new one, otherwise
the shot's planned cost is reserved against the budget, the task submitted and its id written to the
ledger before polling. The result is downloaded at once (URLs expire), its digest recorded, its size and
length checked (a wrong one is rejected but still billed as the provider bills it), and conformed to the
stage's lossless intermediate: exactly round(duration_s × fps) frames at width×height.
Usage is what the provider's task reports (seconds, tokens, clips), not what was asked for.
"""
from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

from models import options as opt
from models.providers import Limits
from models.registry import BackendResult
from models.video import task_flow
from pipeline.errors import UserError
from pipeline.script import Shot

# portrait sizes per resolution tier, as each provider renders 9:16
WAN_SIZES = {"480p": (480, 832), "720p": (720, 1280), "1080p": (1080, 1920)}
SEEDANCE_SIZES = {"480p": (480, 864), "720p": (720, 1280), "1080p": (1080, 1920)}
KLING_SIZES = {"std": (720, 1280), "pro": (1080, 1920)}
WAN_DURATIONS, SEEDANCE_DURATIONS = (5, 10), tuple(range(2, 13))
CAMERA = {"hold": "static camera", "push-in": "slow push-in", "pull-out": "slow pull-out",
          "pan-left": "camera pans left", "pan-right": "camera pans right", "tilt-up": "camera tilts up",
          "tilt-down": "camera tilts down"}


def motion_prompt(shot: Shot, style: str) -> str:
    """Framing, camera move, people, action and place in one line (what the shot should do)."""
    parts = [f"{shot.framing} shot", CAMERA.get(shot.camera, shot.camera), ", ".join(shot.characters),
             shot.action, shot.location, shot.time_of_day, style]
    return ". ".join(p.strip() for p in parts if p and p.strip())


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def tier_of(height: int, width: int) -> str:
    short = min(width, height)
    return "480p" if short <= 480 else "720p" if short <= 720 else "1080p"


def clip_seconds(duration_s: float, allowed: tuple[int, ...]) -> int:
    """The shortest clip length the provider offers that covers the shot."""
    need = math.ceil(duration_s - 1e-6)
    for d in allowed:
        if d >= need:
            return d
    raise UserError(f"stages.video: a shot of {duration_s:.2f} s is longer than the longest clip the provider "
                    f"makes ({allowed[-1]} s); split the shot (a [[shot: ...]] note) or pick another backend")


def _limits(options: dict[str, Any]) -> Limits:
    return Limits(concurrency=int(options.get("concurrency", 2)), poll_s=float(options.get("poll_s", 5.0)),
                  timeout_s=float(options.get("task_timeout_s", 1800.0)), retries=int(options.get("retries", 5)),
                  backoff_s=float(options.get("backoff_s", 1.0)))


_KEY_OPTIONS = ("api_key_env", "secrets_file", "api_key_name", "base_url")


Tier = opt.Literal["480p", "720p", "1080p"]
Mode = opt.Literal["i2v", "t2v"]
STYLE = "cinematic vertical micro-drama, realistic lighting"


class WanApiVideoOptions(opt.TaskOptions):
    model: opt.ModelId = "wan2.5-i2v-preview"
    resolution: Tier = "720p"
    mode: Mode = "i2v"
    style: opt.Text = STYLE
    negative_prompt: opt.Text = ""


class SeedanceApiVideoOptions(opt.TaskOptions):
    model: opt.ModelId = "doubao-seedance-1-0-pro-250528"
    resolution: Tier = "720p"
    mode: Mode = "i2v"
    provider_fps: int = opt.Field(24, ge=1, le=60)  # what Ark renders at (its token count uses it)
    style: opt.Text = STYLE
    timeout_s: float = opt.Field(60.0, gt=0, le=600)  # one HTTP request


class KlingApiVideoOptions(opt.LimitsOptions):
    model: opt.ModelId = "kling-v2-1"
    mode: opt.Literal["std", "pro"] = "std"
    cfg_scale: float = opt.Field(0.5, ge=0, le=1)
    style: opt.Text = STYLE
    negative_prompt: opt.Text = ""
    access_key_env: opt.EnvName = "KLING_ACCESS_KEY"
    secret_key_env: opt.EnvName = "KLING_SECRET_KEY"
    secrets_file: opt.FilePath | None = None
    access_key_name: opt.EnvName | None = None
    secret_key_name: opt.EnvName | None = None
    base_url: opt.Url | None = None
    timeout_s: float = opt.Field(60.0, gt=0, le=600)


class WanApiVideo:
    """Tongyi Wanxiang image-to-video (or text-to-video with ``mode: t2v``) on DashScope.

    Options: ``model`` (default wan2.5-i2v-preview; wan2.5-t2v-preview for t2v), ``resolution`` (480p,
    720p, 1080p; default 720p), ``mode`` (i2v | t2v), ``style``, ``negative_prompt``, ``concurrency``,
    ``poll_s``, ``task_timeout_s``, plus the key options (``api_key_env`` DASHSCOPE_API_KEY, ``base_url``).
    Billed per generated second at the model's tier: "<model>:<tier>" (usage.video_duration)."""

    Options = WanApiVideoOptions
    resident = False
    num_gpus = 0
    provider = "dashscope"

    def __init__(self, *, model: str = "wan2.5-i2v-preview", resolution: str = "720p", mode: str = "i2v",
                 style: str = "cinematic vertical micro-drama, realistic lighting", negative_prompt: str = "",
                 **options: Any) -> None:
        from models.providers.dashscope import DashScope

        if resolution not in WAN_SIZES:
            raise UserError(f"stages.video.options.resolution: one of {', '.join(WAN_SIZES)}, got {resolution!r}")
        if mode not in ("i2v", "t2v"):
            raise UserError(f"stages.video.options.mode: i2v or t2v, got {mode!r}")
        self.model, self.resolution, self.mode, self.style = model, resolution, mode, style
        self.negative_prompt = negative_prompt
        self.client = DashScope(stage="video", limits=_limits(options),
                                **{k: v for k, v in options.items() if k in _KEY_OPTIONS})

    def __repr__(self) -> str:
        return f"WanApiVideo({self.model}, {self.resolution}, {self.client!r})"

    @staticmethod
    def planned(options: dict[str, Any], *, duration_s: float, **_: Any) -> list[dict[str, Any]]:
        model, tier = options.get("model", "wan2.5-i2v-preview"), options.get("resolution", "720p")
        return [{"tool": f"{model}:{tier}", "unit": "second", "quantity": clip_seconds(duration_s, WAN_DURATIONS)}]

    def render(self, shot: Shot, keyframe: Path, out_path: Path, *, duration_s: float, fps: int,
               width: int, height: int, seed: int) -> BackendResult:
        seconds = clip_seconds(duration_s, WAN_DURATIONS)
        w, h = WAN_SIZES[self.resolution]
        prompt = motion_prompt(shot, self.style)
        image = data_uri(keyframe) if self.mode == "i2v" else None
        request = {"model": self.model, "prompt": prompt, "size": f"{w}*{h}", "duration": seconds, "seed": seed,
                   "image": task_flow.file_digest(keyframe) if image else None}
        tool = f"{self.model}:{self.resolution}"

        def submit() -> str:
            return self.client.submit_video(model=self.model, prompt=prompt, size=f"{w}*{h}", duration=seconds,
                                            seed=seed, image=image, negative_prompt=self.negative_prompt or None,
                                            shot=shot.id)

        def fetch(task_id: str) -> task_flow.Polled:
            st = self.client.fetch(task_id)
            usage = st.usage or {}
            billed = usage.get("video_duration", usage.get("output_video_duration", usage.get("duration")))
            outcome = "done" if st.status == "SUCCEEDED" else "failed" if st.status in (
                "FAILED", "CANCELED", "UNKNOWN") else "running"
            items = [{"tool": tool, "unit": "second", "quantity": float(billed)}] if billed is not None else []
            err = self.client.failure(st, task_id, shot=shot.id, prompt=prompt, ai_usage=tuple(items)) \
                if outcome == "failed" else None
            return task_flow.Polled(outcome, st.urls[0] if st.urls else "", items, st.status, err)

        return task_flow.run_video_task(
            provider="dashscope", model=self.model, shot=shot, request=request, submit=submit, fetch=fetch,
            planned=self.planned({"model": self.model, "resolution": self.resolution}, duration_s=duration_s),
            expect=(w, h), min_seconds=duration_s, limits=self.client.limits, out_path=Path(out_path),
            fps=fps, width=width, height=height, prompt=prompt,
            params={"model": self.model, "resolution": self.resolution, "mode": self.mode, "seed": seed,
                    "clip_s": seconds})


class SeedanceApiVideo:
    """Doubao Seedance on Volcengine Ark (image-to-video from the keyframe; text-to-video with ``mode: t2v``).

    Options: ``model`` (default doubao-seedance-1-0-pro-250528), ``resolution`` (480p, 720p, 1080p),
    ``fps`` the provider renders at (24), ``mode``, ``style``, ``concurrency``, ``poll_s``, key options
    (``api_key_env`` ARK_API_KEY, ``base_url``). Billed in tokens (usage.completion_tokens), which Ark
    defines as width × height × fps × seconds / 1024: item "<model>" per token."""

    Options = SeedanceApiVideoOptions
    resident = False
    num_gpus = 0
    provider = "ark"

    def __init__(self, *, model: str = "doubao-seedance-1-0-pro-250528", resolution: str = "720p",
                 mode: str = "i2v", provider_fps: int = 24,
                 style: str = "cinematic vertical micro-drama, realistic lighting", **options: Any) -> None:
        from models.providers.ark import ArkProvider

        if resolution not in SEEDANCE_SIZES:
            raise UserError(f"stages.video.options.resolution: one of {', '.join(SEEDANCE_SIZES)}, got {resolution!r}")
        if mode not in ("i2v", "t2v"):
            raise UserError(f"stages.video.options.mode: i2v or t2v, got {mode!r}")
        self.model, self.resolution, self.mode, self.style = model, resolution, mode, style
        self.provider_fps = int(provider_fps)
        self.client = ArkProvider(stage="video", limits=_limits(options),
                                  **{k: v for k, v in options.items() if k in (*_KEY_OPTIONS, "timeout_s")})

    def __repr__(self) -> str:
        return f"SeedanceApiVideo({self.model}, {self.resolution}, {self.client!r})"

    @staticmethod
    def planned(options: dict[str, Any], *, duration_s: float, **_: Any) -> list[dict[str, Any]]:
        model = options.get("model", "doubao-seedance-1-0-pro-250528")
        w, h = SEEDANCE_SIZES[options.get("resolution", "720p")]
        fps = int(options.get("provider_fps", 24))
        seconds = clip_seconds(duration_s, SEEDANCE_DURATIONS)
        return [{"tool": model, "unit": "token", "quantity": w * h * fps * seconds // 1024}]

    def render(self, shot: Shot, keyframe: Path, out_path: Path, *, duration_s: float, fps: int,
               width: int, height: int, seed: int) -> BackendResult:
        seconds = clip_seconds(duration_s, SEEDANCE_DURATIONS)
        w, h = SEEDANCE_SIZES[self.resolution]
        prompt = motion_prompt(shot, self.style)
        image = data_uri(keyframe) if self.mode == "i2v" else None
        request = {"model": self.model, "prompt": prompt, "resolution": self.resolution, "ratio": "9:16",
                   "duration": seconds, "seed": seed, "image": task_flow.file_digest(keyframe) if image else None}

        def submit() -> str:
            return self.client.submit_video(model=self.model, prompt=prompt, resolution=self.resolution,
                                            ratio="9:16", duration=seconds, seed=seed, image=image, shot=shot.id)

        def fetch(task_id: str) -> task_flow.Polled:
            t = self.client.fetch(task_id)
            items = [{"tool": self.model, "unit": "token", "quantity": float(t.tokens)}] if t.tokens is not None else []
            outcome = "done" if t.status == "succeeded" else "failed" if t.status in (
                "failed", "cancelled", "expired") else "running"
            err = self.client.failure(t, task_id, shot=shot.id, prompt=prompt, ai_usage=tuple(items)) \
                if outcome == "failed" else None
            return task_flow.Polled(outcome, t.url, items, t.status, err)

        return task_flow.run_video_task(
            provider="ark", model=self.model, shot=shot, request=request, submit=submit, fetch=fetch,
            planned=self.planned({"model": self.model, "resolution": self.resolution,
                                  "provider_fps": self.provider_fps}, duration_s=duration_s),
            expect=(w, h), min_seconds=duration_s, limits=self.client.limits, out_path=Path(out_path),
            fps=fps, width=width, height=height, prompt=prompt,
            params={"model": self.model, "resolution": self.resolution, "mode": self.mode, "seed": seed,
                    "clip_s": seconds})


class KlingApiVideo:
    """Kling image-to-video. Options: ``model`` (kling-v2-1), ``mode`` (std 720p | pro 1080p), ``style``,
    ``negative_prompt``, ``cfg_scale``, ``concurrency``, ``poll_s``, key options (``access_key_env``
    KLING_ACCESS_KEY, ``secret_key_env`` KLING_SECRET_KEY, ``base_url``). Billed per clip by model, mode and
    duration (5 or 10 s): one call of "<model>:<mode>:<seconds>s"."""

    Options = KlingApiVideoOptions
    resident = False
    num_gpus = 0
    provider = "kling"

    def __init__(self, *, model: str = "kling-v2-1", mode: str = "std", cfg_scale: float = 0.5,
                 style: str = "cinematic vertical micro-drama, realistic lighting", negative_prompt: str = "",
                 **options: Any) -> None:
        from models.providers.kling import MODES, Kling

        if mode not in MODES:
            raise UserError(f"stages.video.options.mode: one of {', '.join(MODES)}, got {mode!r}")
        self.model, self.mode, self.cfg_scale, self.style = model, mode, float(cfg_scale), style
        self.negative_prompt = negative_prompt
        keys = ("access_key_env", "secret_key_env", "secrets_file", "access_key_name", "secret_key_name", "base_url",
                "timeout_s")
        self.client = Kling(stage="video", limits=_limits(options),
                            **{k: v for k, v in options.items() if k in keys})

    def __repr__(self) -> str:
        return f"KlingApiVideo({self.model}, {self.mode}, {self.client!r})"

    @staticmethod
    def planned(options: dict[str, Any], *, duration_s: float, **_: Any) -> list[dict[str, Any]]:
        seconds = clip_seconds(duration_s, (5, 10))
        return [{"tool": f"{options.get('model', 'kling-v2-1')}:{options.get('mode', 'std')}:{seconds}s",
                 "unit": "call", "quantity": 1}]

    def render(self, shot: Shot, keyframe: Path, out_path: Path, *, duration_s: float, fps: int,
               width: int, height: int, seed: int) -> BackendResult:
        seconds = clip_seconds(duration_s, (5, 10))
        w, h = KLING_SIZES[self.mode]
        prompt = motion_prompt(shot, self.style)
        image = base64.b64encode(Path(keyframe).read_bytes()).decode("ascii")
        request = {"model": self.model, "mode": self.mode, "duration": seconds, "prompt": prompt,
                   "image": task_flow.file_digest(keyframe), "cfg_scale": self.cfg_scale}
        tool = f"{self.model}:{self.mode}:{seconds}s"

        def submit() -> str:
            return self.client.submit(model=self.model, mode=self.mode, duration=seconds, image_b64=image,
                                      prompt=prompt, negative_prompt=self.negative_prompt,
                                      cfg_scale=self.cfg_scale, shot=shot.id)

        def fetch(task_id: str) -> task_flow.Polled:
            t = self.client.fetch(task_id)
            outcome = "done" if t.status == "succeed" else "failed" if t.status == "failed" else "running"
            items = [{"tool": tool, "unit": "call", "quantity": 1.0}] if outcome == "done" else []
            err = self.client.failure(t, task_id, shot=shot.id, prompt=prompt) if outcome == "failed" else None
            return task_flow.Polled(outcome, t.url, items, t.status, err)

        return task_flow.run_video_task(
            provider="kling", model=self.model, shot=shot, request=request, submit=submit, fetch=fetch,
            planned=self.planned({"model": self.model, "mode": self.mode}, duration_s=duration_s),
            expect=(w, h), min_seconds=duration_s, limits=self.client.limits, out_path=Path(out_path),
            fps=fps, width=width, height=height, prompt=prompt,
            params={"model": self.model, "mode": self.mode, "seed": seed, "clip_s": seconds})
