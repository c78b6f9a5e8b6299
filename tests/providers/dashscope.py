"""Fake DashScope (Bailian): Wan video/image async tasks, /tasks polling, Qwen-TTS, OpenAI-compatible chat.

Paths and shapes as the dashscope SDK sends and reads them: POST /api/v1/services/aigc/video-generation/
video-synthesis and /text2image/image-synthesis need `X-DashScope-Async: enable` and answer
{request_id, output: {task_id, task_status: PENDING}}; GET /api/v1/tasks/{id} answers output.task_status,
output.video_url / output.results[].url and usage (video_duration, video_ratio, video_count / image_count).
Errors: {request_id, code, message} with HTTP 400 DataInspectionFailed, 401 InvalidApiKey, 429
Throttling.RateQuota (+ Retry-After).
"""
from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from tests.providers.base import Behaviour, FakeServer, JsonHandler, Task


def _rid() -> str:
    return str(uuid.uuid4())


class DashScopeHandler(JsonHandler):
    def _authorised(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {self.server.auth['api_key']}":
            self.send_json(401, {"request_id": _rid(), "code": "InvalidApiKey",
                                 "message": "Invalid API-key provided."})
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802
        task = self.polled_task(r"/api/v1/tasks/([\w-]+)",
                                {"request_id": _rid(), "code": "InvalidParameter", "message": "task not found"})
        if task is None:
            return
        self.send_json(200, self._task_doc(task))

    def _task_doc(self, task: Task) -> dict[str, Any]:
        b = self.server.behaviour
        task.polls += 1
        out: dict[str, Any] = {"task_id": task.id, "submit_time": "2026-01-05 10:00:00.000"}
        if task.polls <= b.slow_polls:
            return {"request_id": _rid(), "output": {**out, "task_status": "RUNNING" if task.polls > 1 else "PENDING"}}
        if self.server.triggered(b.fail, task.prompt):
            return {"request_id": _rid(), "output": {**out, "task_status": "FAILED", "code": "InternalError.Algo",
                                                     "message": "An internal error has occured during algo."}}
        if self.server.triggered(b.moderate_task, task.prompt):
            return {"request_id": _rid(), "output": {**out, "task_status": "FAILED", "code": "DataInspectionFailed",
                                                     "message": "Output data may contain inappropriate content."}}
        if "url" not in task.extra:
            task.extra["url"] = self.server.result_url(task)
        usage: dict[str, Any]
        if task.kind == "video":
            out["video_url"] = task.extra["url"]
            usage = {"video_duration": int(task.seconds) + b.bill_extra_s, "video_ratio": f"{task.width}*{task.height}",
                     "video_count": 1}
        else:
            out["results"] = [{"url": task.extra["url"], "orig_prompt": task.prompt}]
            usage = {"image_count": 1}
        doc = {"request_id": _rid(), "output": {**out, "task_status": "SUCCEEDED", "end_time": "2026-01-05 10:01:00"}}
        if not b.no_usage:
            doc["usage"] = usage
        return doc

    def do_POST(self) -> None:  # noqa: N802
        body = self.body()
        self.record(body)
        if not self._authorised():
            return
        if self.path == "/compatible-mode/v1/chat/completions":
            self.send_json(200, chat_answer(self.server, body))
            return
        prompt = str(((body or {}).get("input") or {}).get("prompt") or ((body or {}).get("input") or {}).get("text") or "")
        b = self.server.behaviour
        if self.server.throttled():
            self.send_json(429, {"request_id": _rid(), "code": "Throttling.RateQuota",
                                 "message": "Requests rate limit exceeded, please try again later."},
                           {"Retry-After": b.retry_after})
            return
        if self.server.triggered(b.moderate, prompt):
            self.send_json(400, {"request_id": _rid(), "code": "DataInspectionFailed",
                                 "message": "Input data may contain inappropriate content."})
            return
        params = body.get("parameters") or {}
        if self.path.endswith("/multimodal-generation/generation"):  # Qwen-TTS: synchronous
            text = body["input"]["text"]
            task = Task(self.server.new_id("tts-"), "audio", text, 0, 0, max(0.5, len(text) / 4.5))
            url = self.server.result_url(task)
            self.send_json(200, {"request_id": _rid(), "output": {"finish_reason": "stop", "audio": {
                "url": url, "id": task.id, "expires_at": 1767600000, "data": ""}},
                "usage": {"characters": len(text)}})
            return
        if self.headers.get("X-DashScope-Async") != "enable":
            self.send_json(400, {"request_id": _rid(), "code": "InvalidParameter",
                                 "message": "current user api does not support synchronous calls"})
            return
        w, h = (int(x) for x in str(params.get("size", "1280*720")).split("*"))
        if self.path == "/api/v1/services/aigc/video-generation/video-synthesis":
            task = Task(self.server.new_id("ds-v-"), "video", prompt, w, h, float(params.get("duration", 5)))
        elif self.path == "/api/v1/services/aigc/text2image/image-synthesis":
            task = Task(self.server.new_id("ds-i-"), "image", prompt, w, h, 0)
        else:
            self.send_json(404, {"request_id": _rid(), "code": "NotFound", "message": self.path})
            return
        self.server.tasks[task.id] = task
        self.send_json(200, {"request_id": _rid(), "output": {"task_id": task.id, "task_status": "PENDING"}})


def chat_answer(server: FakeServer, body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion: the configured screenplay for a screenwriter, line-by-line translations
    (prefixed "[<lang>] ") for the llm-api translator."""
    system = body["messages"][0]["content"]
    user = body["messages"][-1]["content"]
    if system.startswith("You translate"):
        lang = re.search(r" to ([\w ]+):", user).group(1)
        lines = json.loads(user[user.index("["):])
        content = json.dumps([f"[{lang}] {x}" for x in lines], ensure_ascii=False)
    else:
        content = getattr(server, "screenplay", "")
    prompt_tokens = sum(len(m["content"]) for m in body["messages"]) // 2
    return {"id": "chatcmpl-" + uuid.uuid4().hex[:8], "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(content) // 2,
                      "total_tokens": prompt_tokens + len(content) // 2}}


def start(media_dir: Path, behaviour: Behaviour | None = None, api_key: str = "sk-ds-test") -> FakeServer:
    return FakeServer(DashScopeHandler, media_dir, behaviour, api_key=api_key).start()
