"""The episode timeline as OpenTimelineIO: the shots track (each clip the exact frames of its lossless media),
the AI label as its own track, one dub track per language; subtitles travel as SRT/ASS sidecars named in the
timeline's metadata. Written as .otio, and as FCP X XML / FCP 7 XML through their OTIO adapters."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import opentimelineio as otio

ADAPTERS = {"fcpx_xml": "episode.fcpxml", "fcp_xml": "episode.xml"}  # adapter → file, Final Cut / Premiere
NLE_RATES = (24, 25, 30, 50, 60)  # whole-number rates both XML formats (and SMPTE timecode) carry


def _range(start: int, frames: int, fps: int) -> otio.opentime.TimeRange:
    return otio.opentime.TimeRange(otio.opentime.RationalTime(start, fps), otio.opentime.RationalTime(frames, fps))


def _ref(path: str, frames: int, fps: int) -> otio.schema.ExternalReference:
    return otio.schema.ExternalReference(target_url=otio.url_utils.url_from_filepath(str(path)),
                                         available_range=_range(0, frames, fps))


def build(doc: dict[str, Any], label_image: str | None = None) -> otio.schema.Timeline:
    fps = doc["fps"]
    tl = otio.schema.Timeline(name=f"{doc['drama']} {doc['episode']} {doc['title']}",
                              global_start_time=otio.opentime.RationalTime(0, fps))
    tl.metadata["microdrama"] = {"drama": doc["drama"], "episode": doc["episode"], "content_id": doc["content_id"],
                                 "fps": fps, "width": doc["width"], "height": doc["height"],
                                 "subtitles": {lang: {k: v for k, v in f.items() if k in ("srt", "ass")}
                                               for lang, f in doc["subtitles"].items()},
                                 "job": doc["job"], "timeline_version": doc["version"]}
    video = otio.schema.Track(name="V1 shots", kind=otio.schema.TrackKind.Video)
    for s in doc["shots"]:
        video.append(otio.schema.Clip(name=s["id"], media_reference=_ref(s["media"], s["media_frames"], fps),
                                      source_range=_range(s["source_in"], s["frames"], fps),
                                      metadata={"microdrama": {"shot": s["id"]}}))
    tl.tracks.append(video)
    if label_image:
        label = otio.schema.Track(name="V2 AI label", kind=otio.schema.TrackKind.Video)
        n = min(doc["label"]["frames"], doc["frames"])
        label.append(otio.schema.Clip(name=doc["label"]["text"], media_reference=_ref(label_image, n, fps),
                                      source_range=_range(0, n, fps), metadata={"microdrama": {"role": "ai-label"}}))
        tl.tracks.append(label)
    for i, lang in enumerate(doc["audio_languages"], 1):
        track = otio.schema.Track(name=f"A{i} dub {lang}", kind=otio.schema.TrackKind.Audio,
                                  metadata={"microdrama": {"language": lang}})
        for s in doc["shots"]:
            track.append(otio.schema.Clip(name=f"{s['id']} {lang}",
                                          media_reference=_ref(s["audio_media"][lang], s["media_frames"], fps),
                                          source_range=_range(s["source_in"], s["frames"], fps),
                                          metadata={"microdrama": {"shot": s["id"], "language": lang}}))
        tl.tracks.append(track)
    return tl


def write_all(doc: dict[str, Any], folder: Path, label_image: str | None) -> dict[str, str]:
    """episode.otio always; each NLE XML whose adapter is installed and accepts the timeline (else why not)."""
    tl = build(doc, label_image)
    written = {"otio": str(folder / "episode.otio")}
    otio.adapters.write_to_file(tl, written["otio"])
    for adapter, name in ADAPTERS.items():
        if doc["fps"] not in NLE_RATES:
            written[adapter] = (f"not written: FCP XML needs {', '.join(map(str, NLE_RATES))} fps; this episode is "
                                f"{doc['fps']} fps (stages.video.fps)")
            continue
        try:
            otio.adapters.write_to_file(tl, str(folder / name), adapter_name=adapter)
            written[adapter] = str(folder / name)
        except Exception as exc:  # adapter not installed, or it refuses part of the timeline
            written[adapter] = f"not written: {type(exc).__name__}: {exc}"
    return written


def read_cut(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An edited timeline's microdrama metadata and its cut: the shots track's clips in order, each as
    (shot id, source in frame, frames, media path). The shots track is the first video track; dub tracks
    follow the picture (a shot's dialogue is cut with its frames)."""
    tl = otio.adapters.read_from_file(str(path))
    meta = dict(tl.metadata.get("microdrama") or {})
    tracks = [t for t in tl.video_tracks() if t.name != "V2 AI label"]
    if not tracks:
        raise ValueError(f"{path}: no video track to render")
    fps = meta.get("fps")
    cut = []
    for item in tracks[0]:
        if isinstance(item, otio.schema.Gap):
            raise ValueError(f"{path}: a gap of {item.duration().to_frames()} frames in the shots track; "
                             "close it (this pipeline renders shots back to back)")
        if not isinstance(item, otio.schema.Clip):
            raise ValueError(f"{path}: {type(item).__name__} {item.name!r} in the shots track; keep only clips "
                             "(transitions are not rendered back)")
        rng = item.source_range or item.available_range()
        rate = fps or rng.start_time.rate
        ref = item.media_reference
        url = getattr(ref, "target_url", None) or ""
        cut.append({"name": item.name, "shot": (item.metadata.get("microdrama") or {}).get("shot"),
                    "in": int(round(rng.start_time.rescaled_to(rate).value)),
                    "frames": int(round(rng.duration.rescaled_to(rate).value)),
                    "media": otio.url_utils.filepath_from_url(url) if url else None})
    return meta, cut
