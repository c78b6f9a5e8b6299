"""Episode job loading: every shipped config validates; bad input names the field and the fix."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import JobError
from pipeline.job import CONFIGS, apply_overrides, load_job, load_profile

SCREENPLAY = "Title: t\n\nINT. ROOM - DAY\n\nANNA\nHi.\n"


def write_job(tmp_path: Path, body: str) -> Path:
    (tmp_path / "ep.fountain").write_text(SCREENPLAY, encoding="utf-8")
    path = tmp_path / "job.yaml"
    path.write_text(body, encoding="utf-8")
    return path


BASE = "drama: d\nepisode: e1\nscreenplay: ep.fountain\n"


@pytest.mark.parametrize("path", sorted([*(CONFIGS / "episodes").glob("*/job.yaml"),
                                         *(CONFIGS / "series").glob("*/*/job.yaml")]), ids=str)
def test_every_shipped_job_validates(path: Path) -> None:
    from pipeline.stages.script import read_source

    job = load_job(path)
    assert job.out_path == Path(job.output_dir) / job.drama / job.episode
    read_source(job)  # the screenplay parses, and a series episode's characters are all in its bible


@pytest.mark.parametrize("path", sorted((CONFIGS / "profiles").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_profile_loads(path: Path) -> None:
    assert load_profile(path.stem).name == path.stem


def test_defaults_and_override(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, BASE), ["stages.video.fps=12", "languages=[zh, en]"])
    assert job.stages.video.fps == 12 and job.languages == ["zh", "en"]
    assert job.profile == "preview-cpu" and job.stages.storyboard.backend == "procedural"


@pytest.mark.parametrize("extra, needle", [
    ("colour: red\n", "colour: unknown key"),
    ("stages: {video: {fsp: 3}}\n", "stages.video.fsp: unknown key"),
    ("stages: {video: {backend: sora}}\n", "stages.video.backend: unknown backend 'sora'"),
    ("stages: {video: {width: 1920, height: 1080}}\n", "stages.video: 1920x1080 is not 9:16"),
    ("profile: nope\n", "profile: unknown profile 'nope'"),
    ("budget: {max_cny: 1.5}\n", "budget.max_cny: write money as a string"),
    ("languages: [zh, ZH!]\n", "languages: not language codes"),
])
def test_bad_fields_are_named(tmp_path: Path, extra: str, needle: str) -> None:
    with pytest.raises(JobError) as exc:
        load_job(write_job(tmp_path, BASE + extra))
    assert needle in str(exc.value)


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    with pytest.raises(JobError, match=r"job.yaml: line \d+, column \d+: malformed YAML"):
        load_job(write_job(tmp_path, "drama: d\nepisode: [e1\n"))


def test_missing_and_escaping_screenplay(tmp_path: Path) -> None:
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    with pytest.raises(JobError, match="screenplay: file not found"):
        load_job(write_job(job_dir, BASE.replace("ep.fountain", "missing.fountain")))
    (tmp_path / "outside.fountain").write_text(SCREENPLAY)
    with pytest.raises(JobError, match="outside the job's folder"):
        load_job(write_job(job_dir, BASE.replace("ep.fountain", "../outside.fountain")))


def test_override_syntax() -> None:
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}
    with pytest.raises(JobError, match="expected KEY=VALUE"):
        apply_overrides({}, ["novalue"])


@pytest.mark.parametrize("raw, exact", [("0.5", "0.5"), ("0.1", "0.1"), ("'0.30'", "0.30"), ('"12.345"', "12.345"),
                                        ("20", "20"), ("1e-2", "0.01"),
                                        ("0.1000000000000000055511151231257827", "0.1000000000000000055511151231257827")])
def test_money_override_is_plain_text_to_decimal(tmp_path: Path, raw: str, exact: str) -> None:
    """`budget.max_cny=0.5` works unquoted and its text goes to Decimal as written (no float on the way:
    0.1 stays 0.1, not 0.1000000000000000055…)."""
    from decimal import Decimal

    job = load_job(write_job(tmp_path, BASE), [f"budget.max_cny={raw}"])
    assert job.budget.max_cny == Decimal(exact) and str(job.budget.max_cny) == str(Decimal(exact))


def test_money_override_errors_and_yaml_float_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="budget.max_cny: not a decimal amount"):
        load_job(write_job(tmp_path, BASE), ["budget.max_cny=cheap"])
    with pytest.raises(JobError, match="budget.max_cny: must be a finite amount >= 0"):
        load_job(write_job(tmp_path, BASE), ["budget.max_cny=-1"])
    assert load_job(write_job(tmp_path, BASE + "budget: {max_cny: '9'}\n"), ["budget.max_cny=null"]).budget.max_cny is None
    with pytest.raises(JobError) as exc:  # a float in a YAML file stays an error, and says how to write it
        load_job(write_job(tmp_path, BASE + "budget: {max_cny: 0.5}\n"))
    assert 'max_cny: "50.00"' in str(exc.value) and "budget.max_cny=50.00" in str(exc.value)


def test_dub_stage_holds_backend_voices_and_pacing_under_one_name(tmp_path: Path) -> None:
    """`stages.dub` is the dub stage's one section: backend, options, voices and pacing (issue 12)."""
    path = write_job(tmp_path, BASE + "stages: {dub: {gap_s: 0.1, voices: {ANNA: {gender: f, pitch: 70}}}}\n")
    job = load_job(path, ["stages.dub.backend=piper", "stages.dub.voices.ANNA={gender: f, pace: 1.1}"])
    assert (job.stages.dub.backend, job.stages.dub.gap_s) == ("piper", 0.1)
    assert job.stages.dub.voices["ANNA"] == {"gender": "f", "pace": 1.1}
    assert not hasattr(job.stages, "tts") and "dub" in job.stages.backends()


