"""Benchmark: shots per minute with resident model actors vs loading the models per shot; and a CUDA Wan2.1 run.

Tiny part (any machine): the tiny profile's storyboard (flux-tiny) and video (wan-tiny) backends render
the demo episode's shots, (a) through one resident BackendPool actor per stage — each model loaded once —
and (b) as one fresh Ray worker per shot (``max_calls=1``, what Ray does by default for GPU tasks), which
imports and builds the models every time. Wall time includes start-up and loading in both; the figure is
shots per minute and their ratio.

CUDA part (only with a GPU; otherwise recorded as unavailable with the reason): a full-size Wan2.1-T2V-1.3B
— the published transformer, VAE and UMT5-XXL configs with random weights, built in code and saved locally
— generates 480×832 clips (a) through the `wan2.1-t2v-1.3b` backend in a resident GPU actor and (b) in a
plain diffusers script in its own process. NVML sampling gives GPU busy % and energy per second of video.

Run `python -m bench.bench_resident` (`--quick` for a smaller tiny run; `--cuda-smoke` runs the CUDA code
path with tiny configs on CPU). Writes bench/results/resident.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "resident.json"
DEMO = Path(__file__).parents[1] / "configs" / "episodes" / "demo" / "episode.fountain"
PROFILE = Path(__file__).parents[1] / "configs" / "profiles" / "tiny.yaml"


# ---------------------------------------------------------------- tiny profile: resident vs per shot

def _tiny_settings() -> dict[str, dict]:
    import yaml

    return yaml.safe_load(PROFILE.read_text(encoding="utf-8"))["stages"]


def _shots(n: int, seconds: float) -> tuple[Any, list[tuple[Any, float]]]:
    from pipeline import screenplay

    script = screenplay.load(DEMO)
    shots = [script.shots[i % len(script.shots)] for i in range(n)]
    return script, [(shot, seconds) for shot in shots]


def _backend(stages: dict, stage: str) -> Any:
    from models.registry import resolve

    return resolve(stage, stages[stage]["backend"])(**stages[stage].get("options", {}))


def keyframe(stages: dict, script: Any, shot: Any, path: str, backend: Any = None) -> str:
    """Storyboard one shot (constructing the backend when none is given: the per-call path)."""
    s = stages["storyboard"]
    (backend or _backend(stages, "storyboard")).render(shot, script, Path(path), width=s["width"],
                                                       height=s["height"], seed=1)
    return path


def clip(stages: dict, shot: Any, key: str, path: str, seconds: float, backend: Any = None) -> int:
    """Video for one shot from its keyframe; returns the frame count."""
    v = stages["video"]
    result = (backend or _backend(stages, "video")).render(shot, Path(key), Path(path), duration_s=seconds,
                                                           fps=v["fps"], width=v["width"], height=v["height"], seed=1)
    return int(result.outputs["frames"])


def run_resident(stages: dict, script: Any, shots: list, workdir: str) -> dict:
    """The shot DAG through one resident actor per stage: each model is loaded once."""
    import ray

    from models.actor import BackendPool

    start = time.perf_counter()
    pools = {name: BackendPool(name, stages[name]["backend"], stages[name].get("options", {}), actors=1,
                               num_cpus=1) for name in ("storyboard", "video")}
    v, s = stages["video"], stages["storyboard"]
    refs = []
    for i, (shot, seconds) in enumerate(shots):
        key = Path(workdir) / f"r-{i}.png"
        done = pools["storyboard"].submit("render", shot, script, key, width=s["width"], height=s["height"], seed=1)
        refs.append(pools["video"].submit_after(done, "render", shot, key, Path(workdir) / f"r-{i}.mkv",
                                                duration_s=seconds, fps=v["fps"], width=v["width"],
                                                height=v["height"], seed=1))
    ray.get(refs)
    wall = time.perf_counter() - start
    loads = {name: sum(pool.load_counts()) for name, pool in pools.items()}
    for pool in pools.values():
        pool.shutdown()
    return {"wall_s": round(wall, 2), "shots_per_min": round(len(shots) / wall * 60, 2), "model_loads": loads}


def run_per_shot(stages: dict, script: Any, shots: list, workdir: str) -> dict:
    """The same DAG as Ray tasks with max_calls=1: a fresh worker (imports + model build) per stage call."""
    import ray

    sb = ray.remote(max_calls=1, num_cpus=1)(keyframe)
    vd = ray.remote(max_calls=1, num_cpus=1)(clip)
    start = time.perf_counter()
    refs = []
    for i, (shot, seconds) in enumerate(shots):
        key = sb.remote(stages, script, shot, str(Path(workdir) / f"p-{i}.png"))
        refs.append(vd.remote(stages, shot, key, str(Path(workdir) / f"p-{i}.mkv"), seconds))
    ray.get(refs)
    wall = time.perf_counter() - start
    return {"wall_s": round(wall, 2), "shots_per_min": round(len(shots) / wall * 60, 2),
            "model_loads": {"storyboard": len(shots), "video": len(shots)}}


def tiny_bench(n_shots: int, seconds: float) -> dict:
    import ray

    stages = _tiny_settings()
    script, shots = _shots(n_shots, seconds)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-resident-") as work:
            per_shot = run_per_shot(stages, script, shots, work)
            resident = run_resident(stages, script, shots, work)
    finally:
        if started_here:
            ray.shutdown()
    v = stages["video"]
    return {"profile": "tiny", "shots": n_shots, "shot_seconds": seconds,
            "video": f"{v['backend']} {v['width']}x{v['height']}@{v['fps']} steps={v['options'].get('steps')}",
            "storyboard": stages["storyboard"]["backend"], "resident": resident, "per_shot": per_shot,
            "ratio_resident_over_per_shot": round(resident["shots_per_min"] / per_shot["shots_per_min"], 2)}


# ---------------------------------------------------------------- CUDA: full-size Wan2.1-1.3B, random weights

WAN_13B_TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                           out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                           cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True)


def build_wan_13b(folder: Path, device: str, smoke: bool) -> float:
    """Random-weight Wan2.1-T2V-1.3B (published configs; tiny ones when `smoke`) saved to `folder`; seconds."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from models import tiny

    start = time.perf_counter()
    if smoke:
        pipe = tiny.wan_t2v(0)
        pipe.save_pretrained(folder)
        return time.perf_counter() - start
    dtype = torch.bfloat16
    torch.manual_seed(0)
    with torch.device(device):
        transformer = WanTransformer3DModel(**WAN_13B_TRANSFORMER).to(dtype)
        text_encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL)).to(dtype)
        vae = AutoencoderKLWan()  # its defaults are the published Wan2.1 VAE config
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=tiny.t5_tokenizer(), text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=scheduler)
    pipe.save_pretrained(folder, safe_serialization=True)
    del pipe, transformer, text_encoder, vae
    torch.cuda.empty_cache()
    return time.perf_counter() - start


