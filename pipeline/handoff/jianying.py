"""The episode timeline as a JianYing (剪映) draft, written with pyJianYingDraft: a video track of the shots
(each the exact frames of its lossless media), one audio track per dub language, one text track per
subtitle language and the AI label as its own text track. JianYing keeps time in microseconds, so every
frame boundary is rounded to the microsecond once (never accumulated).

A draft folder goes into JianYing's drafts folder (Windows: …/JianyingPro Drafts); its media paths are
absolute, so keep the episode folder where it was published or relink in JianYing."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from pipeline import layout

# pyJianYingDraft reads media through pymediainfo, whose libmediainfo keeps process-wide options: two drafts
# read at once from the threads of one batch driver got an empty XML report ("syntax error: line 1, column 0")
# or an empty "video width". One reader at a time.
_MEDIAINFO = threading.Lock()


def us(frame: int, fps: int) -> int:
    """A frame boundary in microseconds."""
    return round(frame * 1_000_000 / fps)


def _centre(rect: Any) -> dict[str, float]:
    """JianYing's transform of a segment centred on a layout rectangle (frame centre 0, edges ±1, y up)."""
    return {"transform_x": round((rect.x0 + rect.x1) - 1, 4), "transform_y": round(1 - (rect.y0 + rect.y1), 4)}


def span(a: int, n: int, fps: int) -> Any:
    import pyJianYingDraft as jy

    return jy.Timerange(us(a, fps), us(a + n, fps) - us(a, fps))


def _material(kind: Any, path: str, frames: int, fps: int) -> Any:
    """The material of `path` (read by MediaInfo, one thread at a time). MediaInfo reports durations in
    whole milliseconds; the media is exactly `frames` frames long, so a segment that uses its last frame is
    not refused for overrunning a rounded-down length."""
    with _MEDIAINFO:
        material = kind(path)
    material.duration = max(material.duration, us(frames, fps))
    return material


def write(doc: dict[str, Any], folder: Path, name: str, *, staging: str | None = None,
          final: str | None = None, cover: str | None = None) -> str:
    """Draft `name` under `folder`; media written under `staging` are recorded at their `final` place."""
    import pyJianYingDraft as jy

    fps = doc["fps"]
    folder.mkdir(parents=True, exist_ok=True)
    script = jy.DraftFolder(str(folder)).create_draft(name, doc["width"], doc["height"], fps, allow_replace=True)
    script.append_track(jy.TrackSpec(jy.TrackType.video, "shots"))
    for lang in doc["audio_languages"]:
        script.append_track(jy.TrackSpec(jy.TrackType.audio, f"dub-{lang}"))
    subs = {lang: f["events"] for lang, f in doc["subtitles"].items() if f["events"]}
    for lang in subs:
        script.append_track(jy.TrackSpec(jy.TrackType.text, f"subtitles-{lang}"))
    script.append_track(jy.TrackSpec(jy.TrackType.text, "ai-label"))
    videos: dict[str, Any] = {}
    audios: dict[str, Any] = {}
    for s in doc["shots"]:
        if s["media"] not in videos:
            videos[s["media"]] = _material(jy.VideoMaterial, s["media"], s["media_frames"], fps)
        video = videos[s["media"]]
        script.add_segment(jy.VideoSegment(video, span(s["record_in"], s["frames"], fps),
                                           source_timerange=span(s["source_in"], s["frames"], fps)), "shots")
        for lang in doc["audio_languages"]:
            path = s["audio_media"][lang]
            if path not in audios:
                audios[path] = _material(jy.AudioMaterial, path, s["media_frames"], fps)
            audio = audios[path]
            script.add_segment(jy.AudioSegment(audio, span(s["record_in"], s["frames"], fps),
                                               source_timerange=span(s["source_in"], s["frames"], fps)), f"dub-{lang}")
    for lang, evs in subs.items():
        style = jy.TextStyle(size=7.0, align=1, auto_wrapping=True)
        for a, b, text in evs:
            script.add_segment(jy.TextSegment(text, span(a, max(1, b - a), fps), style=style,
                                              clip_settings=jy.ClipSettings(**_centre(layout.SUBTITLES))), f"subtitles-{lang}")
    label = doc["label"]
    script.add_segment(jy.TextSegment(label["text"], span(0, min(label["frames"], doc["frames"]), fps),
                                      style=jy.TextStyle(size=6.0, align=2),
                                      background=jy.TextBackground(color="#000000", alpha=0.5),
                                      clip_settings=jy.ClipSettings(**_centre(layout.LABEL))), "ai-label")
    script.save()
    draft = folder / name
    _meta(draft, name, doc, cover)
    if staging and final:  # materials were read where they are now; record where they will be
        for file in ("draft_content.json",):
            path = draft / file
            path.write_text(path.read_text(encoding="utf-8").replace(json.dumps(staging, ensure_ascii=False)[1:-1],
                                                                      json.dumps(final, ensure_ascii=False)[1:-1]), encoding="utf-8")
    return str(draft)


def _meta(draft: Path, name: str, doc: dict[str, Any], cover: str | None) -> None:
    """Name the draft in draft_meta_info.json (the library leaves its template's name empty and id fixed),
    with its length and, when there is one, the 9:16 cover as JianYing's draft thumbnail."""
    import uuid

    from pipeline.cache import place

    path = draft / "draft_meta_info.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta.update(draft_name=name, draft_id=str(uuid.uuid5(uuid.NAMESPACE_URL, doc["content_id"])).upper(),
                tm_duration=us(doc["frames"], doc["fps"]))
    if cover:
        place(cover, draft / "draft_cover.jpg")  # a copy: the cover in the cache stays read-only
        meta["draft_cover"] = "draft_cover.jpg"
    path.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")


def read(folder: Path, name: str) -> Any:
    """The draft through pyJianYingDraft's own reader (template mode), for checks."""
    import pyJianYingDraft as jy

    return jy.DraftFolder(str(folder)).load_template(name)
