"""Episode job and profile schema: YAML → validated, profile-merged, frozen `Job` (with dotted overrides)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline import safe_io
from pipeline.errors import JobError
from pipeline.money import bounded
from pipeline.secrets import literal_secret_problems

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
LANGS = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
MAX_JOB_BYTES = 256 * 1024  # a job or profile file; real ones are < 2 KB
MAX_JOB_VALUES = 20_000  # values in a job after YAML aliases are expanded (an alias bomb stops here)
MAX_JOB_DEPTH = 32
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")  # `ffmpeg -h encoder=libx264`: the edit stage encodes with libx264
AUDIO_BITRATE = re.compile(r"[1-9][0-9]{1,2}k")  # AAC kbit/s, e.g. 160k; checked to 32k..512k below


def _plain_text(v: str) -> str:
    """Text that reaches ffmpeg (drawtext, metadata, subtitles): no NUL or other control characters."""
    bad = sorted({f"U+{ord(c):04X}" for c in v if unicodedata.category(c) == "Cc"})
    if bad:
        raise ValueError(f"must not contain control characters ({', '.join(bad[:4])}: a newline, tab or NUL); "
                         "write it on one line")
    return v


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class BackendSettings(_Frozen):
    """Which backend a model-using stage runs and how it is hosted on Ray."""

    backend: str
    options: dict[str, Any] = Field(default_factory=dict)
    actors: int = Field(1, ge=1, le=64)
    # the stage's shared model pool grows up to this many replicas while its queue is deeper than the idle
    # replicas (queue-depth autoscaling), and shrinks back to `actors` (pipeline/pools.py); None: fixed size
    max_actors: int | None = Field(None, ge=1, le=256)
    num_gpus: float = Field(0, ge=0, le=64)
    num_cpus: float = Field(1, ge=0, le=1024)
    max_retries: int = Field(2, ge=0, le=10)
    # Ray custom resources the stage's tasks and actors ask for, e.g. {render: 1} to run only on nodes
    # started with `ray start --resources='{"render": 2}'` (a render farm, nodes with local weights).
    resources: dict[str, float] = Field(default_factory=dict)

    @field_validator("resources")
    @classmethod
    def _resources(cls, v: dict[str, float]) -> dict[str, float]:
        for name, amount in v.items():
            if name in ("CPU", "GPU", "memory", "object_store_memory"):
                raise ValueError(f"{name!r} is not a custom resource: use num_cpus / num_gpus")
            if not amount > 0:
                raise ValueError(f"{name}: ask for an amount > 0, e.g. {{{name}: 1}}")
        return v

    @model_validator(mode="after")
    def _pool_size(self) -> "BackendSettings":
        if self.max_actors is not None and self.max_actors < self.actors:
            raise ValueError(f"max_actors ({self.max_actors}) must be >= actors ({self.actors}): the pool starts "
                             "at `actors` replicas and grows up to `max_actors`")
        return self


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
    voices: dict[str, dict[str, str | int | float]] = Field(default_factory=dict)  # character -> hints


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
    label_text: str = Field("AI生成", min_length=1, max_length=40)  # the visible AI label (GB 45438-2025)
    label_seconds: float = Field(3.0, ge=2.0, le=3600)
    burn_subtitles: bool = True
    font: str = Field("Noto Sans CJK SC", min_length=1, max_length=100)
    audio_bitrate: str = "160k"

    @field_validator("preset")
    @classmethod
    def _preset(cls, v: str) -> str:
        if v not in X264_PRESETS:
            raise ValueError(f"not an x264 preset; choose one of: {', '.join(X264_PRESETS)}")
        return v

    @field_validator("audio_bitrate")
    @classmethod
    def _bitrate(cls, v: str) -> str:
        if not AUDIO_BITRATE.fullmatch(v) or not 32 <= int(v[:-1]) <= 512:
            raise ValueError("an AAC bitrate in kbit/s between 32k and 512k, e.g. 160k")
        return v

    @field_validator("label_text", "font")
    @classmethod
    def _text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank: the visible AI label is required (GB 45438-2025)")
        return _plain_text(v)


class Stages(_Frozen):
    script: ScriptSettings = ScriptSettings()
    storyboard: StoryboardSettings = StoryboardSettings()
    video: VideoSettings = VideoSettings()
    tts: TTSSettings = TTSSettings()
    translate: TranslateSettings = TranslateSettings()
    dub: DubSettings = DubSettings()
    edit: EditSettings = EditSettings()

    def backends(self) -> dict[str, BackendSettings]:
        """The sections that pick a backend (script, storyboard, video, tts, translate), in field order."""
        return {name: value for name in type(self).model_fields
                if isinstance(value := getattr(self, name), BackendSettings)}


class Budget(_Frozen):
    max_cny: Decimal | None = None  # stop cleanly before a stage that would exceed it

    @field_validator("max_cny", mode="before")
    @classmethod
    def _exact(cls, v: Any) -> Any:
        if isinstance(v, float):
            raise ValueError("write money as a string, e.g. \"50.00\" (floats are inexact)")
        try:
            amount = None if v is None else Decimal(str(v))
        except InvalidOperation as exc:
            raise ValueError(f"not a decimal amount: {v!r}") from exc
        if amount is not None and (not amount.is_finite() or amount < 0):
            raise ValueError("must be a finite amount >= 0, e.g. \"50.00\"")
        if amount is not None:
            amount = bounded(amount, "max_cny")  # the documented input range of money (pipeline/money.py)
        return amount


class Profile(_Frozen):
    name: str
    description: str = ""
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Job(_Frozen):
    """A resolved episode job: what to make, from which screenplay, with which backends."""

    drama: str
    episode: str
    title: str = Field("", max_length=200)
    company: str = Field("", max_length=200)
    languages: list[str] = Field(default_factory=lambda: ["zh"], min_length=1, max_length=16)
    profile: str = "preview-cpu"
    screenplay: Path
    output_dir: Path = Path("out")
    cache_dir: Path = Path(".cache/microdrama")
    seed: int = Field(1234, ge=0, le=2**63 - 1)
    budget: Budget = Budget()
    stages: Stages = Stages()
    delivery: list[str] = Field(default_factory=list, max_length=16)  # platform presets (configs/delivery)
    job_dir: Path = Path(".")  # folder of the job file; relative paths resolve against it

    @field_validator("title", "company")
    @classmethod
    def _text(cls, v: str) -> str:
        return _plain_text(v)

    @field_validator("drama", "episode")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not SLUG.fullmatch(v):  # match() would let "tiny-run\n" through ($ matches before a final newline)
            raise ValueError(f"{v!r} must be a slug: lowercase letters, digits, '-', '_' or '.'")
        return v

    @field_validator("screenplay", "output_dir", "cache_dir")
    @classmethod
    def _path(cls, v: Path) -> Path:
        if "\x00" in str(v) or len(str(v)) > 1024:
            raise ValueError("must be a path without NUL characters, at most 1024 characters long")
        return v

    @field_validator("languages")
    @classmethod
    def _langs(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if not LANGS.fullmatch(x)]
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
    """A job or profile file through the one bounded reader (regular file, size, UTF-8, duplicate keys,
    dates as text, nesting); every problem is a JobError naming the file."""
    try:
        data = safe_io.load_yaml(path, what, max_bytes=MAX_JOB_BYTES, max_values=MAX_JOB_VALUES)
    except safe_io.InputError as exc:
        raise JobError(str(exc)) from None
    if not isinstance(data, dict):
        raise JobError(f"{path}: expected a mapping of job fields at the top level")
    _check_bounded(data, path)
    return data


def _check_bounded(data: Any, path: Path) -> None:
    """Refuse documents that are huge once YAML aliases are expanded, deeply nested, or keyed by non-text."""
    count, stack = 0, [(data, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_JOB_VALUES or depth > MAX_JOB_DEPTH:
            raise JobError(f"{path}: more than {MAX_JOB_VALUES:,} values or {MAX_JOB_DEPTH} levels once YAML "
                           "aliases are expanded; a job is a few dozen settings")
        if isinstance(node, dict):
            bad = [k for k in node if not isinstance(k, (str, int, float, bool)) and k is not None]
            if bad:
                raise JobError(f"{path}: key {bad[0]!r} is not text; write keys as plain names")
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


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
        try:  # the value as YAML, through the bounded loader (dates stay text, no 5,000-digit numbers)
            node[parts[-1]] = yaml.load(raw, Loader=safe_io.BoundedLoader)  # noqa: S506 - a SafeLoader
        except (yaml.constructor.ConstructorError, yaml.composer.ComposerError) as exc:
            raise JobError(f"override {_short(item, 60)}: {exc.problem}") from None
        except yaml.YAMLError:  # not YAML at all: the text itself
            node[parts[-1]] = raw
    return out


def load_profile(name: str, job_dir: Path | None = None) -> Profile:
    """A shipped profile by name, or a profile file (`*.yaml`) beside the job — never outside its folder."""
    if name.endswith((".yaml", ".yml")):
        base = job_dir or Path.cwd()
        path, err = resolve_in(base, Path(name), "profile")
        if err:
            raise JobError(err)
    elif SLUG.fullmatch(name):
        path = CONFIGS / "profiles" / f"{name}.yaml"
    else:
        raise JobError(f"profile: {name!r} is neither a profile name nor a .yaml file beside the job")
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
        tail = f", got {_short(got)}" if err["type"] not in ("missing", "extra_forbidden") and not isinstance(
            got, dict) and got is not None else ""
        problems.append(f"{prefix}{loc}: {msg}{tail}")
    return problems


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def load_job(path: str | Path, overrides: list[str] | None = None) -> Job:
    """Load, merge with its profile, apply overrides and validate a job; raises JobError with every problem."""
    path = Path(path)
    data = apply_overrides(_read_yaml(path, "job"), overrides or [])
    _check_bounded(data, path)
    profile = load_profile(str(data.get("profile", "preview-cpu")), path.resolve().parent)
    if not isinstance(data.get("stages") or {}, dict):
        raise JobError(f"stages: expected a mapping of stage settings, got {type(data['stages']).__name__}")
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
    try:
        full = (base / rel).resolve()
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13), a name too long
        return None, f"{field}: {rel} is a symlink loop or cannot be resolved; point it at a real file"
    if base.resolve() not in (full, *full.parents):
        return None, f"{field}: {rel} is outside the job's folder {base}; keep inputs beside the job file"
    return full, None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # name too long, unreadable folder
        return False


def _writable(path: Path, field: str) -> str | None:
    """None when `path` is a writable folder or can be made one; else what is wrong and how to fix it."""
    try:
        probe = path.resolve()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            return f"{field}: {probe} is a file, not a folder; point {field} at a folder"
        if not os.access(probe, os.W_OK | os.X_OK):
            return (f"{field}: cannot write to {probe} (permission denied or read-only filesystem); "
                    f"point {field} at a writable folder")
    except (OSError, RuntimeError) as exc:  # symlink loop, name too long
        return f"{field}: {path}: {exc}"
    return None


def _folder_problems(job: Job) -> list[str]:
    """Output and cache folders must be writable, and out/<drama>/<episode> must stay inside output_dir."""
    problems = [p for p in (_writable(job.output_dir, "output_dir"), _writable(job.cache_dir, "cache_dir")) if p]
    try:
        final, root = job.out_path.resolve(), job.output_dir.resolve()
    except (OSError, RuntimeError) as exc:
        return problems + [f"output_dir: {job.out_path}: {exc}"]
    if root not in final.parents:
        problems.append(f"output_dir: {job.out_path} resolves to {final}, outside {root} (a symlink); remove it")
    return problems


def _delivery_problems(job: Job) -> list[str]:
    """Each `delivery` entry names a shipped preset or a preset file beside the job, once."""
    from pipeline.handoff import delivery

    problems = []
    if len(set(job.delivery)) != len(job.delivery):
        problems.append(f"delivery: {job.delivery} names a preset twice; list each platform once")
    for i, name in enumerate(job.delivery):
        if name.endswith((".yaml", ".yml")):
            _, err = resolve_in(job.job_dir, Path(name), f"delivery[{i}]")
            if err:
                problems.append(err)
                continue
        elif not SLUG.match(name):
            problems.append(f"delivery[{i}]: {name!r} is neither a preset name nor a .yaml file beside the job")
            continue
        try:
            delivery.load(name, job.job_dir)
        except ValueError as exc:
            problems.append(f"delivery[{i}]: {exc}")
    return problems


def validate(job: Job) -> list[str]:
    """Cross-field and filesystem checks, collecting every problem (STYLE item 4)."""
    from models.registry import BACKENDS

    problems: list[str] = []
    screenplay, err = resolve_in(job.job_dir, job.screenplay, "screenplay")
    if err:
        problems.append(err)
    elif not _is_file(screenplay):
        problems.append(f"screenplay: {screenplay} is not a regular file (a FIFO, device or folder); give a "
                        "text file" if os.path.lexists(screenplay) else f"screenplay: file not found: {screenplay}")
    problems += _folder_problems(job)
    for section, settings in job.stages.backends().items():
        problems += literal_secret_problems(settings.options, f"stages.{section}.options")
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
    problems += _delivery_problems(job)
    dub_langs = job.stages.dub.languages or job.languages
    extra = [x for x in dub_langs if x not in job.languages]
    if extra:
        problems.append(f"stages.dub.languages: {extra} not in languages {job.languages}")
    return problems