class GpuSampler:
    """Samples NVML GPU utilisation every 0.1 s and reads the energy counter at start and stop."""

    def __init__(self, index: int = 0):
        from pipeline.metering.meter import nvml

        self.lib, self.reason = nvml()
        self.handle = self.lib.nvmlDeviceGetHandleByIndex(index) if self.lib else None
        self.samples: list[int] = []
        self._stop = threading.Event()

    def _energy_mj(self) -> int | None:
        try:
            return int(self.lib.nvmlDeviceGetTotalEnergyConsumption(self.handle)) if self.handle else None
        except Exception as exc:  # noqa: BLE001 - older GPUs lack the counter
            self.reason = f"NVML energy counter unavailable: {exc}"
            return None

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(int(self.lib.nvmlDeviceGetUtilizationRates(self.handle).gpu))

    def __enter__(self) -> GpuSampler:
        self.e0, self.t0 = self._energy_mj(), time.perf_counter()
        if self.handle:
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.wall = time.perf_counter() - self.t0
        e1 = self._energy_mj()
        self.joules = (e1 - self.e0) / 1000 if e1 is not None and self.e0 is not None else None

    def summary(self, video_seconds: float) -> dict:
        busy = round(sum(self.samples) / len(self.samples), 1) if self.samples else None
        return {"wall_s": round(self.wall, 2), "gpu_busy_pct": busy, "energy_j": self.joules,
                "j_per_video_second": round(self.joules / video_seconds, 1) if self.joules else None,
                "nvml": self.reason or "ok"}


PLAIN_SCRIPT = r"""
import json, sys, time, torch
from diffusers import AutoencoderKLWan, WanPipeline
folder, device, clips, frames, steps, w, h = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:8]),
t0 = time.perf_counter()
vae = AutoencoderKLWan.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
pipe = WanPipeline.from_pretrained(folder, vae=vae, torch_dtype=dtype).to(device)
pipe.set_progress_bar_config(disable=True)
load = time.perf_counter() - t0
times = []
for i in range(clips):
    t = time.perf_counter()
    pipe(prompt="a woman in a red dress on an old city wall at night", negative_prompt="low quality",
         height=h, width=w, num_frames=frames, num_inference_steps=steps, guidance_scale=5.0,
         generator=torch.Generator(device).manual_seed(i), output_type="np")
    times.append(time.perf_counter() - t)
print(json.dumps({"load_s": load, "clip_s": times}))
"""


