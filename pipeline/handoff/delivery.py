"""Per-platform delivery: presets (configs/delivery/<name>.yaml, each number with its source) and the encode
that turns the edit's master picture and lossless dub track into one file that meets a preset.

The picture comes from the master MP4 (subtitles and the visible AI label are already burned in), scaled
to the preset's size and conformed to its frame-rate range; the sound comes from the edit's lossless
primary-language track, brought to the preset's loudness through a true-peak limiter (measured through
the very chain applied) and laid out as the preset's channels. The video bitrate ceiling is an encoder
VBV limit (maxrate/bufsize), lowered further when the preset's file-size cap demands it.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.cache import file_digest

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "delivery"
LEVELS = {"h264": {"3.1", "4", "4.0", "4.1", "4.2", "5", "5.0", "5.1"}, "h265": {"3.1", "4", "4.0", "4.1", "5", "5.0", "5.1"}}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FrameRate(_Frozen):
    min: int = Field(ge=1, le=120)
    max: int = Field(ge=1, le=120)
    conform: int = Field(ge=1, le=120)  # used when the episode's rate is outside [min, max]


class VideoSpec(_Frozen):
    codec: Literal["h264", "h265"]
    profile: Literal["baseline", "main", "high"]
    level: str
    width: int = Field(ge=144, le=4096)
    height: int = Field(ge=256, le=8192)
    fps: FrameRate
    max_kbps: int = Field(ge=50, le=200_000)  # bitrate ceiling (VBV maxrate)
    buffer_s: float = Field(1.0, gt=0, le=10)  # VBV buffer in seconds of max_kbps
    crf: int = Field(20, ge=0, le=51)


class AudioSpec(_Frozen):
    codec: Literal["aac"] = "aac"
    kbps: int = Field(ge=32, le=512)
    sample_rate: Literal[44100, 48000] = 48000
    layout: Literal["mono", "stereo"] = "stereo"
    loudness_lufs: float = Field(ge=-40, le=-5)
    true_peak_db: float = Field(ge=-9, le=0)


class CoverSpec(_Frozen):
    sizes: list[tuple[int, int]] = Field(min_length=1)  # (width, height) of each cover the platform asks for
    safe_area: dict[Literal["top", "bottom", "left", "right"], float]  # fractions of height/width kept clear


class Source(_Frozen):
    covers: list[str]  # which numbers this source is for
    url: str = ""
    note: str = ""


class Preset(_Frozen):
    name: str
    platform: str
    video: VideoSpec
    audio: AudioSpec
    max_duration_s: float = Field(gt=0)
    max_bytes: int = Field(gt=0)
    cover: CoverSpec
    sources: list[Source] = Field(min_length=1)


def preset_path(name: str, job_dir: Path | None = None) -> Path:
    if name.endswith((".yaml", ".yml")):
        return (job_dir or Path.cwd()) / name
    return PRESETS / f"{name}.yaml"


def known() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def load(name: str, job_dir: Path | None = None) -> Preset:
    """A shipped preset by name, or a preset file beside the job; ValueError naming the problem."""
    path = preset_path(name, job_dir)
    if not path.is_file():
        raise ValueError(f"unknown delivery preset {name!r}; choose one of: {', '.join(known())} "
                         "(or a .yaml file beside the job)")
    try:
        preset = Preset.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ValueError(f"{path.name}: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path.name}: malformed YAML: {exc}") from None
    if preset.video.level not in LEVELS[preset.video.codec]:
        raise ValueError(f"{path.name}: video.level {preset.video.level!r} is not a {preset.video.codec} level "
                         f"this pipeline encodes; use one of {sorted(LEVELS[preset.video.codec])}")
    if preset.video.codec == "h265" and preset.video.profile != "main":
        raise ValueError(f"{path.name}: video.profile: h265 is delivered in the main profile")
    return preset


def digests(names: list[str], job_dir: Path | None) -> list[tuple[str, str]]:
    """(name, file digest) of each selected preset: editing a preset re-renders exactly its deliveries."""
    return [(n, file_digest(preset_path(n, job_dir))) for n in names]


def output_fps(preset: Preset, fps: int) -> int:
    r = preset.video.fps
    return fps if r.min <= fps <= r.max else r.conform


def video_kbps(preset: Preset, duration_s: float) -> int:
    """The ceiling: the preset's, or lower so that picture + sound stay under the file-size cap (5% mux headroom)."""
    budget = int(preset.max_bytes * 8 * 0.95 / max(duration_s, 0.001) / 1000) - preset.audio.kbps
    return max(50, min(preset.video.max_kbps, budget))


