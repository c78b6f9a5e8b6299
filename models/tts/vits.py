"""TTS backends on transformers' VITS (Meta MMS-TTS checkpoints, and a tiny random VITS): one WAV per line.

VITS samples its durations and noise, so every line is synthesised under a forked RNG seeded from the
speaker and the text: the same line always sounds the same. MMS has one checkpoint per language (there is
no Mandarin MMS-TTS checkpoint); `options.models` maps languages to checkpoints and a line in a language
with no checkpoint is a clear error. The tiny model reads Latin letters only, so it voices other scripts
through a deterministic per-character stand-in spelling (a test double, not a romanisation).
"""
from __future__ import annotations

import wave
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from models import hub, options as opt
from models.registry import BackendResult

SPECS: dict[str, dict[str, str | None]] = {
    "vits-tiny": {"*": None},
    "mms-tts-eng": {"en": "facebook/mms-tts-eng"},
    "mms-tts": {},  # languages from options.models, e.g. {en: facebook/mms-tts-eng, fr: facebook/mms-tts-fra}
}

hub.require_packages("torch", "transformers")


def stand_in_spelling(text: str, vocab: set[str]) -> str:
    """Characters outside `vocab` become a letter chosen by code point; spaces kept (tiny model only)."""
    letters = "aeioubdgklmnst"
    out = [c if c.lower() in vocab else letters[ord(c) % len(letters)] for c in text if not c.isspace() or c == " "]
    return "".join(out)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


class VitsOptions(opt.BackendOptions):
    models: dict[opt.Lang, opt.ModelId] | None = opt.Field(None, max_length=100)  # language → model id
    weights_dir: opt.FilePath | dict[opt.Lang, opt.FilePath] | None = None  # one folder, or language → folder
    device: opt.Device = "cpu"
    speaking_rate: float = opt.Field(1.0, ge=0.25, le=4.0)  # > 1 is faster
    noise_scale: float | None = opt.Field(None, ge=0, le=2)
    seed: opt.Seed = 0  # mixed into every line's seed
    tiny_seed: opt.Seed = 0


