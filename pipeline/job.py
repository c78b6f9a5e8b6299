"""Episode job and profile schema: YAML → validated, profile-merged, frozen `Job` (with dotted overrides)."""
from __future__ import annotations

import hashlib
import json
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import JobError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
LANGS = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BackendSettings(_Frozen):
    """Which backend a model-using stage runs and how it is hosted on Ray."""

    backend: str
    options: dict[str, Any] = Field(default_factory=dict)
    actors: int = Field(1, ge=1, le=64)
    num_gpus: float = Field(0, ge=0)
    num_cpus: float = Field(1, ge=0)
    max_retries: int = Field(2, ge=0, le=10)


class ScriptSettings(BackendSettings):
    backend: str = "fountain"


class StoryboardSettings(BackendSettings):
    backend: str = "procedural"
    width: int = Field(1080, ge=16, le=4096)
    height: int = Field(1920, ge=16, le=8192)


class VideoSettings(BackendSettings):
    backend: str = "camera-move"
    width: int = Field(1080, ge=16, le=4096)
    height: int = Field(1920, ge=16, le=8192)
    fps: int = Field(24, ge=1, le=60)


class TTSSettings(BackendSettings):
    backend: str = "espeak-ng"
    voices: dict[str, dict[str, str]] = Field(default_factory=dict)  # character -> voice hints


class TranslateSettings(BackendSettings):
    backend: str = "none"
    glossary: dict[str, dict[str, str]] = Field(default_factory=dict)  # lang -> {source: target}


class DubSettings(_Frozen):
    """Pacing: how lines sit in a shot."""

    languages: list[str] | None = None  # audio tracks; default: every job language
    lead_in_s: float = Field(0.4, ge=0, le=5)
    gap_s: float = Field(0.25, ge=0, le=5)
    tail_s: float = Field(0.6, ge=0, le=5)
    min_shot_s: float = Field(1.5, gt=0, le=60)
    max_stretch: float = Field(1.15, ge=1.0, le=2.0)  # time-stretch limit before the shot is extended


class EditSettings(_Frozen):
    width: int = 1080
    height: int = 1920
    crf: int = Field(20, ge=0, le=51)
    preset: str = "veryfast"
    loudness_lufs: float = Field(-14.0, ge=-40, le=-5)
    true_peak_db: float = Field(-1.5, ge=-9, le=0)
    label_text: str = "AI生成"
    label_seconds: float = Field(3.0, ge=2.0)
    burn_subtitles: bool = True
    font: str = "Noto Sans CJK SC"
    audio_bitrate: str = "160k"


class Stages(_Frozen):
    script: ScriptSettings = ScriptSettings()
    storyboard: StoryboardSettings = StoryboardSettings()
    video: VideoSettings = VideoSettings()
    tts: TTSSettings = TTSSettings()
    translate: TranslateSettings = TranslateSettings()
    dub: DubSettings = DubSettings()
    edit: EditSettings = EditSettings()


class Budget(_Frozen):
    max_cny: Decimal | None = None  # stop cleanly before a stage that would exceed it

    @field_validator("max_cny", mode="before")
    @classmethod
    def _exact(cls, v: Any) -> Any:
        if isinstance(v, float):
            raise ValueError("write money as a string, e.g. \"50.00\" (floats are inexact)")
        try:
            return None if v is None else Decimal(str(v))
        except InvalidOperation as exc:
            raise ValueError(f"not a decimal amount: {v!r}") from exc


