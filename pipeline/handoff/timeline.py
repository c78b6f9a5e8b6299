"""The episode timeline as data: every shot's media and source range in frames, per-language audio, subtitle
events and the AI label — written by the edit stage (timeline.json) and read by every handoff exporter.

Frames are the unit: a shot is `frames` frames of its `media` starting at `source_in`, placed at `record_in`
on the episode clock. Trimmed shots (an edited timeline rendered back) are cut here, frame-exact and
lossless, before the edit stage's single encode; the timeline keeps pointing at the original media.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

VERSION = 1


def frames_of(seconds: float, fps: int) -> int:
    """Whole frames in a duration that the dub stage snapped to frames (exact up to float noise)."""
    return int(round(seconds * fps))


def apply_trims(shots: list[dict[str, Any]], fps: int, sample_rate: int, workdir: Path) -> list[dict[str, Any]]:
    """Shots with `trim: {in, frames}` cut to that range (video lossless, audio sample-exact, lines re-timed);
    every shot gains `media`, `audio_media` and `source_in`, the original files and offset it came from."""
    out = []
    for i, shot in enumerate(shots):
        full = frames_of(shot["duration_s"], fps)
        trim = shot.get("trim") or {"in": 0, "frames": full}
        start, n = int(trim["in"]), int(trim["frames"])
        if start < 0 or n < 1 or start + n > full:
            raise ValueError(f"shot {shot['id']}: trim {start}+{n} frames is outside its {full} frames")
        entry = {k: v for k, v in shot.items() if k != "trim"}
        entry.update(media=shot.get("media", shot["clip"]), audio_media=shot.get("audio_media", shot["audio"]),
                     source_lines=shot.get("source_lines", shot["lines"]),
                     media_frames=shot.get("media_frames", full), source_in=start, frames=n)
        if (start, n) != (0, full):
            stem = f"{i:03d}-{shot['id']}"
            entry["clip"] = cut_video(shot["clip"], start, n, fps, workdir / f"{stem}.mkv")
            entry["audio"] = {lang: cut_audio(path, start / fps, n / fps, sample_rate, workdir / f"{stem}.{lang}.wav")
                              for lang, path in shot["audio"].items()}
            entry["lines"] = retime_lines(shot["lines"], start / fps, n / fps)
            entry["duration_s"] = n / fps
        out.append(entry)
    return out


def cut_video(src: str, start: int, frames: int, fps: int, out: Path) -> str:
    """Frames [start, start+frames) of a clip, re-encoded lossless (x264 -qp 0) so no quality is lost."""
    vf = f"trim=start_frame={start}:end_frame={start + frames},setpts=PTS-STARTPTS"
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", src, "-vf", vf,
                    "-r", str(fps), "-c:v", "libx264", "-qp", "0", "-preset", "ultrafast", "-an", str(out)],
                   check=True, capture_output=True)
    return str(out)


def cut_audio(src: str, start_s: float, length_s: float, sample_rate: int, out: Path) -> str:
    from pipeline.stages.dub import read_wav, write_audio

    track = read_wav(Path(src))
    a = round(start_s * sample_rate)
    n = round(length_s * sample_rate)
    piece = np.zeros(n, dtype=np.float32)
    chunk = track[a:a + n]
    piece[:len(chunk)] = chunk
    write_audio(out, piece)
    return str(out)


def retime_lines(lines: list[dict[str, Any]], start_s: float, length_s: float) -> list[dict[str, Any]]:
    """Lines moved onto the trimmed shot's clock; a line cut away entirely is dropped, one cut partly is
    clipped to what remains."""
    out = []
    for line in lines:
        timing = {}
        for lang, (a, b) in line["timing"].items():
            a, b = max(a - start_s, 0.0), min(b - start_s, length_s)
            if b > a:
                timing[lang] = [round(a, 4), round(b, 4)]
        if timing:
            out.append({**line, "timing": timing})
    return out


def build(*, job: Any, shots: list[dict[str, Any]], subtitles: dict[str, dict[str, str]],
          events: dict[str, list[tuple[float, float, str]]], master: str, content_id: str,
          loudness: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The timeline document for shots already on the episode clock (edit.timeline)."""
    fps = job.stages.video.fps
    e = job.stages.edit
    record, entries = 0, []
    for s in shots:
        n = s.get("frames") or frames_of(s["duration_s"], fps)
        entries.append({"id": s["id"], "media": s.get("media", s["clip"]), "source_in": s.get("source_in", 0),
                        "media_frames": s.get("media_frames", n), "frames": n, "record_in": record, "clip": s["clip"],
                        "audio": s["audio"], "audio_media": s.get("audio_media", s["audio"]),
                        "lines": s["lines"], "source_lines": s.get("source_lines", s["lines"]),
                        "duration_s": s["duration_s"]})
        record += n
    return {
        "version": VERSION, "drama": job.drama, "episode": job.episode, "title": job.title or job.episode,
        "company": job.company, "fps": fps, "width": e.width, "height": e.height, "frames": record,
        "languages": list(job.languages), "audio_languages": list(shots[0]["audio"]) if shots else [],
        "shots": entries, "master": master, "content_id": content_id, "loudness": loudness,
        "subtitles": {lang: {**files, "events": [[round(a * fps), round(b * fps), text] for a, b, text in
                                                 events.get(lang, [])]} for lang, files in subtitles.items()},
        "label": {"text": e.label_text, "frames": int(round(e.label_seconds * fps)), "font": e.font},
        "job": job.model_dump(mode="json"),
    }


def write(doc: dict[str, Any], path: Path) -> str:
    """Write the document; paths inside its own folder are stored as "./name", because the edit stage's
    folder is renamed into the cache when the stage commits."""
    text = json.dumps(_paths(doc, f"{path.parent}/", "./"), ensure_ascii=False, indent=1)
    path.write_text(text, encoding="utf-8")
    return str(path)


def read(path: Path) -> dict[str, Any]:
    path = Path(path)
    return _paths(json.loads(path.read_text(encoding="utf-8")), "./", f"{path.resolve().parent}/")


def _paths(node: Any, old: str, new: str) -> Any:
    if isinstance(node, str):
        return new + node[len(old):] if node.startswith(old) else node
    if isinstance(node, dict):
        return {k: _paths(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_paths(v, old, new) for v in node]
    return node
