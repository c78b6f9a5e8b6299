"""TTS backend "espeak-ng": formant speech for previews, a distinct deterministic voice per character."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models import options as opt
from models.registry import BackendResult

ESPEAK_RATE = 22050  # what espeak-ng writes; other rates are resampled with ffmpeg
BASE_VOICES = {"zh": "cmn", "en": "en-us"}  # espeak-ng Mandarin voice is "cmn" (also cmn-latn-pinyin)
_LANG_ALIASES = {"zh": "zh", "cmn": "zh", "zho": "zh", "chi": "zh", "en": "en", "eng": "en"}
_BASE_SPEED = {"zh": 235, "en": 170}  # -s units; Mandarin at the default 175 is ~3 chars/s, 235 is ~4
_VARIANTS = {"f": ("f1", "f2", "f3", "f4", "f5"), "m": ("m1", "m2", "m3", "m4", "m5", "m6", "m7")}
_PITCH = {"f": (58, 80), "m": (28, 48)}  # espeak -p range per gender


@dataclass(frozen=True)
class Delivery:
    """How an emotion shifts a voice: speed and pitch multipliers, amplitude, optional variant."""

    speed: float = 1.0
    pitch: float = 1.0
    amplitude: int = 100
    variant: str | None = None


EMOTIONS: dict[str, Delivery] = {
    "angry": Delivery(1.15, 1.10, 170),
    "shout": Delivery(1.08, 1.20, 190),
    "excited": Delivery(1.12, 1.18, 130),
    "happy": Delivery(1.06, 1.12, 115),
    "scared": Delivery(1.15, 1.22, 95),
    "sad": Delivery(0.82, 0.85, 80),
    "cold": Delivery(0.92, 0.88, 95),
    "calm": Delivery(0.94, 0.96, 90),
    "whisper": Delivery(0.90, 1.0, 80, variant="whisper"),
}
_EMOTION_ALIASES = {
    "anger": "angry", "furious": "angry", "愤怒": "angry", "生气": "angry", "怒": "angry",
    "shouting": "shout", "yell": "shout", "yelling": "shout", "大喊": "shout", "喊": "shout",
    "激动": "excited", "兴奋": "excited", "joy": "happy", "开心": "happy", "高兴": "happy",
    "fear": "scared", "afraid": "scared", "害怕": "scared", "惊恐": "scared",
    "sadness": "sad", "crying": "sad", "伤心": "sad", "悲伤": "sad", "哭": "sad",
    "冷漠": "cold", "冷": "cold", "平静": "calm", "soft": "calm", "低声": "whisper", "耳语": "whisper",
    "whispering": "whisper", "轻声": "whisper",
}


def normalize_lang(lang: str) -> str | None:
    """"zh", "zh-CN", "cmn" → "zh"; "en-US" → "en"; unsupported → None."""
    return _LANG_ALIASES.get(lang.strip().lower().replace("_", "-").split("-")[0])


def emotion_delivery(emotion: str | None) -> tuple[str | None, Delivery]:
    """(canonical emotion or None, its delivery); unknown emotions are neutral."""
    if not emotion:
        return None, Delivery()
    key = emotion.strip().lower()
    key = _EMOTION_ALIASES.get(key, key)
    return (key, EMOTIONS[key]) if key in EMOTIONS else (None, Delivery())


def wav_duration(path: Path) -> tuple[float, int]:
    """(duration in seconds, sample rate) of a PCM WAV file."""
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate(), wav.getframerate()


def resample(path: Path, rate: int) -> None:
    """Resample a WAV in place to mono ``rate`` Hz with ffmpeg (s16)."""
    tmp = path.with_suffix(".resample.wav")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(path), "-ac", "1", "-ar", str(rate),
                    "-c:a", "pcm_s16le", str(tmp)], check=True, capture_output=True)
    tmp.replace(path)


class EspeakOptions(opt.BackendOptions):
    sample_rate: int = opt.Field(ESPEAK_RATE, ge=8000, le=48_000)  # Hz (22050: espeak's own, no resampling)
    voices: dict[opt.Lang, opt.Annotated[str, opt.Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_+-]{0,39}$")]] | None = \
        opt.Field(None, max_length=100)  # language → espeak base voice, e.g. {en: en-gb}
    executable: opt.Annotated[str, opt.Field(pattern=r"^[A-Za-z0-9_./+-]{1,200}$")] = "espeak-ng"


class EspeakTTS:
    """espeak-ng through its CLI. Each speaker gets a variant (+f1…f5 / +m1…m7), pitch and speed derived
    from a hash of the name (stable across runs and machines); the character's ``voice`` hints override:
    ``gender`` ("f"/"m"), ``espeak`` (e.g. "cmn+f3"; its base is used only when it speaks ``lang``),
    ``pitch`` (0–99), ``speed`` (words/min). Emotions nudge speed, pitch and loudness.

    Options: ``sample_rate`` (default 22050, espeak's native rate — no resampling), ``voices``
    (language → espeak base voice, e.g. {"en": "en-gb"}), ``executable`` (default "espeak-ng").
    """

    Options = EspeakOptions
    resident = False

    def __init__(self, *, sample_rate: int = ESPEAK_RATE, voices: dict[str, str] | None = None,
                 executable: str = "espeak-ng") -> None:
        found = shutil.which(executable)
        if found is None:
            raise FileNotFoundError(
                f"tts espeak-ng: {executable!r} not found on PATH; install it: apt-get install espeak-ng")
        self.executable, self.sample_rate = found, sample_rate
        self.voices = {**BASE_VOICES, **(voices or {})}

    def speak(self, text: str, out_path: Path, *, lang: str, speaker: str, voice: dict[str, Any],
              emotion: str | None) -> BackendResult:
        code = normalize_lang(lang)
        if code is None:
            raise ValueError(f"tts espeak-ng: language {lang!r} is not supported; supported: {', '.join(BASE_VOICES)}")
        if not text.strip():
            raise ValueError(f"tts espeak-ng: empty text for speaker {speaker!r}")
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        args, settings = self.voice_args(code, speaker, voice or {}, emotion)
        proc = subprocess.run([self.executable, *args, "-z", "-b", "1", "-w", str(out_path), "--stdin"],
                              input=text.encode("utf-8"), capture_output=True, check=False)
        if proc.returncode != 0 or not out_path.is_file():
            raise RuntimeError(f"tts espeak-ng failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
        if self.sample_rate != ESPEAK_RATE:
            resample(out_path, self.sample_rate)
        duration, rate = wav_duration(out_path)
        return BackendResult(
            outputs={"wav": str(out_path), "duration_s": duration, "sample_rate": rate},
            ai_usage=({"tool": "espeak-ng", "unit": "char", "quantity": len(text)},
                      {"tool": "espeak-ng:audio", "unit": "second", "quantity": round(duration, 6)}),
            params=settings,
        )

    def voice_args(self, code: str, speaker: str, voice: dict[str, Any],
                   emotion: str | None) -> tuple[list[str], dict[str, Any]]:
        """espeak-ng arguments (-v, -p, -s, -a) for one speaker, language and emotion."""
        digest = hashlib.sha256(speaker.encode("utf-8")).digest()
        gender = str(voice.get("gender", "")).lower()[:1] or ("f" if digest[0] % 2 else "m")
        gender = gender if gender in _VARIANTS else "m"
        base, _, variant = str(voice.get("espeak", "")).partition("+")
        if normalize_lang(base) != code and base != self.voices[code]:
            base = self.voices[code]
        variant = variant or _VARIANTS[gender][digest[1] % len(_VARIANTS[gender])]
        low, high = _PITCH[gender]
        pitch = round(float(voice.get("pitch", low + digest[2] % (high - low + 1))))
        speed = round(float(voice.get("speed", _BASE_SPEED[code] * (0.92 + (digest[3] % 17) / 100))))
        mood, delivery = emotion_delivery(emotion)
        if delivery.variant:
            variant = delivery.variant + ("f" if gender == "f" else "")  # espeak has whisper / whisperf
        pitch = max(0, min(99, round(pitch * delivery.pitch)))
        speed = max(80, min(450, round(speed * delivery.speed)))
        name = f"{base}+{variant}"
        args = ["-v", name, "-p", str(pitch), "-s", str(speed), "-a", str(delivery.amplitude)]
        return args, {"voice": name, "pitch": pitch, "speed": speed, "amplitude": delivery.amplitude,
                      "emotion": mood, "emotion_requested": emotion, "lang": code}
