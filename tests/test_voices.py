"""Cloned voices: F5-TTS (tiny random twin) speaks each character in the voice of its reference clip, one
stable voice per character across episodes, seeded, metered; the real loader reads F5's own file layout."""
from __future__ import annotations

import hashlib
import wave
from pathlib import Path

import numpy as np
import pytest

from models.registry import resolve
from tests.media import voice_clip

pytest.importorskip("f5_tts", reason="f5-tts is in the models extra")  # installed in the project venv

F5 = {"steps": 2}
LINE = "签了它，我们明天再谈。"  # 11 characters, 33 UTF-8 bytes
CLIP_TEXT = "今天天气很好，我们一起走吧。"  # 14 characters, 42 bytes


clip = voice_clip  # tests/media.py


def sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def f5():
    return resolve("dub", "f5-tiny")(**F5)


def test_f5_tiny_clones_a_clip_at_24khz_for_as_long_as_f5_plans(f5, tmp_path):
    from models.tts.f5 import HOP, planned_frames

    ref = clip(tmp_path / "ref.wav")  # 4 s → 375 mel frames at hop 256
    voice = {"reference": str(ref), "transcript": CLIP_TEXT, "seed": 11}
    r = f5.speak(LINE, tmp_path / "a.wav", lang="zh", speaker="林晓", voice=voice, emotion=None)
    frames = int(375 / 42 * 33)  # F5's estimate: the clip's frames per byte times the line's bytes
    assert frames == planned_frames(375, CLIP_TEXT, LINE, 1.0) == r.params["frames"] == 294
    with wave.open(r.outputs["wav"]) as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (1, 24000, (frames - 1) * HOP)
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert pcm.std() > 0 and r.outputs["duration_s"] == (frames - 1) * HOP / 24000
    assert r.params["reference"] == "clip" and r.params["reference_sha256"] == sha(ref)
    assert r.params["voice_seed"] == 11 and r.params["reference_transcript"] == CLIP_TEXT
    tools = {u["tool"]: (u["unit"], u["quantity"]) for u in r.ai_usage}
    assert tools == {"f5-tiny": ("char", len(LINE)), "f5-tiny:audio": ("second", round(r.outputs["duration_s"], 6))}
    # English from the same clip (F5 is cross-lingual); slower pace → more frames
    en = f5.speak("Sign it.", tmp_path / "en.wav", lang="en", speaker="林晓", voice={**voice, "pace": 0.8},
                  emotion=None)
    assert en.params["frames"] == planned_frames(375, CLIP_TEXT, "Sign it.", 0.8)  # a short line: F5's 0.3


def test_the_voice_is_deterministic_per_character_seed(f5, tmp_path):
    ref = clip(tmp_path / "ref.wav")
    voice = {"reference": str(ref), "transcript": CLIP_TEXT, "seed": 5}
    one = f5.speak(LINE, tmp_path / "1.wav", lang="zh", speaker="林晓", voice=voice, emotion=None)
    again = resolve("dub", "f5-tiny")(**F5).speak(LINE, tmp_path / "2.wav", lang="zh", speaker="林晓", voice=voice,
                                                  emotion=None)
    other = f5.speak(LINE, tmp_path / "3.wav", lang="zh", speaker="林晓", voice={**voice, "seed": 6}, emotion=None)
    assert sha(one.outputs["wav"]) == sha(again.outputs["wav"])  # another instance (another worker): same audio
    assert one.params["seed"] == again.params["seed"] != other.params["seed"]
    assert sha(one.outputs["wav"]) != sha(other.outputs["wav"])


def test_emotion_picks_the_default_reference_or_the_pace_and_is_recorded(f5, tmp_path):
    neutral = f5.speak(LINE, tmp_path / "n.wav", lang="zh", speaker="顾辰", voice={"gender": "m"}, emotion=None)
    angry = f5.speak(LINE, tmp_path / "a.wav", lang="zh", speaker="顾辰", voice={"gender": "m"}, emotion="愤怒")
    assert neutral.params["reference"] == "espeak-ng default" and neutral.params["emotion_via"] is None
    assert (angry.params["emotion"], angry.params["emotion_requested"], angry.params["emotion_via"]) == (
        "angry", "愤怒", "reference")
    assert angry.params["reference_sha256"] != neutral.params["reference_sha256"]  # spoken angrily
    assert any(u["tool"] == "espeak-ng" for u in neutral.ai_usage)  # the default reference is metered, once
    again = f5.speak("我不签。", tmp_path / "n2.wav", lang="zh", speaker="顾辰", voice={"gender": "m"}, emotion=None)
    assert not any(u["tool"].startswith("espeak") for u in again.ai_usage)
    assert again.params["reference_sha256"] == neutral.params["reference_sha256"]
    given = {"reference": str(clip(tmp_path / "ref.wav")), "transcript": CLIP_TEXT}
    sad = f5.speak(LINE, tmp_path / "s.wav", lang="zh", speaker="顾辰", voice=given, emotion="sad")
    assert (sad.params["emotion_via"], sad.params["speed"]) == ("speed", 0.82)


