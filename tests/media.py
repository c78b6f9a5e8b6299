"""ffprobe/ffmpeg helpers for tests that check finished episodes."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path


def probe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                          str(path)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def integrated_loudness(path: Path, stream: int = 0) -> float:
    """EBU R128 integrated loudness (LUFS) of one audio stream, measured by ffmpeg's ebur128."""
    err = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-i", str(path), "-map", f"0:a:{stream}",
                          "-af", "ebur128", "-f", "null", "-"], capture_output=True, text=True).stderr
    summary = err[err.rindex("Summary:"):]
    return float(re.search(r"I:\s+(-?[\d.]+) LUFS", summary).group(1))


def voice_clip(path: Path, seconds: float = 4.0, rate: int = 24000, pitch: float = 180.0) -> Path:
    """A voiced-sounding mono clip (a harmonic tone with a syllable-rate envelope) for a cloning TTS to
    clone from: the voice tests' and the voices benchmark's reference."""
    import wave

    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 6))
    wav = 0.2 * tone * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) / 2.3
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((wav * 32767).astype("<i2").tobytes())
    return path
