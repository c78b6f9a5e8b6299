"""Preview-profile backends (procedural panels, camera moves, espeak-ng, piper, no translation), real output."""
from __future__ import annotations

import json
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.registry import resolve
from pipeline.script import CAMERA_MOVES, Character, Line, Scene, Script, Shot

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (make install)")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (make install)")


def make_shot(**fields) -> Shot:
    base = dict(id="s01-sh01", scene=1, index=1, location="咖啡馆", time_of_day="夜", interior=True,
                framing="medium", camera="hold", action="林小雨推门而入，看见角落里的陈默。",
                characters=("林小雨", "陈默"),
                lines=(Line(speaker="林小雨", text={"zh": "你怎么会在这里？"}, emotion="angry"),))
    return Shot(**{**base, **fields})


def make_script(*shots: Shot) -> Script:
    cast = {"林小雨": Character(name="林小雨", voice={"gender": "f"}),
            "陈默": Character(name="陈默", voice={"gender": "m"})}
    scene = Scene(number=1, heading="内景 咖啡馆 - 夜", location="咖啡馆", time_of_day="夜", shots=shots)
    return Script(title="测试", language="zh", characters=cast, scenes=(scene,))


def render_panel(tmp_path: Path, shot: Shot, name: str, size: tuple[int, int] = (1080, 1920),
                 seed: int = 7) -> Path:
    backend = resolve("storyboard", "procedural")()
    result = backend.render(shot, make_script(shot), tmp_path / name, width=size[0], height=size[1], seed=seed)
    assert result.outputs == {"image": str(tmp_path / name)}
    return tmp_path / name


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        return np.frombuffer(wav.readframes(wav.getnframes()), np.int16).astype(np.float32), wav.getframerate()


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples ** 2)))


# --- storyboard ---------------------------------------------------------------------------------------

def test_panel_size_and_deterministic(tmp_path):
    first = render_panel(tmp_path, make_shot(), "a.png")
    second = render_panel(tmp_path, make_shot(), "b.png")
    assert Image.open(first).size == (1080, 1920)
    assert first.read_bytes() == second.read_bytes()
    close = render_panel(tmp_path, make_shot(framing="close"), "c.png")
    assert close.read_bytes() != first.read_bytes()


def test_panel_renders_cjk_glyphs_not_tofu(tmp_path):
    # Missing glyphs all draw the same box, so two different CJK captions of equal length would match.
    from pipeline.layout import panel_keep_out, LABEL

    # caption="top": under the header, which sits under the AI label's reach (pipeline/layout.py)
    top = round(panel_keep_out(LABEL, 0.10).y1 * 960)

    def caption_pixels(action: str, name: str) -> np.ndarray:
        panel = render_panel(tmp_path, make_shot(action=action, lines=()), name, (540, 960))
        return np.asarray(Image.open(panel), np.int16)[top:top + 200, 27:513]

    one, two = caption_pixels("林小雨推门而入。", "1.png"), caption_pixels("陈默抬头看着她。", "2.png")
    empty = caption_pixels("", "0.png")
    assert np.count_nonzero(np.abs(one - two).sum(-1) > 60) > 300
    assert np.count_nonzero(np.abs(one - empty).sum(-1) > 60) > 300


def test_panel_font_errors_are_clear():
    from models.image.procedural import ProceduralStoryboard, find_font

    with pytest.raises(FileNotFoundError, match="does not exist"):
        ProceduralStoryboard(font="/nonexistent/font.ttc")
    with pytest.raises(FileNotFoundError, match="fonts-noto-cjk"):
        find_font("No Such Font Family 123")


# --- video --------------------------------------------------------------------------------------------

def probe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
                          "stream=width,height,nb_read_frames,pix_fmt", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["streams"][0]


def gray_frames(path: Path, width: int, height: int) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width)


@pytest.fixture(scope="module")
def small_panel(tmp_path_factory) -> Path:
    return render_panel(tmp_path_factory.mktemp("panel"), make_shot(framing="wide"), "panel.png", (270, 480))


@needs_ffmpeg
@pytest.mark.parametrize("move", CAMERA_MOVES)
def test_clip_frames_size_and_motion(tmp_path, small_panel, move):
    backend = resolve("video", "camera-move")()
    out = tmp_path / f"{move}.mkv"
    result = backend.render(make_shot(camera=move), small_panel, out, duration_s=1.3, fps=24,
                            width=180, height=320, seed=1)
    assert result.outputs == {"clip": str(out), "frames": 31, "width": 180, "height": 320}
    info = probe(out)
    assert (info["width"], info["height"], int(info["nb_read_frames"])) == (180, 320, 31)
    assert info["pix_fmt"] == "yuv420p"
    frames = gray_frames(out, 180, 320).astype(np.int16)
    moved = np.abs(frames[0] - frames[-1]).mean()
    assert moved == 0 if move == "hold" else moved > 2