def test_bad_reference_clips_are_refused_naming_the_field(f5, tmp_path):
    short = clip(tmp_path / "short.wav", seconds=1.5)
    with pytest.raises(ValueError, match=r"stages\.dub\.voices\.林晓\.reference: .* is 1\.5 s long; a reference "
                                         r"clip must be 3–15 s"):
        f5.speak(LINE, tmp_path / "x.wav", lang="zh", speaker="林晓",
                 voice={"reference": str(short), "transcript": "你好。"}, emotion=None)
    with pytest.raises(ValueError, match=r"stages\.dub\.voices\.林晓\.transcript: the reference clip needs"):
        f5.speak(LINE, tmp_path / "x.wav", lang="zh", speaker="林晓", voice={"reference": str(short)}, emotion=None)
    with pytest.raises(ValueError, match="Mandarin and English, not 'fr'"):
        f5.speak("Bonjour", tmp_path / "x.wav", lang="fr", speaker="林晓", voice={}, emotion=None)


def _episode_dub(tmp_path: Path, episode: str, backend, bible: dict) -> dict:
    """The dub stage of one episode whose screenplay casts 林晓 with the series bible's voice fields."""
    from pipeline import screenplay
    from pipeline.job import load_job
    from pipeline.script import Character
    from pipeline.stages import StageCall, StageRun
    from pipeline.stages.dub import DubStage

    folder = tmp_path / episode
    folder.mkdir()
    (folder / "x.fountain").write_text("", "utf-8")
    (folder / "job.yaml").write_text(f"drama: d\nepisode: {episode}\nscreenplay: x.fountain\nlanguages: [zh]\n"
                                     "profile: tiny\nstages: {dub: {backend: f5-tiny, options: {steps: 2}}}\n", "utf-8")
    job = load_job(folder / "job.yaml", [f"output_dir={tmp_path / 'out'}"])
    script = screenplay.parse("Title: t\nLanguage: zh\n\n内景. 办公室 - 夜\n\n林晓\n签了它，我们明天再谈。\n")
    script = script.model_copy(update={"characters": {"林晓": Character(name="林晓", voice={"gender": "f"},
                                                                        **bible)}})
    shot = script.shots[0]
    work = folder / "work"
    work.mkdir()
    usage: list[tuple] = []
    run = StageRun(workdir=work, backend=backend, report_usage=lambda *a: usage.append(a))
    stage = DubStage(job)
    call = StageCall(shot.id, {"shot": shot, "script": script})
    out = stage.run(call, run)
    return {"out": out, "key": stage.cache_key_parts(call), "usage": usage}


def test_the_same_character_keeps_its_reference_and_voice_across_episodes(tmp_path):
    ref = clip(tmp_path / "linxiao.wav")
    bible = {"voice_reference": str(ref), "voice_transcript": CLIP_TEXT, "seed": 42}
    ep1 = _episode_dub(tmp_path, "ep01", resolve("dub", "f5-tiny")(**F5), bible)
    ep2 = _episode_dub(tmp_path, "ep02", resolve("dub", "f5-tiny")(**F5), bible)  # another worker, another episode
    said1, said2 = ep1["out"]["params"]["lines"][0]["zh"], ep2["out"]["params"]["lines"][0]["zh"]
    assert said1["reference_sha256"] == said2["reference_sha256"] == sha(ref) and said1["voice_seed"] == 42
    assert said1["seed"] == said2["seed"] and ep1["out"]["natural_s"] == ep2["out"]["natural_s"]
    assert sha(ep1["out"]["audio"]["zh"]) == sha(ep2["out"]["audio"]["zh"])
    assert ("f5-tiny", "char", len(LINE)) in ep1["usage"]  # metered like the other dub backends
    # the cache key covers the clip's content, not where it lies
    assert ep1["key"] == ep2["key"] and sha(ref) in repr(ep1["key"]) and str(ref) not in repr(ep1["key"])
    # without a clip: the default reference, spoken once from the hints, is the same in both episodes
    d1 = _episode_dub(tmp_path, "ep03", resolve("dub", "f5-tiny")(**F5), {"seed": 42})
    d2 = _episode_dub(tmp_path, "ep04", resolve("dub", "f5-tiny")(**F5), {"seed": 42})
    one, two = d1["out"]["params"]["lines"][0]["zh"], d2["out"]["params"]["lines"][0]["zh"]
    assert one["reference"] == "espeak-ng default" and one["reference_sha256"] == two["reference_sha256"]
    assert sha(d1["out"]["audio"]["zh"]) == sha(d2["out"]["audio"]["zh"])


