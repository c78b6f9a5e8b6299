"""Backend options schemas: every registered backend declares one that matches what its constructor takes;
`validate` refuses what a backend could not use (naming stage, backend, option and the fix); shipped
profiles validate; docs/backends.md is the schemas' own page."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from models import options
from models.registry import BACKENDS, resolve
from pipeline.errors import JobError
from pipeline.job import CONFIGS, load_job

ROOT = Path(__file__).resolve().parents[1]
SCREENPLAY = "Title: t\nLanguage: zh\n\nINT. ROOM - DAY\n\nANNA\n你好。\n"
BASE = "drama: d\nepisode: e1\nscreenplay: ep.fountain\n"
ALL = [(stage, name) for stage, table in BACKENDS.items() for name in table if not name.startswith("test-")]
# keys a backend with **options passes on (to models.providers.Limits, the key lookup, models.video.accel)
LIMITS = {"concurrency", "poll_s", "task_timeout_s", "retries", "backoff_s"}
KEYS = {"api_key_env", "secrets_file", "api_key_name", "base_url"}
PASSED_ON = {"wan-t2i-api": LIMITS | KEYS, "seedream-api": LIMITS | KEYS, "wan-api": LIMITS | KEYS,
             "seedance-api": LIMITS | KEYS | {"timeout_s"}, "qwen-tts-api": {"concurrency", "retries", "backoff_s"} | KEYS,
             "kling-api": LIMITS | {"access_key_env", "secret_key_env", "secrets_file", "access_key_name",
                                    "secret_key_name", "base_url", "timeout_s"}}


@pytest.fixture()
def job_dir(tmp_path: Path) -> Path:
    (tmp_path / "ep.fountain").write_text(SCREENPLAY, encoding="utf-8")
    return tmp_path


def load(job_dir: Path, body: str, overrides: list[str] | None = None):
    path = job_dir / "job.yaml"
    path.write_text(body, encoding="utf-8")
    return load_job(path, [f"cache_dir={job_dir / 'cache'}", f"output_dir={job_dir / 'out'}", *(overrides or [])])


@pytest.mark.parametrize("stage, name", ALL, ids=lambda x: str(x))
def test_every_backend_declares_the_options_its_constructor_takes(stage: str, name: str) -> None:
    cls = resolve(stage, name)
    model = options.options_model(cls)
    assert model is not None, f"{stage}/{name} declares no Options"
    assert model.model_config.get("extra") == "forbid"
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items()
              if p.kind == p.KEYWORD_ONLY}
    passes_on = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())
    fields = set(model.model_fields)
    assert set(params) <= fields, f"{name}: constructor options missing from the schema: {set(params) - fields}"
    extra = fields - set(params)
    if cls.__init__ is object.__init__:
        assert not fields
    elif passes_on:
        if "accel" in inspect.signature(cls.__init__).parameters:  # the diffusers video family
            from models.video.accel import Accel

            assert extra == set(inspect.signature(Accel.parse).parameters) - {"cls"}
        else:
            read = PASSED_ON.get(name, set())
            assert extra <= read, f"{name}: schema options nobody reads: {extra - read}"
    else:
        assert not extra, f"{name}: schema options the constructor does not take: {extra}"
    for key, p in params.items():  # a default the schema states is the backend's own
        default = model.model_fields[key].default
        if p.default is not p.empty and default is not None:
            assert default == p.default, (name, key, default, p.default)


@pytest.mark.parametrize("profile", sorted(p.stem for p in (CONFIGS / "profiles").glob("*.yaml")))
def test_every_shipped_profile_validates_with_its_options(job_dir: Path, profile: str) -> None:
    job = load(job_dir, BASE, [f"profile={profile}"])
    for section, settings in job.stages.backends().items():
        stage = section
        assert options.problems(section, settings.backend, resolve(stage, settings.backend), settings.options) == []


@pytest.mark.parametrize("override, needle", [
    ("stages.video.options.steps=4", "stages.video.options.steps: unknown option for backend camera-move; allowed: "
                                     "amount, ease, supersample, pix_fmt, preset"),
    ("stages.video.options.amount=0.9", "stages.video.options.amount: Input should be less than or equal to 0.5"),
    ("stages.video.options.amount=.nan", "stages.video.options.amount"),
    ("stages.video.options.preset=bogus", "stages.video.options.preset: Input should be 'ultrafast'"),
    ("stages.video.options.ease=[1]", "stages.video.options.ease"),
    ("stages.storyboard.options.caption=middle", "stages.storyboard.options.caption: Input should be 'top'"),
    ("stages.storyboard.options.font=''", "stages.storyboard.options.font"),
    ("stages.storyboard.options.supersample=9", "stages.storyboard.options.supersample"),
    ("stages.dub.options.sample_rate=10000000", "stages.dub.options.sample_rate: Input should be less than"),
    ('stages.dub.options.voices={en: "en\\u0000"}', "stages.dub.options.voices.en"),
    ("stages.script.options.model=x", "stages.script.options.model: unknown option for backend fountain; allowed: "),
    ("stages.translate.options.batch_size=8", "stages.translate.options.batch_size: unknown option for backend none"),
    ("stages.dub.options=5", "stages.dub.options: Input should be a valid dictionary"),
])
def test_options_a_backend_cannot_use_are_refused_by_name(job_dir: Path, override: str, needle: str) -> None:
    with pytest.raises(JobError) as err:
        load(job_dir, BASE, [override])
    assert needle in str(err.value), str(err.value)


@pytest.mark.parametrize("stages, needle", [
    ("video: {backend: wan-api, options: {resolution: 4k}}", "stages.video.options.resolution: Input should be "
                                                             "'480p', '720p' or '1080p' (backend wan-api)"),
    ("video: {backend: wan-api, options: {base_url: 'ftp://x'}}", "stages.video.options.base_url: Value error, "
                                                                  "must be an http(s) URL"),
    ("video: {backend: wan-api, options: {base_url: 'https://:99999/v1'}}", "stages.video.options.base_url: not a URL"),
    ("video: {backend: wan-api, options: {concurrency: 0}}", "stages.video.options.concurrency"),
    ("video: {backend: wan-api, options: {style: \"a\\nb\"}}", "stages.video.options.style: Value error, must not "
                                                               "contain control characters"),
    ("video: {backend: kling-api, options: {mode: ultra}}", "stages.video.options.mode: Input should be 'std' or 'pro'"),
    ("video: {backend: kling-api, options: {api_key_env: K}}", "stages.video.options.api_key_env: unknown option for "
                                                               "backend kling-api"),
    ("video: {backend: seedance-api, options: {negative_prompt: x}}", "stages.video.options.negative_prompt: unknown"),
    ("video: {backend: wan-tiny, options: {quantize: int4}}", "stages.video.options.quantize: Input should be 'none'"),
    ("video: {backend: wan-tiny, options: {cache: {kind: fbc, threshold: 5}}}", "stages.video.options.cache.threshold"),
    ("video: {backend: wan-tiny, options: {compile: {mode: fastest}}}", "stages.video.options.compile.mode"),
    ("video: {backend: wan-tiny, options: {lora: {path: a.safetensors, rank: 4}}}",
     "stages.video.options.lora.rank: unknown key for backend wan-tiny"),
    ("video: {backend: wan-tiny, options: {dtype: float8}}", "stages.video.options.dtype: Input should be 'float32'"),
    ("video: {backend: wan-tiny, options: {device: 'cuda; rm -rf /'}}", "stages.video.options.device"),
    ("video: {backend: wan-tiny, options: {steps: 100000}}", "stages.video.options.steps"),
    ("storyboard: {backend: flux-tiny, options: {character_seeds: {a: -1}}}",
     "stages.storyboard.options.character_seeds.a"),
    ("storyboard: {backend: wan-t2i-api, options: {size: big}}", "stages.storyboard.options.size"),
    ("script: {backend: openai-api, options: {model: qwen-plus}}", "stages.script.options.base_url: backend "
                                                                   "openai-api needs this option"),
    ("script: {backend: llm-tiny, options: {repair: magic}}", "stages.script.options.repair"),
    ("translate: {backend: marian-tiny, options: {placeholder: '<x>'}}", "stages.translate.options.placeholder: "
                                                                         "Value error, must contain {i}"),
    ("translate: {backend: nllb-600m, options: {lang_codes: {yue: cantonese}}}", "stages.translate.options.lang_codes"),
    ("dub: {backend: vits-tiny, options: {speaking_rate: 9}}", "stages.dub.options.speaking_rate"),
    ("dub: {backend: qwen-tts-api, options: {poll_s: 1}}", "stages.dub.options.poll_s: unknown option for backend "
                                                           "qwen-tts-api"),
    ("dub: {backend: piper, options: {noise_scale: -1}}", "stages.dub.options.noise_scale"),
])
def test_table_of_refused_options(job_dir: Path, stages: str, needle: str) -> None:
    with pytest.raises(JobError) as err:
        load(job_dir, BASE + f"stages: {{{stages}}}\n")
    assert needle.replace("Value error, ", "") in str(err.value), str(err.value)


def test_a_key_in_a_key_option_is_not_echoed(job_dir: Path) -> None:
    with pytest.raises(JobError) as err:
        load(job_dir, BASE + "stages: {video: {backend: wan-api, options: {api_key_env: 'sk-live-1234-5678'}}}\n")
    assert "stages.video.options.api_key_env" in str(err.value) and "sk-live" not in str(err.value)


def test_backends_are_built_from_the_validated_options() -> None:
    from models.video.camera import CameraMoveVideo

    backend = options.construct(CameraMoveVideo, {"amount": 0.2, "supersample": 1})
    assert (backend.amount, backend.supersample, backend.ease) == (0.2, 1, "smooth")  # unset: the backend's default
    with pytest.raises(ValueError, match="amount"):
        options.construct(CameraMoveVideo, {"amount": "lots"})
    assert options.validated(CameraMoveVideo, {"amount": "0.25", "preset": "fast"}) == {"amount": 0.25,
                                                                                       "preset": "fast"}


def test_accepted_options_build_the_backend(job_dir: Path) -> None:
    """What the schema accepts, the backend's constructor takes (the diffusers video family's cross-field
    checks stay in the backend and are run by preflight)."""
    from pipeline.orchestrate import preflight

    job = load(job_dir, BASE, ["stages.video.options.amount=0.25", "stages.video.options.preset=veryfast",
                               "stages.storyboard.options.caption=bottom", "stages.storyboard.options.header=false",
                               "stages.storyboard.options.move_margin=0.25",
                               "stages.dub.options.voices={en: en-gb}"])
    assert [p for p in preflight(job) if "options" in p] == []


def test_docs_page_is_generated_from_the_schemas() -> None:
    page = (ROOT / "docs" / "backends.md").read_text(encoding="utf-8")
    assert page == options.reference(), "docs/backends.md is stale: python -m models.options > docs/backends.md"
    assert "### `camera-move`" in page and "| `amount` | number (> 0, <= 0.5) | `0.1` |" in page
