"""The prepared GPU check's option sets construct (GPU sets too, without building a model) and its ratios."""
from __future__ import annotations

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from bench import gpu_check, gpu_models  # noqa: E402


@pytest.mark.parametrize("gpu", [True, False])
def test_every_option_set_is_valid_for_our_backend(gpu, tmp_path):
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(b"not read at construction")
    sets = gpu_check.option_sets(gpu, lora)
    assert sets[0]["name"] == "gpu-fast" and sets[0]["meter"]  # the target set runs first, metered
    for spec in sets:
        backend = gpu_models.backend_class(spec["backend"], gpu)(device="cpu", **spec["options"])
        assert backend.loads == 0  # constructing builds nothing
        assert backend.max_sequence_length == (512 if gpu else 32)  # as the plain script: Wan's 512 on the GPU
        if spec["options"].get("distilled"):
            assert (backend.steps, backend.guidance) == (4, 1.0)
    names = {s["name"] for s in sets}
    assert ("reference-40step" in names) is (not gpu)  # 40 steps with CFG do not fit the GPU check's 8 minutes


def test_ratios_and_targets():
    runs = [{"name": "diffusers-plain-40step", "kind": "plain", "gpu_s_per_video_s": 60.0},
            {"name": "gpu-fast", "kind": "ours", "gpu_s_per_video_s": 3.0, "gpu_busy_pct": 93.0, "loads": 1},
            {"name": "distilled-4step", "kind": "ours", "gpu_s_per_video_s": 6.0, "gpu_busy_pct": 80.0, "loads": 1},
            {"name": "broken", "error": "RuntimeError: x"}]
    ratios, targets = gpu_check.ratios(runs)
    assert ratios == {"gpu-fast": 20.0, "distilled-4step": 10.0}
    assert targets == {"speedup_4step_vs_plain_ge_15": True, "gpu_busy_ge_90pct": True, "loads_equal_actors": True}
    runs[1].update(gpu_s_per_video_s=5.0, gpu_busy_pct=None, loads=2)
    _, targets = gpu_check.ratios(runs)
    assert targets == {"speedup_4step_vs_plain_ge_15": False, "gpu_busy_ge_90pct": None, "loads_equal_actors": False}


def test_the_gpu_setup_is_the_products_480x832_5s_clip():
    s = gpu_check.setup_for(True)
    assert (s.width, s.height, s.fps, s.frames, s.plain_steps) == (480, 832, 16, 81, 40)
    assert gpu_check.setup_for(False).frames == 17
