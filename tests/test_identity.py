"""Reference-conditioned keyframes (FLUX.1 Kontext, SDXL + IP-Adapter) and the identity check, on tiny twins."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import tiny
from models.registry import resolve
from pipeline.script import Character, Scene, Script, Shot

pytest.importorskip("diffusers")
pytest.importorskip("onnxruntime")

W, H = 48, 80  # multiples of 16, near 9:16: the backend tests stay fast


def _png(path: Path, seed: int, size=(45, 80)) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


def _script(refs: dict[str, tuple[str, ...]]) -> Script:
    chars = {"林晓": Character(name="林晓", names={"en": "Lin Xiao"}, description="倔强的实习生", seed=11,
                               reference_images=refs.get("林晓", ())),
             "顾辰": Character(name="顾辰", names={"en": "Gu Chen"}, description="冷漠的总裁",
                               reference_images=refs.get("顾辰", ()))}
    shots = (Shot(id="s01-sh01", scene=1, index=1, location="办公室", characters=("林晓", "顾辰"), action="对视。"),
             Shot(id="s01-sh02", scene=1, index=2, location="办公室", characters=("林晓",), action="她笑了。"),
             Shot(id="s01-sh03", scene=1, index=3, location="城墙", characters=(), action="灯笼摇晃。"))
    return Script(title="替身", characters=chars, scenes=(Scene(number=1, heading="内景", location="办公室",
                                                                  shots=shots),))


def _digest(path: str | Path) -> str:
    return hashlib.sha256(np.asarray(Image.open(path)).tobytes()).hexdigest()


# ---------------------------------------------------------------- keyframe backends

@pytest.mark.parametrize("name", ["flux-kontext-tiny", "sdxl-ip-adapter-tiny"])
def test_reference_backends_are_conditioned_on_the_sheet(name, tmp_path):
    a, b = _png(tmp_path / "a.png", 1), _png(tmp_path / "b.png", 2)
    backend = resolve("storyboard", name)(steps=1)
    shot = _script({}).shots[0]
    with_a = backend.render(shot, _script({"林晓": (a,)}), tmp_path / "1.png", width=W, height=H, seed=3)
    again = backend.render(shot, _script({"林晓": (a,)}), tmp_path / "2.png", width=W, height=H, seed=3)
    with_b = backend.render(shot, _script({"林晓": (b,)}), tmp_path / "3.png", width=W, height=H, seed=3)
    both = backend.render(shot, _script({"林晓": (a,), "顾辰": (b,)}), tmp_path / "4.png", width=W, height=H, seed=3)
    retry = backend.render(shot, _script({"林晓": (a,)}), tmp_path / "5.png", width=W, height=H, seed=3, try_index=1)
    assert Image.open(with_a.outputs["image"]).size == (W, H)
    assert _digest(with_a.outputs["image"]) == _digest(again.outputs["image"])  # deterministic
    assert _digest(with_a.outputs["image"]) != _digest(with_b.outputs["image"])  # the reference steers the picture
    assert with_a.params["seed"] == 11  # the lead's own Character.seed
    assert retry.params["seed"] != 11 and _digest(retry.outputs["image"]) != _digest(with_a.outputs["image"])
    assert [r["character"] for r in both.params["references"]] == ["林晓", "顾辰"]
    assert both.params["references"][1]["sha256"] == hashlib.sha256(Path(b).read_bytes()).hexdigest()
    sheet_w, sheet_h = both.params["reference_sheet"]
    assert sheet_w > sheet_h and sheet_w % 16 == 0 and sheet_h % 16 == 0  # two panels side by side
    assert {u["tool"]: u["quantity"] for u in with_a.ai_usage} == {name: 1, f"{name}:step": 1}


def test_without_references_the_backends_render_from_text_and_say_so(tmp_path):
    for name in ("flux-kontext-tiny", "sdxl-ip-adapter-tiny"):
        r = resolve("storyboard", name)(steps=1).render(_script({}).shots[2], _script({}), tmp_path / f"{name}.png",
                                                        width=W, height=H, seed=3)
        assert r.params["references"] == [] and r.params["reference_sheet"] is None
        assert r.params.get("ip_adapter_scale", 0.0) == 0.0


def test_the_tiny_sdxl_twin_loads_its_adapter_through_load_ip_adapter():
    pipe = tiny.sdxl_ip_adapter(0)
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from transformers import CLIPVisionModelWithProjection

    assert isinstance(pipe.image_encoder, CLIPVisionModelWithProjection)
    procs = [p for p in pipe.unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)]
    assert procs and len(procs) == sum(1 for n in pipe.unet.attn_processors if n.endswith("attn2.processor"))
    assert type(tiny.flux_kontext(0)).__name__ == "FluxKontextPipeline"


def test_real_reference_backends_load_from_weights_dirs(tmp_path):
    """The production load path (from_pretrained + load_ip_adapter, local files only) on tiny saved weights."""
    from models.hub import WeightsMissing

    tiny.flux_kontext(0).save_pretrained(tmp_path / "kontext")
    sdxl = tiny._build_sdxl(0)
    sdxl.save_pretrained(tmp_path / "sdxl")
    tiny.ip_adapter_folder(sdxl.unet, tmp_path / "ip")
    a = _png(tmp_path / "a.png", 1)
    shot, script = _script({}).shots[1], _script({"林晓": (a,)})
    k = resolve("storyboard", "flux-kontext-dev")(weights_dir=str(tmp_path / "kontext"), dtype="float32",
                                                   device="cpu", steps=1)
    r = k.render(shot, script, tmp_path / "k.png", width=W, height=H, seed=1)
    assert r.params["model"] == "black-forest-labs/FLUX.1-Kontext-dev" and Image.open(r.outputs["image"]).size == (W, H)
    s = resolve("storyboard", "sdxl-ip-adapter")(weights_dir=str(tmp_path / "sdxl"), ip_adapter_dir=str(tmp_path / "ip"),
                                                  dtype="float32", device="cpu", steps=1)
    r = s.render(shot, script, tmp_path / "s.png", width=W, height=H, seed=1)
    assert r.params["model"] == "stabilityai/stable-diffusion-xl-base-1.0" and r.params["ip_adapter_scale"] == 0.6
    with pytest.raises(WeightsMissing, match="h94/IP-Adapter"):
        resolve("storyboard", "sdxl-ip-adapter")(weights_dir=str(tmp_path / "sdxl"), ip_adapter_dir=str(tmp_path))
    with pytest.raises(WeightsMissing, match="FLUX.1-Kontext-dev"):
        resolve("storyboard", "flux-kontext-dev")(weights_dir=str(tmp_path))


# ---------------------------------------------------------------- identity check

def test_a_reference_identical_to_the_keyframe_scores_one(tmp_path):
    ident = resolve("identity", "arcface-tiny")()
    key, other = _png(tmp_path / "k.png", 5), _png(tmp_path / "o.png", 6)
    same = ident.check(key, {"林晓": [key]})["林晓"]
    assert same["score"] == pytest.approx(1.0, abs=1e-5) and same["face"] == "full-frame"
    diff = ident.check(key, {"林晓": [other]})["林晓"]["score"]
    assert -1.0 <= diff < 0.99999


def test_no_face_is_recorded_honestly_not_scored(tmp_path):
    """The Haar detector (OpenCV's trained cascade) finds no face in noise: score None with the reason."""
    ident = resolve("identity", "arcface-tiny")(detector="haar")
    key = _png(tmp_path / "k.png", 5, size=(144, 256))
    out = ident.check(key, {"林晓": [key], "顾辰": []})
    assert out["林晓"] == {"score": None, "reason": "no face found in 1 reference image(s)"}
    assert out["顾辰"]["score"] is None
    ident_ff = resolve("identity", "arcface-tiny")()
    assert ident_ff.check(key, {"林晓": [key], "顾辰": [key]})["顾辰"]["reason"].startswith("1 face(s) in the keyframe")


def test_arcface_r50_needs_its_onnx_file_and_loads_it(tmp_path):
    from models.hub import WeightsMissing

    with pytest.raises(WeightsMissing, match=r"stages\.storyboard\.identity\.options\.weights_dir.*w600k_r50\.onnx"):
        resolve("identity", "arcface-r50")()
    (tmp_path / "w600k_r50.onnx").write_bytes(tiny.arcface_onnx(0))
    ident = resolve("identity", "arcface-r50")(weights_dir=str(tmp_path), detector="full-frame")
    key = _png(tmp_path / "k.png", 5)
    assert ident.check(key, {"林晓": [key]})["林晓"]["score"] == pytest.approx(1.0, abs=1e-5)
    assert ident.model.endswith("w600k_r50.onnx")


def test_faces_are_matched_one_to_one():
    from models.image.identity import match

    assert match(np.array([[0.9, 0.8], [0.85, 0.1]])) == [1, 0]  # greedy would give both the first face
    assert match(np.array([[0.2], [0.7]])) == [None, 0]
