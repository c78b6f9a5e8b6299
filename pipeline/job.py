"""Episode job and profile schema: YAML → validated, profile-merged, frozen `Job` (with dotted overrides)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import unicodedata
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline import safe_io
from pipeline.errors import JobError, UserError
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


def custom_resources(v: dict[str, float]) -> dict[str, float]:
    """A stage's Ray custom resources: names other than Ray's own, each asked in an amount > 0."""
    for name, amount in v.items():
        if name in ("CPU", "GPU", "memory", "object_store_memory"):
            raise ValueError(f"{name!r} is not a custom resource: use num_cpus / num_gpus")
        if not amount > 0:
            raise ValueError(f"{name}: ask for an amount > 0, e.g. {{{name}: 1}}")
    return v


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
        return custom_resources(v)

    @model_validator(mode="after")
    def _pool_size(self) -> "BackendSettings":
        if self.max_actors is not None and self.max_actors < self.actors:
            raise ValueError(f"max_actors ({self.max_actors}) must be >= actors ({self.actors}): the pool starts "
                             "at `actors` replicas and grows up to `max_actors`")
        return self


class ScriptSettings(BackendSettings):
    backend: str = "fountain"


class IdentitySettings(_Frozen):
    """The storyboard's identity check (docs/identity.md): each keyframe's faces against the reference faces
    of the shot's characters; below `min_similarity` the keyframe is re-rendered with another seed, up to
    `max_tries` renders in all, and a shot that never passes is flagged for review."""

    backend: str = "arcface-tiny"  # models/registry.py, stage "identity"
    options: dict[str, Any] = Field(default_factory=dict)
    min_similarity: float = Field(0.5, ge=-1, le=1)  # cosine similarity of face embeddings
    max_tries: int = Field(3, ge=1, le=10)  # renders per shot, the first included


class StoryboardSettings(BackendSettings):
    backend: str = "procedural"
    width: int = Field(1080, ge=16, le=4096)
    height: int = Field(1920, ge=16, le=8192)
    identity: IdentitySettings | None = None  # off unless set (a profile or the job turns it on)


class VideoSettings(BackendSettings):
    backend: str = "camera-move"
    width: int = Field(1080, ge=16, le=4096)
    height: int = Field(1920, ge=16, le=8192)
    fps: int = Field(24, ge=1, le=60)


class TranslateSettings(BackendSettings):
    backend: str = "none"
    glossary: dict[str, dict[str, str]] = Field(default_factory=dict)  # lang -> {source: target}


class DubSettings(BackendSettings):
    """The dub stage: its TTS backend and hosting, the characters' voices, and pacing (how lines sit in a
    shot). An old `stages.tts` section (backend, options, voices, hosting) is read into this one."""

    backend: str = "espeak-ng"
    voices: dict[str, dict[str, str | int | float]] = Field(default_factory=dict)  # character -> voice hints
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
    # how the edit task is hosted on Ray (it runs no model: a plain task each episode, ffmpeg on CPU); these
    # place it and are not part of its cache key, e.g. resources: {cpu_group: 1} pins it to a KubeRay group
    num_cpus: float = Field(1, ge=0, le=1024)
    resources: dict[str, float] = Field(default_factory=dict)

    HOSTING: ClassVar[frozenset[str]] = frozenset({"num_cpus", "resources"})

    @field_validator("resources")
    @classmethod
    def _resources(cls, v: dict[str, float]) -> dict[str, float]:
        return custom_resources(v)

    @property
    def num_gpus(self) -> float:
        return 0.0

    def content(self) -> dict[str, Any]:
        """The settings that shape the episode (its cache key and ProduceID): all but the hosting."""
        return self.model_dump(exclude=set(self.HOSTING))

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

    @field_validator("label_text")
    @classmethod
    def _label(cls, v: str) -> str:
        """The visible label must be seen and say what it is: no invisible (zero-width, bidi) characters, no
        drawtext expansion (`%{…}`, a backslash) that would print something else, and it names AI."""
        hidden = sorted({f"U+{ord(c):04X}" for c in v if unicodedata.category(c) in ("Cf", "Co", "Cs", "Cn")})
        if hidden:
            raise ValueError(f"must not contain invisible characters ({', '.join(hidden[:4])}); the visible AI "
                             "label is required (GB 45438-2025)")
        if "%" in v or "\\" in v:
            raise ValueError("must not contain % or a backslash (ffmpeg drawtext would expand them); write the "
                             "label as plain text, e.g. AI生成")
        if not re.search(r"(?<![A-Za-z])AI(?![a-z])|人工智能|人工智慧", v):  # AI生成, AIGC, AI-generated
            raise ValueError("must say the episode is AI-generated (GB 45438-2025), e.g. AI生成, 人工智能生成 or "
                             "AI-generated")
        return v


class Stages(_Frozen):
    script: ScriptSettings = ScriptSettings()
    storyboard: StoryboardSettings = StoryboardSettings()
    video: VideoSettings = VideoSettings()
    translate: TranslateSettings = TranslateSettings()
    dub: DubSettings = DubSettings()
    edit: EditSettings = EditSettings()

    @model_validator(mode="before")
    @classmethod
    def _legacy_tts(cls, data: Any) -> Any:
        return legacy_stages(data, "stages") if isinstance(data, dict) else data

    def backends(self) -> dict[str, BackendSettings]:
        """The sections that pick a backend (script, storyboard, video, dub, translate), in field order."""
        return {name: value for name in type(self).model_fields
                if isinstance(value := getattr(self, name), BackendSettings)}

    def placements(self) -> dict[str, "BackendSettings | EditSettings"]:
        """Every section that places Ray work (num_cpus, resources): the backends' and the edit's."""
        return {**self.backends(), "edit": self.edit}


def legacy_stages(stages: dict[str, Any], where: str) -> dict[str, Any]:
    """`stages` with an old `tts` section (the dub stage's backend, options, voices and hosting before they
    moved to `stages.dub`) read into `dub`. A key set differently in both is an error naming both."""
    if "tts" not in stages:
        return stages
    tts, dub = stages["tts"], stages.get("dub", {})
    if not isinstance(tts, dict) or not isinstance(dub, dict):
        bad = "tts" if not isinstance(tts, dict) else "dub"
        raise ValueError(f"{where}.{bad}: expected a mapping of settings, got {type(stages[bad]).__name__}")
    clash = sorted(k for k in tts if k in dub and dub[k] != tts[k])
    if clash:
        raise ValueError(f"{where}.tts.{clash[0]} and {where}.dub.{clash[0]} are both set, differently: the "
                         f"dub stage's settings live under {where}.dub; remove the old {where}.tts section")
    rest = {k: v for k, v in stages.items() if k != "tts"}
    return {**rest, "dub": {**dub, **tts}}


class Budget(_Frozen):
    max_cny: Decimal | None = None  # stop cleanly before a stage that would exceed it

    @field_validator("max_cny", mode="before")
    @classmethod
    def _exact(cls, v: Any) -> Any:
        if isinstance(v, float):
            raise ValueError("write money as a string, e.g. max_cny: \"50.00\" in YAML (a YAML float is "
                             "inexact); on the command line budget.max_cny=50.00 is read exactly")
        try:
            amount = None if v is None else Decimal(str(v))
        except InvalidOperation as exc:
            raise ValueError(f"not a decimal amount: {v!r}") from exc
        if amount is not None and (not amount.is_finite() or amount < 0):
            raise ValueError("must be a finite amount >= 0, e.g. \"50.00\"")
        if amount is not None:
            amount = bounded(amount, "max_cny")  # the documented input range of money (pipeline/money.py)
        return amount


class CastSettings(_Frozen):
    """Character sheets (the cast stage, docs/series.md)."""

    sheets: bool | None = None  # make a sheet for each character without reference images; default: series jobs
    require_approval: bool = False  # stop before the storyboard until a person approved every generated sheet


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
    series: Path | None = None  # the series bible (characters declared once), beside the job or one folder up
    output_dir: Path = Path("out")
    cache_dir: Path = Path(".cache/microdrama")
    seed: int = Field(1234, ge=0, le=2**63 - 1)
    budget: Budget = Budget()
    cast: CastSettings = CastSettings()
    stages: Stages = Stages()
    delivery: list[str] = Field(default_factory=list, max_length=16)  # platform presets (configs/delivery)
    treatment: bool | None = None  # the screenplay: file is a treatment (None: it says so itself, Format: treatment)
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

    @field_validator("screenplay", "series", "output_dir", "cache_dir")
    @classmethod
    def _path(cls, v: Path | None) -> Path | None:
        if v is not None and ("\x00" in str(v) or len(str(v)) > 1024):
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
        for key, default in (("series", None), ("cast", CastSettings().model_dump(mode="json"))):
            if data[key] == default:  # fields added later: a job without them keeps its hash
                del data[key]
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


def money_paths(model: type[BaseModel] | None = None, prefix: str = "") -> frozenset[str]:
    """Dotted paths of the job's Decimal (money) fields, e.g. {"budget.max_cny"}, read from the schema."""
    model = model or Job
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        args = getattr(annotation, "__args__", ()) or (annotation,)
        if Decimal in args:
            paths.add(prefix + name)
        for arg in args:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                paths |= money_paths(arg, f"{prefix}{name}.")
    return frozenset(paths)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict, copying as it goes.

    A money field's value (`budget.max_cny=0.5`) is its text, handed to Decimal as written: never a float."""
    out = json.loads(json.dumps(data, default=str))
    money = money_paths()
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
        if key in money:
            node[parts[-1]] = _money_text(raw)
            continue
        try:  # the value as YAML, through the bounded loader (dates stay text, no 5,000-digit numbers)
            node[parts[-1]] = yaml.load(raw, Loader=safe_io.BoundedLoader)  # noqa: S506 - a SafeLoader
        except (yaml.constructor.ConstructorError, yaml.composer.ComposerError) as exc:
            raise JobError(f"override {_short(item, 60)}: {exc.problem}") from None
        except yaml.YAMLError:  # not YAML at all: the text itself
            node[parts[-1]] = raw
    return out


