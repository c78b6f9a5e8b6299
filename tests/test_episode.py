"""The demo episode end to end on the preview-cpu profile: ffprobe checks, cache re-run, bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.job import CONFIGS, load_job
from tests.media import integrated_loudness, probe

DEMO = CONFIGS / "episodes" / "demo"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, ray_session):
    """Run the demo job twice into a temp workspace (second run must be served from the cache)."""
    from pipeline.episode import run_job

    work = tmp_path_factory.mktemp("demo")
    shutil.copytree(DEMO, work / "job")
    overrides = [f"output_dir={work / 'out'}", f"cache_dir={work / 'cache'}"]
    job = load_job(work / "job" / "job.yaml", overrides)
    env = {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "ledger_url": f"sqlite:///{work / 'ledger.db'}"}
    first = run_job(job, quiet=True, **env)
    mtime = (job.out_path / "episode.mp4").stat().st_mtime_ns
    second = run_job(job, quiet=True, **env)
    return {"job": job, "first": first, "second": second, "work": work, "env": env, "mtime": mtime}


def test_episode_file_is_a_vertical_h264_aac_mp4(demo_run) -> None:
    info = probe(demo_run["job"].out_path / "episode.mp4")
    video = [s for s in info["streams"] if s["codec_type"] == "video"]
    audio = [s for s in info["streams"] if s["codec_type"] == "audio"]
    assert len(video) == 1 and (video[0]["width"], video[0]["height"]) == (1080, 1920)
    assert video[0]["codec_name"] == "h264" and video[0]["pix_fmt"] == "yuv420p"
    assert [a["codec_name"] for a in audio] == ["aac", "aac"]  # zh and en dub tracks
    assert [a["tags"]["language"] for a in audio] == ["chi", "eng"]


def test_duration_matches_manifest_timeline(demo_run) -> None:
    manifest = json.loads((demo_run["job"].out_path / "manifest.json").read_text())
    info = probe(demo_run["job"].out_path / "episode.mp4")
    timeline_end = manifest["shots"][-1]["end"]
    assert abs(sum(s["duration_s"] for s in manifest["shots"]) - timeline_end) < 1e-6
    assert abs(float(info["format"]["duration"]) - timeline_end) <= 0.1
    for stream in info["streams"]:
        if stream["codec_type"] in ("video", "audio"):
            assert abs(float(stream["duration"]) - timeline_end) <= 0.1, stream["codec_type"]


def test_subtitles_for_every_language(demo_run) -> None:
    out = demo_run["job"].out_path
    info = probe(out / "episode.mp4")
    subs = [s for s in info["streams"] if s["codec_type"] == "subtitle"]
    assert [s["tags"]["language"] for s in subs] == ["chi", "eng"]
    manifest = json.loads((out / "manifest.json").read_text())
    n_lines = sum(len(s["lines"]) for s in manifest["shots"])
    for lang in ("zh", "en"):
        srt = (out / f"episode.{lang}.srt").read_text(encoding="utf-8")
        assert srt.count(" --> ") == n_lines
        assert "Dialogue:" in (out / f"episode.{lang}.ass").read_text(encoding="utf-8")
    first_zh = manifest["shots"][0]["lines"][0]["text"]["zh"]
    assert first_zh in (out / "episode.zh.srt").read_text(encoding="utf-8")


def test_aigc_metadata_is_readable(demo_run) -> None:
    tags = probe(demo_run["job"].out_path / "episode.mp4")["format"]["tags"]
    label = json.loads(tags["AIGC"])
    assert label["Label"] == "1" and label["ContentProducer"].startswith("microdrama")
    assert label["ProduceID"] == demo_run["first"]["content_id"]


def test_loudness_is_minus_14_lufs(demo_run) -> None:
    for stream in (0, 1):
        lufs = integrated_loudness(demo_run["job"].out_path / "episode.mp4", stream)
        assert abs(lufs - (-14.0)) <= 1.0, (stream, lufs)


def test_visible_label_on_opening_frames(demo_run) -> None:
    """The 'AI生成' box is drawn in its place of the layout (top right, inside the players' safe area) for
    the first seconds and gone afterwards."""
    import numpy as np

    from pipeline.layout import LABEL

    x0, y0, x1, y1 = LABEL.px()
    box = f"crop={x1 - x0}:{y1 - y0}:{x0}:{y0}"

    path = demo_run["job"].out_path / "episode.mp4"

    def region(t: float) -> "np.ndarray":
        raw = subprocess.run(["ffmpeg", "-v", "error", "-ss", str(t), "-i", str(path), "-frames:v", "1",
                              "-vf", box, "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                             capture_output=True, check=True).stdout
        return np.frombuffer(raw, dtype=np.uint8).astype(float)

    with_label, after = region(1.0), region(demo_run["first"]["duration_s"] - 0.5)
    assert np.abs(with_label - after).mean() > 5  # the label changes the pixels there
    # Against the same frame of the shot's own clip (before the edit drew anything): at 1.9 s the label
    # makes the region differ, 0.4 s after label_seconds only the encode does.
    import json

    from pipeline.cache import Cache

    edit = Cache(demo_run["work"] / "cache").get(demo_run["first"]["cache"]["edit_key"])
    clip = json.loads(Path(edit["inputs"]).read_text(encoding="utf-8"))["shots"][0]["clip"]
    w, h = demo_run["job"].stages.edit.width, demo_run["job"].stages.edit.height

    def unlabelled(t: float) -> "np.ndarray":
        vf = (f"scale={w}:{h}:force_original_aspect_ratio=increase:flags=lanczos,crop={w}:{h},"
              f"{box}")
        raw = subprocess.run(["ffmpeg", "-v", "error", "-ss", str(t), "-i", clip, "-frames:v", "1", "-vf", vf,
                              "-f", "rawvideo", "-pix_fmt", "gray", "-"], capture_output=True, check=True).stdout
        return np.frombuffer(raw, dtype=np.uint8).astype(float)

    end = demo_run["job"].stages.edit.label_seconds
    assert end >= 2.0 and demo_run["first"]["shots"][0]["duration_s"] > end + 0.5
    labelled = np.abs(region(1.9) - unlabelled(1.9)).mean()
    plain = np.abs(region(end + 0.4) - unlabelled(end + 0.4)).mean()
    assert labelled > 5 and labelled > 4 * plain, (labelled, plain)


def test_second_run_is_served_from_cache(demo_run) -> None:
    first, second = demo_run["first"], demo_run["second"]
    assert first["cache"]["hits"] < first["cache"]["executions"]
    assert second["cache"]["all_cached"] is True
    assert all(all(s["cache_hit"].values()) for s in second["shots"])
    assert second["duration_s"] == first["duration_s"]


def test_changing_one_line_rerenders_only_its_shot(demo_run, tmp_path) -> None:
    from pipeline.episode import run_job

    work = demo_run["work"]
    fountain = work / "job" / "episode.fountain"
    manifest = demo_run["first"]
    target = manifest["shots"][-1]
    original = target["lines"][0]["text"]["en"]
    text = fountain.read_text(encoding="utf-8")
    assert text.count(original) == 1
    fountain.write_text(text.replace(original, original.rstrip(".!?") + ", really?"), encoding="utf-8")
    job = load_job(work / "job" / "job.yaml", [f"output_dir={tmp_path}", f"cache_dir={work / 'cache'}"])
    third = run_job(job, quiet=True, **demo_run["env"])
    for shot in third["shots"]:
        if shot["id"] == target["id"]:
            # the procedural panel may draw the line (it captions a shot without action with it): it re-renders
            assert shot["cache_hit"]["dub"] is False and shot["cache_hit"]["storyboard"] is False
        else:
            assert all(shot["cache_hit"].values()), shot["id"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_cli_validate_and_bad_input_exit_2(tmp_path: Path) -> None:
    ok = run_cli("validate", str(DEMO / "job.yaml"), cwd=tmp_path)
    assert ok.returncode == 0 and "ok: ceo-stand-in/ep01" in ok.stdout
    bad = tmp_path / "job.yaml"
    shutil.copy(DEMO / "episode.fountain", tmp_path / "episode.fountain")
    bad.write_text((DEMO / "job.yaml").read_text().replace("profile: preview-cpu", "profile: preview-cpu\nfoo: 1"))
    res = run_cli("run", str(bad), cwd=tmp_path)
    assert res.returncode == 2 and "foo: unknown key" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()
    (tmp_path / "episode.fountain").write_text("Title: x\n\nINT. ROOM - DAY\n\n[[shot: wide, spin]]\n")
    bad.write_text((DEMO / "job.yaml").read_text())
    res = run_cli("run", str(bad), cwd=tmp_path)
    assert res.returncode == 2 and "episode.fountain:5" in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()


def test_error_texts_are_printed_verbatim_not_as_markup(capsys) -> None:
    """Messages quote screenplay syntax such as [[en: …]]; the terminal must show it, not eat it as markup."""
    import typer

    from pipeline import cli as cli_mod

    text = "translate none: add [[en: …]] translations to the screenplay, or [bold]pick[/] a backend"
    with pytest.raises(typer.Exit):
        cli_mod._fail(RuntimeError(text), 1)
    assert text in capsys.readouterr().err


def test_progress_shows_each_stage_and_each_shot(ray_session) -> None:
    """One bar per stage with one mark per shot: rendered, cached, retried; --quiet draws nothing."""
    import io

    from rich.console import Console

    from pipeline.progress import Progress

    @ray_session.remote
    def result(cache_hit: bool, attempts: int) -> dict:
        return {"cache_hit": cache_hit, "attempts": attempts}

    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=160)
    with Progress(title="drama/ep01", console=console) as progress:
        got = progress.wait("video", [result.remote(False, 1), result.remote(True, 1), result.remote(False, 2)],
                            ["s01-sh01", "s01-sh02", "s01-sh03"])
    assert [r["attempts"] for r in got] == [1, 1, 2]
    text = out.getvalue()
    assert "drama/ep01 video" in text and "3/3" in text
    assert "■□!" in text and "cached 1" in text and "retried 1" in text

    quiet = io.StringIO()
    with Progress(quiet=True, console=Console(file=quiet)) as progress:
        progress.wait("video", [result.remote(False, 1)], ["s01-sh01"])
    assert quiet.getvalue() == ""


def test_quiet_run_prints_only_the_episode_path(tmp_path: Path) -> None:
    job = tmp_path / "job"
    shutil.copytree(DEMO, job)
    res = run_cli("run", str(job / "job.yaml"), f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}",
                  "stages.storyboard.width=144", "stages.storyboard.height=256", "stages.video.width=144",
                  "stages.video.height=256", "stages.video.fps=8", "stages.edit.preset=ultrafast", "--quiet",
                  "--ledger", f"sqlite:///{tmp_path / 'ledger.db'}", "--tracking-uri",
                  f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [str(tmp_path / "out" / "ceo-stand-in" / "ep01" / "episode.mp4")]
    assert "━" not in res.stderr and "video" not in res.stderr  # no progress bars
