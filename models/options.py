"""Backend options schemas: each backend class declares `Options`, a pydantic model of what it accepts under
`stages.<stage>.options` (unknown keys refused, numbers bounded, choices as enums, URLs and text checked).

`job.validate` checks a job's options against them (every problem named `stages.<stage>.options.<key>`) and
`construct` builds a backend only from validated options, so what `validate` accepts is what the backend
gets. docs/backends.md is generated from these schemas (`python -m models.options > docs/backends.md`).
"""
from __future__ import annotations

import json
import re
import unicodedata
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

DTYPES = ("float32", "float16", "bfloat16")  # models.hub.DTYPES
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,2})?")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")
_LANG = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})?|\*")


def plain_text(v: str) -> str:
    """Text that reaches a prompt, a file name or a subprocess: no NUL, newline or other control character."""
    bad = sorted({f"U+{ord(c):04X}" for c in v if unicodedata.category(c) == "Cc"})
    if bad:
        raise ValueError(f"must not contain control characters ({', '.join(bad[:4])}); write it on one line")
    return v


def _pattern(regex: re.Pattern[str], example: str) -> Any:
    def check(v: str) -> str:
        if not regex.fullmatch(v):
            raise ValueError(f"not valid here; write e.g. {example}")
        return v
    return AfterValidator(check)


def _url(v: str) -> str:
    plain_text(v)
    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc}); write e.g. https://api.example.com/v1") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in v:
        raise ValueError("must be an http(s) URL with a host, e.g. https://dashscope.aliyuncs.com/api/v1")
    return v


def _path(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be blank; give a path or leave the option out")
    return plain_text(v)


Text = Annotated[str, Field(max_length=2000, description="text"), AfterValidator(plain_text)]  # a prompt fragment or style line
Name = Annotated[str, Field(min_length=1, max_length=100, description="name"), AfterValidator(plain_text)]  # a character or voice
FilePath = Annotated[str, Field(min_length=1, max_length=1024, description="path"), AfterValidator(_path)]  # a local file or folder
Url = Annotated[str, Field(max_length=2048, description="http(s) URL"), AfterValidator(_url)]
EnvName = Annotated[str, Field(description="variable name"), _pattern(_ENV, "DASHSCOPE_API_KEY")]  # an environment variable's or entry's name
ModelId = Annotated[str, Field(description="model id"), _pattern(_MODEL, "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers or qwen-plus")]
Device = Annotated[str, Field(description="device (auto, cpu, mps, cuda, cuda:N)"), _pattern(_DEVICE, "auto, cpu, cuda or cuda:1")]
Lang = Annotated[str, Field(description="language code"), _pattern(_LANG, "en or zh-Hans")]
Dtype = Literal["float32", "float16", "bfloat16"]
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]
Characters = Annotated[dict[Name, Text], Field(max_length=200)]  # character → reference prompt


class BackendOptions(BaseModel):
    """A backend that takes no options; every other schema extends this one."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=False)


class KeyOptions(BackendOptions):
    """Where a hosted backend finds its API key (never the key itself; docs/ledger.md, "Key custody")."""

    api_key_env: EnvName | None = None  # default: the provider's variable (e.g. DASHSCOPE_API_KEY)
    secrets_file: FilePath | None = None  # a mode-600 NAME=value file
    api_key_name: EnvName | None = None  # its entry (default the variable's name)
    base_url: Url | None = None  # default: the provider's endpoint


class LimitsOptions(BackendOptions):
    """Provider limits of a hosted backend (models.providers.Limits)."""

    concurrency: int = Field(2, ge=1, le=64)  # requests in flight per process
    poll_s: float | None = Field(None, gt=0, le=600)  # seconds between status polls
    task_timeout_s: float | None = Field(None, gt=0, le=86_400)  # give up waiting for a task after this
    retries: int = Field(5, ge=0, le=20)  # throttled (429) requests retried this often
    backoff_s: float = Field(1.0, gt=0, le=300)  # the first retry's wait, doubled each time


class TaskOptions(KeyOptions, LimitsOptions):
    """A hosted task backend: where its key is and the provider's limits."""


