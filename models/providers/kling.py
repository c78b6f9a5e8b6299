"""Kling (可灵) open platform: image-to-video tasks over HTTP (httpx), authenticated by a short-lived JWT.

Protocol (Kling API docs): every request carries `Authorization: Bearer <JWT>`, an HS256 token signed with
the secret key, claims `iss` = access key, `exp` = now + 30 min, `nbf` = now − 5 s. POST
{base}/v1/videos/image2video {model_name, mode (std|pro), duration ("5"|"10"), image (base64 or URL),
prompt, negative_prompt, cfg_scale} answers `{code: 0, data: {task_id, task_status: submitted}}`; GET
{base}/v1/videos/image2video/{task_id} answers `data.task_status` (submitted, processing, succeed, failed),
`task_status_msg` and `task_result.videos[{url, duration}]` (URLs expire). A non-zero `code` is an error:
1301 content security (moderation), 1302/1303 rate or concurrency limit (HTTP 429, retried). Kling bills
per clip by model, mode and duration, so the usage is one `call` of "<model>:<mode>:<duration>s".
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from models.providers import (Limits, ProviderError, SubmitUncertain, TaskFailed, refused, retry_after,
                              with_backoff)
from pipeline import secrets
from pipeline.errors import UserError

NAME = "kling"
DEFAULT_BASE = "https://api-beijing.klingai.com"
DONE, FAILED = ("succeed",), ("failed",)
MODERATION_CODES = (1301,)
THROTTLE_CODES = (1302, 1303)
DURATIONS = (5, 10)
MODES = ("std", "pro")


@dataclass(frozen=True)
class KlingTask:
    status: str
    url: str = ""
    duration: float | None = None
    message: str = ""


def token(access_key: str, secret_key: str, *, now: float | None = None, ttl_s: int = 1800) -> str:
    """The request JWT (HS256): iss = access key, exp = now + ttl, nbf = now − 5 s."""
    import jwt

    t = int(now if now is not None else time.time())
    return jwt.encode({"iss": access_key, "exp": t + ttl_s, "nbf": t - 5}, secret_key, algorithm="HS256",
                      headers={"alg": "HS256", "typ": "JWT"})


class Kling:
    """One Kling account: `base_url`, `access_key_env` / `secret_key_env` (defaults KLING_ACCESS_KEY,
    KLING_SECRET_KEY) or `secrets_file` with `access_key_name` / `secret_key_name`."""

    def __init__(self, *, base_url: str = DEFAULT_BASE, stage: str = "video", limits: Limits | None = None,
                 access_key_env: str = "KLING_ACCESS_KEY", secret_key_env: str = "KLING_SECRET_KEY",
                 secrets_file: str | None = None, access_key_name: str | None = None,
                 secret_key_name: str | None = None, timeout_s: float = 60.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"stages.{stage}.options.base_url must be an http(s) URL, got {base_url!r}")
        self.base_url, self.stage, self.limits = base_url.rstrip("/"), stage, limits or Limits()
        self.timeout_s = float(timeout_s)
        self.options = {k: v for k, v in {"access_key_env": access_key_env, "secret_key_env": secret_key_env,
                                          "secrets_file": secrets_file, "access_key_name": access_key_name,
                                          "secret_key_name": secret_key_name}.items() if v}
        self._auth()

    def __repr__(self) -> str:
        return f"Kling(base_url={self.base_url!r})"

    def _auth(self) -> str:
        where = f"stages.{self.stage}.options"
        ak = secrets.resolve(self.options, field=where, env_key="access_key_env", name_key="access_key_name")
        sk = secrets.resolve(self.options, field=where, env_key="secret_key_env", name_key="secret_key_name")
        return token(ak, sk)  # short-lived; the keys behind it are registered for redaction

    @staticmethod
    def _throttled(result: Any) -> float | None:
        status = getattr(result, "status_code", None)
        if status == 429 or (status is not None and _code(result) in THROTTLE_CODES):
            hint = retry_after(result.headers)
            return -1.0 if hint is None else hint
        return None

    def _request(self, method: str, path: str, body: dict | None, *, shot: str | None, prompt: str) -> dict:
        import httpx

        def send() -> Any:
            return httpx.request(method, f"{self.base_url}{path}", json=body, timeout=self.timeout_s,
                                 headers={"Authorization": f"Bearer {self._auth()}",
                                          "Content-Type": "application/json"})

        try:
            resp = with_backoff(NAME, self.limits, send, self._throttled)
        except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            if method == "POST":
                raise SubmitUncertain(f"{NAME} {method} {path}: {type(exc).__name__} after the request was sent; "
                                      f"the task may exist and be billed — check the Kling console before "
                                      f"re-running shot {shot}") from None
            raise ProviderError(f"{NAME} {method} {path}: {type(exc).__name__}: {exc}") from None
        except httpx.HTTPError as exc:
            raise ProviderError(f"{NAME} {method} {path}: {exc}") from None
        try:
            doc = resp.json()
        except ValueError:
            raise ProviderError(f"{NAME} {method} {path}: HTTP {resp.status_code}, not JSON") from None
        code = int(doc.get("code", -1)) if isinstance(doc, dict) else -1
        if code in MODERATION_CODES:
            raise refused(shot, prompt, NAME, f"code {code}: {doc.get('message', '')}")
        if resp.status_code != 200 or code != 0:
            raise ProviderError(f"{NAME} {method} {path}: HTTP {resp.status_code} code {code}: "
                                f"{doc.get('message', '') if isinstance(doc, dict) else doc}")
        return dict(doc.get("data") or {})

    def submit(self, *, model: str, mode: str, duration: int, image_b64: str, prompt: str,
               negative_prompt: str = "", cfg_scale: float = 0.5, shot: str | None = None) -> str:
        if mode not in MODES or int(duration) not in DURATIONS:
            raise UserError(f"stages.video.options: Kling takes mode {'/'.join(MODES)} and duration 5 or 10 s")
        data = self._request("POST", "/v1/videos/image2video", {
            "model_name": model, "mode": mode, "duration": str(int(duration)), "image": image_b64,
            "prompt": prompt, "negative_prompt": negative_prompt, "cfg_scale": cfg_scale}, shot=shot, prompt=prompt)
        if not data.get("task_id"):
            raise ProviderError(f"{NAME}: the submission was answered without data.task_id")
        return str(data["task_id"])

    def fetch(self, task_id: str) -> KlingTask:
        data = self._request("GET", f"/v1/videos/image2video/{task_id}", None, shot=None, prompt="")
        videos = (data.get("task_result") or {}).get("videos") or []
        first = videos[0] if videos else {}
        duration = first.get("duration")
        return KlingTask(status=str(data.get("task_status", "")), url=str(first.get("url") or ""),
                         duration=float(duration) if duration not in (None, "") else None,
                         message=str(data.get("task_status_msg") or ""))

    def failure(self, task: KlingTask, task_id: str, *, shot: str | None, prompt: str,
                ai_usage: tuple[dict, ...] = ()) -> ProviderError:
        if "risk" in task.message.lower() or "safety" in task.message.lower() or "1301" in task.message:
            return refused(shot, prompt, NAME, f"task {task_id}: {task.message}", ai_usage=ai_usage, task_id=task_id)
        return TaskFailed(f"{NAME} task {task_id} ended {task.status}: {task.message}".strip(),
                          ai_usage=ai_usage, task_id=task_id)


def _code(resp: Any) -> int:
    try:
        return int(resp.json().get("code", -1))
    except Exception:
        return -1