def encode(preset: Preset, *, master: str, audio: str, gain_db: float, fps: int, duration_s: float,
           out: Path, speed: str = "veryfast") -> dict[str, Any]:
    """One delivery file for `preset`; raises ValueError when the episode cannot meet it."""
    if duration_s > preset.max_duration_s:
        raise ValueError(f"delivery.{preset.name}: the episode is {duration_s:.1f} s; {preset.platform} takes at "
                         f"most {preset.max_duration_s:g} s — split the episode or drop {preset.name} from delivery")
    v, a = preset.video, preset.audio
    speed = "superfast" if speed == "ultrafast" else speed  # ultrafast drops CABAC/8x8dct: Baseline, not the preset's profile
    rate = output_fps(preset, fps)
    kbps = video_kbps(preset, duration_s)
    buf = int(kbps * v.buffer_s)
    vf = f"scale={v.width}:{v.height}:flags=lanczos,fps={rate},format=yuv420p"
    af = audio_chain(gain_db, a.true_peak_db, a.layout, a.sample_rate)
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", master, "-i", audio,
           "-map", "0:v:0", "-map", "1:a:0", "-map_metadata", "0", "-vf", vf, "-af", af]
    if v.codec == "h264":
        cmd += ["-c:v", "libx264", "-profile:v", v.profile, "-level:v", v.level, "-crf", str(v.crf),
                "-maxrate", f"{kbps}k", "-bufsize", f"{buf}k", "-preset", speed]
    else:
        level = v.level if "." in v.level else f"{v.level}.0"
        cmd += ["-c:v", "libx265", "-profile:v", "main", "-preset", speed, "-tag:v", "hvc1",
                "-x265-params", f"crf={v.crf}:vbv-maxrate={kbps}:vbv-bufsize={buf}:level-idc={level}:log-level=error"]
    cmd += ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
            "-c:a", "aac", "-b:a", f"{a.kbps}k", "-ar", str(a.sample_rate),
            "-movflags", "+faststart+use_metadata_tags", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-4:])
        raise RuntimeError(f"delivery.{preset.name}: ffmpeg failed: {tail}")
    size = out.stat().st_size
    if size > preset.max_bytes:
        raise ValueError(f"delivery.{preset.name}: {size:,} bytes is over {preset.platform}'s {preset.max_bytes:,}")
    stream = next(s for s in probe(out)["streams"] if s["codec_type"] == "video")
    level = round(float(v.level) * (10 if v.codec == "h264" else 30))
    if (stream.get("profile", "").lower(), stream.get("level")) != (v.profile, level):
        raise RuntimeError(f"delivery.{preset.name}: the encoder wrote {stream.get('profile')} level "
                           f"{stream.get('level')}, not {v.profile} {v.level}")
    return {"file": str(out), "preset": preset.name, "fps": rate, "video_kbps_ceiling": kbps,
            "bufsize_kbit": buf, "bytes": size}


def audio_chain(gain_db: float, true_peak_db: float, layout: str, sample_rate: int) -> str:
    """Gain, then the true-peak limiter, then the channel layout (dual mono for stereo), then the rate."""
    limit = 10 ** (true_peak_db / 20)
    pan = "pan=stereo|c0=c0|c1=c0," if layout == "stereo" else ""
    return (f"{pan}volume={gain_db:.3f}dB,alimiter=limit={limit:.4f}:level=disabled:attack=2:release=40:latency=1,"
            f"aresample={sample_rate}")


def measure_gain(audio: str, preset: Preset) -> float:
    """Gain that brings `audio`, laid out as the preset's channels, to the preset's loudness (within 0.2 LU).
    Measured in the output layout: dual-mono stereo reads ~3 LU louder than the mono it came from."""
    from pipeline.stages.edit import loudness

    a = preset.audio
    level, _ = loudness(audio, "pan=stereo|c0=c0|c1=c0" if a.layout == "stereo" else "")
    if level == float("-inf"):
        return 0.0
    gain = a.loudness_lufs - level
    for _ in range(4):
        out, _peak = loudness(audio, audio_chain(gain, a.true_peak_db, a.layout, a.sample_rate))
        if abs(out - a.loudness_lufs) <= 0.2:
            break
        gain += a.loudness_lufs - out
    return round(gain, 3)


def probe(path: Path) -> dict[str, Any]:
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                          str(path)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)
