"""The one prepared GPU check of the video stage: GPU-seconds per second of 480×832 video for the plain diffusers
script and for our backend at each option set, with GPU busy %, peak memory, NVML energy and the ratios.

It drives the backend classes directly (no Ray, no MLflow) on full-size random-weight Wan models built from the
published configs (bench/gpu_models.py; nothing is downloaded), runs the meter against real NVML once, and writes
bench/results/gpu.json. Without CUDA it runs the same code on the tiny models (mechanics only) and says, in the
JSON and on stdout, that it ran no GPU. The plain 40-step script is timed for its first 4 steps and
extrapolated (the steps are identical in cost; the method is recorded); on CPU a full 40-step run checks that.

On the device machine (PyTorch, transformers, accelerate, peft, nvidia-ml-py; no diffusers, no registry), after
`make gpu-wheels` here (13 MB of CPython 3.12 wheels in the git-ignored .gpu-wheels/), one run with
carry [".gpu-wheels"] and timeout_s 590:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu-wheels/*.whl \
      && PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --out $OUT/gpu.json

(about 7 minutes on one H200; `--budget-s` skips, and records, the sets that would not fit), then copy the JSON
to bench/results/gpu.json and commit it. Here: `make gpu-check` (CPU rehearsal, 3 to 5 minutes on two cores).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import gpu_models  # noqa: E402

NEGATIVE = "static, blurred details, subtitles, worst quality, low quality"


@dataclass(frozen=True)
class Setup:
    gpu: bool
    width: int
    height: int
    fps: int
    duration_s: float
    plain_steps: int = 40
    plain_guidance: float = 5.0
    measured_steps: int = 4

    @property
    def frames(self) -> int:
        return 4 * ((round(self.duration_s * self.fps) - 1 + 3) // 4) + 1


def setup_for(gpu: bool) -> Setup:
    # the GPU check's sizes are the product's: 480×832 (9:16), 81 frames at 16 fps (5 s); tiny sizes on CPU
    return Setup(True, 480, 832, 16, 5.0) if gpu else Setup(False, 64, 112, 16, 1.0)


def option_sets(gpu: bool, lora: Path) -> list[dict[str, Any]]:
    """Our backend's option sets, most important first (the check skips the tail when out of time)."""
    distill = {"lora": str(lora), "distilled": True, "shift": 5.0}
    fast = {**distill, "quantize": "fp8" if gpu else "int8", "attention": "_native_cudnn" if gpu else "native"}
    sets = [
        {"name": "gpu-fast", "backend": "wan2.1-i2v-480p", "options": {
            **fast, "compile": True if gpu else {"backend": "eager"}}, "warmup": True, "meter": True, "need_s": 150},
        {"name": "distilled-4step", "backend": "wan2.1-i2v-480p", "options": distill, "need_s": 70},
        {"name": "a14b-480p-distilled", "backend": "wan2.2-i2v-a14b",
         "options": {**fast, "lora_2": str(lora)}, "shots": 2, "need_s": 80},
        {"name": "distilled-4step+quant+attention", "backend": "wan2.1-i2v-480p", "options": fast, "need_s": 60},
        {"name": "a14b-720p-distilled", "backend": "wan2.2-i2v-a14b",
         "options": {**fast, "lora_2": str(lora), "vae_tiling": True}, "shots": 1, "size": (720, 1280),
         "need_s": 120},
    ]
    if not gpu:  # 40 steps with CFG do not fit the 8-minute GPU check; on CPU they show the mechanics
        sets += [{"name": "reference-40step", "backend": "wan2.1-i2v-480p",
                  "options": {"steps": 40, "guidance": 5.0, "shift": 3.0}},
                 {"name": "fbc-cache-40step", "backend": "wan2.1-i2v-480p",
                  "options": {"steps": 40, "guidance": 5.0, "shift": 3.0, "cache": {"kind": "fbc", "threshold": 0.05}}}]
    return sets


# ---------------------------------------------------------------- measurement

