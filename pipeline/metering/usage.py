"""The usage record: what one stage execution consumed, whatever its outcome (DESIGN: Metering contract)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

AI_UNITS = ("token", "second", "image", "char", "call", "step", "frame")


class AIUsage(BaseModel):
    """One AI-tool quantity reported by a backend, e.g. tokens in from an LLM API."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    tool: str  # price-table key, e.g. "deepseek-chat:input", "wan2.1-t2v-1.3b", "espeak-ng"
    unit: str  # one of AI_UNITS
    quantity: float


class UsageRecord(BaseModel):
    """One record per stage execution (success, failure and every retry attempt)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    job: str  # job id (content hash of the resolved job)
    drama: str
    episode: str
    stage: str
    shot: str | None = None
    backend: str
    attempt: int = 1
    status: str = "ok"  # ok | failed | cached
    error: str | None = None
    node: str = ""
    gpu_model: str | None = None
    gpus: float = 0.0
    cpus: float = 1.0
    started: str  # ISO-8601 UTC
    ended: str
    wall_s: float
    cpu_s: float
    gpu_s: float = 0.0  # gpus × wall_s
    gpu_energy_j: float | None = None
    gpu_energy_reason: str | None = None  # why energy is null (no NVML, no GPU, ...)
    peak_rss: int = 0  # bytes
    ai_usage: tuple[AIUsage, ...] = ()
    cache_hit: bool = False
    idempotency_key: str = ""  # job/stage/shot/attempt: a retried attempt is never billed twice
    meta: dict[str, str] = Field(default_factory=dict)
