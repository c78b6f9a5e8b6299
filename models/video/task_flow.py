"""A hosted video task for one shot: the provider flow, then the clip checked and conformed to the intermediate."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Callable

from models.providers import Limits
from models.providers.flow import Polled, file_digest, run_task
from models.registry import BackendResult
from models.video.camera import count_frames
from pipeline.script import Shot

__all__ = ["Polled", "file_digest", "probe", "run_video_task"]


def probe(path: Path) -> tuple[int, int, float]:
    """(width, height, duration in seconds) of a video file, by ffprobe."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "stream=width,height,duration:format=duration", "-of", "json", str(path)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return 0, 0, 0.0
    doc = json.loads(out.stdout or "{}")
    streams = doc.get("streams") or [{}]
    s = streams[0]
    duration = s.get("duration") or (doc.get("format") or {}).get("duration") or 0
    return int(s.get("width", 0)), int(s.get("height", 0)), float(duration)


def conform(src: Path, out_path: Path, *, frames: int, fps: int, width: int, height: int) -> None:
    """The provider's clip → exactly `frames` frames at fps, width×height, x264 -qp 0 Matroska (BT.709)."""
    vf = (f"fps={fps},scale={width}:{height}:flags=lanczos:out_color_matrix=bt709:out_range=tv,"
          f"setsar=1,format=yuv420p,tpad=stop_mode=clone:stop={frames}")
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-an", "-vf", vf, "-frames:v", str(frames),
           "-c:v", "libx264", "-qp", "0", "-preset", "ultrafast", "-colorspace", "bt709", "-color_primaries",
           "bt709", "-color_trc", "bt709", "-color_range", "tv", "-f", "matroska", str(out_path)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"conforming the provider's clip failed: {done.stderr[-1500:]}")


def run_video_task(*, provider: str, model: str, shot: Shot, request: dict[str, Any], submit: Callable[[], str],
                   fetch: Callable[[str], Polled], planned: list[dict], expect: tuple[int, int], min_seconds: float,
                   limits: Limits, out_path: Path, fps: int, width: int, height: int, prompt: str,
                   params: dict[str, Any]) -> BackendResult:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    raw = out_path.with_name(f"{out_path.stem}.{provider}.mp4")
    done = run_task(provider=provider, model=model, request=request, submit=submit, fetch=fetch, planned=planned,
                    limits=limits, dest=raw, what=f"shot {shot.id}'s {provider} {model} clip")
    w, h, seconds = probe(raw)
    result = {"result_width": w, "result_height": h, "result_seconds": round(seconds, 3)}
    if (w, h) != tuple(expect):
        raise done.reject(f"shot {shot.id}: the clip is {w}×{h}, asked for {expect[0]}×{expect[1]}", **result)
    if seconds + 0.05 < min_seconds:
        raise done.reject(f"shot {shot.id}: the clip lasts {seconds:.2f} s, the shot needs {min_seconds:.2f} s",
                          **result)
    facts = done.accept(**result)
    frames = round(min_seconds * fps)
    conform(raw, out_path, frames=frames, fps=fps, width=width, height=height)
    written = count_frames(out_path)
    if written != frames:
        raise RuntimeError(f"video {provider}: shot {shot.id} conformed to {written} frames, expected {frames}")
    raw.unlink(missing_ok=True)
    return BackendResult(outputs={"clip": str(out_path), "frames": frames, "width": width, "height": height},
                         ai_usage=tuple(done.usage),
                         params={**params, **facts, "provider": provider, "prompt": prompt[:500]})
