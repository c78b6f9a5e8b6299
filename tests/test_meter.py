"""The meter: one honest usage record per stage run (CPU incl. children, failures, NVML energy)."""
from __future__ import annotations

import subprocess
import sys
import time
import types

import pytest

from pipeline.metering import meter as meter_mod
from pipeline.metering.meter import Meter

IDS = dict(job="job-1", drama="d", episode="ep01", stage="dub", backend="espeak-ng")
BUSY_CHILD = ("import time\nt = time.process_time()\n"
              "while time.process_time() - t < {s}: pass\n"
              "b = bytearray({mb} * 2**20)\nb[::4096] = b'x' * len(b[::4096])\n")


def _busy(seconds: float) -> None:
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass


def test_child_process_cpu_is_counted():
    with Meter(**IDS) as m:
        subprocess.run([sys.executable, "-c", BUSY_CHILD.format(s=0.4, mb=1)], check=True)
    r = m.record
    assert r.status == "ok" and r.error is None
    assert r.cpu_s >= 0.38, r.cpu_s  # the child's 0.4 s, counted once it was waited for
    assert r.wall_s >= 0.4 and r.started < r.ended and r.started.endswith("+00:00")


def test_own_cpu_and_peak_rss_include_children():
    with Meter(**IDS) as m:
        _busy(0.2)
        subprocess.run([sys.executable, "-c", BUSY_CHILD.format(s=0.0, mb=120)], check=True)
    r = m.record
    assert r.cpu_s >= 0.2
    assert r.peak_rss >= 120 * 2**20  # the reaped child's ru_maxrss
    assert "ru_maxrss" in r.meta["peak_rss_method"]


def test_peak_rss_sampled_in_process():
    with Meter(**IDS, sample_s=0.01) as m:
        before = meter_mod._rss(meter_mod.os.getpid())
        block = bytearray(64 * 2**20)
        block[::4096] = b"x" * len(block[::4096])
        time.sleep(0.2)
        del block
    assert m.record.peak_rss >= before + 60 * 2**20


def test_failure_gives_failed_record_and_reraises():
    seen = []
    with pytest.raises(ValueError, match="bad shot"):
        with Meter(**IDS, shot="s03", attempt=2, on_record=seen.append) as m:
            m.add_ai_usage("deepseek-chat:input", "token", 1200)
            raise ValueError("bad shot")
    r = m.record
    assert r.status == "failed" and r.error == "ValueError: bad shot"
    assert r.idempotency_key == "job-1/dub/s03/attempt-2"
    assert r.ai_usage[0].quantity == 1200  # tokens spent before the failure are still billed
    assert seen == [r]


def test_cache_hit_and_key_without_shot():
    with Meter(**IDS) as m:
        m.cache_hit = True
    assert m.record.status == "cached" and m.record.cache_hit
    assert m.record.idempotency_key == "job-1/dub/-/attempt-1"


def test_record_only_after_exit_and_bad_usage_rejected():
    m = Meter(**IDS)
    with pytest.raises(RuntimeError, match="once the with-block"):
        _ = m.record
    with pytest.raises(ValueError, match="unit 'tokens'"):
        m.add_ai_usage("deepseek-chat:input", "tokens", 3)
    with pytest.raises(ValueError, match=">= 0"):
        m.add_ai_usage("deepseek-chat:input", "token", -1)


def test_no_gpu_gives_no_energy_with_reason():
    with Meter(**IDS) as m:
        pass
    assert m.record.gpu_energy_j is None and m.record.gpu_s == 0
    assert m.record.gpu_energy_reason == "no GPU allocated to this stage"


def test_gpu_without_nvml_here_is_none_with_reason():
    meter_mod.nvml.cache_clear()
    with Meter(**IDS, gpus=1, gpu_model="H100") as m:
        time.sleep(0.01)
    meter_mod.nvml.cache_clear()
    r = m.record
    assert r.gpu_energy_j is None
    assert r.gpu_energy_reason.startswith(("pynvml not installed", "no NVIDIA device"))
    assert r.gpu_model == "H100" and r.meta["gpu_model_source"] == "declared"
    assert r.gpu_s == pytest.approx(r.wall_s)


def _fake_nvml(energy_supported: bool = True) -> types.ModuleType:
    counters = {0: 1_000_000, 1: 5_000_000}
    lib = types.ModuleType("pynvml")
    lib.nvmlInit = lambda: None
    lib.nvmlDeviceGetCount = lambda: 2
    lib.nvmlDeviceGetHandleByIndex = lambda i: i
    lib.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"

    class NVMLError_NotSupported(Exception):  # noqa: N801 - pynvml's own class name
        pass

    def energy(h):
        if not energy_supported:
            raise NVMLError_NotSupported("Not Supported")
        counters[h] += 1500 if h == 0 else 2500  # mJ per read
        return counters[h]
    lib.nvmlDeviceGetTotalEnergyConsumption = energy
    return lib


def test_energy_from_nvml_counter_delta(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    meter_mod.nvml.cache_clear()
    try:
        with Meter(**IDS, gpus=2) as m:
            pass
    finally:
        meter_mod.nvml.cache_clear()
    r = m.record
    assert r.gpu_model == "NVIDIA H100 80GB HBM3" and r.meta["gpu_model_source"] == "nvml"
    assert r.gpu_energy_j == pytest.approx(4.0)  # (1500 + 2500) mJ
    assert r.gpu_energy_reason is None and r.meta["gpu_devices"] == "0,1"


def test_energy_counter_not_supported(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(energy_supported=False))
    meter_mod.nvml.cache_clear()
    try:
        with Meter(**IDS, gpus=0.5) as m:
            pass
    finally:
        meter_mod.nvml.cache_clear()
    r = m.record
    assert r.gpu_energy_j is None
    assert r.gpu_energy_reason.startswith("device does not support total energy counter")
    assert r.meta["gpu_energy_scope"].startswith("whole device")


def test_overhead_per_record_is_small():
    start = time.perf_counter()
    for _ in range(50):
        with Meter(**IDS):
            pass
    assert (time.perf_counter() - start) / 50 < 0.020


def test_inside_ray_task_takes_ray_allocation(ray_session):
    ray = ray_session

    @ray.remote(num_cpus=1)
    def stage() -> dict:
        with Meter(**IDS, cpus=4.0) as m:
            pass
        return m.record.model_dump()

    r = ray.get(stage.remote())
    assert r["cpus"] == 1.0 and r["gpus"] == 0.0 and r["meta"]["allocation"] == "ray"
    assert len(r["meta"]["ray_node_id"]) > 10
