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
