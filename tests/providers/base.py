"""A threaded HTTP server on 127.0.0.1 with JSON helpers, scripted behaviour and generated result files.

Behaviour is scripted by prompt text, so one episode can mix outcomes: a prompt containing a `moderate`
trigger is refused, one containing `fail` ends FAILED, `wrong_size` yields a landscape result, `short` a
clip shorter than asked; `throttle` answers the first N submissions 429 with Retry-After; `slow_polls`
keeps a task running for N polls. Result files are real media (ffmpeg test pattern MP4s, PIL PNGs, WAV)
served under /files/, expiring after `url_ttl_s` (then 403, as expired signed URLs do).
"""
from __future__ import annotations

import itertools
import json
import re
import subprocess
import threading
import time
import uuid
import wave
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Behaviour:
    moderate: tuple[str, ...] = ()  # prompt substrings refused at submission
    moderate_task: tuple[str, ...] = ()  # prompt substrings accepted, then the task fails moderation
    fail: tuple[str, ...] = ()
    wrong_size: tuple[str, ...] = ()
    short: tuple[str, ...] = ()
    throttle: int = 0  # first N submissions answer 429
    retry_after: str = "0"
    slow_polls: int = 0  # polls answered "running" before the end
    url_ttl_s: float = 3600.0
    no_usage: bool = False
    stall_s: float = 0.0  # the server sleeps this long before answering a submission
    bill_extra_s: int = 0  # the provider bills this many seconds more than the clip it was asked for


@dataclass
class Task:
    id: str
    kind: str  # video | image
    prompt: str
    width: int
    height: int
    seconds: float
    fps: int = 24
    polls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type, media_dir: Path, behaviour: Behaviour | None = None, **auth: str):
        super().__init__(("127.0.0.1", 0), handler)
        self.behaviour = behaviour or Behaviour()
        self.media_dir = Path(media_dir)
        self.media_dir.mkdir(parents=True, exist_ok=True)
        self.auth = auth
        self.requests: list[dict[str, Any]] = []
        self.tasks: dict[str, Task] = {}
        self.files: dict[str, tuple[Path, float]] = {}  # token -> (path, expires at)
        self.submissions = 0
        self.downloads = 0
        self.lock = threading.Lock()
        self._ids = itertools.count(1)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):  # a client that gave up
            super().handle_error(request, client_address)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> FakeServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):04d}-{uuid.uuid4().hex[:8]}"

    def triggered(self, what: tuple[str, ...], prompt: str) -> bool:
        return any(t in prompt for t in what)

    def throttled(self) -> bool:
        with self.lock:
            self.submissions += 1
            return self.submissions <= self.behaviour.throttle

    def result_url(self, task: Task) -> str:
        """Make the task's result file now and return its expiring URL."""
        b = self.behaviour
        w, h = (task.height, task.width) if self.triggered(b.wrong_size, task.prompt) else (task.width, task.height)
        seconds = task.seconds / 2 if self.triggered(b.short, task.prompt) else task.seconds
        if task.kind == "video":
            path = make_video(self.media_dir, w, h, seconds, task.fps)
        elif task.kind == "audio":
            path = make_wav(self.media_dir, task.seconds)
        else:
            path = make_png(self.media_dir, w, h, task.prompt)
        token = uuid.uuid4().hex
        self.files[token] = (path, time.time() + b.url_ttl_s)
        return f"{self.root}/files/{token}{path.suffix}?Expires={int(time.time() + b.url_ttl_s)}&Signature=x"


def make_video(folder: Path, w: int, h: int, seconds: float, fps: int) -> Path:
    path = folder / f"v{w}x{h}-{seconds:g}s-{fps}.mp4"
    if not path.exists():
        tmp = path.with_suffix(".part.mp4")
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc2=size={w}x{h}:rate={fps}:duration={seconds:g}", "-c:v", "libx264",
                        "-preset", "ultrafast", "-crf", "35", "-pix_fmt", "yuv420p", str(tmp)], check=True)
        tmp.rename(path)
    return path


def make_png(folder: Path, w: int, h: int, prompt: str) -> Path:
    from PIL import Image, ImageDraw

    path = folder / f"i{w}x{h}-{uuid.uuid4().hex[:6]}.png"
    img = Image.new("RGB", (w, h), (40, 60, 90))
    draw = ImageDraw.Draw(img)
    draw.rectangle([w // 8, h // 4, w * 7 // 8, h * 3 // 4], fill=(200, 150, 90))
    draw.text((10, 10), prompt[:40].encode("ascii", "replace").decode(), fill=(255, 255, 255))
    img.save(path)
    return path


def make_wav(folder: Path, seconds: float, rate: int = 24000) -> Path:
    import math

    path = folder / f"a{seconds:g}-{uuid.uuid4().hex[:6]}.wav"
    n = int(seconds * rate)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(b"".join(int(8000 * math.sin(2 * math.pi * 220 * i / rate)).to_bytes(2, "little", signed=True)
                               for i in range(n)))
    return path


class JsonHandler(BaseHTTPRequestHandler):
    server: FakeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw) if raw else None

    def send_json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def record(self, body: Any) -> None:
        with self.server.lock:
            self.server.requests.append({"method": self.command, "path": self.path, "body": body,
                                         "headers": {k.lower(): v for k, v in self.headers.items()}})

    def _authorised(self) -> bool:  # each provider checks its own credentials and answers its own 401
        raise NotImplementedError

    def polled_task(self, pattern: str, not_found: Any) -> Task | None:
        """The GET prologue every provider shares: serve result files, record the request, check the
        credentials, find the task named by `pattern`'s group; answers 404 with `not_found` when unknown."""
        if self.serve_file():
            return None
        self.record(None)
        if not self._authorised():
            return None
        m = re.fullmatch(pattern, self.path)
        task = self.server.tasks.get(m.group(1)) if m else None
        if task is None:
            self.send_json(404, not_found)
        return task

    def serve_file(self) -> bool:
        if not self.path.startswith("/files/"):
            return False
        token = self.path[len("/files/"):].split("?")[0].rsplit(".", 1)[0]
        entry = self.server.files.get(token)
        if entry is None or time.time() > entry[1]:
            data = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
            self.send_response(403)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return True
        data = entry[0].read_bytes()
        with self.server.lock:
            self.server.downloads += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return True
