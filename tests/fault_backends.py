"""Fault-injection backends for tests: a worker that kills itself, a full disk, a slow stage, a leaky key.

Registered under the module name the driver imported, so Ray workers (which receive the driver's registry
with the run, see orchestrate.registry_snapshot) import this same file. Markers are files: a backend
"fails once" when its marker file is absent, creates it and fails; later attempts find it and work.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from models import options as opt
from models.registry import BackendResult, register
from models.image.procedural import ProceduralOptions, ProceduralStoryboard
from models.video.camera import CameraMoveOptions, CameraMoveVideo

log = logging.getLogger("microdrama.tests.leaky")


def _first_time(marker: str) -> bool:
    """True exactly once per marker file (O_EXCL: two racing workers cannot both win)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


class KillOnceVideo(CameraMoveVideo):
    """Camera-move video whose `kill_at`-th call (1: the first) works `work_s` seconds, then SIGKILLs its own
    worker process mid-stage; the marker file then holds {"pid", "killed_at"} (epoch seconds). Other calls
    take `delay_s` longer, so that a later call waits in Ray's queue behind them."""

    class Options(CameraMoveOptions):
        marker: opt.FilePath
        work_s: float = opt.Field(0.0, ge=0, le=600)
        kill_at: int = opt.Field(1, ge=1, le=1000)
        delay_s: float = opt.Field(0.0, ge=0, le=600)

    resident = False

    def __init__(self, *, marker: str, work_s: float = 0.0, kill_at: int = 1, delay_s: float = 0.0,
                 **options: Any) -> None:
        super().__init__(**options)
        self.marker, self.work_s, self.kill_at, self.delay_s = marker, float(work_s), int(kill_at), float(delay_s)

    def render(self, shot, keyframe, out_path, **kwargs) -> BackendResult:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_bytes(b"half a clip")  # half-written output the retry must not trust
        call = next(i for i in range(1, 1000) if _first_time(f"{self.marker}.call-{i}"))
        if call == self.kill_at and _first_time(self.marker):
            time.sleep(self.work_s)  # real work the killed attempt did (and must be billed for)
            Path(self.marker).write_text(json.dumps({"pid": os.getpid(), "killed_at": time.time()}))
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.delay_s)
        return super().render(shot, keyframe, out_path, **kwargs)


class KillOnceResidentVideo(KillOnceVideo):
    """The same in a resident StageWorker actor (Ray restarts the actor and retries its task)."""

    resident = True


class KillRepeatedlyResidentVideo(CameraMoveVideo):
    """A resident video replica whose first `kills` calls SIGKILL its own process: with kills = 3 the actor's
    restarts and task retries (2 each) are used up, the replica is gone for good, and the pool must hand the
    shot to a new one (pipeline/pools.py)."""

    class Options(CameraMoveOptions):
        marker: opt.FilePath
        kills: int = opt.Field(3, ge=1, le=10)

    resident = True

    def __init__(self, *, marker: str, kills: int = 3, **options: Any) -> None:
        super().__init__(**options)
        self.marker, self.kills = marker, int(kills)

    def render(self, shot, keyframe, out_path, **kwargs) -> BackendResult:
        call = next(i for i in range(1, 1000) if _first_time(f"{self.marker}.call-{i}"))
        if call <= self.kills:
            Path(f"{self.marker}.pid-{call}").write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().render(shot, keyframe, out_path, **kwargs)


class NoSpaceVideo(CameraMoveVideo):
    """A disk that fills up mid-stage: writes part of the clip, then ENOSPC."""

    resident = False

    def render(self, shot, keyframe, out_path, **kwargs) -> BackendResult:
        Path(out_path).write_bytes(b"\0" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_path))


class SlowVideo(CameraMoveVideo):
    """Camera-move video that takes `delay_s` longer (room for a test to kill the driver mid-episode); with
    `stagger`, shot n takes n × delay_s, so when one shot finishes the next is still half-way."""

    class Options(CameraMoveOptions):
        delay_s: float = opt.Field(2.0, ge=0, le=600)
        stagger: bool = False

    resident = False

    def __init__(self, *, delay_s: float = 2.0, stagger: bool = False, **options: Any) -> None:
        super().__init__(**options)
        self.delay_s, self.stagger = float(delay_s), bool(stagger)

    def render(self, shot, keyframe, out_path, **kwargs) -> BackendResult:
        time.sleep(self.delay_s * (shot.index if self.stagger else 1))
        return super().render(shot, keyframe, out_path, **kwargs)


class LeakyStoryboard(ProceduralStoryboard):
    """A careless API backend: logs its key, fails once with the key in the error, returns it in params."""

    class Options(ProceduralOptions):
        marker: opt.FilePath
        api_key_env: str = ""
        secrets_file: str = ""
        api_key_name: str = ""

    resident = False

    def __init__(self, *, marker: str, api_key_env: str = "", secrets_file: str = "",
                 api_key_name: str = "", **options: Any) -> None:
        super().__init__(**options)
        from pipeline import secrets

        self.key = secrets.resolve({"api_key_env": api_key_env, "secrets_file": secrets_file,
                                    "api_key_name": api_key_name}, field="stages.storyboard.options")
        self.marker = marker

    def render(self, shot, script, out_path, **kwargs) -> BackendResult:
        log.warning("calling the image API with key %s", self.key)
        if _first_time(self.marker):
            try:
                raise ConnectionError(f"401 Unauthorized for Bearer {self.key}")
            except ConnectionError:
                log.exception("request failed (key=%s)", self.key)
                raise
        result = super().render(shot, script, out_path, **kwargs)
        return BackendResult(outputs=result.outputs, ai_usage=result.ai_usage,
                             params={**result.params, "auth": f"Bearer {self.key}"})


for _stage, _name, _cls in (("video", "test-kill-once", "KillOnceVideo"),
                            ("video", "test-kill-once-resident", "KillOnceResidentVideo"),
                            ("video", "test-kill-replica", "KillRepeatedlyResidentVideo"),
                            ("video", "test-no-space", "NoSpaceVideo"),
                            ("video", "test-slow", "SlowVideo"),
                            ("storyboard", "test-leaky", "LeakyStoryboard")):
    register(_stage, _name, f"{__name__}:{_cls}")
