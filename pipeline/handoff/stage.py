"""The edit stage's handoff step: after the master is encoded, write the timeline (timeline.json), the covers
and one delivery file per platform preset of the job — inside the edit stage, so this work is metered,
cached and billed to the episode like the master itself."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.cache import file_digest
from pipeline.handoff import covers, delivery, timeline
from pipeline.subtitles import events

def cache_parts(job: Any) -> list[Any]:
    """What, besides the edit's own inputs, decides the handoff outputs: the selected presets' files and
    the source of the modules that write them (editing one re-renders exactly what it writes)."""
    code = [file_digest(Path(m.__file__))[:16] for m in (covers, delivery, timeline)] + \
        [file_digest(Path(__file__))[:16]]
    return [code, list(job.delivery), delivery.digests(list(job.delivery), job.job_dir)]


def finish(job: Any, shots: list[dict[str, Any]], *, subtitles: dict[str, dict[str, str]],
           tracks: dict[str, str], loudness: dict[str, dict[str, float]], master: str, content_id: str,
           font_path: str, workdir: Path) -> dict[str, Any]:
    primary_dub = next(iter(tracks), job.primary_language)
    evs = {lang: events(shots, lang, primary_dub) for lang in job.languages}
    doc = timeline.build(job=job, shots=shots, subtitles=subtitles, events=evs, master=master,
                         content_id=content_id, loudness=loudness)
    presets = [delivery.load(name, job.job_dir) for name in job.delivery]
    sizes = sorted({tuple(s) for p in presets for s in p.cover.sizes}) or covers.DEFAULT_SIZES
    cover_dir = workdir / "covers"
    cover_dir.mkdir(exist_ok=True)
    doc["covers"] = covers.make_covers(doc["shots"], title=doc["title"], label=job.stages.edit.label_text,
                                       font_path=font_path, sizes=sizes,
                                       safe=covers.strictest([dict(p.cover.safe_area) for p in presets]),
                                       workdir=cover_dir)
    doc["delivery"] = {}
    if presets:
        out_dir = workdir / "delivery"
        out_dir.mkdir(exist_ok=True)
        duration = doc["frames"] / doc["fps"]
        for p in presets:
            gain = delivery.measure_gain(tracks[primary_dub], p)
            doc["delivery"][p.name] = {**delivery.encode(
                p, master=master, audio=tracks[primary_dub], gain_db=gain, fps=doc["fps"], duration_s=duration,
                out=out_dir / f"{p.name}.mp4", speed=job.stages.edit.preset), "gain_db": gain,
                "audio_language": primary_dub}
    path = timeline.write(doc, workdir / "timeline.json")
    return {"timeline": path, "covers": {k: v["file"] for k, v in doc["covers"]["covers"].items()},
            "delivery": {k: v["file"] for k, v in doc["delivery"].items()}}