def _cuda_resident(folder: Path, device: str, clips: int, frames: int, steps: int, w: int, h: int, fps: int,
                   gpus: float) -> dict:
    import ray

    from models.actor import BackendPool
    from pipeline.script import Shot

    shot = Shot(id="s01-sh01", scene=1, index=1, location="old city wall", time_of_day="night", interior=False,
                action="a woman in a red dress on an old city wall at night")
    opts = {"weights_dir": str(folder), "steps": steps, "device": device,
            "dtype": "bfloat16" if device.startswith("cuda") else "float32", "max_frames": frames}
    t0 = time.perf_counter()
    pool = BackendPool("video", "wan2.1-t2v-1.3b", opts, actors=1, num_gpus=gpus, num_cpus=1, warm=True)
    ray.get(pool.actors[0].load_count.remote())
    load = time.perf_counter() - t0
    times = []
    with tempfile.TemporaryDirectory() as work:
        for i in range(clips):
            t = time.perf_counter()
            ray.get(pool.submit("render", shot, Path(work) / "none.png", Path(work) / f"{i}.mkv",
                                duration_s=frames / fps, fps=fps, width=w, height=h, seed=i))
            times.append(time.perf_counter() - t)
    loads = pool.load_counts()
    pool.shutdown()
    return {"load_s": round(load, 2), "clip_s": [round(t, 2) for t in times], "model_loads": loads}


def cuda_bench(clips: int, steps: int, frames: int, smoke: bool) -> dict:
    import ray
    import torch

    if not torch.cuda.is_available() and not smoke:
        return {"available": False, "reason": f"no CUDA device: torch.cuda.is_available() is False "
                                              f"(torch {torch.__version__}); nothing measured"}
    device = "cpu" if smoke else "cuda"
    w, h, fps = (48, 80, 8) if smoke else (480, 832, 16)
    frames = 9 if smoke else frames
    video_s = clips * frames / fps
    result: dict[str, Any] = {"available": not smoke, "smoke_on_cpu": smoke, "device": device,
                              "gpu": torch.cuda.get_device_name(0) if not smoke else None,
                              "model": "Wan2.1-T2V-1.3B architecture, random weights" + (" (tiny)" if smoke else ""),
                              "size": f"{w}x{h}", "frames": frames, "fps": fps, "steps": steps, "clips": clips}
    with tempfile.TemporaryDirectory(prefix="wan13b-") as folder:
        result["build_s"] = round(build_wan_13b(Path(folder), device, smoke), 1)
        ray.init(num_cpus=2, num_gpus=0 if smoke else 1, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        try:
            with GpuSampler() as s:
                result["resident"] = _cuda_resident(Path(folder), device, clips, frames, steps, w, h, fps,
                                                    0 if smoke else 1)
            result["resident"].update(s.summary(video_s) if s.lib else {"wall_s": round(s.wall, 2), "nvml": s.reason})
        finally:
            ray.shutdown()
        with GpuSampler() as s:
            out = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT, folder, device, str(clips), str(frames),
                                  str(steps), str(w), str(h)], capture_output=True, text=True, check=True)
        plain = json.loads(out.stdout.strip().splitlines()[-1])
        plain = {"load_s": round(plain["load_s"], 2), "clip_s": [round(t, 2) for t in plain["clip_s"]]}
        plain.update(s.summary(video_s) if s.lib else {"wall_s": round(s.wall, 2), "nvml": s.reason})
        result["plain_diffusers"] = plain
    steady = lambda r: sum(r["clip_s"]) / len(r["clip_s"])  # noqa: E731
    result["steady_clip_s_ratio_resident_over_plain"] = round(steady(result["resident"]) / steady(plain), 3)
    return result


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 one-second shots instead of 8 two-second shots")
    p.add_argument("--shots", type=int, default=None)
    p.add_argument("--cuda-clips", type=int, default=2)
    p.add_argument("--cuda-steps", type=int, default=10, help="denoising steps per clip (published default 50)")
    p.add_argument("--cuda-frames", type=int, default=81)
    p.add_argument("--cuda-smoke", action="store_true", help="run the CUDA code path with tiny models on CPU")
    p.add_argument("--skip-tiny", action="store_true")
    args = p.parse_args(argv if argv is not None else [])
    import torch

    n, seconds = (args.shots or 3, 1.0) if args.quick else (args.shots or 8, 2.0)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
               "cuda": torch.cuda.is_available()}
    report: dict[str, Any] = {"bench": "resident", "machine": machine}
    if not args.skip_tiny:
        report["tiny"] = tiny_bench(n, seconds)
        t = report["tiny"]
        print(f"tiny: resident {t['resident']['shots_per_min']} shots/min vs per-shot {t['per_shot']['shots_per_min']}"
              f" shots/min: ×{t['ratio_resident_over_per_shot']}", flush=True)
    report["cuda"] = cuda_bench(args.cuda_clips, args.cuda_steps, args.cuda_frames, args.cuda_smoke)
    if not report["cuda"].get("available") and not args.cuda_smoke:
        print(f"cuda: {report['cuda']['reason']}", flush=True)
    else:
        print(f"cuda: {json.dumps(report['cuda'])}", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:])
