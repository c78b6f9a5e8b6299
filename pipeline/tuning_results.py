"""What a tuning call returns and how it shows in a notebook: the image, the audio, the frames, the usage record."""
from __future__ import annotations

import base64
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from pipeline.job import Job
from pipeline.script import Script, Shot

SHOWN_PARAMS = ("steps", "guidance", "seed", "width", "height", "fps", "mode", "frames_generated", "voice")


@dataclass
class Result:
    """One stage execution: its outputs, its usage record, and the overrides it ran under."""

    stage: str
    shot: Shot
    overrides: dict[str, Any]  # dotted job overrides of this call (on top of the tuner's chosen ones)
    outputs: dict[str, Any]
    record: dict[str, Any]  # the usage record (pipeline.metering.usage.UsageRecord as JSON)
    key: str  # cache key
    job: Job = field(repr=False)

    @property
    def cache_hit(self) -> bool:
        return bool(self.record.get("cache_hit"))

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.outputs.get("params") or {})

    @property
    def usage(self) -> dict[str, Any]:
        """The metered facts of this execution: backend, time, CPU, AI usage, cache hit."""
        r = self.record
        return {"stage": r["stage"], "shot": r["shot"], "backend": r["backend"], "status": r["status"],
                "cache_hit": r["cache_hit"], "wall_s": round(r["wall_s"], 3), "cpu_s": round(r["cpu_s"], 3),
                "peak_rss_mb": round(r["peak_rss"] / 2**20, 1),
                "ai_usage": [(u["tool"], u["quantity"], u["unit"]) for u in r["ai_usage"]]}

    def usage_line(self) -> str:
        """One line: stage, shot, backend, key settings, time, CPU, AI usage, cache hit or computed."""
        u = self.usage
        shown = " ".join(f"{k}={self.params[k]}" for k in SHOWN_PARAMS if k in self.params)
        ai = ", ".join(f"{tool} {qty:g} {unit}" for tool, qty, unit in u["ai_usage"]) or "none"
        how = "cache hit" if u["cache_hit"] else "computed"
        return (f"{u['stage']} {u['shot']} · backend={u['backend']} {shown} · wall_s={u['wall_s']:.2f} "
                f"cpu_s={u['cpu_s']:.2f} · ai_usage: {ai} · {how}").replace("  ", " ")

    def label(self) -> str:
        """What this call changed, for captions: `steps=4 seed=7`, or `defaults`."""
        return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.overrides.items()) or "defaults"


@dataclass
class StoryboardResult(Result):
    @property
    def image_path(self) -> Path:
        return Path(self.outputs["image"])

    @cached_property
    def image(self) -> Any:
        """The keyframe as a PIL image."""
        from PIL import Image

        with Image.open(self.image_path) as im:
            return im.convert("RGB")

    def show(self) -> None:
        from IPython.display import display

        display(self.image)
        print(self.usage_line())

    _ipython_display_ = show


@dataclass
class DubResult(Result):
    script: Script | None = field(default=None, repr=False)  # the (translated) script it was voiced from

    @property
    def audio_paths(self) -> dict[str, Path]:
        return {lang: Path(p) for lang, p in self.outputs["audio"].items()}

    @property
    def duration_s(self) -> float:
        return float(self.outputs["duration_s"])

    @property
    def stretch(self) -> dict[str, float]:
        return dict(self.outputs["stretch"])

    def audio(self, lang: str | None = None) -> Any:
        """An `IPython.display.Audio` player (the WAV embedded) of one language's track."""
        from IPython.display import Audio

        lang = lang or next(iter(self.audio_paths))
        return Audio(filename=str(self.audio_paths[lang]))

    def timings(self) -> Any:
        """A pandas table: one row per line and language, with start, end and length in seconds."""
        import pandas as pd

        rows = [{"line": i + 1, "speaker": line["speaker"], "lang": lang, "start_s": start, "end_s": end,
                 "length_s": round(end - start, 3), "emotion": line.get("emotion"), "text": line["text"][lang]}
                for i, line in enumerate(self.outputs["lines"]) for lang, (start, end) in line["timing"].items()]
        return pd.DataFrame(rows, columns=["line", "speaker", "lang", "start_s", "end_s", "length_s", "emotion",
                                           "text"])

    def summary(self) -> dict[str, Any]:
        """Shot length, natural speech span per language, stretch applied, whether the shot was extended."""
        o = self.outputs
        return {"duration_s": round(o["duration_s"], 4), "frames": o["frames"], "natural_s": o["natural_s"],
                "stretch": o["stretch"], "extended": o["extended"], "shot_duration_s": self.shot.duration_s}

    def voices(self) -> dict[str, dict[str, str]]:
        """The voice hints each speaker of the shot was voiced with (screenplay cast + stages.dub.voices)."""
        from pipeline.stages.dub import _voice

        speakers = dict.fromkeys(line.speaker for line in self.shot.lines)
        return {name: _voice(self.script, self.job, name) for name in speakers} if self.script else {}

    def show(self) -> None:
        from IPython.display import HTML, display

        for lang in self.audio_paths:
            display(HTML(f"<b>{lang}</b>"), self.audio(lang))
        display(self.timings())
        print({"voices": self.voices(), **self.summary()})
        print(self.usage_line())

    _ipython_display_ = show


