"""What every hosted-provider client shares: its errors, rate-limit backoff, task polling and result download.

One module per provider (dashscope.py, ark.py, kling.py) owns that provider's auth, request shape, task
submit/poll and the usage it bills; backends under models/<family>/ use them. A provider call is never
retried after the provider may have accepted (and billed) it unless the ledger says which task to poll
instead (pipeline/metering/tasks.py): a 429 is retried because the provider refused the request.
"""
from __future__ import annotations

import hashlib
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline import secrets


class ProviderError(RuntimeError):
    """A provider answered with an error, or with something that is not what was asked for.

    `ai_usage` carries what the provider billed for the failed call (a task that ran and produced a
    result we rejected is still billed): the orchestrator meters it on the failed attempt's record."""

    def __init__(self, message: str, *, ai_usage: tuple[dict, ...] = (), task_id: str | None = None):
        super().__init__(secrets.redact(message))
        self.ai_usage, self.task_id = tuple(ai_usage), task_id


class RateLimited(ProviderError):
    """HTTP 429 (or the provider's throttling code) and still so after the allowed retries."""


class TaskFailed(ProviderError):
    """The provider's task ended FAILED / CANCELED / UNKNOWN."""


class ContentRefused(ProviderError):
    """The provider's content moderation refused the prompt or the input image (not retried: the same
    prompt gets the same verdict)."""

    retryable = False


class WrongResult(ProviderError):
    """The result has the wrong size or length: rejected, billed as the provider bills it (not retried
    automatically: a retry would pay again)."""

    retryable = False


class SubmitUncertain(ProviderError):
    """A submission timed out or lost its connection after it was sent: the provider may have accepted
    (and will bill) it without us learning the task id. Not retried automatically — that could pay twice."""

    retryable = False


class PollTimeout(ProviderError):
    """The task was still running when `timeout_s` ran out (it stays recorded: a re-run polls it again)."""


def refused(shot: str | None, prompt: str, provider: str, detail: str, **kw: Any) -> ContentRefused:
    """The moderation error people read: which shot, which prompt text, and what to change."""
    where = f"shot {shot}" if shot else "this request"
    return ContentRefused(f"{provider} content moderation refused {where}: {detail}; prompt was: "
                          f"{prompt[:300]!r} — reword the shot's action/description and re-run", **kw)


@dataclass
class Limits:
    """Per-provider concurrency and backoff: at most `concurrency` requests in flight per process, 429s
    retried `retries` times waiting Retry-After (or base × 2^n, capped, with jitter)."""

    concurrency: int = 2
    retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    poll_s: float = 2.0
    timeout_s: float = 900.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)


_SEMAPHORES: dict[str, threading.BoundedSemaphore] = {}
_SEM_LOCK = threading.Lock()


def slot(provider: str, concurrency: int) -> threading.BoundedSemaphore:
    """The process-wide semaphore capping one provider's requests in flight."""
    with _SEM_LOCK:
        key = f"{provider}:{concurrency}"
        if key not in _SEMAPHORES:
            _SEMAPHORES[key] = threading.BoundedSemaphore(max(1, int(concurrency)))
        return _SEMAPHORES[key]


def retry_after(headers: Any) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form; HTTP dates are rare for APIs)."""
    if not headers:
        return None
    value = None
    for k, v in dict(headers).items():
        if str(k).lower() == "retry-after":
            value = v
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def backoff(limits: Limits, attempt: int, hinted: float | None) -> float:
    """How long to wait before retry `attempt` (0-based): the server's hint, else exponential + jitter."""
    if hinted is not None:
        return min(hinted, limits.max_backoff_s)
    return min(limits.max_backoff_s, limits.backoff_s * (2 ** attempt)) * (0.75 + random.random() / 2)


def with_backoff(provider: str, limits: Limits, send: Callable[[], Any],
                 throttled: Callable[[Any], float | None]) -> Any:
    """Call `send()` holding a concurrency slot. `throttled(result_or_exception)` returns None when the
    call was not rate limited, else the Retry-After seconds (a negative number: no hint): then wait and
    resend. A 429 means the provider refused the request, so resending cannot pay twice."""
    for attempt in range(limits.retries + 1):
        with slot(provider, limits.concurrency):
            try:
                result: Any = send()
            except Exception as exc:  # an SDK that raises on 429 (Ark, httpx)
                result = exc
        hint = throttled(result)
        if hint is None:
            if isinstance(result, Exception):
                raise result
            return result
        if attempt < limits.retries:
            limits.sleep(backoff(limits, attempt, hint if hint >= 0 else None))
    raise RateLimited(f"{provider}: still rate limited (HTTP 429) after {limits.retries} retries; lower "
                      f"stages.<stage>.options.concurrency or ask the provider for a higher quota")


@dataclass(frozen=True)
class Download:
    path: str
    sha256: str
    bytes: int
    url: str


def download(url: str, dest: Path, *, timeout_s: float = 120.0) -> Download:
    """Fetch a result URL at once (provider URLs expire, typically within 24 h) and digest it."""
    import httpx

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    h, size = hashlib.sha256(), 0
    try:
        with httpx.stream("GET", url, timeout=timeout_s, follow_redirects=True) as resp:
            if resp.status_code != 200:
                raise ProviderError(f"result download {url.split('?')[0]}: HTTP {resp.status_code} "
                                    f"(result URLs expire: the task's result is gone)")
            with dest.open("wb") as f:
                for chunk in resp.iter_bytes():
                    h.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
    except httpx.HTTPError as exc:
        raise ProviderError(f"result download {url.split('?')[0]}: {exc}") from None
    return Download(str(dest), h.hexdigest(), size, url.split("?")[0])
