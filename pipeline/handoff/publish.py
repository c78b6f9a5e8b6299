"""Handoff files in the published episode folder: media/ (the lossless shot clips remuxed to MP4 without
re-encoding, the dub WAVs, the AI label as a PNG), timeline.json, episode.otio (+ FCP X / FCP 7 XML),
a JianYing draft, the covers and delivery/<platform>.mp4. Written into the staging folder with paths of
the final folder, so the exported timelines point at media that exist once the folder is swapped in."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from pipeline.cache import place
from pipeline import layout
from pipeline.handoff import jianying, otio_timeline, timeline


def label_png(doc: dict[str, Any], font_path: str, out: Path) -> str:
    """The visible AI label as the master draws it (white on a 50% black box in layout.LABEL), on a
    transparent full frame, so an editor lays it over the picture unchanged."""
    w, h = doc["width"], doc["height"]
    img = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    text = doc["label"]["text"]
    font = ImageFont.truetype(font_path, layout.label_font_px(text, font_path) or layout.LABEL_MIN_FONT_PX)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    _, y0, x1, _ = layout.LABEL.px(w, h)
    pad = layout.LABEL_PAD_PX
    x, y = x1 - pad - (right - left), y0 + pad
    draw.rectangle((x - pad, y - pad, x + (right - left) + pad, y + (bottom - top) + pad + top), fill=(0, 0, 0, 128))
    draw.text((x, y), text, font=font, fill=(255, 255, 255, 255))
    img.save(out)
    return str(out)


def _link(src: Path, dst: Path) -> None:
    """A cache file into the episode folder: a copy or a reflink, never a hard link (`cache.place`)."""
    place(src, dst)


def _remux(src: str, dst: Path) -> None:
    """The lossless H.264 clip into an MP4 (stream copy: the same frames, bit for bit)."""
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", src, "-map", "0:v:0",
                    "-c", "copy", "-movflags", "+faststart", str(dst)], check=True, capture_output=True)


def publish(job: Any, edit: dict[str, Any], staging: Path, final: Path) -> dict[str, Any]:
    """Write the handoff files into `staging`; returns the manifest's `outputs` additions (relative names)."""
    from pipeline.stages.edit import font_file

    handed = edit.get("handoff")
    if not handed:
        return {}
    font_path = font_file(job.stages.edit.font)
    doc = timeline.read(Path(handed["timeline"]))
    media = staging / "media"
    media.mkdir()
    moved: dict[str, str] = {}  # source path → published name

    def place(src: str, name: str, remux: bool = False) -> str:
        if src not in moved:
            (_remux(src, media / name) if remux else _link(Path(src), media / name))
            moved[src] = name
        return str(final / "media" / moved[src])

    for s in doc["shots"]:
        s["source"] = s["media"]  # the lossless original in the cache: what a re-render reads first
        s["media"] = place(s["media"], f"{Path(s['media']).stem}.mp4", remux=True)
        s["source_audio"] = dict(s["audio_media"])
        s["audio_media"] = {lang: place(p, f"{Path(p).stem}.wav") for lang, p in s["audio_media"].items()}
    for lang, files in doc["subtitles"].items():
        files.update({kind: str(final / f"episode.{lang}.{kind}") for kind in ("srt", "ass")})
    label = label_png(doc, font_path, media / "ai-label.png")
    doc["master"] = str(final / "episode.mp4")
    out: dict[str, Any] = {"media": "media/"}
    for size, path in handed["covers"].items():
        _link(Path(path), staging / Path(path).name)
        out.setdefault("covers", {})[size] = Path(path).name
    if handed["delivery"]:
        (staging / "delivery").mkdir()
        for name, path in handed["delivery"].items():
            _link(Path(path), staging / "delivery" / f"{name}.mp4")
            out.setdefault("delivery", {})[name] = f"delivery/{name}.mp4"
    timeline.write(doc, staging / "timeline.json")  # every path in it is absolute, in the final folder
    written = otio_timeline.write_all(doc, staging, str(final / "media" / "ai-label.png"))
    out["timeline"] = "timeline.json"
    out["otio"] = {k: (Path(v).name if v.startswith(str(staging)) else v) for k, v in written.items()}
    draft = f"{doc['drama']}-{doc['episode']}"
    jianying.write(_at(doc, final, staging), staging / "jianying", draft, staging=str(staging), final=str(final),
                   cover=handed["covers"].get(f"{doc['width']}x{doc['height']}"))
    out["jianying"] = f"jianying/{draft}/"
    out["ai_label"] = f"media/{Path(label).name}"
    return out


def _at(doc: dict[str, Any], old: Path, new: Path) -> dict[str, Any]:
    """The document with paths under `old` moved under `new`."""
    return timeline._paths(doc, f"{old}/", f"{new}/")
