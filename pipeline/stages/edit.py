"""Edit stage: shots → one 1080×1920 H.264/AAC MP4 with subtitles, −14 LUFS audio and AIGC labels.

Every pixel is encoded once: the video stage hands over lossless clips and this stage runs a single
ffmpeg graph (concat → scale/crop to 1080×1920 → burned primary subtitles → visible "AI生成" label →
x264), with one loudness-normalised AAC track per dub language and soft subtitles for every language.
Loudness: the integrated level (EBU R128) is measured through the same gain + true-peak limiter chain
the final graph applies, so the delivered track lands on the target.
The implicit AIGC label (GB 45438-2025) is JSON in the container metadata under the key "AIGC".
"""
from __future__ import annotations

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ffmpeg
import numpy as np

from pipeline.cache import digest, file_digest
from pipeline.handoff import stage as handoff
from pipeline.handoff.timeline import apply_trims
from pipeline.job import Job
from pipeline.stages import StageCall, StageRun
from pipeline.stages.dub import SAMPLE_RATE, read_wav, write_audio
from pipeline import layout, subtitles as subtitle_rules
from pipeline.subtitles import events, write_ass, write_srt

VERSION = 1
ISO639_2 = {"zh": "chi", "en": "eng", "ja": "jpn", "ko": "kor", "es": "spa", "fr": "fre", "de": "ger",
            "pt": "por", "ru": "rus", "th": "tha", "vi": "vie", "id": "ind", "ar": "ara"}
PRODUCER = "microdrama"


@dataclass(frozen=True)
class EditStage:
    job: Job
    name: str = "edit"
    reads: tuple[str, ...] = ("video.clip", "dub.audio", "dub.lines")
    writes: tuple[str, ...] = ("episode", "subtitles", "timeline")

    def cache_key_parts(self, call: StageCall) -> list[Any]:
        shots = call.inputs["shots"]
        return [self.name, VERSION, self.job.stages.edit.content(), self.job.languages,
                self.job.stages.video.fps, self.job.drama, self.job.episode, self.job.company, self.job.title,
                [(s["id"], file_digest(s["clip"]), {k: file_digest(v) for k, v in s["audio"].items()},
                  s["lines"], s["duration_s"], s.get("trim")) for s in shots], handoff.cache_parts(self.job),
                file_digest(Path(subtitle_rules.__file__))[:16]]  # the cue timing and wrapping rules

    def produce_id(self, call: StageCall) -> str:
        """The AIGC label's ProduceID (GB 45438-2025): `<drama>/<episode>/<digest>`, the digest of everything
        the episode's content is made from (every shot's clip and dub audio bytes, its lines and timing,
        the edit settings, the title and company, the languages): a new cut gets a new ID, an unchanged
        re-run keeps it."""
        return f"{self.job.drama}/{self.job.episode}/{digest(*self.cache_key_parts(call))[:32]}"

    def run(self, call: StageCall, run: StageRun) -> dict[str, Any]:
        e = self.job.stages.edit
        content_id = self.produce_id(call)
        (run.workdir / "inputs.json").write_text(json.dumps({**call.inputs, "content_id": content_id},
                                                            ensure_ascii=False), "utf-8")
        shots = timeline(apply_trims(call.inputs["shots"], self.job.stages.video.fps, SAMPLE_RATE, run.workdir))
        dub_langs = list(shots[0]["audio"]) if shots else []
        subs = self.write_subtitles(shots, run.workdir)
        tracks = {lang: self.join_audio(shots, lang, run.workdir) for lang in dub_langs}
        with ThreadPoolExecutor(max_workers=max(1, len(tracks))) as pool:  # ffmpeg passes, one per track
            futures = {lang: pool.submit(measure_loudness, path, e.loudness_lufs, e.true_peak_db)
                       for lang, path in tracks.items()}
            loud = {lang: f.result() for lang, f in futures.items()}
        out = run.workdir / "episode.mp4"
        graph = build_graph(self.job, [s["clip"] for s in shots], tracks, loud, subs, out, content_id)
        run_ffmpeg(graph)
        handed = handoff.finish(self.job, shots, subtitles=subs, tracks=tracks, loudness=loud, master=str(out),
                                content_id=content_id, font_path=font_file(e.font), workdir=run.workdir)
        return {"episode": str(out), "subtitles": subs, "handoff": handed, "inputs": str(run.workdir / "inputs.json"), "timeline": shots,
                "duration_s": sum(s["duration_s"] for s in shots), "loudness_in": loud,
                "audio_languages": dub_langs, "content_id": content_id}

    def write_subtitles(self, shots: list[dict], workdir: Path) -> dict[str, dict[str, str]]:
        e = self.job.stages.edit
        primary_dub = next(iter(shots[0]["audio"])) if shots else self.job.primary_language
        subs = {}
        for lang in self.job.languages:
            evs = events(shots, lang, primary_dub)
            srt, ass = workdir / f"episode.{lang}.srt", workdir / f"episode.{lang}.ass"
            write_srt(srt, evs)
            write_ass(ass, evs, font=e.font, width=e.width, height=e.height)
            subs[lang] = {"srt": str(srt), "ass": str(ass)}
        return subs

    def join_audio(self, shots: list[dict], lang: str, workdir: Path) -> str:
        track = np.concatenate([read_wav(Path(s["audio"][lang])) for s in shots])
        path = workdir / f"episode.{lang}.wav"
        write_audio(path, track)
        return str(path)


