"""Fake Kling open platform: image-to-video tasks with JWT (HS256, iss = access key) checked on every request.

POST /v1/videos/image2video {model_name, mode, duration, image, prompt, ...} → {code: 0, message, request_id,
data: {task_id, task_status: submitted}}; GET /v1/videos/image2video/{id} → data.task_status (submitted,
processing, succeed, failed), task_status_msg, task_result.videos[{id, url, duration}]. Errors keep HTTP
status and a non-zero code: 401/1004 bad token, 429/1302 rate limit (+ Retry-After), 400/1301 content
security. std renders 720×1280 portrait, pro 1080×1920.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from tests.providers.base import Behaviour, FakeServer, JsonHandler, Task

SIZES = {"std": (720, 1280), "pro": (1080, 1920)}


class KlingHandler(JsonHandler):
    def _authorised(self) -> bool:
        import jwt

        header = self.headers.get("Authorization", "")
        try:
            claims = jwt.decode(header.removeprefix("Bearer "), self.server.auth["secret_key"], algorithms=["HS256"],
                                options={"require": ["iss", "exp", "nbf"]})
            ok = claims["iss"] == self.server.auth["access_key"]
        except jwt.PyJWTError:
            ok = False
        if not ok:
            self.send_json(401, self._doc(1004, "Authorization is not valid", {}))
        return ok

    @staticmethod
    def _doc(code: int, message: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"code": code, "message": message, "request_id": str(uuid.uuid4()), "data": data}

    def do_GET(self) -> None:  # noqa: N802
        task = self.polled_task(r"/v1/videos/image2video/([\w-]+)", self._doc(1203, "task not found", {}))
        if task is None:
            return
        b = self.server.behaviour
        task.polls += 1
        data = {"task_id": task.id, "created_at": int(time.time() * 1000), "updated_at": int(time.time() * 1000)}
        if task.polls <= b.slow_polls:
            data["task_status"] = "submitted" if task.polls == 1 else "processing"
        elif self.server.triggered(b.fail, task.prompt):
            data |= {"task_status": "failed", "task_status_msg": "generation failed, please retry"}
        elif self.server.triggered(b.moderate_task, task.prompt):
            data |= {"task_status": "failed", "task_status_msg": "Failure to pass the risk control system"}
        else:
            if "url" not in task.extra:
                task.extra["url"] = self.server.result_url(task)
            data |= {"task_status": "succeed", "task_status_msg": "", "task_result": {"videos": [
                {"id": uuid.uuid4().hex, "url": task.extra["url"], "duration": f"{task.seconds:.1f}"}]}}
        self.send_json(200, self._doc(0, "SUCCEED", data))

    def do_POST(self) -> None:  # noqa: N802
        body = self.body() or {}
        self.record({k: (v if k != "image" else f"<{len(str(v))} base64 chars>") for k, v in body.items()})
        if not self._authorised():
            return
        b = self.server.behaviour
        prompt = str(body.get("prompt", ""))
        if b.stall_s:
            time.sleep(b.stall_s)
        if self.server.throttled():
            self.send_json(429, self._doc(1302, "API request too frequent, please reduce the rate", {}),
                           {"Retry-After": b.retry_after})
            return
        if self.server.triggered(b.moderate, prompt):
            self.send_json(400, self._doc(1301, "Trigger the content security policy of the platform", {}))
            return
        if self.path != "/v1/videos/image2video" or not body.get("image"):
            self.send_json(400, self._doc(1201, "image is required", {}))
            return
        w, h = SIZES[body.get("mode", "std")]
        task = Task(self.server.new_id("kl-"), "video", prompt, w, h, float(body.get("duration", "5")), fps=24)
        self.server.tasks[task.id] = task
        self.send_json(200, self._doc(0, "SUCCEED", {"task_id": task.id, "task_status": "submitted",
                                                     "created_at": int(time.time() * 1000)}))


def start(media_dir: Path, behaviour: Behaviour | None = None, access_key: str = "ak-kling-test",
          secret_key: str = "sk-kling-test-secret-0123456789abcdef") -> FakeServer:
    return FakeServer(KlingHandler, media_dir, behaviour, access_key=access_key, secret_key=secret_key).start()