@needs_ffmpeg
def test_clip_rejects_bad_input(tmp_path, small_panel):
    backend = resolve("video", "camera-move")()
    with pytest.raises(ValueError, match="even"):
        backend.render(make_shot(), small_panel, tmp_path / "x.mkv", duration_s=1, fps=24, width=181,
                       height=320, seed=0)


# --- tts ----------------------------------------------------------------------------------------------

@needs_espeak
@pytest.mark.parametrize(("lang", "text"), [("zh", "你怎么会在这里？我找了你整整三年。"),
                                            ("en", "Why are you here? I looked for you for three years.")])
def test_espeak_speaks_zh_and_en(tmp_path, lang, text):
    tts = resolve("dub", "espeak-ng")()
    result = tts.speak(text, tmp_path / "line.wav", lang=lang, speaker="林小雨", voice={"gender": "f"},
                       emotion=None)
    samples, rate = read_wav(Path(result.outputs["wav"]))
    assert rate == result.outputs["sample_rate"] == 22050
    assert 1.5 < result.outputs["duration_s"] < 8.0
    assert abs(len(samples) / rate - result.outputs["duration_s"]) < 1e-6
    assert rms(samples) > 300
    assert result.ai_usage == ({"tool": "espeak-ng", "unit": "char", "quantity": len(text)},
                               {"tool": "espeak-ng:audio", "unit": "second",
                                "quantity": round(result.outputs["duration_s"], 6)})


@needs_espeak
def test_espeak_distinct_voices_and_emotion(tmp_path):
    tts = resolve("dub", "espeak-ng")()
    text = "你怎么会在这里？"
    her = tts.speak(text, tmp_path / "f.wav", lang="zh", speaker="林小雨", voice={"gender": "f"}, emotion=None)
    him = tts.speak(text, tmp_path / "m.wav", lang="zh", speaker="陈默", voice={"gender": "m"}, emotion=None)
    assert her.params["voice"] != him.params["voice"] and her.params["pitch"] > him.params["pitch"]
    assert Path(her.outputs["wav"]).read_bytes() != Path(him.outputs["wav"]).read_bytes()
    again = tts.speak(text, tmp_path / "f2.wav", lang="zh", speaker="林小雨", voice={"gender": "f"}, emotion=None)
    assert Path(again.outputs["wav"]).read_bytes() == Path(her.outputs["wav"]).read_bytes()
    angry = tts.speak(text, tmp_path / "a.wav", lang="zh", speaker="林小雨", voice={}, emotion="愤怒")
    sad = tts.speak(text, tmp_path / "s.wav", lang="zh", speaker="林小雨", voice={}, emotion="sad")
    assert angry.params["emotion"] == "angry" and angry.outputs["duration_s"] < sad.outputs["duration_s"]


@needs_espeak
def test_espeak_unsupported_language(tmp_path):
    tts = resolve("dub", "espeak-ng")()
    with pytest.raises(ValueError, match=r"'fr'.*zh, en"):
        tts.speak("Bonjour", tmp_path / "x.wav", lang="fr", speaker="A", voice={}, emotion=None)


def test_piper_speaks_english_only(tmp_path):
    pytest.importorskip("piper", reason="piper-tts is in the models extra")
    backend_cls = resolve("dub", "piper")
    assert backend_cls.resident is True
    tts = backend_cls()
    text = "Why are you here? I looked for you for three years."
    result = tts.speak(text, tmp_path / "en.wav", lang="en-US", speaker="Chen", voice={}, emotion=None)
    samples, rate = read_wav(Path(result.outputs["wav"]))
    assert rate == result.outputs["sample_rate"] == 22050
    assert 1.5 < result.outputs["duration_s"] < 8.0 and rms(samples) > 300
    assert result.ai_usage == ({"tool": "piper:en_US-joe-medium", "unit": "char", "quantity": len(text)},
                               {"tool": "piper:en_US-joe-medium:audio", "unit": "second",
                                "quantity": round(result.outputs["duration_s"], 6)})
    with pytest.raises(ValueError, match="espeak-ng"):
        tts.speak("你好", tmp_path / "zh.wav", lang="zh", speaker="Chen", voice={}, emotion=None)


# --- translation --------------------------------------------------------------------------------------

def test_no_translation_passes_same_language_and_explains_otherwise():
    mt = resolve("translate", "none")()
    assert mt.translate(["你好"], src="zh", tgt="zh-CN", glossary={}).outputs == {"texts": ["你好"]}
    with pytest.raises(ValueError, match=r"'en'.*\[\[en: …\]\].*translate backend"):
        mt.translate(["你好"], src="zh", tgt="en", glossary={})


