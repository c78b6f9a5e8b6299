"""Dub stage: every line voiced in every dub language and laid out in its shot; sets the shot's length.

Lines are placed one after another (lead-in, gaps, tail). When a shot has a fixed duration from a shot
note and the speech does not fit, the speech is time-stretched up to `max_stretch`; past that the shot
is extended. The shot length (the longest language, snapped up to whole video frames) drives the video
stage, so durations follow the dialogue.
"""
from __future__ import annotations

import math
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.tts.fit import fit_speech
from pipeline.cache import file_digest
from pipeline.job import Job
from pipeline.script import Script, Shot
from pipeline.series import voice_key
from pipeline.stages import StageCall, StageRun, report_all

VERSION = 1
SAMPLE_RATE = 48_000
STRETCH_SLACK_S = 0.05  # a stretched line may run this far into the tail before the shot is extended


@dataclass(frozen=True)
class DubStage:
    job: Job
    name: str = "dub"
    reads: tuple[str, ...] = ("script.shot", "translate.script")
    writes: tuple[str, ...] = ("audio", "lines", "duration_s")

    @property
    def languages(self) -> list[str]:
        return self.job.stages.dub.languages or self.job.languages

    def cache_key_parts(self, call: StageCall) -> list[Any]:
        shot: Shot = call.inputs["shot"]
        script: Script = call.inputs["script"]
        t = self.job.stages.dub
        speakers = sorted({ln.speaker for ln in shot.lines})
        voices = {n: _voice(script, self.job, n) for n in speakers}
        for v in voices.values():  # a reference clip counts by its content, wherever the job folder lies
            if v.get("reference"):
                v["reference"] = _clip_digest(v["reference"])
        cloned = {n: voice_key(script.characters.get(n)) for n in speakers}  # the speakers' bible voices only
        pacing = t.model_dump(include={"lead_in_s", "gap_s", "tail_s", "min_shot_s", "max_stretch"})
        return [self.name, VERSION, t.backend, t.options, voices, cloned, self.languages, self.job.languages,
                pacing, self.job.stages.video.fps,
                [ln.model_dump(mode="json", exclude={"source_line", "parenthetical"}) for ln in shot.lines],
                shot.duration_s]  # (a parenthetical reaches the voice as its emotion, which is in the key)

    def run(self, call: StageCall, run: StageRun) -> dict[str, Any]:
        shot: Shot = call.inputs["shot"]
        script: Script = call.inputs["script"]
        said: list[dict[str, Any]] = [{"speaker": ln.speaker, "emotion": ln.emotion} for ln in shot.lines]
        speech = {lang: self._speak(shot, script, lang, run, said) for lang in self.languages}
        out = self._layout(shot, speech, run.workdir)
        out["params"] = {"backend": self.job.stages.dub.backend, "lines": said}
        billed = [p.get("billed_vs_planned") for line in said for p in line.values() if isinstance(p, dict)]
        if any(b and b != "as planned" for b in billed):
            out["params"]["billed_vs_planned"] = "; ".join(b for b in billed if b and b != "as planned")
        return out

    def _speak(self, shot: Shot, script: Script, lang: str, run: StageRun,
               said: list[dict[str, Any]]) -> list[np.ndarray]:
        """Every line of the shot in `lang`; what the backend did per line (voice, reference, emotion as
        applied) goes into `said[i][lang]`, the stage's params."""
        clips = []
        for i, line in enumerate(shot.lines):
            raw = run.workdir / f"{shot.id}-{lang}-{i:02d}.raw.wav"
            result = run.backend.speak(line.text[lang], raw, lang=lang, speaker=line.speaker,
                                       voice=_voice(script, self.job, line.speaker),
                                       emotion=line.emotion)
            report_all(run, result.ai_usage)
            said[i][lang] = dict(result.params)
            clips.append(read_audio(raw))
            raw.unlink()
        return clips

    def _layout(self, shot: Shot, speech: dict[str, list[np.ndarray]], workdir: Path) -> dict[str, Any]:
        d = self.job.stages.dub
        fps = self.job.stages.video.fps
        natural = {lang: _span(clips, d.lead_in_s, d.gap_s, d.tail_s) for lang, clips in speech.items()}
        stretch = {lang: 1.0 for lang in speech}
        target = shot.duration_s
        if target is not None:  # a fixed-length shot: fit the speech into what lead-in, gaps and tail leave
            for lang, clips in speech.items():
                if not clips:
                    continue
                fixed = d.lead_in_s + d.gap_s * (len(clips) - 1) + d.tail_s
                fit = fit_speech(sum(len(c) for c in clips) / SAMPLE_RATE, max(target - fixed, 1e-3),
                                 max_tempo=d.max_stretch)
                if fit.stretched:
                    stretch[lang] = fit.tempo
                    speech[lang] = [time_stretch(c, fit.tempo) for c in clips]
        spans = [_span(c, d.lead_in_s, d.gap_s, d.tail_s) for c in speech.values()]
        if target is not None:  # atempo lands within a few ms of the slot: that much comes out of the tail
            spans = [target if target < span <= target + STRETCH_SLACK_S else span for span in spans]
        duration = max([d.min_shot_s, target or 0.0, *spans])
        frames = math.ceil(round(duration * fps, 6))
        duration = frames / fps
        n_samples = round(duration * SAMPLE_RATE)
        audio, lines = {}, []
        for lang, clips in speech.items():
            track = np.zeros(n_samples, dtype=np.float32)
            t = d.lead_in_s
            for i, clip in enumerate(clips):
                start = round(t * SAMPLE_RATE)
                track[start:start + len(clip)] = clip[: max(0, n_samples - start)]
                end = t + len(clip) / SAMPLE_RATE
                if len(lines) <= i:
                    lines.append({"speaker": shot.lines[i].speaker, "text": dict(shot.lines[i].text),
                                  "emotion": shot.lines[i].emotion, "timing": {}})
                lines[i]["timing"][lang] = [round(t, 4), round(end, 4)]
                t = end + d.gap_s
            path = workdir / f"{shot.id}-{lang}.wav"
            write_audio(path, track)
            audio[lang] = str(path)
        return {"audio": audio, "lines": lines, "duration_s": duration, "frames": frames,
                "natural_s": {k: round(v, 4) for k, v in natural.items()},
                "stretch": {k: round(v, 4) for k, v in stretch.items()},
                "extended": target is not None and any(s > target for s in spans)}


