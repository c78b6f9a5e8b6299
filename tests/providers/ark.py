"""Fake Volcengine Ark: Seedance content-generation tasks, Seedream images, Doubao chat (api/v3).

As the volcenginesdkarkruntime SDK speaks it: POST /api/v3/contents/generations/tasks {model, content,
resolution, ratio, duration, seed} → {id}; GET /api/v3/contents/generations/tasks/{id} → {id, model,
status (queued|running|succeeded|failed), content.video_url, usage.completion_tokens (= w·h·fps·s/1024),
resolution, ratio, duration, framespersecond, error}; POST /api/v3/images/generations → {data[].url,
usage.generated_images}. Errors: {"error": {code, message, type}}; 429 RateLimitExceeded + Retry-After;
400 InputTextSensitiveContentDetected.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.providers.base import Behaviour, FakeServer, JsonHandler, Task

SIZES = {("480p", "9:16"): (480, 864), ("720p", "9:16"): (720, 1280), ("1080p", "9:16"): (1080, 1920)}


def _error(code: str, message: str, kind: str = "BadRequest") -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "param": "", "type": kind}}


class ArkHandler(JsonHandler):
    def _authorised(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {self.server.auth['api_key']}":
            self.send_json(401, _error("AuthenticationError", "the API key is invalid", "Unauthorized"))
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802
        task = self.polled_task(r"/api/v3/contents/generations/tasks/([\w-]+)",
                                _error("ResourceNotFound", "task not found", "NotFound"))
        if task is None:
            return
        b = self.server.behaviour
        task.polls += 1
        doc: dict[str, Any] = {"id": task.id, "model": task.extra["model"], "created_at": int(time.time()),
                               "updated_at": int(time.time()), "seed": task.extra.get("seed", 0),
                               "resolution": task.extra["resolution"], "ratio": "9:16",
                               "duration": int(task.seconds), "framespersecond": task.fps}
        if task.polls <= b.slow_polls:
            self.send_json(200, {**doc, "status": "queued" if task.polls == 1 else "running"})
            return
        if self.server.triggered(b.fail, task.prompt):
            self.send_json(200, {**doc, "status": "failed", "error": {"code": "InternalServiceError",
                                                                       "message": "the service encountered an error"}})
            return
        if self.server.triggered(b.moderate_task, task.prompt):
            self.send_json(200, {**doc, "status": "failed", "error": {
                "code": "OutputVideoSensitiveContentDetected", "message": "The output video may contain sensitive "
                                                                         "information."}})
            return
        if "url" not in task.extra:
            task.extra["url"] = self.server.result_url(task)
        tokens = task.width * task.height * task.fps * int(task.seconds) // 1024
        done = {**doc, "status": "succeeded", "content": {"video_url": task.extra["url"]}}
        if not b.no_usage:
            done["usage"] = {"completion_tokens": tokens, "total_tokens": tokens}
        self.send_json(200, done)

    def do_POST(self) -> None:  # noqa: N802
        body = self.body() or {}
        self.record(body)
        if not self._authorised():
            return
        if self.path == "/api/v3/chat/completions":
            from tests.providers.dashscope import chat_answer

            self.send_json(200, chat_answer(self.server, body))
            return
        b = self.server.behaviour
        if self.path == "/api/v3/contents/generations/tasks":
            prompt = " ".join(c.get("text", "") for c in body.get("content", []) if c.get("type") == "text")
        else:
            prompt = str(body.get("prompt", ""))
        if self.server.throttled():
            self.send_json(429, _error("RateLimitExceeded.EndpointRPM", "Too many requests", "TooManyRequests"),
                           {"Retry-After": b.retry_after})
            return
        if self.server.triggered(b.moderate, prompt):
            self.send_json(400, _error("InputTextSensitiveContentDetected",
                                       "The request failed because the input text may contain sensitive information."))
            return
        if self.path == "/api/v3/contents/generations/tasks":
            w, h = SIZES[(body.get("resolution", "720p"), body.get("ratio", "9:16"))]
            task = Task(self.server.new_id("cgt-"), "video", prompt, w, h, float(body.get("duration", 5)),
                        extra={"model": body["model"], "resolution": body.get("resolution", "720p"),
                               "seed": body.get("seed")})
            self.server.tasks[task.id] = task
            self.send_json(200, {"id": task.id})
            return
        if self.path == "/api/v3/images/generations":
            w, h = (int(x) for x in str(body.get("size", "1024x1024")).split("x"))
            task = Task(self.server.new_id("img-"), "image", prompt, w, h, 0)
            url = self.server.result_url(task)
            self.send_json(200, {"model": body["model"], "created": int(time.time()),
                                 "data": [{"url": url, "size": f"{w}x{h}"}],
                                 "usage": {"generated_images": 1, "output_tokens": w * h // 256,
                                           "total_tokens": w * h // 256}})
            return
        self.send_json(404, _error("NotFound", self.path, "NotFound"))


def start(media_dir: Path, behaviour: Behaviour | None = None, api_key: str = "ark-test-key") -> FakeServer:
    return FakeServer(ArkHandler, media_dir, behaviour, api_key=api_key).start()