class GpuWatch:
    """NVML over a window: busy % (utilization samples every 50 ms), energy (total-energy counter delta)."""

    def __init__(self, gpu: bool):
        self.reason: str | None = None
        self.lib = self.handle = None
        if not gpu:
            self.reason = "no GPU: NVML not read"
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.lib, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            self.reason = f"NVML unavailable: {type(e).__name__}: {e}"

    def __enter__(self) -> GpuWatch:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self.t0 = time.perf_counter()
        self.mj0 = self._energy()
        if self.lib is not None:
            import torch

            torch.cuda.reset_peak_memory_stats()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _energy(self) -> int | None:
        try:
            return int(self.lib.nvmlDeviceGetTotalEnergyConsumption(self.handle)) if self.lib else None
        except Exception:  # noqa: BLE001
            return None

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.samples.append(int(self.lib.nvmlDeviceGetUtilizationRates(self.handle).gpu))
            except Exception:  # noqa: BLE001
                return

    def __exit__(self, *exc: Any) -> None:
        _sync()
        self.wall = time.perf_counter() - self.t0
        self._stop.set()
        mj1 = self._energy()
        self.joules = (mj1 - self.mj0) / 1000.0 if self.mj0 is not None and mj1 is not None else None
        self.busy = statistics.fmean(self.samples) if self.samples else None
        self.peak_gib = None
        if self.lib is not None:
            import torch

            self.peak_gib = round(torch.cuda.max_memory_allocated() / 2**30, 2)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _figures(watch: GpuWatch, video_s: float, scale: float = 1.0) -> dict[str, Any]:
    """Per second of video; `scale` extrapolates a partial run's wall and energy to the whole run."""
    return {"wall_s": round(watch.wall * scale, 3), "video_s": video_s,
            "gpu_s_per_video_s": round(watch.wall * scale / video_s, 4),
            "gpu_busy_pct": None if watch.busy is None else round(watch.busy, 1),
            "peak_mem_gib": watch.peak_gib,
            "energy_j_per_video_s": None if watch.joules is None else round(watch.joules * scale / video_s, 2),
            "nvml": watch.reason or "read"}