class VitsTTS:
    """Text → mono 16-bit WAV at the model's rate (16 kHz for MMS) via a resident VitsModel per language.

    Options: ``models`` (language → model id; defaults per registered name), ``weights_dir`` (language →
    local folder, or one folder when a single language is configured), ``device``, ``speaking_rate``
    (>1 is faster; a character's ``voice["rate"]`` overrides it), ``noise_scale``, ``seed`` (mixed into
    every line's seed), ``tiny_seed`` (weights seed of vits-tiny).
    """

    Options = VitsOptions
    name = "vits-tiny"
    resident = True
    num_gpus = 0

    def __init__(self, *, models: dict[str, str] | None = None, weights_dir: str | dict[str, str] | None = None,
                 device: str = "cpu", speaking_rate: float = 1.0, noise_scale: float | None = None,
                 seed: int = 0, tiny_seed: int = 0) -> None:
        self.models: dict[str, str | None] = {**SPECS[self.name], **(models or {})}
        if not self.models:
            raise ValueError(f"stages.dub.options.models: {self.name} needs language → model id, "
                             f"e.g. {{en: facebook/mms-tts-eng}}")
        if not 0.25 <= speaking_rate <= 4.0:
            raise ValueError(f"stages.dub.options.speaking_rate must be in [0.25, 4], got {speaking_rate}")
        self.speaking_rate, self.noise_scale, self.seed, self.tiny_seed = speaking_rate, noise_scale, seed, tiny_seed
        self.device = "cpu" if device == "auto" and self.name == "vits-tiny" else device
        self.sources = self._locate(weights_dir)
        self.loads = 0
        self._loaded: dict[str, tuple[Any, Any]] = {}

    def _locate(self, weights_dir: str | dict[str, str] | None) -> dict[str, str]:
        dirs = weights_dir if isinstance(weights_dir, dict) else (
            {lang: weights_dir for lang in self.models} if weights_dir else {})
        problems, sources = [], {}
        for lang, model_id in self.models.items():
            if model_id is None:
                continue
            problems += hub.weights_problems("dub", self.name, model_id, dirs.get(lang), "config.json")
            sources[lang] = str(Path(dirs[lang]).expanduser()) if dirs.get(lang) else model_id
        if problems:
            raise hub.WeightsMissing(problems)
        return sources

    def load(self) -> None:
        """Load every configured voice now (otherwise each loads on its first line)."""
        for lang in self.models:
            self._model(lang)

    def _model(self, lang: str) -> tuple[Any, Any]:
        key = lang if lang in self.models else "*"
        if key not in self.models:
            raise ValueError(f"tts {self.name}: no voice for language {lang!r}; it speaks "
                             f"{', '.join(sorted(self.models))} (set stages.dub.options.models.{lang}, e.g. "
                             f"facebook/mms-tts-<iso-639-3>, or pick another tts backend)")
        if key not in self._loaded:
            if self.models[key] is None:
                from models import tiny

                self._loaded[key] = tiny.vits(self.tiny_seed)
            else:
                from transformers import AutoTokenizer, VitsModel

                src = self.sources[key]
                model = VitsModel.from_pretrained(src, local_files_only=True).to(hub.pick_device(self.device)).eval()
                self._loaded[key] = (model, AutoTokenizer.from_pretrained(src, local_files_only=True))
            self.loads += 1
        return self._loaded[key]

    def _inputs(self, tok: Any, text: str, lang: str, tiny: bool) -> Any:
        if any(c.isalnum() and c in tok.encoder for c in tok.normalize_text(text)):
            return tok(text, return_tensors="pt")
        if not tiny:
            raise ValueError(f"tts {self.name}: {text!r} has no characters this {lang!r} voice can read "
                             f"(MMS voices for non-Latin scripts need uroman romanisation)")
        return tok(stand_in_spelling(text, set(tok.encoder)), return_tensors="pt")

    def speak(self, text: str, out_path: Path, *, lang: str, speaker: str, voice: dict[str, Any],
              emotion: str | None) -> BackendResult:
        import torch

        if not text.strip():
            raise ValueError(f"tts {self.name}: empty line for {speaker!r}")
        model, tok = self._model(lang)
        tiny = self.models.get(lang, self.models.get("*")) is None
        enc = self._inputs(tok, text, lang, tiny).to(model.device)
        # set on every call: the tiny model is shared by every VitsTTS in the process
        model.speaking_rate = float(voice.get("rate", self.speaking_rate))
        model.noise_scale = self.noise_scale if self.noise_scale is not None else model.config.noise_scale
        line_seed = zlib.crc32(f"{self.seed}|{speaker}|{lang}|{text}".encode("utf-8"))
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(line_seed)
            wav = model(**enc).waveform[0].float().cpu().numpy()
        rate = int(model.config.sampling_rate)
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(out_path, wav, rate)
        duration = len(wav) / rate
        model_id = self.models.get(lang, self.models.get("*"))
        return BackendResult(
            outputs={"wav": str(out_path), "duration_s": duration, "sample_rate": rate},
            ai_usage=({"tool": self.name, "unit": "char", "quantity": len(text)},
                      {"tool": f"{self.name}:audio", "unit": "second", "quantity": round(duration, 6)}),
            params={"model": model_id or f"tiny-random-vits(seed={self.tiny_seed})", "lang": lang,
                    "seed": line_seed, "speaking_rate": model.speaking_rate, "emotion": emotion,
                    "seconds": round(duration, 4)})


class VitsTiny(VitsTTS):
    name = "vits-tiny"


class MmsTtsEng(VitsTTS):
    name = "mms-tts-eng"
    num_gpus = 0  # 36M parameters: CPU is fine; set num_gpus in the profile to place it on a GPU


class MmsTts(VitsTTS):
    name = "mms-tts"
