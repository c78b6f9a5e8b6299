"""The stage-tuning notebooks (notebooks/tune_*.ipynb) run top to bottom with nbclient on the tiny profile
(voices: preview-cpu's espeak-ng, and Piper), pointed at a temp work folder through MICRODRAMA_* variables.
Their outputs show the picture, the frames, the audio and each execution's usage record; re-running a cell
is a cache hit; the YAML they print pastes into the job. Also the Tuner's override mapping on its own."""
from __future__ import annotations

import copy
import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.job import CONFIGS, load_job
from pipeline.tuning import Tuner, as_cli, dotted, nest, parse_cli

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DEMO = CONFIGS / "episodes" / "demo"
BUDGET_S = 120  # per notebook on a loaded 2-CPU runner; about 15-20 s on an idle one


def run_notebook(name: str, workdir: Path) -> dict:
    """Execute a notebook, then re-execute its cell tagged `rerun` in the same kernel."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] in ("python", "python3", sys.executable), spec.argv  # jupyter_client maps these to us
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    with pytest.MonkeyPatch.context() as mp:  # the kernel inherits this process's environment
        mp.setenv("MICRODRAMA_JOB", str(DEMO / "job.yaml"))
        mp.setenv("MICRODRAMA_WORKDIR", str(workdir))
        for key in ("MICRODRAMA_PROFILE", "MICRODRAMA_SHOT", "MICRODRAMA_FPS"):
            mp.delenv(key, raising=False)
        client = NotebookClient(nb, kernel_name="python3", timeout=180,
                                resources={"metadata": {"path": str(NOTEBOOKS)}})
        started = time.perf_counter()
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
                if "rerun" in cell.metadata.get("tags", []):  # run it again at once, as an engineer would
                    first, rerun = copy.deepcopy(nb.cells[index]), copy.deepcopy(nb.cells[index])
                    client.execute_cell(rerun, index)
                    nb.cells[index] = first  # nbclient puts the executed cell back into the notebook
            seconds = time.perf_counter() - started
    print(f"{name}: {seconds:.1f} s")
    return {"nb": nb, "rerun": rerun, "seconds": seconds, "workdir": workdir}


def tagged(nb, tag: str):
    (cell,) = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    return cell


def text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o["output_type"] == "stream")


def mimes(nb, mime: str) -> list[str]:
    return [o["data"][mime] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if mime in o.get("data", {})]


def usage_lines(cell) -> list[str]:
    return [line for line in text(cell).splitlines() if " · backend=" in line]


def check_ran_clean(run: dict) -> None:
    nb = run["nb"]
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, errors[0].get("evalue")
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")
    assert run["seconds"] < BUDGET_S, f"{run['seconds']:.0f} s"
    assert (run["workdir"] / "cache").is_dir()  # the notebook wrote where it was told, nowhere else


def check_rerun_is_a_cache_hit(run: dict, *expect: str) -> None:
    first, again = usage_lines(tagged(run["nb"], "rerun")), usage_lines(run["rerun"])
    assert any(line.endswith("· computed") for line in first), first
    changed = [line for line in again if all(e in line for e in expect)]
    assert changed and all(line.endswith("· cache hit") and "ai_usage: none" in line for line in changed), again


def pasted_job(run: dict, tmp_path: Path):
    """The printed YAML snippet merged into a copy of the demo job: it must load, with its settings."""
    snippet = yaml.safe_load(text(tagged(run["nb"], "choose")).split("\n\n")[0])
    data = yaml.safe_load((DEMO / "job.yaml").read_text(encoding="utf-8"))
    for section, values in snippet["stages"].items():
        data["stages"].setdefault(section, {})
        for key, value in values.items():
            current = data["stages"][section].get(key)
            data["stages"][section][key] = {**current, **value} if isinstance(current, dict) else value
    folder = tmp_path / "pasted"
    shutil.copytree(DEMO, folder)
    (folder / "job.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return snippet, load_job(folder / "job.yaml", [f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'c'}",
                                                   "profile=tiny"])


@pytest.fixture(scope="module")
def storyboard_run(tmp_path_factory):
    return run_notebook("tune_storyboard.ipynb", tmp_path_factory.mktemp("tune-storyboard"))


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    return run_notebook("tune_video.ipynb", tmp_path_factory.mktemp("tune-video"))


@pytest.fixture(scope="module")
def voice_run(tmp_path_factory):
    return run_notebook("tune_voice.ipynb", tmp_path_factory.mktemp("tune-voice"))


# ---------------------------------------------------------------- storyboard

def test_storyboard_notebook_shows_seeds_side_by_side_with_their_usage(storyboard_run):
    check_ran_clean(storyboard_run)
    nb = storyboard_run["nb"]
    assert len(mimes(nb, "image/png")) >= 5  # baseline, seeds, steps, style, preview comparison
    seeds = tagged(nb, "seeds")
    assert any("image/png" in o.get("data", {}) for o in seeds.outputs)
    lines = usage_lines(seeds)
    assert [next(p for p in line.split() if p.startswith("seed=")) for line in lines] == ["seed=7", "seed=8",
                                                                                         "seed=9"]
    assert all("backend=flux-tiny" in line and "flux-tiny 1 image" in line and "wall_s=" in line
               and "cpu_s=" in line for line in lines)


def test_storyboard_steps_are_in_the_usage_record_and_a_rerun_is_a_cache_hit(storyboard_run):
    (line,) = usage_lines(tagged(storyboard_run["nb"], "steps"))
    assert "backend=flux-tiny" in line and "steps=4" in line and "flux-tiny:step 4 step" in line
    check_rerun_is_a_cache_hit(storyboard_run, "steps=4")
    assert "cache hit" in text(tagged(storyboard_run["nb"], "cache"))


def test_storyboard_choice_pastes_into_the_job(storyboard_run, tmp_path):
    snippet, job = pasted_job(storyboard_run, tmp_path)
    assert snippet["stages"]["storyboard"]["options"]["steps"] == 4
    assert job.stages.storyboard.options["steps"] == 4 and job.stages.storyboard.backend == "flux-tiny"


# ---------------------------------------------------------------- video

def test_video_notebook_shows_frames_and_a_playable_clip(video_run):
    check_ran_clean(video_run)
    nb = video_run["nb"]
    assert len(mimes(nb, "image/png")) >= 3  # keyframe and one frame strip per setting
    assert any("<video" in html and "data:video/mp4;base64," in html for html in mimes(nb, "text/html"))
    lines = usage_lines(tagged(nb, "settings"))
    assert len(lines) == 2 and all("backend=wan-tiny" in line for line in lines)
    b = [line for line in lines if "steps=4" in line]
    assert b and "width=80 height=144" in b[0] and "wan-tiny:step 4 step" in b[0] and "wan-tiny:frame" in b[0]


def test_video_rerun_is_a_cache_hit_and_the_choice_pastes_into_the_job(video_run, tmp_path):
    check_rerun_is_a_cache_hit(video_run, "steps=4", "width=80")
    snippet, job = pasted_job(video_run, tmp_path)
    assert "fps" not in snippet["stages"]["video"]  # the session's fps is not a chosen setting
    assert (job.stages.video.width, job.stages.video.height, job.stages.video.options["steps"]) == (80, 144, 4)


# ---------------------------------------------------------------- voice

def test_voice_notebook_plays_the_tracks_and_shows_the_timings(voice_run):
    check_ran_clean(voice_run)
    nb = voice_run["nb"]
    html = mimes(nb, "text/html")
    assert sum("<audio" in h and ";base64," in h and "data:audio/" in h for h in html) >= 4
    assert any("start_s" in h and "end_s" in h for h in html)  # the timings table
    assert any("backend=espeak-ng" in line for line in usage_lines(tagged(nb, "baseline")))
    assert any("backend=piper" in line and "en_US-joe-medium" in line for line in usage_lines(tagged(nb, "piper")))
    pacing = "".join(o.get("data", {}).get("text/html", "") for o in tagged(nb, "pacing").outputs)
    assert "stretch.zh" in pacing and "extended" in pacing and "<audio" in pacing


def test_voice_rerun_is_a_cache_hit_and_the_choice_pastes_into_the_job(voice_run, tmp_path):
    check_rerun_is_a_cache_hit(voice_run, "backend=espeak-ng")
    snippet, job = pasted_job(voice_run, tmp_path)
    assert job.stages.dub.voices["顾辰"] == {"espeak": "cmn+m7", "pitch": "22", "speed": "200"}
    assert (job.stages.dub.max_stretch, job.stages.dub.gap_s) == (1.4, 0.1)


# ---------------------------------------------------------------- the Tuner's overrides

def test_keywords_map_onto_dotted_job_overrides():
    assert dotted("storyboard", {"steps": 4, "width": 144, "seed": 7, "character_seeds": {"林晓": 3}}) == {
        "stages.storyboard.options.steps": 4, "stages.storyboard.width": 144, "seed": 7,
        "stages.storyboard.options.character_seeds.林晓": 3}
    assert dotted("video", {"fps": 8, "shift": 3.0, "stages.edit.crf": 18}) == {
        "stages.video.fps": 8, "stages.video.options.shift": 3.0, "stages.edit.crf": 18}
    assert dotted("dub", {"gap_s": 0.1, "languages": ["en"], "backend": "piper", "voices": {"顾辰": {"pitch": "20"}},
                          "sample_rate": 48000}) == {
        "stages.dub.gap_s": 0.1, "stages.dub.languages": ["en"], "stages.dub.backend": "piper",
        "stages.dub.voices.顾辰.pitch": "20", "stages.dub.options.sample_rate": 48000}
    items = {"stages.dub.voices.顾辰.espeak": "cmn+m3", "stages.dub.voices.顾辰.pitch": "20", "seed": 7}
    assert parse_cli(as_cli(items)) == items
    assert nest(items) == {"stages": {"dub": {"voices": {"顾辰": {"espeak": "cmn+m3", "pitch": "20"}}}}, "seed": 7}


def test_tuner_applies_chosen_and_session_settings_and_reports_only_the_chosen(tmp_path):
    tuner = Tuner(DEMO / "job.yaml", profile="tiny", workdir=tmp_path, overrides=["stages.storyboard.options.steps=3"],
                  session=["stages.video.fps=4"])
    assert tuner.job.stages.storyboard.backend == "flux-tiny" and tuner.job.stages.video.fps == 4
    assert [s.id for s in tuner.shots][:2] == ["s01-sh01", "s01-sh02"]
    tuner.choose("dub", max_stretch=1.3)
    assert tuner.job.stages.dub.max_stretch == 1.3 and tuner.job.stages.storyboard.options["steps"] == 3
    assert yaml.safe_load(tuner.overrides_yaml()) == {"profile": "tiny",  # tuned on tiny, the job says preview-cpu
                                                      "stages": {"storyboard": {"options": {"steps": 3}},
                                                                 "dub": {"max_stretch": 1.3}}}
    assert "stages.dub.max_stretch=1.3" in tuner.command() and "fps" not in tuner.command()
    assert tuner.command_args()[1] == "profile=tiny"
    assert tuner.job.cache_dir == tmp_path / "cache"
    with pytest.raises(Exception, match="max_stretch"):
        tuner.choose("dub", max_stretch=5)  # refused at once, with the field named


def test_tuner_holds_one_backend_per_stage_and_replaces_choices_by_key(tmp_path):
    tuner = Tuner(DEMO / "job.yaml", profile="tiny", workdir=tmp_path)
    two, four = tuner.job_for(dotted("storyboard", {"steps": 2})), tuner.job_for(dotted("storyboard", {"steps": 4}))
    first = tuner._backend(two, "storyboard")
    assert tuner._backend(two, "storyboard") is first and first.steps == 2
    assert tuner._backend(four, "storyboard").steps == 4 and len(tuner._backends) == 1  # the steps=2 one let go
    tuner.choose("dub", voices={"顾辰": {"espeak": "cmn+m3", "pitch": "20"}})
    tuner.choose("dub", voices={"顾辰": {"pitch": "30"}})
    assert tuner.chosen == {"stages.dub.voices.顾辰.espeak": "cmn+m3", "stages.dub.voices.顾辰.pitch": "30"}
    tuner.choose("dub", **{"stages.dub.voices": {}})  # a whole section replaces its leaves
    assert tuner.chosen == {"stages.dub.voices": {}}


# ---------------------------------------------------------------- the printed command runs as printed

def printed_command(run: dict) -> list[str]:
    """The `microdrama run …` line the notebook's last cell printed, split as a shell would."""
    import shlex

    (line,) = [ln for ln in text(tagged(run["nb"], "choose")).splitlines() if ln.startswith("microdrama run ")]
    return shlex.split(line)


