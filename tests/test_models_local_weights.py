"""The production load path of every real backend, fed tiny weights saved to a local `weights_dir`."""
from __future__ import annotations

import wave
from pathlib import Path

import pytest
from PIL import Image

from models import tiny
from models.registry import resolve
from pipeline.script import Script, Shot

pytest.importorskip("diffusers")

SHOT = Shot(id="s01-sh01", scene=1, index=1, location="office", characters=("GU",), action="Gu stares.")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    tiny.flux(0).save_pretrained(root / "flux")
    tiny.wan_i2v(0).save_pretrained(root / "wan")
    for name, build in (("mt", tiny.marian), ("dub", tiny.vits), ("lm", tiny.causal_lm)):
        model, tok = build(0)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root


def test_flux_dev_and_wan_i2v_load_from_weights_dir(weights, tmp_path):
    board = resolve("storyboard", "flux-dev")(weights_dir=str(weights / "flux"), dtype="float32", device="cpu",
                                               steps=1)
    r = board.render(SHOT, Script(language="en"), tmp_path / "k.png", width=48, height=80, seed=1)
    assert Image.open(r.outputs["image"]).size == (48, 80) and r.params["model"] == "black-forest-labs/FLUX.1-dev"
    assert r.ai_usage[0]["tool"] == "flux-dev"
    video = resolve("video", "wan2.1-i2v-480p")(weights_dir=str(weights / "wan"), dtype="float32", device="cpu",
                                                 steps=1, max_sequence_length=16)
    r = video.render(SHOT, tmp_path / "k.png", tmp_path / "c.mkv", duration_s=0.5, fps=8, width=48, height=80,
                     seed=1)
    assert r.outputs["frames"] == 4 and r.params["frames_generated"] == 5 and Path(r.outputs["clip"]).stat().st_size
    assert {u["tool"] for u in r.ai_usage} == {"wan2.1-i2v-480p", "wan2.1-i2v-480p:step", "wan2.1-i2v-480p:frame"}


def test_opus_mms_and_hf_lm_load_from_weights_dir(weights, tmp_path):
    mt = resolve("translate", "opus-mt-zh-en")(weights_dir=str(weights / "mt"), device="cpu", num_beams=1)
    r = mt.translate(["林晓签了。"], src="zh", tgt="en", glossary={"林晓": "Lin Xiao"})
    assert r.outputs["texts"][0].startswith("Lin Xiao")
    tts = resolve("dub", "mms-tts-eng")(weights_dir=str(weights / "dub"))
    r = tts.speak("Sign it.", tmp_path / "a.wav", lang="en", speaker="GU", voice={}, emotion=None)
    with wave.open(r.outputs["wav"]) as w:
        assert w.getframerate() == 16000 and w.getnframes() > 0
    with pytest.raises(ValueError, match="no voice for language 'zh'"):
        tts.speak("签了它", tmp_path / "b.wav", lang="zh", speaker="GU", voice={}, emotion=None)
    lm = resolve("script", "hf-causal-lm")(weights_dir=str(weights / "lm"), device="cpu", max_new_tokens=24)
    r = lm.write(logline="The Stand-in", beats=["Office."], language="en", seed=1)
    assert r.params["repair"] == "skeleton" and "INT. SCENE 1 - DAY" in r.outputs["screenplay"]