def run_ffmpeg(graph: Any) -> None:
    """Run a graph; on failure raise with ffmpeg's own last lines, not just "ffmpeg error"."""
    try:
        graph.run(quiet=True, overwrite_output=True)
    except ffmpeg.Error as exc:
        tail = (exc.stderr or b"").decode("utf-8", "replace").strip().splitlines()[-6:]
        raise RuntimeError("ffmpeg failed: " + " | ".join(tail)) from None


def timeline(shots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Shots with start/end on the episode clock, in order."""
    t, out = 0.0, []
    for s in shots:
        out.append({**s, "start": round(t, 6), "end": round(t + s["duration_s"], 6)})
        t += s["duration_s"]
    return out


def loudness(path: str, chain: str = "") -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) of a file after an optional filter chain (ffmpeg ebur128)."""
    af = (chain + "," if chain else "") + "ebur128=peak=true:framelog=40"
    err = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-i", path, "-af", af, "-f", "null", "-"],
                         capture_output=True, text=True, check=True).stderr
    summary = err[err.rindex("Summary:"):]
    lufs = re.search(r"I:\s+(-?[\d.]+|-inf) LUFS", summary).group(1)
    peak = re.search(r"Peak:\s+(-?[\d.]+|-inf) dBFS", summary).group(1)
    return float(lufs), float(peak)


def loudness_chain(gain_db: float, true_peak: float) -> str:
    limit = 10 ** (true_peak / 20)
    return (f"volume={gain_db:.3f}dB,alimiter=limit={limit:.4f}:level=disabled:attack=2:release=40:latency=1,"
            f"aresample={SAMPLE_RATE}")


def measure_loudness(path: str, target: float, true_peak: float) -> dict[str, float]:
    """Gain for `target` LUFS through a true-peak limiter, found by measuring the very chain the final
    graph applies (linear gain, then the limiter) and correcting until within 0.2 LU."""
    level, _ = loudness(path)
    if level == float("-inf"):  # silence: nothing to normalise
        return {"input_lufs": level, "gain_db": 0.0, "output_lufs": level}
    gain = target - level
    for _ in range(4):
        out, _peak = loudness(path, loudness_chain(gain, true_peak))
        if abs(out - target) <= 0.2:
            break
        gain += target - out
    return {"input_lufs": level, "gain_db": round(gain, 3), "output_lufs": out}


def aigc_label(job: Job, content_id: str) -> str:
    """Implicit label per GB 45438-2025: generated flag, producer, content id (JSON under "AIGC")."""
    producer = f"{PRODUCER}/{job.company}" if job.company else PRODUCER
    return json.dumps({"Label": "1", "ContentProducer": producer, "ProduceID": content_id,
                       "ReservedCode1": "", "ContentPropagator": "", "PropagateID": "",
                       "ReservedCode2": ""}, ensure_ascii=False, separators=(",", ":"))