def _money_text(raw: str) -> str | None:
    """The override's text for a money field: quotes around it dropped, `null`/`~`/empty meaning none."""
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1].strip()
    return None if text in ("", "null", "Null", "NULL", "~") else text


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
    data = _read_yaml(path, "profile")
    if isinstance(data.get("stages"), dict):
        data["stages"] = _legacy(data["stages"], f"profile {name}: ")
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise JobError(_format_errors(exc, prefix=f"profile {name}: ")) from None


def _legacy(stages: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    try:
        return legacy_stages(stages, "stages")
    except ValueError as exc:
        raise JobError(f"{prefix}{exc}") from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _merge_stages(profile: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """The job's stage sections over the profile's. A section whose job picks another backend than the
    profile's takes only the job's `options`: the profile's were written for its own backend."""
    merged = _merge(profile, job)
    for section, over in job.items():
        base = profile.get(section)
        if (isinstance(over, dict) and isinstance(base, dict) and "backend" in over
                and over["backend"] != base.get("backend")):
            merged[section] = {**merged[section], "options": over.get("options") or {}}
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
    stages = _merge_stages(profile.stages, _legacy(data.get("stages") or {}))
    data = {**data, "stages": stages, "job_dir": str(path.resolve().parent), **_state_paths(data)}
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        raise JobError(_format_errors(exc)) from None
    problems = validate(job)
    if problems:
        raise JobError(problems)
    return job


def _state_paths(data: dict[str, Any]) -> dict[str, str]:
    """With $MICRODRAMA_STATE_DIR set, relative output_dir and cache_dir (given or default) live under it
    (pipeline/state.py); without it they stay relative to the current directory, as always."""
    from pipeline import state

    if state.state_dir() is None:
        return {}
    fields = {"output_dir": "out", "cache_dir": str(state.CACHE_DIR)}
    return {name: str(state.state_path(data.get(name) or default)) for name, default in fields.items()
            if data.get(name) is None or isinstance(data.get(name), str)}  # other types: the schema says why


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
    return problems + _other_profile_problems(job)


def _other_profile_problems(job: Job) -> list[str]:
    """An episode folder already holding another profile's episode is not silently replaced (a `tiny` run
    over a `preview-cpu` one): the job says where else to publish, or the folder is removed first."""
    manifest = job.out_path / "manifest.json"
    try:
        before = json.loads(safe_io.read_text(manifest, "episode manifest", max_bytes=64 << 20)).get("profile")
    except (OSError, ValueError, AttributeError, UserError):
        return []  # no episode there yet, or not one of ours: publishing replaces nothing we made
    if before is None or before == job.profile:
        return []
    return [f"output_dir: {job.out_path} holds a {before!r} episode and this job renders profile {job.profile!r}; "
            f"publish it elsewhere (e.g. output_dir={job.output_dir / job.profile}) or delete {job.out_path} to "
            "replace it"]


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
        elif not SLUG.fullmatch(name):
            problems.append(f"delivery[{i}]: {name!r} is neither a preset name nor a .yaml file beside the job")
            continue
        try:
            delivery.load(name, job.job_dir)
        except ValueError as exc:
            problems.append(f"delivery[{i}]: {exc}")
    return problems


def _options_problems(section: str, settings: BackendSettings) -> list[str]:
    """`stages.<section>.options` against the backend's declared schema (models/options.py): unknown keys,
    numbers out of range, choices, URLs, text. A backend whose package is missing here is checked where it
    runs (preflight names the package)."""
    from models import options
    from models.registry import BACKENDS, BackendError, resolve

    stage = section  # the registry's stage of a settings section (stages.dub: the dub backends)
    if settings.backend not in BACKENDS.get(stage, {}):
        return []  # named by validate()
    try:
        cls = resolve(stage, settings.backend)
    except BackendError:
        return []
    return options.problems(section, settings.backend, cls, settings.options)


def _series_problems(job: Job) -> list[str]:
    """The series bible loads and checks (pipeline/series.py); approvals need one."""
    from pipeline import series

    if job.series is None:
        return ["cast.require_approval: approvals are kept per series; add series: <bible>.yaml to the job "
                "(docs/series.md)"] if job.cast.require_approval else []
    try:
        series.for_job(job)
    except JobError as exc:
        return exc.problems
    return []


def _label_fit_problems(job: Job) -> list[str]:
    """The visible AI label must fit its place in the frame (pipeline/layout.py) at a readable size."""
    from pipeline import layout
    from pipeline.stages.edit import font_file

    e = job.stages.edit
    try:
        fits = layout.label_font_px(e.label_text, font_file(e.font)) is not None
    except (RuntimeError, OSError):  # a missing font: preflight names it
        return []
    if fits:
        return []
    return [f"stages.edit.label_text: {e.label_text!r} does not fit the label's place (450 px wide, top "
            f"right) even at {layout.LABEL_MIN_FONT_PX} px; shorten it, e.g. AI生成"]


def _or_default(value: Any, default: float) -> Any:
    return default if value is None else value


def _move_problems(job: Job) -> list[str]:
    """A panel that draws text keeps it clear of any camera move up to its `move_margin`
    (pipeline/layout.py): a larger move would crop it or carry it under the subtitles or the AI label."""
    sb, video = job.stages.storyboard, job.stages.video
    if sb.backend != "procedural" or video.backend != "camera-move":
        return []
    try:  # null is the backend's default; anything else the schemas refuse is named by them
        margin = float(_or_default((sb.options or {}).get("move_margin"), 0.10))
        amount = float(_or_default((video.options or {}).get("amount"), 0.10))
    except (TypeError, ValueError, AttributeError):
        return []
    if not (math.isfinite(margin) and math.isfinite(amount)):
        return []
    if amount > margin + 1e-9:
        return [f"stages.video.options.amount: {amount:g} moves the panel further than its text is kept "
                f"clear for (stages.storyboard.options.move_margin {margin:g}); lower amount or raise "
                f"move_margin to {amount:g}"]
    return []


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
    problems += _series_problems(job)
    for section, settings in job.stages.backends().items():
        problems += literal_secret_problems(settings.options, f"stages.{section}.options")
    identity = job.stages.storyboard.identity
    if identity is not None:
        problems += literal_secret_problems(identity.options, "stages.storyboard.identity.options")
        if identity.backend not in BACKENDS.get("identity", {}):
            problems.append(f"stages.storyboard.identity.backend: unknown backend {identity.backend!r}; choose one "
                            f"of: {', '.join(sorted(BACKENDS.get('identity', {})))}")
        else:
            from models import options
            from models.registry import BackendError, resolve

            try:
                problems += options.problems("storyboard.identity", identity.backend,
                                             resolve("identity", identity.backend), identity.options)
            except BackendError:
                pass  # a missing package: preflight names it where the check runs
    for stage in ("storyboard", "video"):
        s = getattr(job.stages, stage)
        if abs(s.width / s.height - 9 / 16) > 0.03 * 9 / 16:
            problems.append(f"stages.{stage}: {s.width}x{s.height} is not 9:16 (within 3%); use e.g. "
                            f"1080x1920, 720x1280, 480x832 or 144x256")
    e = job.stages.edit
    if (e.width, e.height) != (1080, 1920):
        problems.append(f"stages.edit: output must be 1080x1920 (9:16), got {e.width}x{e.height}")
    for stage, settings in job.stages.backends().items():
        if settings.backend not in BACKENDS.get(stage, {}):
            problems.append(f"stages.{stage}.backend: unknown backend {settings.backend!r}; choose one of: "
                            f"{', '.join(sorted(BACKENDS.get(stage, {})))}")
        elif stage == "dub":
            from models.tts.voices import voice_problems

            problems += voice_problems(settings.backend, settings.voices, "stages.dub.voices")
            for name, hints in settings.voices.items():
                if isinstance(hints.get("reference"), str):
                    field = f"stages.dub.voices.{name}.reference"
                    clip, err = resolve_in(job.job_dir, Path(hints["reference"]), field)
                    if err or not _is_file(clip):
                        problems.append(err or f"{field}: file not found: {clip}; give a 3–15 s mono clip "
                                               "of the character speaking, beside the job")
                    if not hints.get("transcript"):
                        problems.append(f"stages.dub.voices.{name}.transcript: required with a reference "
                                        "clip: exactly what the clip says")
    for section, settings in job.stages.backends().items():
        problems += _options_problems(section, settings)
    problems += _delivery_problems(job)
    problems += _move_problems(job)
    problems += _label_fit_problems(job)
    dub_langs = job.stages.dub.languages or job.languages
    extra = [x for x in dub_langs if x not in job.languages]
    if extra:
        problems.append(f"stages.dub.languages: {extra} not in languages {job.languages}")
    return problems