@pytest.mark.parametrize("fixture, profile", [("storyboard_run", "tiny"), ("video_run", "tiny"),
                                              ("voice_run", "preview-cpu")])
def test_the_printed_command_validates_exactly_as_printed(fixture, profile, request):
    """The command names the profile the settings were tuned on, so options such as `steps` and
    `character_seeds` reach the backends that take them; `microdrama validate` with exactly its arguments
    (which builds every backend with its options) passes."""
    from tests.tiny_jobs import cli

    args = printed_command(request.getfixturevalue(fixture))
    assert args[:2] == ["microdrama", "run"] and f"profile={profile}" in args[3:], args
    res = cli("validate", *args[2:])
    assert res.exit_code == 0 and f"profile={profile}" in res.output, res.output
    if profile == "tiny":  # without the profile the job's own (preview-cpu) backends would refuse the options
        res = cli("validate", *[a for a in args[2:] if not a.startswith("profile=")])
        assert res.exit_code == 2 and "unknown option for backend" in res.output, res.output


def test_the_voice_notebooks_command_runs(voice_run, tmp_path):
    """A real run of the printed command (preview-cpu, the cheapest profile) as a separate process, only the
    output and cache folders pointed at the test's folder (its ledger and MLflow files land in its cwd)."""
    import json
    import subprocess

    args = printed_command(voice_run)[2:]
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", *args, "--quiet",
                          f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    # a fresh MLflow store and a local Ray: their INFO lines (tables created, experiment created, token auth)
    # stay out of the terminal without --verbose
    assert " INFO " not in res.stderr and "Token authentication" not in res.stderr, res.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "ceo-stand-in" / "ep01" / "manifest.json").read_text("utf-8"))
    assert manifest["profile"] == "preview-cpu" and manifest["backends"]["dub"] == "espeak-ng"