class WeightsOptions(BackendOptions):
    """A model with local weights (never downloaded at run time)."""

    model_id: ModelId | None = None  # another checkpoint of the family (default: the backend's)
    weights_dir: FilePath | None = None  # a local folder holding the weights (else the hub cache)
    device: Device = "auto"
    tiny_seed: Seed = 0  # the weights seed of the tiny random model


class LoRAFile(BackendOptions):
    path: FilePath
    scale: float = Field(1.0, ge=-10, le=10)


class StepCache(BackendOptions):
    kind: Literal["fbc", "mag"]
    threshold: float | None = Field(None, gt=0, le=1)
    mag_ratios: list[Annotated[float, Field(ge=0, le=100)]] | None = Field(None, max_length=10_000)
    retention_ratio: float | None = Field(None, ge=0, le=1)
    max_skip_steps: int | None = Field(None, ge=0, le=100)
    calibrate: bool = False


class CompileOptions(BackendOptions):
    """torch.compile keyword arguments for the regional compile."""

    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None = None
    backend: Literal["inductor", "eager", "aot_eager", "cudagraphs"] | None = None
    fullgraph: bool | None = None
    dynamic: bool | None = None


class AccelOptions(BackendOptions):
    """Acceleration of the diffusers video backends (models/video/accel.py)."""

    lora: FilePath | LoRAFile | None = None  # a local .safetensors LoRA, or {path, scale}
    lora_2: FilePath | LoRAFile | None = None  # Wan2.2's second (low-noise) expert
    fuse_lora: bool = True
    distilled: bool = False  # the LoRA removes guidance: 4 steps, guidance 1.0
    quantize: Literal["none", "int8", "fp8"] | None = None
    attention: Annotated[str, _pattern(re.compile(r"_?[a-z0-9_]{1,40}"), "native, flash, sage or _native_cudnn")
                         ] | None = None  # a diffusers attention backend, checked against diffusers at build
    compile: bool | CompileOptions = False
    vae_tiling: bool = False
    cache: Literal["fbc", "mag"] | StepCache | None = None
    context_parallel: int = Field(1, ge=1, le=64)


