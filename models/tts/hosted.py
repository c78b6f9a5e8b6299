"""TTS backend `qwen-tts-api`: Qwen3-TTS on DashScope, one synchronous call per line, billed per character.

The audio URL in the answer expires (24 h): it is downloaded at once, digested, and converted to mono WAV
at ``sample_rate``. Usage is the answer's `usage.characters` ("<model>" per char); a difference from the
line's own length is reported in params.
"""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

from models import options as opt
from models.providers import Limits, download
from models.registry import BackendResult
from models.tts.espeak import wav_duration

VOICES = {"f": ("Cherry", "Serena", "Chelsie"), "m": ("Ethan", "Dylan")}
LANGUAGE_TYPES = {"zh": "Chinese", "en": "English", "ja": "Japanese", "ko": "Korean", "fr": "French",
                  "de": "German", "es": "Spanish", "ru": "Russian", "it": "Italian", "pt": "Portuguese"}
_KEY_OPTIONS = ("api_key_env", "secrets_file", "api_key_name", "base_url")


class QwenTTSOptions(opt.KeyOptions):
    model: opt.ModelId = "qwen3-tts-flash"
    voices: dict[opt.Name, opt.Annotated[str, opt.Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")]] | None = \
        opt.Field(None, max_length=200)  # character → Qwen voice, e.g. {林晓: Cherry}
    sample_rate: int = opt.Field(24_000, ge=8000, le=48_000)
    concurrency: int = opt.Field(4, ge=1, le=64)
    retries: int = opt.Field(5, ge=0, le=20)
    backoff_s: float = opt.Field(1.0, gt=0, le=300)


class QwenTTSApi:
    """Options: ``model`` (qwen3-tts-flash), ``voices`` (character → Qwen voice name, e.g. {林晓: Cherry}),
    ``sample_rate`` (default 24000), ``concurrency``, key options (DASHSCOPE_API_KEY, ``base_url``).
    A character's ``voice`` hints may name ``qwen`` (a voice) or ``gender`` (f/m: a stable pick per name)."""

    Options = QwenTTSOptions
    resident = False
    num_gpus = 0

    def __init__(self, *, model: str = "qwen3-tts-flash", voices: dict[str, str] | None = None,
                 sample_rate: int = 24000, **options: Any) -> None:
        from models.providers.dashscope import DashScope

        self.model, self.voices, self.sample_rate = model, dict(voices or {}), int(sample_rate)
        limits = Limits(concurrency=int(options.get("concurrency", 4)), retries=int(options.get("retries", 5)),
                        backoff_s=float(options.get("backoff_s", 1.0)))
        self.client = DashScope(stage="dub", limits=limits, **{k: v for k, v in options.items() if k in _KEY_OPTIONS})

    def __repr__(self) -> str:
        return f"QwenTTSApi({self.model}, {self.client!r})"

    @staticmethod
    def planned(options: dict[str, Any], *, text: str, **_: Any) -> list[dict[str, Any]]:
        return [{"tool": options.get("model", "qwen3-tts-flash"), "unit": "char", "quantity": len(text)}]

    def voice_for(self, speaker: str, voice: dict[str, Any]) -> str:
        if speaker in self.voices:
            return self.voices[speaker]
        if voice.get("qwen"):
            return str(voice["qwen"])
        digest = hashlib.sha256(speaker.encode("utf-8")).digest()
        gender = str(voice.get("gender", "")).lower()[:1] or ("f" if digest[0] % 2 else "m")
        names = VOICES.get(gender, VOICES["m"])
        return names[digest[1] % len(names)]

    def speak(self, text: str, out_path: Path, *, lang: str, speaker: str, voice: dict[str, Any],
              emotion: str | None) -> BackendResult:
        name = self.voice_for(speaker, voice or {})
        url, chars = self.client.speak(model=self.model, text=text, voice=name,
                                       language_type=LANGUAGE_TYPES.get(lang.split("-")[0]))
        out_path = Path(out_path)
        got = download(url, out_path.with_suffix(".download"))
        done = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", got.path, "-ac", "1", "-ar",
                               str(self.sample_rate), "-c:a", "pcm_s16le", str(out_path)], capture_output=True, text=True)
        Path(got.path).unlink(missing_ok=True)
        if done.returncode != 0:
            from models.providers import WrongResult

            raise WrongResult(f"qwen-tts-api: the audio for {speaker!r} is not decodable: {done.stderr[-300:]}",
                              ai_usage=({"tool": self.model, "unit": "char", "quantity": chars},))
        duration, rate = wav_duration(out_path)
        return BackendResult(outputs={"wav": str(out_path), "duration_s": duration, "sample_rate": rate},
                             ai_usage=({"tool": self.model, "unit": "char", "quantity": chars},),
                             params={"model": self.model, "voice": name, "result_sha256": got.sha256,
                                     "billed_vs_planned": "as planned" if chars == len(text) else
                                     f"planned {len(text)} chars, billed {chars}"})