def test_an_old_tts_section_is_read_into_dub_and_a_conflict_names_both(tmp_path: Path) -> None:
    old = write_job(tmp_path, BASE + "stages: {tts: {backend: piper, voices: {ANNA: {gender: f}}}, "
                                     "dub: {gap_s: 0.1}}\n")
    job = load_job(old)
    assert (job.stages.dub.backend, job.stages.dub.voices, job.stages.dub.gap_s) == (
        "piper", {"ANNA": {"gender": "f"}}, 0.1)
    assert load_job(old, ["stages.tts.backend=espeak-ng"]).stages.dub.backend == "espeak-ng"
    assert load_job(old, ["stages.dub.backend=piper"]).stages.dub.backend == "piper"  # the same value: no clash
    with pytest.raises(JobError, match=r"stages\.tts\.backend and stages\.dub\.backend are both set"):
        load_job(old, ["stages.dub.backend=espeak-ng"])
    (tmp_path / "p.yaml").write_text("name: p\nstages: {tts: {backend: piper}, dub: {backend: espeak-ng}}\n",
                                     encoding="utf-8")
    with pytest.raises(JobError, match=r"profile p\.yaml: stages\.tts\.backend and stages\.dub\.backend"):
        load_job(old, ["profile=p.yaml"])
    (tmp_path / "q.yaml").write_text("name: q\nstages: {tts: {backend: piper}}\n", encoding="utf-8")
    assert load_job(write_job(tmp_path, BASE + "profile: q.yaml\n")).stages.dub.backend == "piper"


@pytest.mark.parametrize(("voice", "needle"), [
    ("{pich: 40}", "stages.dub.voices.ANNA.pich: unknown voice key for backend 'espeak-ng'; it reads: age, "
                   "espeak, gender, pitch, speed"),
    ("{pitch: 140}", "stages.dub.voices.ANNA.pitch: must be a whole number in [0, 99], got 140"),
    ("{gender: x}", "stages.dub.voices.ANNA.gender: must be one of f, m"),
    ("{espeak: ''}", "stages.dub.voices.ANNA.espeak: must be text"),
])
def test_voice_hints_are_checked_against_what_the_backend_reads(tmp_path: Path, voice: str, needle: str) -> None:
    with pytest.raises(JobError) as exc:
        load_job(write_job(tmp_path, BASE + f"stages: {{dub: {{voices: {{ANNA: {voice}}}}}}}\n"))
    assert needle in str(exc.value)
    with pytest.raises(JobError, match=r"ANNA\.pich: unknown voice key for backend 'piper'; it reads: age, "
                                       r"gender, pace"):
        load_job(write_job(tmp_path, BASE), ["stages.dub.backend=piper", "stages.dub.voices.ANNA.pich=40"])
    # an espeak-ng hint under piper (a job tuned on preview-cpu run on another profile): checked, then unused
    assert load_job(write_job(tmp_path, BASE), ["stages.dub.backend=piper", "stages.dub.voices.ANNA.pitch=40"])
    with pytest.raises(JobError, match=r"ANNA\.pitch: must be a whole number in \[0, 99\]"):
        load_job(write_job(tmp_path, BASE), ["stages.dub.backend=piper", "stages.dub.voices.ANNA.pitch=400"])


def test_another_profiles_episode_is_not_replaced_silently(tmp_path: Path) -> None:
    """A `tiny` run over a published `preview-cpu` episode is refused before any work, naming both profiles
    and the two fixes; the same profile re-publishes as before, and another output_dir is free."""
    import json

    path = write_job(tmp_path, BASE)
    out = tmp_path / "out"
    folder = out / "d" / "e1"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"profile": "preview-cpu", "run_id": "r1"}), "utf-8")
    assert load_job(path, [f"output_dir={out}"]).profile == "preview-cpu"  # the same profile: replaced as always
    with pytest.raises(JobError) as exc:
        load_job(path, [f"output_dir={out}", "profile=tiny"])
    text = str(exc.value)
    assert "holds a 'preview-cpu' episode and this job renders profile 'tiny'" in text
    assert f"output_dir={out / 'tiny'}" in text and f"delete {folder}" in text
    assert load_job(path, [f"output_dir={out / 'tiny'}", "profile=tiny"]).profile == "tiny"