def keyframe(path: Path, width: int, height: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def plain_script(s: Setup, key: Path, full_run: bool) -> dict[str, Any]:
    """What diffusers' Wan I2V example does: load, call the pipeline at 40 steps with CFG 5, frames out."""
    import torch
    from PIL import Image

    pipe = gpu_models.build("wan2.1-i2v-480p", s.gpu, 3.0)
    if s.gpu:
        pipe.to("cuda")
    image = Image.open(key).convert("RGB")
    stamps: list[float] = []

    def on_step(p: Any, i: int, t: Any, kw: dict) -> dict:
        _sync()
        stamps.append(time.perf_counter())
        if not full_run and len(stamps) >= s.measured_steps:
            p._interrupt = True  # the remaining steps are skipped; the pipeline still decodes
        return kw

    def call() -> None:
        pipe(image=image, prompt="a woman signs a contract in an office, slow push-in", negative_prompt=NEGATIVE,
             height=s.height, width=s.width, num_frames=s.frames, num_inference_steps=s.plain_steps,
             guidance_scale=s.plain_guidance, output_type="np", callback_on_step_end=on_step,
             max_sequence_length=gpu_models.TEXT_TOKENS[s.gpu],
             generator=torch.Generator().manual_seed(1))

    watch = GpuWatch(s.gpu)
    with watch:
        t0 = time.perf_counter()
        # in a worker thread, as our backend's shots run: on a busy CPU, torch's OpenMP team in the main thread
        # can be 10-40× slower than in a fresh thread, which would flatter our ratios on the CPU rehearsal
        failed: list[BaseException] = []
        worker = threading.Thread(target=lambda: _catch(call, failed))
        worker.start()
        worker.join()
    t_end = t0 + watch.wall
    if failed:
        raise failed[0]
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    step_s = statistics.median(steps)
    head, tail = stamps[0] - t0, t_end - stamps[-1]  # encoders + first step; decode after the last step
    total = head + (s.plain_steps - 1) * step_s + tail
    out = {"name": "diffusers-plain-40step", "kind": "plain", "measured_steps": len(stamps),
           "method": "measured" if full_run else (f"first {len(stamps)} of {s.plain_steps} steps measured; total = "
                                                  f"encode + step 1 + {s.plain_steps - 1} × median step + decode"),
           "step_s": round(step_s, 4), "encode_and_first_step_s": round(head, 3), "decode_s": round(tail, 3),
           **_figures(watch, s.duration_s, scale=total / watch.wall)}
    pipe = None  # noqa: F841 - frees the model before the next set
    return out


def _catch(fn: Callable[[], None], failed: list[BaseException]) -> None:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
        failed.append(e)


def _shot(i: int) -> Any:
    from pipeline.script import Shot

    actions = ["Lin signs the contract.", "Gu turns to the window.", "Lin laughs on the city wall."]
    return Shot(id=f"s01-sh{i:02d}", scene=1, index=i, location="office", characters=("LIN",),
                action=actions[i % len(actions)], camera="push-in")


def ours(s: Setup, spec: dict[str, Any], key: Path, work: Path) -> dict[str, Any]:
    """Our backend class at one option set: a warm-up shot (load, LoRA, compile), then shots rendered from two
    threads, so one shot's decode and write overlap the next one's denoising (as two actors on a GPU do)."""
    width, height = spec.get("size", (s.width, s.height)) if s.gpu else (s.width, s.height)
    cls = gpu_models.backend_class(spec["backend"], s.gpu)
    backend = cls(device="cuda" if s.gpu else "cpu", **spec["options"])
    render = dict(duration_s=s.duration_s, fps=s.fps, width=width, height=height)
    t = time.perf_counter()
    backend.load()  # resident: weights, LoRA fused, quantized, compiled (once per actor, never per shot)
    if spec.get("warmup"):  # compile happens at the first call: a shot outside the timed window
        backend.render(_shot(0), key, work / f"{spec['name']}-0.mkv", seed=0, **render)
    warm_s = time.perf_counter() - t
    n = int(spec.get("shots", 2))
    results: list[Any] = [None] * n
    watch = GpuWatch(s.gpu)

    def one(i: int) -> None:
        results[i] = (backend.render(_shot(i + 1), key, work / f"{spec['name']}-{i + 1}.mkv", seed=i + 1, **render),
                      dict(backend.last_timings))

    meter = _meter(s, spec) if spec.get("meter") else None
    with watch, meter if meter is not None else contextlib.nullcontext():
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    if any(r is None for r in results):
        raise RuntimeError("a shot failed (see the traceback above)")
    out = {"name": spec["name"], "kind": "ours", "backend": spec["backend"], "size": f"{width}x{height}",
           "shots": n, "method": "measured", "warmup_s": round(warm_s, 3), "loads": backend.loads,
           "text_cache": {"hits": backend.text_cache_hits, "misses": backend.text_cache_misses},
           "params": {k: results[0][0].params[k] for k in ("model", "steps", "guidance", "accel", "overlap")},
           "shot_timings": [{k: round(v, 3) for k, v in tm.items()} for _, tm in results],
           **_figures(watch, n * s.duration_s)}
    if meter is not None:
        out["meter"] = _meter_record(meter, watch)
    backend = None  # noqa: F841 - frees the model before the next set
    return out


def _meter(s: Setup, spec: dict[str, Any]) -> Any:
    """The production Meter (gpus=1) around the timed window: the NVML path a stage execution uses."""
    from pipeline.metering.meter import Meter

    return Meter(job="gpu-check", drama="bench", episode="gpu", stage="video", backend=spec["backend"],
                 shot="s01-sh01", gpus=1)


def _meter_record(meter: Any, watch: GpuWatch) -> dict[str, Any]:
    """The meter's record beside the check's own NVML reading of the same window."""
    rec = meter.record
    out = {k: getattr(rec, k) for k in ("status", "gpus", "wall_s", "gpu_s", "gpu_model", "gpu_energy_j",
                                        "gpu_energy_reason")}
    out["meta"] = dict(rec.meta)
    out["check_energy_j"] = None if watch.joules is None else round(watch.joules, 1)
    return out


def _free() -> None:
    import torch

    torch._dynamo.reset()  # compiled graphs hold the last set's modules
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _raw_writer_if_no_ffmpeg() -> str:
    """The device machine may lack ffmpeg: then clips are written losslessly as raw .npy frames."""
    if shutil.which("ffmpeg"):
        return "ffmpeg x264 -qp 0"
    import numpy as np

    from models.video import diffusers_video as dv

    dv.write_lossless = lambda frames, out, fps: np.save(Path(out).with_suffix(".npy"), frames)
    return "raw .npy (no ffmpeg on this machine)"


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "peft", "torchao", "nvidia-ml-py"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def run(out_path: Path, budget_s: float, only: list[str] | None) -> dict[str, Any]:
    import torch

    from models import tiny

    start = time.perf_counter()
    gpu = torch.cuda.is_available()
    s = setup_for(gpu)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    report: dict[str, Any] = {
        "schema": 1, "ran_gpu": gpu,
        "note": ("full-size random-weight models on the GPU" if gpu else
                 "RAN NO GPU: tiny random models on CPU, mechanics only; these figures are not GPU figures"),
        "device": torch.cuda.get_device_name(0) if gpu else platform.processor() or platform.machine(),
        "models": gpu_models.SIZES if gpu else "tiny random Wan2.1 I2V / Wan2.2 A14B (models/tiny.py)",
        "versions": versions(), "writer": _raw_writer_if_no_ffmpeg(),
        "setup": {"width": s.width, "height": s.height, "frames": s.frames, "fps": s.fps,
                  "video_s_per_shot": s.duration_s, "plain_steps": s.plain_steps},
        "runs": [], "skipped": []}
    print(report["note"], flush=True)
    key = keyframe(work / "key.png", s.width, s.height)

    def attempt(name: str, fn: Callable[[], dict[str, Any]], need_s: float = 60) -> dict[str, Any] | None:
        left = budget_s - (time.perf_counter() - start)
        if left < (need_s if gpu else 1):
            report["skipped"].append({"name": name, "reason": f"{left:.0f} s of the {budget_s:.0f} s budget left, "
                                                              f"about {need_s:.0f} s needed"})
            print(f"skipped {name}: out of time", flush=True)
            return None
        t = time.perf_counter()
        try:
            res = fn()
        except Exception as e:  # noqa: BLE001 - one set's failure is a figure too; the others still run
            import traceback

            traceback.print_exc()
            res = {"name": name, "error": f"{type(e).__name__}: {str(e)[:400]}"}
        res["elapsed_s"] = round(time.perf_counter() - t, 1)
        print(json.dumps(res, default=str)[:600], flush=True)
        _free()
        return res

    plain = attempt("diffusers-plain-40step", lambda: plain_script(s, key, full_run=False))
    if not gpu:  # check the extrapolation against a full run (cheap on the tiny model), and use the full run
        full = attempt("diffusers-plain-40step-full", lambda: plain_script(s, key, full_run=True))
        if full and plain and "error" not in full and "error" not in plain:
            report["extrapolation_check"] = {"estimated_s": plain["wall_s"], "measured_s": full["wall_s"]}
        plain = full
    if plain:
        report["runs"].append(plain)
    # a random step-distillation LoRA in lightx2v's key format, rank 64 as lightx2v's, for the DiT's shapes
    lora = tiny.wan_lora(gpu_models.shapes("wan2.1-i2v-480p", gpu), work / "distill_lora.safetensors",
                         rank=64 if gpu else 4, std=0.01)
    for spec in option_sets(gpu, lora):
        if only and spec["name"] not in only:
            continue
        res = attempt(spec["name"], lambda spec=spec: ours(s, spec, key, work), spec.get("need_s", 60))
        if res:
            report["runs"].append(res)
    fast = next((r for r in report["runs"] if r.get("name") == "gpu-fast"), {})
    report["meter"] = fast.get("meter", "not run: the gpu-fast set did not finish")
    report["ratios"], report["targets"] = ratios(report["runs"])
    if not gpu:
        report["targets"] = {k: None for k in report["targets"]}
        report["targets"]["why_none"] = "judged on a GPU only: CPU ratios of tiny models say nothing about speed"
    report["elapsed_s"] = round(time.perf_counter() - start, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out_path} ({'GPU' if gpu else 'NO GPU: CPU mechanics only'}) in {report['elapsed_s']} s")
    return report


def ratios(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Speed-up of each set over the plain script (GPU-s per video second), and the issue's targets."""
    ok = {r["name"]: r for r in runs if "gpu_s_per_video_s" in r}
    plain = ok.get("diffusers-plain-40step")
    out = {} if plain is None else {
        name: round(plain["gpu_s_per_video_s"] / r["gpu_s_per_video_s"], 2) for name, r in ok.items() if r is not plain}
    fast = ok.get("gpu-fast")
    targets = {"speedup_4step_vs_plain_ge_15": None if fast is None or "gpu-fast" not in out else
               out["gpu-fast"] >= 15,
               "gpu_busy_ge_90pct": None if fast is None or fast.get("gpu_busy_pct") is None else
               fast["gpu_busy_pct"] >= 90,
               "loads_equal_actors": all(r.get("loads") == 1 for r in ok.values() if r.get("kind") == "ours")}
    return out, targets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu.json")
    ap.add_argument("--budget-s", type=float, default=480.0, help="start no set that would end after this (default 480)")
    ap.add_argument("--only", nargs="*", help="only these option sets (names in option_sets)")
    args = ap.parse_args(argv)
    run(args.out, args.budget_s, args.only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
