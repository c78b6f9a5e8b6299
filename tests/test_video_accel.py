"""Acceleration and throughput options of the diffusers video backends, on the tiny random Wan models."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import tiny
from models.registry import resolve
from pipeline.script import Shot

pytest.importorskip("diffusers")
pytest.importorskip("peft")

SHOT = Shot(id="s01-sh01", scene=1, index=1, location="office", characters=("GU",), action="Gu stares.")
OTHER = Shot(id="s01-sh02", scene=1, index=2, location="office", characters=("LIN",), action="Lin signs.")
SIZE = dict(duration_s=0.5, fps=8, width=48, height=80, seed=1)
CUDA = pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (fp8, side streams)")


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kf") / "k.png"
    Image.new("RGB", (48, 80), (120, 60, 30)).save(path)
    return path


@pytest.fixture(scope="module")
def lora(tmp_path_factory) -> Path:
    return tiny.wan_lora(tiny.wan_i2v(0).transformer, tmp_path_factory.mktemp("lora") / "distill.safetensors",
                         rank=4, alpha=2.0, std=0.5, seed=3)


def _lora_delta(path: Path, key: str, scale: float) -> object:
    from safetensors.torch import load_file

    sd = load_file(str(path))
    up, down = sd[f"diffusion_model.{key}.lora_up.weight"], sd[f"diffusion_model.{key}.lora_down.weight"]
    return up @ down * (float(sd[f"diffusion_model.{key}.alpha"]) / down.shape[0]) * scale


def test_lightx2v_format_lora_is_loaded_fused_and_recorded(lora, key, tmp_path):
    base = tiny.wan_i2v(0).transformer
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    video = resolve("video", "wan-tiny")(lora={"path": str(lora), "scale": 0.5}, distilled=True)
    assert (video.steps, video.guidance) == (4, 1.0)  # distilled: 4 steps, classifier-free guidance off
    pipe = video.load()
    fused = pipe.transformer.blocks[1]
    for ours, theirs in (("attn1.to_q", "self_attn.q"), ("attn2.to_out.0", "cross_attn.o"), ("ffn.net.2", "ffn.2")):
        got = fused.get_submodule(ours).weight - before[f"blocks.1.{ours}.weight"]
        assert np.allclose(got.numpy(), _lora_delta(lora, f"blocks.1.{theirs}", 0.5).numpy(), atol=1e-5), ours
    assert type(fused.attn1.to_q).__name__ == "Linear"  # fused: the adapter layers are gone
    for n, p in base.named_parameters():  # the process-wide tiny model is untouched (the backend has a copy)
        assert (p == before[n]).all(), n
    r = video.render(SHOT, key, tmp_path / "c.mkv", **SIZE)
    accel = r.params["accel"]
    assert accel["lora"]["file"] == "distill.safetensors" and len(accel["lora"]["sha256"]) == 16
    assert accel["distilled"] and accel["applied"] == ["lora:lora", "lora:fused"]
    assert r.params["steps"] == 4 and r.params["guidance"] == 1.0
    assert {u["tool"]: u["quantity"] for u in r.ai_usage}["wan-tiny:step"] == 4


def test_second_expert_lora_goes_into_transformer_2_only(tmp_path, key):
    pipe0 = tiny.wan22_i2v_a14b(0)
    path = tiny.wan_lora(pipe0.transformer_2, tmp_path / "low.safetensors", rank=2, std=0.5)
    w1 = pipe0.transformer.blocks[0].attn1.to_k.weight.detach().clone()
    w2 = pipe0.transformer_2.blocks[0].attn1.to_k.weight.detach().clone()
    video = resolve("video", "wan2.2-a14b-tiny")(lora_2=str(path), steps=2)
    pipe = video.load()
    assert (pipe.transformer.blocks[0].attn1.to_k.weight == w1).all()
    got = pipe.transformer_2.blocks[0].attn1.to_k.weight - w2
    assert np.allclose(got.numpy(), _lora_delta(path, "blocks.0.self_attn.k", 1.0).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="lora_2 is for Wan2.2"):
        resolve("video", "wan-tiny")(lora_2=str(path)).load()


def test_two_experts_share_the_denoising_at_the_boundary(key, tmp_path):
    video = resolve("video", "wan2.2-a14b-tiny")(steps=4)
    pipe = video.load()
    calls = {"transformer": 0, "transformer_2": 0}
    hooks = [getattr(pipe, n).register_forward_hook(lambda *a, n=n: calls.__setitem__(n, calls[n] + 1))
             for n in calls]
    try:
        r = video.render(SHOT, key, tmp_path / "a14b.mkv", **SIZE)
    finally:
        for h in hooks:
            h.remove()
    assert calls["transformer"] > 0 and calls["transformer_2"] > 0  # high-noise then low-noise expert
    assert calls["transformer"] + calls["transformer_2"] == 4 * 2  # 4 steps, each cond + uncond (CFG 3.5)
    assert r.params["experts"] == 2 and r.params["boundary_ratio"] == 0.9
    assert r.params["model"].startswith("tiny-random-wan2.2-a14b")


def test_options_are_validated_naming_the_field(lora):
    from models.hub import WeightsMissing

    wan = resolve("video", "wan-tiny")
    cases = [({"lora": str(lora), "distilled": True, "guidance": 5.0}, "options.guidance"),
             ({"lora": str(lora), "distilled": True, "cache": {"kind": "fbc"}}, "non-distilled"),
             ({"distilled": True}, "options.distilled: true needs"),
             ({"cache": {"kind": "teacache"}}, r"options.cache.kind"),
             ({"cache": {"kind": "mag"}}, "options.cache.mag_ratios"),
             ({"cache": {"kind": "fbc", "thresh": 1}}, "unknown key"),
             ({"quantize": "int4"}, "options.quantize"),
             ({"attention": "warp"}, "options.attention: unknown"),
             ({"attention": "flash_hub"}, "at run time"),
             ({"compile": "yes"}, "options.compile"),
             ({"context_parallel": 0}, "options.context_parallel"),
             ({"lora": {"file": "x"}}, "options.lora")]
    for options, match in cases:
        with pytest.raises(ValueError, match=match):
            wan(**options)
    with pytest.raises(WeightsMissing, match="options.lora: /nowhere/x.safetensors is not a file"):
        wan(lora="/nowhere/x.safetensors")
    with pytest.raises(RuntimeError, match="torch.distributed group of 2 ranks"):
        wan(context_parallel=2).load()


def _count_calls(module) -> list[int]:
    count = [0]
    module.register_forward_hook(lambda *a: count.__setitem__(0, count[0] + 1))
    return count


@pytest.mark.parametrize("threshold, skipped", [(0.0, False), (1e9, True)])
def test_first_block_cache_skips_the_remaining_blocks(key, tmp_path, threshold, skipped):
    video = resolve("video", "wan-tiny")(steps=4, cache={"kind": "fbc", "threshold": threshold})
    pipe = video.load()
    tail = _count_calls(pipe.transformer.blocks[1].attn1)  # inside the last block: runs only when computed
    r = video.render(SHOT, key, tmp_path / "fbc.mkv", **SIZE)
    assert r.params["accel"]["cache"] == {"kind": "fbc", "threshold": threshold}
    assert "cache:fbc" in r.params["accel"]["applied"]
    if skipped:  # the first step (cond and uncond) computes everything; later steps reuse the residual
        assert tail[0] == 2
    else:
        assert tail[0] == 4 * 2


def test_magcache_with_ratios_runs_and_is_recorded(key, tmp_path):
    video = resolve("video", "wan-tiny")(steps=4, cache={"kind": "mag", "threshold": 10.0, "mag_ratios": [1.0] * 4,
                                                         "retention_ratio": 0.25, "max_skip_steps": 2})
    r = video.render(SHOT, key, tmp_path / "mag.mkv", **SIZE)
    assert "cache:mag" in r.params["accel"]["applied"] and Path(r.outputs["clip"]).stat().st_size


def test_int8_attention_tiling_and_regional_compile_compose(key, tmp_path):
    pytest.importorskip("torchao")
    video = resolve("video", "wan-tiny")(quantize="int8", attention="native", vae_tiling=True,
                                         compile={"backend": "eager"})
    pipe = video.load()
    weight = pipe.transformer.blocks[0].attn1.to_q.weight
    assert type(weight).__name__ != "Parameter" or "Int8" in type(weight.data).__name__ or hasattr(weight, "qdata") \
        or "Affine" in type(weight).__name__
    assert pipe.vae.use_tiling and video._decode_vae.use_tiling
    assert any(hasattr(b, "_compiled_call_impl") and b._compiled_call_impl is not None
               for b in pipe.transformer.blocks)
    r = video.render(SHOT, key, tmp_path / "q.mkv", **SIZE)
    assert r.params["accel"]["applied"] == ["quantize:int8", "attention:native", "vae_tiling", "compile:regional"]
    assert r.outputs["frames"] == 4


def test_fp8_needs_a_cuda_gpu_here():
    pytest.importorskip("torchao")
    import torch

    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9):
        pytest.skip("a GPU with fp8 is present: test_fp8_on_gpu covers it")
    with pytest.raises(RuntimeError, match="fp8 needs a CUDA GPU"):
        resolve("video", "wan-tiny")(quantize="fp8").load()


@CUDA
def test_fp8_on_gpu(key, tmp_path):
    pytest.importorskip("torchao")
    video = resolve("video", "wan-tiny")(quantize="fp8", device="cuda")
    r = video.render(SHOT, key, tmp_path / "f8.mkv", **SIZE)
    assert "quantize:fp8" in r.params["accel"]["applied"]


def test_text_embeddings_are_cached_per_prompt(key, tmp_path):
    video = resolve("video", "wan-tiny")()
    pipe = video.load()
    encodes = _count_calls(pipe.text_encoder)
    video.render(SHOT, key, tmp_path / "a.mkv", **SIZE)
    video.render(SHOT, key, tmp_path / "b.mkv", **SIZE)
    video.render(OTHER, key, tmp_path / "c.mkv", **SIZE)
    assert (video.text_cache_misses, video.text_cache_hits) == (2, 1)
    assert encodes[0] == 2 * 2  # prompt + negative prompt, for each distinct shot prompt
    cold = resolve("video", "wan-tiny")(text_cache=0)
    same = [v._generate(v.load(), "a prompt", key, 5, 48, 80, 7) for v in (video, cold)]
    assert np.array_equal(same[0], same[1]) and cold.text_cache_hits == 0


def test_decode_and_write_overlap_the_next_denoising(key, tmp_path, monkeypatch):
    from models.video import diffusers_video as dv

    video = resolve("video", "wan-tiny")()
    pipe = video.load()
    events: list[tuple[str, str, float]] = []
    real_call, real_write = type(pipe).__call__, dv.write_lossless

    def denoise(self, *a, **kw):
        who = threading.current_thread().name
        events.append(("denoise+", who, time.perf_counter()))
        try:
            return real_call(self, *a, **kw)
        finally:
            events.append(("denoise-", who, time.perf_counter()))

    def write(frames, out, fps):
        who = threading.current_thread().name
        events.append(("write+", who, time.perf_counter()))
        time.sleep(1.0)  # a slow lossless write: the other shot's denoising must not wait for it
        real_write(frames, out, fps)
        events.append(("write-", who, time.perf_counter()))

    monkeypatch.setattr(type(pipe), "__call__", denoise)
    monkeypatch.setattr(dv, "write_lossless", write)
    results = {}
    threads = [threading.Thread(target=lambda s=s, n=n: results.__setitem__(n, video.render(
        s, key, tmp_path / f"{n}.mkv", **SIZE)), name=n) for n, s in (("one", SHOT), ("two", OTHER))]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    at = {(kind, who): t for kind, who, t in events}
    first, second = sorted(("one", "two"), key=lambda w: at[("denoise+", w)])
    assert at[("denoise+", second)] >= at[("denoise-", first)]  # one denoising at a time (the GPU lock)
    assert at[("denoise+", second)] < at[("write-", first)]  # ... but the next one runs during the write
    assert all(r.params["overlap"] for r in results.values()) and video.loads == 1
    assert all(Path(r.outputs["clip"]).stat().st_size for r in results.values())


def test_overlap_off_decodes_inside_the_pipeline(key, tmp_path):
    video = resolve("video", "wan-tiny")(overlap=False)
    r = video.render(SHOT, key, tmp_path / "n.mkv", **SIZE)
    assert r.params["overlap"] is False and video._decode_vae is None
    split = resolve("video", "wan-tiny")()
    frames = [v._generate(v.load(), "same", key, 5, 48, 80, 3) for v in (video, split)]
    assert np.array_equal(frames[0], frames[1])  # the split decode is the pipeline's own decode


def test_gpu_fast_profile_validates_and_shares_gpus():
    from pipeline.job import VideoSettings, load_profile

    profile = load_profile("gpu-fast")
    video = VideoSettings.model_validate(profile.stages["video"])
    assert video.num_gpus == 0.5 and video.actors == 2  # two resident actors per GPU: one decodes, one denoises
    assert video.options["distilled"] and video.options["quantize"] == "fp8" and video.options["compile"]
    assert resolve("video", video.backend)
