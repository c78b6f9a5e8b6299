"""The meter: a context manager turning each stage execution into one UsageRecord, whatever happens."""
from __future__ import annotations

import datetime as dt
import functools
import math
import os
import resource
import socket
import sys
import threading
import time
from types import ModuleType, TracebackType
from typing import Any, Callable

from pipeline.metering.usage import AI_UNITS, AIUsage, UsageRecord

_HOST = socket.gethostname()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux


# ---------------------------------------------------------------- process tree RSS sampling

def _rss(pid: int) -> int:
    """Resident set size of one process in bytes (0 when it has gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except FileNotFoundError:
        if os.path.isdir("/proc"):
            return 0  # Linux: the process has exited
    except (OSError, ValueError, IndexError):
        return 0
    import psutil  # not Linux: slower, portable
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def _proc_children(pid: int) -> list[int] | None:
    """Direct children from /proc/<pid>/task/*/children; None when the kernel does not provide it."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None if pid == os.getpid() else []
    kids: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids.extend(int(x) for x in f.read().split())
        except FileNotFoundError:
            if pid == os.getpid():
                return None  # kernel without CONFIG_PROC_CHILDREN
        except OSError:
            pass
    return kids


def _descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (cheap /proc walk on Linux, psutil elsewhere)."""
    first = _proc_children(pid)
    if first is None:
        import psutil
        try:
            return [p.pid for p in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    found, stack = list(first), list(first)
    while stack:
        more = _proc_children(stack.pop()) or []
        found.extend(more)
        stack.extend(more)
    return found


class _PeakSampler(threading.Thread):
    """Daemon thread recording the peak RSS of this process plus its descendants."""

    def __init__(self, interval: float):
        super().__init__(name="microdrama-meter-rss", daemon=True)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self.children_alive = 0
        self.cpu_s = 0.0  # the sampler's own CPU time (for the overhead benchmark)
        self._halt = threading.Event()

    def sample(self) -> float:
        """Take one sample; returns its CPU cost in seconds (not wall: that includes GIL waits)."""
        t0 = time.thread_time()
        me = os.getpid()
        kids = _descendants(me)
        total = _rss(me) + sum(_rss(k) for k in kids)
        self.peak = max(self.peak, total)
        self.children_alive = len(kids)
        self.samples += 1
        return time.thread_time() - t0

    def run(self) -> None:
        c0 = time.thread_time()
        while True:
            cost = self.sample()
            if self._halt.wait(max(self.interval, 200.0 * cost)):
                break
        self.sample()
        self.cpu_s = time.thread_time() - c0

    def stop(self) -> None:
        self._halt.set()
        self.join()


# ---------------------------------------------------------------- NVML (GPU model and energy)

@functools.lru_cache(maxsize=1)
def nvml() -> tuple[ModuleType | None, str | None]:
    """(pynvml, None) once NVML is initialised in this process, else (None, reason). Cached."""
    try:
        import pynvml
    except ImportError:
        return None, "pynvml not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception as e:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        return None, f"no NVIDIA device (NVML unavailable: {type(e).__name__}: {e})"
    if count == 0:
        return None, "no NVIDIA device (NVML reports 0 devices)"
    return pynvml, None


def _visible_devices(gpus: float) -> list[int | str]:
    """Device ids for a stage outside Ray: the first ceil(gpus) of CUDA_VISIBLE_DEVICES, else 0..n-1."""
    n = math.ceil(gpus)
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None or not env.strip():
        return list(range(n))
    ids = [x.strip() for x in env.split(",") if x.strip()]
    return [int(x) if x.isdigit() else x for x in ids[:n]]


def _handle(lib: ModuleType, device: int | str) -> Any:
    if isinstance(device, str) and not device.isdigit():
        return lib.nvmlDeviceGetHandleByUUID(device)
    return lib.nvmlDeviceGetHandleByIndex(int(device))


def _name(lib: ModuleType, handle: Any) -> str:
    name = lib.nvmlDeviceGetName(handle)
    return name.decode() if isinstance(name, bytes) else str(name)


class _Energy:
    """Reads the total-energy counters of the allocated devices at entry and at exit."""

    def __init__(self, devices: list[int | str]):
        self.model: str | None = None
        self.reason: str | None = None
        self.start_mj: list[int] = []
        self._lib, self.reason = nvml()
        self._handles: list[Any] = []
        if self._lib is None:
            return
        try:
            self._handles = [_handle(self._lib, d) for d in devices]
            self.model = _name(self._lib, self._handles[0]) if self._handles else None
        except Exception as e:
            self.reason = f"no NVIDIA device {devices} (NVML: {type(e).__name__}: {e})"
            self._handles = []

    def _read(self) -> list[int] | None:
        try:
            return [int(self._lib.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self._handles]
        except Exception as e:
            what = type(e).__name__
            if "NotSupported" in what:  # pre-Volta GPUs, MIG instances, some vGPUs
                self.reason = f"device does not support total energy counter ({self.model}: {what})"
            else:
                self.reason = f"NVML energy read failed ({self.model}: {what}: {e})"
            return None

    def begin(self) -> None:
        if self._handles and self.reason is None:
            self.start_mj = self._read() or []

    def joules(self) -> float | None:
        if not self._handles or self.reason is not None or not self.start_mj:
            return None
        end = self._read()
        if end is None:
            return None
        deltas = [b - a for a, b in zip(self.start_mj, end)]
        if any(d < 0 for d in deltas):
            self.reason = "energy counter went backwards during the block (driver reloaded?)"
            return None
        return sum(deltas) / 1000.0


# ---------------------------------------------------------------- Ray allocation

def _ray_allocation() -> dict[str, Any] | None:
    """{'node_id', 'gpus', 'cpus', 'devices'} when running in a Ray task or actor, else None."""
    ray = sys.modules.get("ray")  # never import Ray just to find out we are not in it
    if ray is None or not ray.is_initialized():
        return None
    ctx = ray.get_runtime_context()
    if ctx.worker.mode != ray.WORKER_MODE:
        return {"node_id": ctx.get_node_id()}  # the driver: no allocation of its own
    assigned = ctx.get_assigned_resources()
    return {"node_id": ctx.get_node_id(), "gpus": float(assigned.get("GPU", 0.0)),
            "cpus": float(assigned.get("CPU", 0.0)), "devices": list(ray.get_gpu_ids())}


# ---------------------------------------------------------------- the meter

def _cpu_times(scope: str) -> tuple[float, float]:
    who = resource.RUSAGE_THREAD if scope == "thread" else resource.RUSAGE_SELF
    own, kids = resource.getrusage(who), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def _maxrss() -> tuple[int, int]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return own * _MAXRSS_UNIT, kids * _MAXRSS_UNIT


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def idempotency_key(job: str, stage: str, shot: str | None, attempt: int) -> str:
    """The key under which one attempt of one stage (and shot) is billed at most once."""
    return f"{job}/{stage}/{shot or '-'}/attempt-{attempt}"


class Meter:
    """Measure one stage execution: `with Meter(...) as m: ...`; afterwards `m.record` is set.

    Exceptions are never swallowed: the record gets status "failed" and the error, then the
    exception propagates. `on_record`, when given, receives the record at exit (also on failure).

    What is measured, and how:
    - wall_s: `time.perf_counter` (monotonic); started/ended: ISO-8601 UTC wall-clock stamps.
    - cpu_s: user+system CPU of this process (`getrusage(RUSAGE_SELF)`: all its threads) plus
      that of child processes (`RUSAGE_CHILDREN`) over the block. The kernel adds a child to
      RUSAGE_CHILDREN only once it has exited *and been waited for* (`subprocess.run`,
      `Popen.wait`); a child still running, or never reaped, when the block ends is not counted
      (meta["unwaited_children"] says how many were alive). RUSAGE_SELF is exact in a Ray worker
      running one task at a time; where stages share a process concurrently, pass
      `cpu_scope="thread"` (Linux RUSAGE_THREAD: the calling thread only, plus reaped children).
    - peak_rss: the largest RSS of the process tree (this process + live descendants, summed),
      sampled by a daemon thread every `sample_s` (backing off so a sample's CPU stays under 0.5%
      of a core), raised to `ru_maxrss` of this process or of reaped children when those grew
      during the block (that peak is then exact). Pages shared between processes count per process.
    - node: the hostname, plus meta["ray_node_id"] inside Ray. gpus/cpus: what Ray assigned to the
      task or actor in a Ray worker (`get_assigned_resources`; devices from `ray.get_gpu_ids()`),
      else the arguments (devices: CUDA_VISIBLE_DEVICES, else 0..n-1). gpu_s = gpus × wall_s.
    - gpu_model: the NVML device name, else the declared `gpu_model` (meta["gpu_model_source"]).
    - gpu_energy_j: delta of `nvmlDeviceGetTotalEnergyConsumption` (mJ → J) summed over the
      allocated devices (pynvml, package nvidia-ml-py). When it cannot be read it is None and
      gpu_energy_reason says why; it is never estimated. The counter is per device, so with a
      fractional GPU it is the whole device's energy (meta["gpu_energy_scope"]). NVML is
      initialised once per process on first use; call `nvml()` at worker start to pay that early.
    """

    def __init__(self, *, job: str, drama: str, episode: str, stage: str, backend: str,
                 shot: str | None = None, attempt: int = 1, gpus: float = 0.0, cpus: float = 1.0,
                 gpu_model: str | None = None, cpu_scope: str = "process", sample_s: float = 0.1,
                 meta: dict[str, str] | None = None,
                 on_record: Callable[[UsageRecord], None] | None = None):
        if cpu_scope not in ("process", "thread"):
            raise ValueError(f"cpu_scope must be 'process' or 'thread', got {cpu_scope!r}")
        if attempt < 1 or gpus < 0 or cpus < 0 or sample_s <= 0:
            raise ValueError(f"Meter({stage}): attempt >= 1, gpus/cpus >= 0 and sample_s > 0 "
                             f"(got attempt={attempt}, gpus={gpus}, cpus={cpus}, sample_s={sample_s})")
        self.ids = dict(job=job, drama=drama, episode=episode, stage=stage, shot=shot,
                        backend=backend, attempt=attempt)
        self.gpus, self.cpus, self.declared_gpu_model = gpus, cpus, gpu_model
        self.cpu_scope, self.sample_s = cpu_scope, sample_s
        self.meta: dict[str, str] = dict(meta or {})
        self.on_record = on_record
        self.cache_hit = False
        self.ai_usage: list[AIUsage] = []
        self._record: UsageRecord | None = None
        self._devices: list[int | str] = []

    def add_ai_usage(self, tool: str, unit: str, quantity: float) -> None:
        """Report an AI-tool quantity (tokens, seconds of video, images, chars, calls)."""
        if not tool:
            raise ValueError("add_ai_usage: tool must name a price-table item")
        if unit not in AI_UNITS:
            raise ValueError(f"add_ai_usage({tool!r}): unit {unit!r} is not one of {AI_UNITS}")
        if not (isinstance(quantity, (int, float)) and math.isfinite(quantity) and quantity >= 0):
            raise ValueError(f"add_ai_usage({tool!r}): quantity must be a finite number >= 0, "
                             f"got {quantity!r}")
        self.ai_usage.append(AIUsage(tool=tool, unit=unit, quantity=quantity))

    @property
    def record(self) -> UsageRecord:
        if self._record is None:
            raise RuntimeError("Meter.record is available once the with-block has exited")
        return self._record

    def _allocate(self) -> None:
        ray_alloc = _ray_allocation()
        if ray_alloc is not None:
            self.meta["ray_node_id"] = ray_alloc["node_id"]
        if ray_alloc is not None and "gpus" in ray_alloc:
            self.gpus, self.cpus = ray_alloc["gpus"], ray_alloc["cpus"]
            self._devices = ray_alloc["devices"]
            self.meta["allocation"] = "ray"
        else:
            self._devices = _visible_devices(self.gpus)
            self.meta["allocation"] = "declared"

    def __enter__(self) -> Meter:
        self._allocate()
        self._energy = _Energy(self._devices) if self.gpus > 0 else None
        self._sampler = _PeakSampler(self.sample_s)
        self._maxrss0 = _maxrss()
        self._sampler.start()
        self._started = _now_iso()
        self._cpu0 = _cpu_times(self.cpu_scope)
        if self._energy is not None:
            self._energy.begin()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        wall = time.perf_counter() - self._t0
        joules = self._energy.joules() if self._energy is not None else None
        own1, kids1 = _cpu_times(self.cpu_scope)
        ended = _now_iso()
        self._sampler.stop()
        self._record = self._build(wall, ended, own1 - self._cpu0[0] + kids1 - self._cpu0[1],
                                   joules, exc)
        if self.on_record is not None:
            self.on_record(self._record)
        return False

    def _peak_rss(self) -> int:
        (own0, kids0), (own1, kids1) = self._maxrss0, _maxrss()
        peak = self._sampler.peak
        if own1 > own0:
            peak = max(peak, own1)  # this process set a new lifetime maximum inside the block
        if kids1 > kids0:
            peak = max(peak, kids1)  # a child reaped inside the block reached this
        return peak

    def _gpu_fields(self, joules: float | None) -> dict[str, Any]:
        if self._energy is None:
            return dict(gpu_model=None, gpu_energy_j=None,
                        gpu_energy_reason="no GPU allocated to this stage")
        model = self._energy.model or self.declared_gpu_model
        self.meta["gpu_model_source"] = "nvml" if self._energy.model else (
            "declared" if model else "unknown")
        self.meta["gpu_devices"] = ",".join(str(d) for d in self._devices)
        if self.gpus != math.floor(self.gpus):
            self.meta["gpu_energy_scope"] = "whole device (fractional GPU allocation)"
        reason = self._energy.reason
        if joules is None and reason is None:
            reason = "no NVIDIA device allocated to read (no device id for this stage)"
        return dict(gpu_model=model, gpu_energy_j=joules if reason is None else None,
                    gpu_energy_reason=reason)

    def _build(self, wall: float, ended: str, cpu_s: float, joules: float | None,
               exc: BaseException | None) -> UsageRecord:
        gpu = self._gpu_fields(joules)
        self.meta["cpu_scope"] = f"{self.cpu_scope}+reaped children"
        self.meta["peak_rss_method"] = (f"process tree RSS sampled every >= {self.sample_s} s "
                                        f"({self._sampler.samples} samples) + ru_maxrss")
        if self._sampler.children_alive:
            self.meta["unwaited_children"] = str(self._sampler.children_alive)
        status = "failed" if exc is not None else ("cached" if self.cache_hit else "ok")
        error = None if exc is None else f"{type(exc).__name__}: {exc}"
        return UsageRecord(
            **self.ids, status=status, error=error, node=_HOST, gpus=self.gpus, cpus=self.cpus,
            started=self._started, ended=ended, wall_s=round(wall, 6), cpu_s=round(cpu_s, 6),
            gpu_s=round(self.gpus * wall, 6), peak_rss=self._peak_rss(),
            ai_usage=tuple(self.ai_usage), cache_hit=self.cache_hit,
            idempotency_key=idempotency_key(self.ids["job"], self.ids["stage"], self.ids["shot"],
                                            self.ids["attempt"]),
            meta=dict(self.meta), **gpu)
