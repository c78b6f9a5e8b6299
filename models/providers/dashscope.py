"""Alibaba Cloud Bailian / DashScope: Wan video and image tasks and Qwen-TTS speech, through the official SDK.

Protocol (as the `dashscope` SDK speaks it): POST {base}/services/aigc/video-generation/video-synthesis
or .../text2image/image-synthesis with `X-DashScope-Async: enable` returns `output.task_id`; GET
{base}/tasks/{id} returns `output.task_status` (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED, UNKNOWN),
the result URLs (valid 24 h) and `usage` — `video_duration` seconds, `image_count` images — which is what
the provider bills. Qwen-TTS is a synchronous call (.../multimodal-generation/generation) whose
`usage.characters` is billed. Errors carry `code`: `Throttling*` (HTTP 429, retried), `DataInspectionFailed`
(content moderation, a ContentRefused naming the shot and prompt).
The key is resolved from the options at each request (pipeline.secrets) and never kept on the object.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.providers import (ContentRefused, Limits, ProviderError, RateLimited, TaskFailed, refused,
                              retry_after, with_backoff)
from pipeline import secrets
from pipeline.errors import UserError

NAME = "dashscope"
DEFAULT_BASE = "https://dashscope.aliyuncs.com/api/v1"
DONE, FAILED = ("SUCCEEDED",), ("FAILED", "CANCELED", "UNKNOWN")
MODERATION = ("DataInspectionFailed", "DataInspection", "IPInfringementSuspect", "data_inspection_failed")


@dataclass(frozen=True)
class TaskState:
    status: str
    urls: tuple[str, ...] = ()
    usage: dict[str, Any] = field(default_factory=dict)
    code: str = ""
    message: str = ""


def _sdk():
    try:
        import dashscope
    except ImportError as exc:
        raise UserError("the DashScope backends need the dashscope SDK: pip install -e '.[api]'") from exc
    return dashscope


class DashScope:
    """One DashScope account: `base_url` (default the Beijing endpoint), the key by `api_key_env`
    (default DASHSCOPE_API_KEY) or `secrets_file` + `api_key_name`."""

    def __init__(self, *, base_url: str = DEFAULT_BASE, stage: str = "video", limits: Limits | None = None,
                 api_key_env: str = "DASHSCOPE_API_KEY", secrets_file: str | None = None,
                 api_key_name: str | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"stages.{stage}.options.base_url must be an http(s) URL, got {base_url!r}")
        self.base_url, self.stage, self.limits = base_url.rstrip("/"), stage, limits or Limits()
        self.key_options = {k: v for k, v in {"api_key_env": api_key_env, "secrets_file": secrets_file,
                                              "api_key_name": api_key_name}.items() if v}
        self._key()  # a missing key fails now, naming the option

    def __repr__(self) -> str:
        return f"DashScope(base_url={self.base_url!r})"

    def _key(self) -> str:
        return secrets.resolve(self.key_options, field=f"stages.{self.stage}.options")

    @staticmethod
    def _throttled(resp: Any) -> float | None:
        code = str(getattr(resp, "code", "") or "")
        if getattr(resp, "status_code", 200) == 429 or code.startswith("Throttling"):
            hint = retry_after(getattr(resp, "headers", None))
            return -1.0 if hint is None else hint
        return None

    def _check(self, resp: Any, what: str, *, shot: str | None, prompt: str) -> Any:
        if resp.status_code == 200:
            return resp
        code, message = str(resp.code or ""), str(resp.message or "")
        if code in MODERATION:
            raise refused(shot, prompt, NAME, f"{code}: {message}")
        raise ProviderError(f"{NAME} {what}: HTTP {resp.status_code} {code}: {message}")

    def submit_video(self, *, model: str, prompt: str, size: str, duration: int, seed: int,
                     image: str | None = None, negative_prompt: str | None = None, shot: str | None = None) -> str:
        """Submit a Wan text-to-video (no image) or image-to-video task; returns the task id."""
        sdk = _sdk()
        kwargs: dict[str, Any] = {"model": model, "prompt": prompt, "size": size, "duration": int(duration),
                                  "seed": int(seed), "prompt_extend": False, "watermark": False}
        if image:
            kwargs["img_url"] = image
        if negative_prompt:
            kwargs["negative_prompt"] = negative_prompt
        resp = with_backoff(NAME, self.limits, lambda: sdk.VideoSynthesis.async_call(
            api_key=self._key(), base_address=self.base_url, **kwargs), self._throttled)
        return self._task_id(self._check(resp, f"video task ({model})", shot=shot, prompt=prompt))

    def submit_image(self, *, model: str, prompt: str, size: str, seed: int, n: int = 1,
                     negative_prompt: str | None = None, shot: str | None = None) -> str:
        sdk = _sdk()
        kwargs: dict[str, Any] = {"model": model, "prompt": prompt, "size": size, "n": int(n), "seed": int(seed),
                                  "prompt_extend": False, "watermark": False}
        if negative_prompt:
            kwargs["negative_prompt"] = negative_prompt
        resp = with_backoff(NAME, self.limits, lambda: sdk.ImageSynthesis.async_call(
            api_key=self._key(), base_address=self.base_url, **kwargs), self._throttled)
        return self._task_id(self._check(resp, f"image task ({model})", shot=shot, prompt=prompt))

    @staticmethod
    def _task_id(resp: Any) -> str:
        task_id = (resp.output or {}).get("task_id")
        if not task_id:
            raise ProviderError(f"{NAME}: the submission was answered without output.task_id: {resp}")
        return str(task_id)

    def fetch(self, task_id: str) -> TaskState:
        """One poll of a task (GET /tasks/{id})."""
        _sdk()  # a clear error when the SDK is missing
        from dashscope.client.base_api import BaseAsyncApi

        resp = with_backoff(NAME, self.limits, lambda: BaseAsyncApi.fetch(
            task_id, api_key=self._key(), base_address=self.base_url), self._throttled)
        if resp.status_code != 200:
            raise ProviderError(f"{NAME} task {task_id}: HTTP {resp.status_code} {resp.code}: {resp.message}",
                                task_id=task_id)
        out = dict(resp.output or {})
        urls: list[str] = []
        if out.get("video_url"):
            urls.append(str(out["video_url"]))
        urls += [str(r["url"]) for r in out.get("results") or [] if isinstance(r, dict) and r.get("url")]
        return TaskState(status=str(out.get("task_status", "UNKNOWN")), urls=tuple(urls),
                         usage=dict(resp.usage or {}), code=str(out.get("code") or ""),
                         message=str(out.get("message") or ""))

    def failure(self, state: TaskState, task_id: str, *, shot: str | None, prompt: str,
                ai_usage: tuple[dict, ...] = ()) -> ProviderError:
        """The error for a task that ended without a result (moderation named as such)."""
        if state.code in MODERATION:
            err: ProviderError = refused(shot, prompt, NAME, f"task {task_id}: {state.code}: {state.message}",
                                         ai_usage=ai_usage, task_id=task_id)
            return err
        return TaskFailed(f"{NAME} task {task_id} ended {state.status}: {state.code} {state.message}".strip(),
                          ai_usage=ai_usage, task_id=task_id)

    def speak(self, *, model: str, text: str, voice: str, language_type: str | None = None) -> tuple[str, int]:
        """Qwen-TTS: (audio URL, characters billed) for one line."""
        sdk = _sdk()
        kwargs: dict[str, Any] = {"model": model, "text": text, "voice": voice}
        if language_type:
            kwargs["language_type"] = language_type
        resp = with_backoff(NAME, self.limits, lambda: sdk.MultiModalConversation.call(
            api_key=self._key(), base_address=self.base_url, **kwargs), self._throttled)
        self._check(resp, f"speech ({model})", shot=None, prompt=text)
        audio = (resp.output or {}).get("audio") or {}
        usage = dict(resp.usage or {})
        if not audio.get("url") or "characters" not in usage:
            raise ProviderError(f"{NAME} speech ({model}): the answer lacks output.audio.url or usage.characters; "
                                "the call cannot be metered")
        return str(audio["url"]), int(usage["characters"])


__all__ = ["DashScope", "TaskState", "DONE", "FAILED", "NAME", "ContentRefused", "RateLimited"]