def test_the_real_loader_reads_f5s_file_layout(tmp_path):
    """`f5-tts` loads F5's EMA safetensors, vocab.txt and Vocos's config.yaml + pytorch_model.bin: the tiny
    twin's weights saved in that layout load strictly and speak exactly as the twin does."""
    import torch
    import yaml
    from safetensors.torch import save_file

    from models import tiny
    from models.tts import f5_modules

    cfm, vocoder, _ = tiny.f5(0)
    weights, voc = tmp_path / "F5-TTS" / "F5TTS_v1_Base", tmp_path / "vocos"
    weights.mkdir(parents=True)
    voc.mkdir()
    state = {f"ema_model.{k}": v.contiguous() for k, v in cfm.state_dict().items()}
    save_file({**state, "initted": torch.tensor(True), "step": torch.tensor(1)},
              str(weights / "model_1250000.safetensors"))
    (weights / "vocab.txt").write_bytes(f5_modules.packaged_vocab().read_bytes())
    init = {"backbone": {"class_path": "vocos.models.VocosBackbone", "init_args": tiny.TINY_VOCOS["backbone"]},
            "head": {"class_path": "vocos.heads.ISTFTHead", "init_args": tiny.TINY_VOCOS["head"]}}
    (voc / "config.yaml").write_text(yaml.safe_dump(init), "utf-8")
    torch.save({**vocoder.state_dict(), "feature_extractor.mel_spec.mel_scale.fb": torch.zeros(1)},
               voc / "pytorch_model.bin")
    real = resolve("dub", "f5-tts")(weights_dir=str(tmp_path / "F5-TTS"), vocoder_dir=str(voc), device="cpu",
                                    arch=tiny.TINY_F5, **F5)
    voice = {"reference": str(clip(tmp_path / "ref.wav")), "transcript": CLIP_TEXT, "seed": 3}
    a = real.speak(LINE, tmp_path / "real.wav", lang="zh", speaker="林晓", voice=voice, emotion=None)
    b = resolve("dub", "f5-tiny")(**F5).speak(LINE, tmp_path / "tiny.wav", lang="zh", speaker="林晓", voice=voice,
                                              emotion=None)
    assert a.params["model"] == "F5TTS_v1_Base" and real.loads == 1
    assert sha(a.outputs["wav"]) == sha(b.outputs["wav"])


def test_f5_without_weights_fails_at_once_naming_both_models(tmp_path):
    from models.hub import WeightsMissing

    with pytest.raises(WeightsMissing) as err:
        resolve("dub", "f5-tts")(weights_dir=str(tmp_path), vocoder_dir=str(tmp_path / "v"))
    text = str(err.value)
    assert "SWivid/F5-TTS" in text and "stages.dub.options.weights_dir" in text
    assert "charactr/vocos-mel-24khz" in text and "stages.dub.options.vocoder_dir" in text
    assert "huggingface-cli download SWivid/F5-TTS" in text


def test_job_voice_clips_are_checked_at_validate(tmp_path):
    from pipeline.errors import JobError
    from pipeline.job import load_job

    (tmp_path / "x.fountain").write_text("Title: t\n\nINT. ROOM - DAY\n\nANNA\nHi.\n", "utf-8")
    (tmp_path / "job.yaml").write_text("drama: d\nepisode: e\nscreenplay: x.fountain\nprofile: tiny\n", "utf-8")
    clip(tmp_path / "anna.wav")
    job = load_job(tmp_path / "job.yaml", ["stages.dub.voices.ANNA={reference: anna.wav, transcript: 你好。}"])
    assert job.stages.dub.voices["ANNA"]["reference"] == "anna.wav"
    with pytest.raises(JobError, match=r"stages\.dub\.voices\.ANNA\.transcript: required with a reference clip"):
        load_job(tmp_path / "job.yaml", ["stages.dub.voices.ANNA.reference=anna.wav"])
    with pytest.raises(JobError, match=r"stages\.dub\.voices\.ANNA\.reference: file not found"):
        load_job(tmp_path / "job.yaml", ["stages.dub.voices.ANNA={reference: bob.wav, transcript: 你好。}"])
    with pytest.raises(JobError, match=r"ANNA\.reference: \.\./anna\.wav is outside the job's folder"):
        load_job(tmp_path / "job.yaml", ["stages.dub.voices.ANNA={reference: ../anna.wav, transcript: 你好。}"])