# ---------------------------------------------------------------- dubbing fits a fixed-length shot

def _dub(tmp_path: Path, seconds: float | None, tag: str) -> dict:
    from pipeline import screenplay
    from pipeline.job import load_job
    from pipeline.stages import StageCall, StageRun
    from pipeline.stages.dub import DubStage

    length = f", {seconds:.3f}s" if seconds is not None else ""
    script = screenplay.parse("Title: t\nLanguage: zh\n\n内景. 办公室 - 夜\n\n"
                              f"[[shot: medium, hold{length}]]\n林晓\n我不会签这份合同，你找别人吧。\n\n"
                              "顾辰\n签了它，明天开始你就是她。\n")
    (tmp_path / "x.fountain").write_text("", "utf-8")  # the job needs a screenplay file; the shot is parsed above
    (tmp_path / "job.yaml").write_text("drama: d\nepisode: e\nscreenplay: x.fountain\nlanguages: [zh]\n", "utf-8")
    job = load_job(tmp_path / "job.yaml", [f"output_dir={tmp_path / 'out'}"])
    work = tmp_path / tag
    work.mkdir()
    run = StageRun(workdir=work, backend=resolve("dub", "espeak-ng")(), report_usage=lambda *a: None)
    return DubStage(job).run(StageCall(script.shots[0].id, {"shot": script.shots[0], "script": script}), run)


def test_dub_time_stretches_within_the_limit_then_extends_the_shot(tmp_path):
    natural = _dub(tmp_path, None, "natural")  # no duration: the shot lasts as long as its dialogue
    fixed = 0.4 + 0.25 + 0.6  # lead-in, one gap, tail (the DubSettings defaults)
    speech = natural["natural_s"]["zh"] - fixed
    assert natural["stretch"] == {"zh": 1.0} and not natural["extended"] and speech > 1.0
    fps = 24

    snug = _dub(tmp_path, fixed + speech / 1.1, "snug")  # needs 1.1×: within max_stretch 1.15
    assert snug["stretch"]["zh"] == pytest.approx(1.1, abs=1e-3) and not snug["extended"]
    assert snug["duration_s"] == pytest.approx(np.ceil(round((fixed + speech / 1.1) * fps, 6)) / fps)
    last = snug["lines"][-1]["timing"]["zh"][1]
    assert last <= snug["duration_s"] - 0.6 + 0.02  # the stretched speech ends before the tail

    tight = _dub(tmp_path, fixed + speech / 1.5, "tight")  # would need 1.5×: stretched 1.15×, shot extended
    assert tight["stretch"]["zh"] == pytest.approx(1.15) and tight["extended"]
    assert tight["duration_s"] == pytest.approx(fixed + speech / 1.15, abs=0.06)
    assert tight["duration_s"] > fixed + speech / 1.5


def test_panel_places_the_shots_characters(tmp_path):
    """Figures are drawn for the characters in the shot: two people change far more of the frame's middle
    (where figures stand; header and caption bands excluded) than one, and none leaves it to the set."""
    def middle(shot: Shot, name: str) -> np.ndarray:
        return np.asarray(Image.open(render_panel(tmp_path, shot, name, (540, 960))), np.int16)[300:800]

    nobody = middle(make_shot(characters=(), lines=()), "0.png")
    one = middle(make_shot(characters=("林小雨",), lines=()), "1.png")
    two = middle(make_shot(characters=("林小雨", "陈默"), lines=()), "2.png")
    changed = lambda a, b: np.count_nonzero(np.abs(a - b).sum(-1) > 60)  # noqa: E731
    assert changed(one, nobody) > 5000 and changed(two, nobody) > changed(one, nobody) + 2000


def test_shot_durations_follow_the_dialogue(tmp_path):
    """Without a duration note a shot lasts as long as its dialogue: lead-in + speech + gaps + tail, snapped
    up to whole frames, never under min_shot_s."""
    fps, longer = 24, _dub(tmp_path, None, "two-lines")
    assert longer["duration_s"] == pytest.approx(np.ceil(round(longer["natural_s"]["zh"] * fps, 6)) / fps)
    assert longer["duration_s"] * fps == pytest.approx(round(longer["duration_s"] * fps))
    timing = [line["timing"]["zh"] for line in longer["lines"]]
    assert timing[0][0] == pytest.approx(0.4) and timing[1][0] == pytest.approx(timing[0][1] + 0.25, abs=1e-3)
    assert longer["duration_s"] >= timing[1][1] + 0.6 - 1e-6 and longer["duration_s"] >= 1.5