class Profile(_Frozen):
    name: str
    description: str = ""
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Job(_Frozen):
    """A resolved episode job: what to make, from which screenplay, with which backends."""

    drama: str
    episode: str
    title: str = ""
    company: str = ""
    languages: list[str] = Field(default_factory=lambda: ["zh"], min_length=1)
    profile: str = "preview-cpu"
    screenplay: Path
    output_dir: Path = Path("out")
    cache_dir: Path = Path(".cache/microdrama")
    seed: int = 1234
    budget: Budget = Budget()
    stages: Stages = Stages()
    job_dir: Path = Path(".")  # folder of the job file; relative paths resolve against it

    @field_validator("drama", "episode")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not SLUG.match(v):
            raise ValueError(f"{v!r} must be a slug: lowercase letters, digits, '-', '_' or '.'")
        return v

    @field_validator("languages")
    @classmethod
    def _langs(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if not LANGS.match(x)]
        if bad:
            raise ValueError(f"not language codes: {bad}; use e.g. [zh, en]")
        if len(set(v)) != len(v):
            raise ValueError("languages repeat")
        return v

    @property
    def primary_language(self) -> str:
        return self.languages[0]

    @property
    def out_path(self) -> Path:
        return self.output_dir / self.drama / self.episode

    def config_hash(self) -> str:
        data = self.model_dump(mode="json", exclude={"job_dir", "output_dir", "cache_dir"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise JobError(f"{what}: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise JobError(f"{path}:{where}: malformed YAML: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError:
        raise JobError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, dict):
        raise JobError(f"{path}: expected a mapping of job fields at the top level")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict, copying as it goes."""
    out = json.loads(json.dumps(data, default=str))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise JobError(f"override {item!r}: expected KEY=VALUE, e.g. stages.video.fps=24")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise JobError(f"override {item!r}: {part} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return out


def load_profile(name: str) -> Profile:
    path = Path(name) if name.endswith((".yaml", ".yml")) else CONFIGS / "profiles" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIGS / "profiles").glob("*.yaml"))
        raise JobError(f"profile: unknown profile {name!r}; choose one of: {', '.join(known)}")
    try:
        return Profile.model_validate(_read_yaml(path, "profile"))
    except ValidationError as exc:
        raise JobError(_format_errors(exc, prefix=f"profile {name}: ")) from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling"
        elif err["type"] == "missing":
            msg = "required field is missing"
        got = err.get("input")
        tail = f", got {got!r}" if err["type"] not in ("missing", "extra_forbidden") and not isinstance(
            got, dict) and got is not None else ""
        problems.append(f"{prefix}{loc}: {msg}{tail}")
    return problems


def load_job(path: str | Path, overrides: list[str] | None = None) -> Job:
    """Load, merge with its profile, apply overrides and validate a job; raises JobError with every problem."""
    path = Path(path)
    data = apply_overrides(_read_yaml(path, "job"), overrides or [])
    profile = load_profile(str(data.get("profile", "preview-cpu")))
    stages = _merge(profile.stages, data.get("stages") or {})
    data = {**data, "stages": stages, "job_dir": str(path.resolve().parent)}
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        raise JobError(_format_errors(exc)) from None
    problems = validate(job)
    if problems:
        raise JobError(problems)
    return job


def resolve_in(base: Path, rel: Path, field: str) -> tuple[Path | None, str | None]:
    """Resolve a job path against its folder, refusing paths that escape it."""
    full = (base / rel).resolve()
    if base.resolve() not in (full, *full.parents):
        return None, f"{field}: {rel} is outside the job's folder {base}; keep inputs beside the job file"
    return full, None


def validate(job: Job) -> list[str]:
    """Cross-field and filesystem checks, collecting every problem (STYLE item 4)."""
    from models.registry import BACKENDS

    problems: list[str] = []
    screenplay, err = resolve_in(job.job_dir, job.screenplay, "screenplay")
    if err:
        problems.append(err)
    elif not screenplay.is_file():
        problems.append(f"screenplay: file not found: {screenplay}")
    for stage in ("storyboard", "video"):
        s = getattr(job.stages, stage)
        if abs(s.width / s.height - 9 / 16) > 0.03 * 9 / 16:
            problems.append(f"stages.{stage}: {s.width}x{s.height} is not 9:16 (within 3%); use e.g. "
                            f"1080x1920, 720x1280, 480x832 or 144x256")
    e = job.stages.edit
    if (e.width, e.height) != (1080, 1920):
        problems.append(f"stages.edit: output must be 1080x1920 (9:16), got {e.width}x{e.height}")
    registry_stage = {"script": "script", "storyboard": "storyboard", "video": "video", "tts": "tts",
                      "translate": "translate"}
    for stage, reg in registry_stage.items():
        name = getattr(job.stages, stage).backend
        if name not in BACKENDS.get(reg, {}):
            problems.append(f"stages.{stage}.backend: unknown backend {name!r}; choose one of: "
                            f"{', '.join(sorted(BACKENDS.get(reg, {})))}")
    dub_langs = job.stages.dub.languages or job.languages
    extra = [x for x in dub_langs if x not in job.languages]
    if extra:
        problems.append(f"stages.dub.languages: {extra} not in languages {job.languages}")
    return problems
