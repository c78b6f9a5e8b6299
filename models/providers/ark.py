"""Volcengine Ark: Seedance video tasks and Seedream images, through the official SDK (volcenginesdkarkruntime).

Protocol (as the SDK speaks it): POST {base}/contents/generations/tasks with `model` and `content` (a text
item, and for image-to-video an `image_url` item with role first_frame) plus resolution / ratio / duration
/ seed returns `{id}`; GET {base}/contents/generations/tasks/{id} returns `status` (queued, running,
succeeded, failed, cancelled), `content.video_url` (valid 24 h), `resolution`, `ratio`, `duration`,
`framespersecond` and `usage.completion_tokens` — Seedance bills these tokens, which the docs define as
width × height × fps × seconds / 1024. POST {base}/images/generations (Seedream) answers at once with
`data[].url` and `usage.generated_images`, billed per image. Errors are `{"error": {code, message}}`:
HTTP 429 is retried after Retry-After; `*SensitiveContentDetected` codes are content moderation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.providers import (Limits, ProviderError, SubmitUncertain, TaskFailed, refused, retry_after,
                              with_backoff)
from pipeline import secrets
from pipeline.errors import UserError

NAME = "ark"
DEFAULT_BASE = "https://ark.cn-beijing.volces.com/api/v3"
DONE, FAILED = ("succeeded",), ("failed", "cancelled", "expired")


def is_moderation(code: str) -> bool:
    return "SensitiveContent" in code or code in ("ContentSecurityDetectionError", "InputSensitive")


@dataclass(frozen=True)
class VideoTask:
    status: str
    url: str = ""
    tokens: int | None = None
    resolution: str = ""
    ratio: str = ""
    duration: float | None = None
    fps: int | None = None
    code: str = ""
    message: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


def _sdk():
    try:
        from volcenginesdkarkruntime import Ark
    except ImportError as exc:
        raise UserError("the Ark backends need the Volcengine Ark SDK: pip install -e '.[api]'") from exc
    return Ark


class ArkProvider:
    """One Ark account: `base_url`, the key by `api_key_env` (default ARK_API_KEY) or a secrets file."""

    def __init__(self, *, base_url: str = DEFAULT_BASE, stage: str = "video", limits: Limits | None = None,
                 api_key_env: str = "ARK_API_KEY", secrets_file: str | None = None,
                 api_key_name: str | None = None, timeout_s: float = 60.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"stages.{stage}.options.base_url must be an http(s) URL, got {base_url!r}")
        self.base_url, self.stage, self.limits = base_url.rstrip("/"), stage, limits or Limits()
        self.timeout_s = float(timeout_s)
        self.key_options = {k: v for k, v in {"api_key_env": api_key_env, "secrets_file": secrets_file,
                                              "api_key_name": api_key_name}.items() if v}
        self._key()

    def __repr__(self) -> str:
        return f"ArkProvider(base_url={self.base_url!r})"

    def _key(self) -> str:
        return secrets.resolve(self.key_options, field=f"stages.{self.stage}.options")

    def _client(self) -> Any:
        # a client per call: the SDK's client is not thread safe, and the key is never kept
        return _sdk()(base_url=self.base_url, api_key=self._key(), max_retries=0, timeout=self.timeout_s)

    @staticmethod
    def _throttled(result: Any) -> float | None:
        if getattr(result, "status_code", None) == 429 and isinstance(result, Exception):
            hint = retry_after(getattr(getattr(result, "response", None), "headers", None))
            return -1.0 if hint is None else hint
        return None

    def _call(self, what: str, send: Any, *, shot: str | None, prompt: str) -> Any:
        from volcenginesdkarkruntime._exceptions import ArkAPIConnectionError, ArkAPIError

        try:
            return with_backoff(NAME, self.limits, send, self._throttled)
        except ArkAPIConnectionError as exc:  # includes timeouts: a submission may have been accepted
            if what.startswith(("video task", "image")):
                raise SubmitUncertain(f"{NAME} {what}: {type(exc).__name__} after the request was sent; the "
                                      f"task may exist and be billed — check the Ark console before re-running "
                                      f"shot {shot}") from None
            raise ProviderError(f"{NAME} {what}: {type(exc).__name__}: {exc}") from None
        except ArkAPIError as exc:
            code = str(getattr(exc, "code", "") or "")
            message = str(getattr(exc, "message", exc))
            if is_moderation(code):
                raise refused(shot, prompt, NAME, f"{code}: {message}") from None
            status = getattr(exc, "status_code", "")
            raise ProviderError(f"{NAME} {what}: HTTP {status} {code}: {message}") from None

    def submit_video(self, *, model: str, prompt: str, resolution: str, ratio: str, duration: int, seed: int,
                     image: str | None = None, shot: str | None = None) -> str:
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        if image:
            content.append({"type": "image_url", "image_url": {"url": image}, "role": "first_frame"})
        resp = self._call(f"video task ({model})", lambda: self._client().content_generation.tasks.create(
            model=model, content=content, resolution=resolution, ratio=ratio, duration=int(duration),
            seed=int(seed), watermark=False, camera_fixed=False), shot=shot, prompt=prompt)
        if not getattr(resp, "id", None):
            raise ProviderError(f"{NAME}: the submission was answered without a task id")
        return str(resp.id)

    def fetch(self, task_id: str) -> VideoTask:
        task = self._call(f"task {task_id}", lambda: self._client().content_generation.tasks.get(task_id=task_id),
                          shot=None, prompt="")
        raw = task.model_dump() if hasattr(task, "model_dump") else dict(task)
        usage = raw.get("usage") or {}
        error = raw.get("error") or {}
        return VideoTask(status=str(raw.get("status", "")), url=str((raw.get("content") or {}).get("video_url") or ""),
                         tokens=usage.get("completion_tokens"), resolution=str(raw.get("resolution") or ""),
                         ratio=str(raw.get("ratio") or ""), duration=raw.get("duration"),
                         fps=raw.get("framespersecond"), code=str(error.get("code") or ""),
                         message=str(error.get("message") or ""), raw=raw)

    def failure(self, task: VideoTask, task_id: str, *, shot: str | None, prompt: str,
                ai_usage: tuple[dict, ...] = ()) -> ProviderError:
        if is_moderation(task.code):
            return refused(shot, prompt, NAME, f"task {task_id}: {task.code}: {task.message}",
                           ai_usage=ai_usage, task_id=task_id)
        return TaskFailed(f"{NAME} task {task_id} ended {task.status}: {task.code} {task.message}".strip(),
                          ai_usage=ai_usage, task_id=task_id)

    def image(self, *, model: str, prompt: str, size: str, seed: int, shot: str | None = None) -> tuple[str, int]:
        """Seedream: (image URL, images billed)."""
        resp = self._call(f"image ({model})", lambda: self._client().images.generate(
            model=model, prompt=prompt, size=size, seed=int(seed), response_format="url", watermark=False),
            shot=shot, prompt=prompt)
        data = list(getattr(resp, "data", None) or [])
        usage = getattr(resp, "usage", None)
        if not data or not getattr(data[0], "url", None) or usage is None:
            raise ProviderError(f"{NAME} image ({model}): the answer lacks data[0].url or usage; it cannot be metered")
        return str(data[0].url), int(usage.generated_images)