@dataclass
class VideoResult(Result):
    upstream: dict[str, Result] = field(default_factory=dict, repr=False)  # storyboard and dub it started from

    @property
    def clip_path(self) -> Path:
        return Path(self.outputs["clip"])

    def frames(self, n: int = 6) -> list[Any]:
        """`n` frames evenly spread over the clip, as PIL images (decoded with ffmpeg)."""
        import numpy as np
        from PIL import Image

        w, h, total = int(self.outputs["width"]), int(self.outputs["height"]), int(self.outputs["frames"])
        raw = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(self.clip_path), "-f", "rawvideo",
                              "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
        video = np.frombuffer(raw, dtype=np.uint8).reshape(-1, h, w, 3)
        picks = np.linspace(0, min(total, len(video)) - 1, num=max(1, min(n, len(video)))).round().astype(int)
        return [Image.fromarray(video[i]) for i in picks]

    def strip(self, n: int = 6) -> Any:
        """The frames side by side as one PIL image (shows inline as a PNG)."""
        return side_by_side(self.frames(n), [""] * n)

    def mp4(self, scale: int = 2) -> bytes:
        """The clip as a small H.264 MP4 for the browser (the stage's own clip is lossless Matroska)."""
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "clip.mp4"
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(self.clip_path), "-vf",
                            f"scale=iw*{scale}:ih*{scale}:flags=neighbor,format=yuv420p", "-c:v", "libx264",
                            "-preset", "veryfast", "-crf", "30", "-movflags", "+faststart", "-an", str(out)],
                           check=True, capture_output=True)
            return out.read_bytes()

    def html5(self, scale: int = 2) -> Any:
        """An HTML5 <video> element with the MP4 embedded (plays in Jupyter and in saved notebooks)."""
        from IPython.display import HTML

        data = base64.b64encode(self.mp4(scale)).decode()
        return HTML(f'<video controls loop muted playsinline src="data:video/mp4;base64,{data}"></video>')

    def show(self) -> None:
        from IPython.display import display

        display(self.strip())
        print(self.usage_line())

    _ipython_display_ = show


def side_by_side(items: Sequence[Any], labels: Sequence[str] | None = None, gap: int = 6) -> Any:
    """Images (PIL images or StoryboardResults) in a row on one PIL image, each captioned below."""
    from PIL import Image, ImageDraw

    images = [it.image if isinstance(it, StoryboardResult) else it for it in items]
    labels = list(labels) if labels is not None else [it.label() if isinstance(it, Result) else ""
                                                      for it in items]
    caption = 16 if any(labels) else 0
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    sheet = Image.new("RGB", (width, max(im.height for im in images) + caption), "white")
    draw, font, x = ImageDraw.Draw(sheet), _caption_font(), 0
    for im, text in zip(images, labels):
        sheet.paste(im, (x, 0))
        while text and draw.textlength(text, font=font) > im.width - 2:
            text = text[:-2] + "…"
        if text:
            draw.text((x + 2, im.height + 1), text, fill="black", font=font)
        x += im.width + gap
    return sheet


def _caption_font() -> Any:
    """The CJK font the preview storyboards use (names in captions), else Pillow's default."""
    from PIL import ImageFont

    try:
        from models.image.procedural import find_font

        path, index = find_font()
        return ImageFont.truetype(path, size=11, index=index)
    except (ImportError, OSError):  # no fontconfig or no CJK font installed
        return ImageFont.load_default()