def _voice(script: Script, job: Job, speaker: str) -> dict[str, Any]:
    """The voice a character is dubbed with: the screenplay's hints, the series bible's reference clip,
    transcript and seed, then `stages.dub.voices.<speaker>` (a relative `reference` is beside the job)."""
    char = script.characters.get(speaker)
    voice: dict[str, Any] = dict(char.voice) if char else {}
    if char is not None:
        voice.update({k: v for k, v in (("reference", char.voice_reference), ("transcript", char.voice_transcript),
                                        ("seed", char.seed)) if v is not None})
    voice.update(job.stages.dub.voices.get(speaker, {}))
    if voice.get("reference"):
        voice["reference"] = str((job.job_dir / str(voice["reference"])).resolve())
    return voice


def _clip_digest(path: str) -> str:
    """The content of a reference clip (a changed clip re-voices the character's lines); missing: the name."""
    try:
        return file_digest(Path(path))
    except OSError:
        return f"missing:{path}"


def _span(clips: list[np.ndarray], lead: float, gap: float, tail: float) -> float:
    if not clips:
        return 0.0
    speech = sum(len(c) for c in clips) / SAMPLE_RATE
    return lead + speech + gap * (len(clips) - 1) + tail


def read_audio(path: Path, tempo: float = 1.0) -> np.ndarray:
    """Any audio file → mono float32 at SAMPLE_RATE (ffmpeg resamples; atempo when tempo ≠ 1)."""
    filters = f"atempo={tempo:.6f}," if abs(tempo - 1.0) > 1e-6 else ""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-af",
           f"{filters}aresample={SAMPLE_RATE}", "-ac", "1", "-f", "f32le", "-"]
    out = subprocess.run(cmd, check=True, capture_output=True).stdout
    return np.frombuffer(out, dtype=np.float32).copy()


def read_wav(path: Path) -> np.ndarray:
    """A WAV this stage wrote (mono 16-bit at SAMPLE_RATE) → float32, without a subprocess; else ffmpeg."""
    with wave.open(str(path), "rb") as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, SAMPLE_RATE):
            return read_audio(path)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return (pcm.astype(np.float32) / 32767).astype(np.float32)


def time_stretch(clip: np.ndarray, factor: float) -> np.ndarray:
    """Speed speech up by `factor` (pitch kept) with ffmpeg's atempo."""
    if abs(factor - 1.0) < 1e-6:
        return clip
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-f", "f32le", "-ar", str(SAMPLE_RATE), "-ac", "1",
           "-i", "-", "-af", f"atempo={factor:.6f}", "-f", "f32le", "-"]
    out = subprocess.run(cmd, input=clip.tobytes(), check=True, capture_output=True).stdout
    return np.frombuffer(out, dtype=np.float32).copy()


def write_audio(path: Path, samples: np.ndarray) -> None:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