def options_model(cls: type) -> type[BackendOptions] | None:
    """The backend class's declared options schema (None: it declares none)."""
    model = getattr(cls, "Options", None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def problems(stage: str, backend: str, cls: type, options: Any) -> list[str]:
    """Every problem of `options` for this backend, each naming `stages.<stage>.options.<key>` and the fix."""
    where = f"stages.{stage}.options"
    model = options_model(cls)
    if not isinstance(options, dict):
        return [f"{where}: expected a mapping of option: value, got {type(options).__name__}"]
    if model is None:
        return [] if not options else [f"{where}: backend {backend} declares no options; remove "
                                       f"{', '.join(sorted(map(str, options)))}"]
    try:
        model.model_validate(options)
    except ValidationError as exc:
        return [_problem(where, backend, model, err) for err in exc.errors()]
    return []


def _problem(where: str, backend: str, model: type[BaseModel], err: Any) -> str:
    loc = [str(x) for x in err["loc"] if not _is_union_branch(x)]
    field = ".".join([where, *loc])
    if err["type"] == "extra_forbidden" and len(loc) == 1:
        return f"{field}: unknown option for backend {backend}; allowed: {', '.join(model.model_fields)}"
    if err["type"] == "extra_forbidden":
        return f"{field}: unknown key for backend {backend}; remove it or check its spelling"
    if err["type"] == "missing":
        return f"{field}: backend {backend} needs this option"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    secret = any(word in field.lower() for word in ("key", "secret", "token", "password"))
    tail = "" if isinstance(got, (dict, list)) or got is None or secret else f", got {_short(got)}"
    return f"{field}: {msg} (backend {backend}){tail}"


def _is_union_branch(part: Any) -> bool:
    """pydantic names the union branch it tried (`str`, `LoRAFile`, `function-after[...]`) in the location."""
    text = str(part)
    return isinstance(part, str) and (text[:1].isupper() or "[" in text or text in ("str", "int", "float",
                                                                                   "bool", "list", "dict"))


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def validated(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments the backend is built with: the options as its schema parsed them (only the keys
    the job set, so the backend's own defaults apply to the rest). ValueError on options it refuses."""
    model = options_model(cls)
    if model is None:
        if options:
            raise ValueError(f"{cls.__name__} declares no options; got {sorted(options)}")
        return {}
    parsed = model.model_validate(options)
    # an option written as null means the backend's own default, as if it were left out
    return {key: _plain(getattr(parsed, key)) for key in parsed.model_fields_set if getattr(parsed, key) is not None}


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {k: _plain(getattr(value, k)) for k in value.model_fields_set if getattr(value, k) is not None}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def construct(cls: type, options: dict[str, Any]) -> Any:
    """Build a backend from its validated options (the one way the pipeline builds backends)."""
    return cls(**validated(cls, options))


# ---------------------------------------------------------------- the reference page (docs/backends.md)


def describe(model: type[BaseModel]) -> list[str]:
    """One table row per option (from the JSON schema): name, type with its bounds or choices, default."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    rows = []
    for name, prop in schema.get("properties", {}).items():
        default = "required" if name in schema.get("required", []) else f"`{json.dumps(prop.get('default'))}`"
        rows.append(f"| `{name}` | {_kind(prop, defs)} | {default} |")
    return rows


def _kind(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in prop:
        ref = defs[prop["$ref"].rsplit("/", 1)[-1]]
        return "{" + ", ".join(ref.get("properties", {})) + "}"
    if "anyOf" in prop:
        kinds = [_kind(p, defs) for p in prop["anyOf"] if p.get("type") != "null"]
        return " or ".join(kinds) + (" or null" if any(p.get("type") == "null" for p in prop["anyOf"]) else "")
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    kind = prop.get("description") or prop.get("type", "any")
    if "pattern" in prop and "description" not in prop:
        kind = f"{kind} matching `{prop['pattern'].strip('^$')}`"
    if kind == "array":
        kind = f"list of {_kind(prop.get('items', {}), defs)}"
    elif kind == "object":
        kind = f"map to {_kind(prop.get('additionalProperties', {}), defs)}"
    bounds = [f"{op} {prop[key]}" for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                                                   ("exclusiveMaximum", "<"), ("maxLength", "length <="),
                                                   ("maxItems", "items <=")) if key in prop]
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def reference() -> str:
    """docs/backends.md: every registered backend's options, from the schemas."""
    from models.registry import BACKENDS, resolve

    out = ["# Backend options", "",
           "Generated from the backends' schemas by `python -m models.options > docs/backends.md` (a test checks",
           "that this page matches them). Each backend accepts exactly these keys under",
           "`stages.<stage>.options`; `microdrama validate` refuses any other key or value with a line naming",
           "`stages.<stage>.options.<key>` and what to write instead. A default of `null` is the backend's (or",
           "its model's) own, e.g. the published step count of the model.", ""]
    for stage, table in BACKENDS.items():
        out += [f"## {stage}", ""]
        seen: dict[Any, str] = {}
        for name in table:
            if name.startswith("test-"):
                continue  # backends the test suite registers
            model = options_model(resolve(stage, name))
            out += [f"### `{name}`", ""]
            rows = describe(model) if model else []
            if not rows:
                out += ["No options.", ""]
            elif model in seen:
                out += [f"The options of `{seen[model]}`.", ""]
            else:
                seen[model] = name
                out += ["| option | type | default |", "|---|---|---|", *rows, ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(reference(), end="")
