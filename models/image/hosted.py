"""Hosted keyframe backends — `wan-t2i-api` (DashScope Wan / Qwen-Image task) and `seedream-api` (Ark).

Same money rules as the hosted video backends (models/providers/flow.py): request digest, an open task
polled rather than paid again, the planned cost reserved before submission, the task id in the ledger
before polling, the image downloaded at once with its digest, a wrong-size image rejected and still
billed. Usage is the provider's count of generated images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from models import options as opt
from models.image.diffusers_t2i import keyframe_prompt
from models.providers import Limits
from models.providers.flow import Polled, run_task
from models.registry import BackendResult
from pipeline.errors import UserError
from pipeline.script import Script, Shot

_KEY_OPTIONS = ("api_key_env", "secrets_file", "api_key_name", "base_url")
STYLE = "cinematic still from a vertical micro-drama, realistic lighting, 9:16"


def _limits(options: dict[str, Any]) -> Limits:
    return Limits(concurrency=int(options.get("concurrency", 2)), poll_s=float(options.get("poll_s", 2.0)),
                  timeout_s=float(options.get("task_timeout_s", 600.0)), retries=int(options.get("retries", 5)),
                  backoff_s=float(options.get("backoff_s", 1.0)))


def _size(options: dict[str, Any], width: int, height: int) -> tuple[int, int]:
    size = options.get("size")
    if size:
        w, _, h = str(size).replace("*", "x").partition("x")
        return int(w), int(h)
    return width, height


def _finish(done: Any, shot: Shot, out_path: Path, expect: tuple[int, int], width: int, height: int,
            params: dict[str, Any]) -> BackendResult:
    from PIL import Image

    try:
        with Image.open(done.download.path) as img:
            got = img.size
            picture = img.convert("RGB")
    except OSError:
        raise done.reject(f"shot {shot.id}: the result is not an image") from None
    if got != tuple(expect):
        raise done.reject(f"shot {shot.id}: the image is {got[0]}×{got[1]}, asked for {expect[0]}×{expect[1]}",
                          result_width=got[0], result_height=got[1])
    facts = done.accept(result_width=got[0], result_height=got[1])
    if got != (width, height):
        picture = picture.resize((width, height), Image.LANCZOS)
    picture.save(out_path, format="PNG")
    Path(done.download.path).unlink(missing_ok=True)
    return BackendResult(outputs={"image": str(out_path)}, ai_usage=tuple(done.usage), params={**params, **facts})


Size = opt.Annotated[str, opt.Field(pattern=r"^[1-9][0-9]{2,3}[*x][1-9][0-9]{2,3}$")]  # e.g. 720*1280


class WanApiImageOptions(opt.TaskOptions):
    model: opt.ModelId = "wan2.2-t2i-flash"
    size: Size | None = None  # default: the stage's width×height
    style: opt.Text = STYLE
    negative_prompt: opt.Text = ""
    characters: opt.Characters | None = None


class SeedreamApiImageOptions(opt.TaskOptions):
    model: opt.ModelId = "doubao-seedream-3-0-t2i-250415"
    size: Size | None = None
    style: opt.Text = STYLE
    characters: opt.Characters | None = None


class WanApiImage:
    """Options: ``model`` (default wan2.2-t2i-flash; qwen-image also works), ``size`` ("720*1280"; default
    the stage's width×height), ``style``, ``negative_prompt``, ``characters``, key options (DASHSCOPE_API_KEY).
    Billed per image (usage.image_count) as item "<model>"."""

    Options = WanApiImageOptions
    resident = False
    draws_dialogue = False  # prompted from framing, people, action and place (keyframe_prompt)
    num_gpus = 0

    def __init__(self, *, model: str = "wan2.2-t2i-flash", size: str | None = None, style: str = STYLE,
                 negative_prompt: str = "", characters: dict[str, str] | None = None, **options: Any) -> None:
        from models.providers.dashscope import DashScope

        self.model, self.size, self.style, self.negative_prompt = model, size, style, negative_prompt
        self.characters = dict(characters or {})
        self.options = dict(options)
        self.client = DashScope(stage="storyboard", limits=_limits(options),
                                **{k: v for k, v in options.items() if k in _KEY_OPTIONS})

    def __repr__(self) -> str:
        return f"WanApiImage({self.model}, {self.client!r})"

    @staticmethod
    def planned(options: dict[str, Any], **_: Any) -> list[dict[str, Any]]:
        return [{"tool": options.get("model", "wan2.2-t2i-flash"), "unit": "image", "quantity": 1}]

    def render(self, shot: Shot, script: Script, out_path: Path, *, width: int, height: int,
               seed: int) -> BackendResult:
        w, h = _size({"size": self.size}, width, height)
        prompt = keyframe_prompt(shot, script, self.characters, self.style)
        request = {"model": self.model, "prompt": prompt, "size": f"{w}*{h}", "seed": seed}

        def submit() -> str:
            return self.client.submit_image(model=self.model, prompt=prompt, size=f"{w}*{h}", seed=seed,
                                            negative_prompt=self.negative_prompt or None, shot=shot.id)

        def fetch(task_id: str) -> Polled:
            st = self.client.fetch(task_id)
            n = (st.usage or {}).get("image_count")
            items = [{"tool": self.model, "unit": "image", "quantity": float(n)}] if n is not None else []
            outcome = "done" if st.status == "SUCCEEDED" else "failed" if st.status in (
                "FAILED", "CANCELED", "UNKNOWN") else "running"
            err = self.client.failure(st, task_id, shot=shot.id, prompt=prompt, ai_usage=tuple(items)) \
                if outcome == "failed" else None
            return Polled(outcome, st.urls[0] if st.urls else "", items, st.status, err)

        out_path = Path(out_path)
        done = run_task(provider="dashscope", model=self.model, request=request, submit=submit, fetch=fetch,
                        planned=self.planned({"model": self.model}), limits=self.client.limits,
                        dest=out_path.with_name(f"{out_path.stem}.dashscope.img"),
                        what=f"shot {shot.id}'s {self.model} keyframe")
        return _finish(done, shot, out_path, (w, h), width, height,
                       {"model": self.model, "prompt": prompt[:500], "seed": seed})


class SeedreamApiImage:
    """Options: ``model`` (default doubao-seedream-3-0-t2i-250415), ``size`` ("720x1280"; default the stage's
    width×height), ``style``, ``characters``, key options (ARK_API_KEY). A synchronous call billed per
    generated image (usage.generated_images) as item "<model>"."""

    Options = SeedreamApiImageOptions
    resident = False
    draws_dialogue = False  # prompted from framing, people, action and place (keyframe_prompt)
    num_gpus = 0

    def __init__(self, *, model: str = "doubao-seedream-3-0-t2i-250415", size: str | None = None,
                 style: str = STYLE, characters: dict[str, str] | None = None, **options: Any) -> None:
        from models.providers.ark import ArkProvider

        self.model, self.size, self.style = model, size, style
        self.characters = dict(characters or {})
        self.client = ArkProvider(stage="storyboard", limits=_limits(options),
                                  **{k: v for k, v in options.items() if k in _KEY_OPTIONS})

    def __repr__(self) -> str:
        return f"SeedreamApiImage({self.model}, {self.client!r})"

    @staticmethod
    def planned(options: dict[str, Any], **_: Any) -> list[dict[str, Any]]:
        return [{"tool": options.get("model", "doubao-seedream-3-0-t2i-250415"), "unit": "image", "quantity": 1}]

    def render(self, shot: Shot, script: Script, out_path: Path, *, width: int, height: int,
               seed: int) -> BackendResult:
        w, h = _size({"size": self.size}, width, height)
        prompt = keyframe_prompt(shot, script, self.characters, self.style)
        request = {"model": self.model, "prompt": prompt, "size": f"{w}x{h}", "seed": seed}
        answer: dict[str, Any] = {}

        def submit() -> str:
            url, n = self.client.image(model=self.model, prompt=prompt, size=f"{w}x{h}", seed=seed, shot=shot.id)
            answer.update(url=url, n=n)
            import uuid

            return f"sync-{uuid.uuid4().hex}"

        def fetch(task_id: str) -> Polled:
            if not answer:
                raise UserError("seedream-api: no answer to read")  # unreachable: synchronous calls never resume
            return Polled("done", answer["url"], [{"tool": self.model, "unit": "image", "quantity": float(answer["n"])}],
                          "succeeded")

        out_path = Path(out_path)
        done = run_task(provider="ark", model=self.model, request=request, submit=submit, fetch=fetch,
                        planned=self.planned({"model": self.model}), limits=self.client.limits,
                        dest=out_path.with_name(f"{out_path.stem}.ark.img"), resumable=False,
                        what=f"shot {shot.id}'s {self.model} keyframe")
        return _finish(done, shot, out_path, (w, h), width, height,
                       {"model": self.model, "prompt": prompt[:500], "seed": seed})