def font_file(family: str) -> str:
    path = subprocess.run(["fc-match", "-f", "%{file}", family], capture_output=True, text=True).stdout
    if not path or not Path(path).exists():
        raise RuntimeError(f"stages.edit.font: font {family!r} not found; install fonts-noto-cjk")
    return path


def build_graph(job: Job, clips: list[str], tracks: dict[str, str], loud: dict[str, dict[str, str]],
                subs: dict[str, dict[str, str]], out: Path, content_id: str,
                two_pass: bool = True, audio_streams: dict[str, Any] | None = None) -> Any:
    """The single ffmpeg graph producing the final MP4. The bench's reference passes `audio_streams`
    (shot WAVs concatenated inside ffmpeg) and `two_pass=False` to do the whole edit in one command."""
    e = job.stages.edit
    fps = job.stages.video.fps
    video = ffmpeg.concat(*[ffmpeg.input(c).video for c in clips], v=1, a=0) if len(clips) > 1 else \
        ffmpeg.input(clips[0]).video
    video = (video.filter("scale", e.width, e.height, force_original_aspect_ratio="increase", flags="lanczos")
             .filter("crop", e.width, e.height).filter("setsar", 1))
    has_lines = {lang: Path(files["srt"]).stat().st_size > 0 for lang, files in subs.items()}
    if e.burn_subtitles and has_lines.get(job.primary_language):
        video = video.filter("subtitles", subs[job.primary_language]["ass"],
                             fontsdir=str(Path(font_file(e.font)).parent))
    x0, y0, x1, _ = layout.LABEL.px(e.width, e.height)  # inside the platform safe area, clear of subtitles
    size = layout.label_font_px(e.label_text, font_file(e.font)) or layout.LABEL_MIN_FONT_PX  # validate checked
    video = video.filter("drawtext", text=e.label_text, fontfile=font_file(e.font), fontsize=size,
                         fontcolor="white", box=1, boxcolor="black@0.5", boxborderw=layout.LABEL_PAD_PX,
                         x=f"{x1 - layout.LABEL_PAD_PX}-tw", y=y0 + layout.LABEL_PAD_PX,
                         enable=f"not(floor(t/{e.label_seconds}))")  # 1 while t < label_seconds; no commas
    video = video.filter("format", "yuv420p")
    streams, opts = [video], {}
    for i, (lang, wav) in enumerate(tracks.items()):
        source = audio_streams[lang] if audio_streams else ffmpeg.input(wav).audio
        if two_pass:  # measured gain + true-peak limiter, exactly the chain that was measured
            source = (source.filter("volume", f"{loud[lang]['gain_db']:.3f}dB")
                      .filter("alimiter", limit=round(10 ** (e.true_peak_db / 20), 4), level="disabled",
                              attack=2, release=40, latency=1))
        else:  # the one-command reference: ffmpeg's single-pass dynamic loudnorm
            source = source.filter("loudnorm", I=e.loudness_lufs, TP=e.true_peak_db, LRA=11)
        streams.append(source.filter("aresample", SAMPLE_RATE))
        opts[f"metadata:s:a:{i}"] = f"language={ISO639_2.get(lang, lang)}"
    for i, (lang, files) in enumerate((k, v) for k, v in subs.items() if has_lines[k]):
        streams.append(ffmpeg.input(files["srt"]))  # an episode without dialogue has no subtitle tracks
        opts[f"metadata:s:s:{i}"] = f"language={ISO639_2.get(lang, lang)}"
    opts.update({"metadata:g:0": f"AIGC={aigc_label(job, content_id)}",
                 "metadata:g:1": f"title={job.title or job.episode}",
                 "metadata:g:2": "comment=AI生成 (AI-generated content, GB 45438-2025)"})
    return ffmpeg.output(*streams, str(out), vcodec="libx264", crf=e.crf, preset=e.preset,
                         r=fps, colorspace="bt709", color_primaries="bt709", color_trc="bt709",
                         acodec="aac", audio_bitrate=e.audio_bitrate, ac=1, scodec="mov_text",
                         movflags="+faststart+use_metadata_tags", **opts)
