"""Dub backends on F5-TTS (flow-matching DiT, zero-shot voice cloning, Mandarin and English) with a Vocos vocoder.

Every line is spoken in the voice of the character's reference clip: F5-TTS continues the clip's mel
spectrogram with the new text (the clip's transcript is prepended to the line, and the generated part
after the clip is kept). The clip comes from the series bible (`Character.voice_reference` and
`voice_transcript`) or `stages.dub.voices.<name>.reference/transcript`; a character without one gets a
default clip spoken once by espeak-ng from its voice hints (gender, espeak, pitch, speed), deterministic, so
the same character has the same reference in every episode. Noise is seeded from the character's seed and
the line: the same line of the same character always sounds the same.

Emotion: F5-TTS has no emotion or style input. With the default (espeak-ng) reference, the emotion picks
the reference (spoken with that emotion's pace, pitch and loudness, so F5 copies its delivery); with a
given clip only the pace follows the emotion (F5's `speed`). What was applied is in every line's params.

`f5-tts` loads F5TTS_v1_Base and vocos-mel-24khz from local folders; `f5-tiny` builds the same classes at
tiny sizes with random weights (models/tiny.py) for CI: noise out, real mechanics.
"""
from __future__ import annotations

import hashlib
import subprocess
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from models import hub, options as opt
from models.registry import BackendResult
from models.tts.espeak import EspeakTTS, emotion_delivery, normalize_lang
from models.tts.vits import write_wav

SAMPLE_RATE, HOP, N_MELS = 24_000, 256, 100  # F5TTS_v1_Base's mel (vocos mel, 24 kHz)
TARGET_RMS = 0.1  # F5's inference loudness of the reference
REFERENCE_S = (3.0, 15.0)  # accepted reference clip length (F5 clips references past ~12 s)
MODEL_ID, CHECKPOINT, VOCODER_ID = "SWivid/F5-TTS", "F5TTS_v1_Base/model_1250000.safetensors", "charactr/vocos-mel-24khz"
# configs/F5TTS_v1_Base.yaml of the f5-tts package (the model the checkpoint was trained as)
V1_BASE = {"dim": 1024, "depth": 22, "heads": 16, "ff_mult": 2, "text_dim": 512, "text_mask_padding": True,
           "qk_norm": None, "conv_layers": 4, "pe_attn_head": None, "attn_backend": "torch",
           "attn_mask_enabled": False, "checkpoint_activations": False}
# the default reference a character without a clip speaks (espeak-ng), per language: ~4 s of varied sounds
DEFAULT_TRANSCRIPTS = {"zh": "今天天气很好，我们一起去城里走走吧。",
                       "en": "The weather is lovely today, so let us walk into town together."}

hub.require_packages("torch", "f5_tts", "vocos", "x_transformers", "torchdiffeq", "pypinyin", "rjieba")


def read_clip(path: Path, field: str, bounds: tuple[float, float] = REFERENCE_S) -> np.ndarray:
    """A reference clip (any format ffmpeg reads) → mono float32 at 24 kHz, `bounds` seconds long."""
    if not Path(path).is_file():
        raise ValueError(f"{field}: reference clip not found: {path}; give a 3–15 s mono WAV beside the job")
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-ac", "1", "-ar", str(SAMPLE_RATE),
           "-f", "f32le", "-"]
    done = subprocess.run(cmd, capture_output=True, check=False)
    if done.returncode != 0:
        raise ValueError(f"{field}: {path} is not an audio file ffmpeg can read: "
                         f"{done.stderr.decode(errors='replace')[-200:]}")
    audio = np.frombuffer(done.stdout, dtype=np.float32).copy()
    seconds = len(audio) / SAMPLE_RATE
    if not bounds[0] <= seconds <= bounds[1]:
        raise ValueError(f"{field}: {path} is {seconds:.1f} s long; a reference clip must be "
                         f"{bounds[0]:g}–{bounds[1]:g} s of one person speaking")
    if not np.any(audio):
        raise ValueError(f"{field}: {path} is silent; record the character speaking")
    return audio


def planned_frames(ref_frames: int, ref_text: str, text: str, speed: float) -> int:
    """Mel frames F5 generates for `text` after the reference (its infer_batch_process's estimate: the
    reference's frames per UTF-8 byte times the line's bytes, over `speed`; lines under 10 bytes at 0.3)."""
    speed = 0.3 if len(text.encode("utf-8")) < 10 else speed
    return int(ref_frames / len(ref_text.encode("utf-8")) * len(text.encode("utf-8")) / speed)


class F5Options(opt.BackendOptions):
    weights_dir: opt.FilePath | None = None  # F5TTS_v1_Base/model_1250000.safetensors + vocab.txt
    vocoder_dir: opt.FilePath | None = None  # charactr/vocos-mel-24khz: config.yaml + pytorch_model.bin
    device: opt.Device = "auto"
    dtype: opt.Dtype = "float32"
    steps: int = opt.Field(32, ge=1, le=128)  # flow-matching steps
    cfg_strength: float = opt.Field(2.0, ge=0, le=10)
    sway_sampling_coef: float = opt.Field(-1.0, ge=-2, le=2)
    speed: float = opt.Field(1.0, ge=0.5, le=2.0)  # > 1 is faster
    seed: opt.Seed = 0  # mixed into every line's seed
    tiny_seed: opt.Seed = 0  # weights of f5-tiny
    arch: dict[opt.Annotated[str, opt.Field(pattern=r"^[a-z_]{1,40}$")], int | bool | str | None] | None = \
        opt.Field(None, max_length=40)  # DiT sizes over F5TTS_v1_Base's
    espeak: opt.Annotated[str, opt.Field(pattern=r"^[A-Za-z0-9_./+-]{1,200}$")] = "espeak-ng"


class F5TTS:
    """Text → mono 16-bit WAV at 24 kHz, in the character's cloned voice.

    Options: ``weights_dir`` (a folder holding F5TTS_v1_Base/model_1250000.safetensors and vocab.txt, as
    `huggingface-cli download SWivid/F5-TTS --include 'F5TTS_v1_Base/*'` lays it out; default the hub cache),
    ``vocoder_dir`` (config.yaml + pytorch_model.bin of charactr/vocos-mel-24khz), ``device`` (auto),
    ``dtype`` (float32 on CPU; float16/bfloat16 on a GPU), ``steps`` (flow steps, F5's default 32),
    ``cfg_strength`` (2.0), ``sway_sampling_coef`` (-1.0), ``speed`` (1.0, >1 faster), ``seed`` (mixed into
    every line's seed), ``tiny_seed`` (weights of f5-tiny), ``arch`` (DiT sizes; default F5TTS_v1_Base's).
    """

    name = "f5-tts"
    Options = F5Options
    resident = True
    num_gpus = 0

    def __init__(self, *, weights_dir: str | None = None, vocoder_dir: str | None = None, device: str = "auto",
                 dtype: str = "float32", steps: int = 32, cfg_strength: float = 2.0,
                 sway_sampling_coef: float = -1.0, speed: float = 1.0, seed: int = 0, tiny_seed: int = 0,
                 arch: dict[str, Any] | None = None, espeak: str = "espeak-ng") -> None:
        if not 1 <= int(steps) <= 128:
            raise ValueError(f"stages.dub.options.steps must be in [1, 128], got {steps}")
        if not 0.5 <= float(speed) <= 2.0:
            raise ValueError(f"stages.dub.options.speed must be in [0.5, 2], got {speed}")
        if not 0 <= float(cfg_strength) <= 10:
            raise ValueError(f"stages.dub.options.cfg_strength must be in [0, 10], got {cfg_strength}")
        if dtype not in hub.DTYPES:
            raise ValueError(f"stages.dub.options.dtype must be one of {', '.join(hub.DTYPES)}, got {dtype!r}")
        self.steps, self.cfg_strength, self.sway = int(steps), float(cfg_strength), float(sway_sampling_coef)
        self.speed, self.seed, self.tiny_seed, self.dtype = float(speed), int(seed), int(tiny_seed), dtype
        self.device = "cpu" if device == "auto" and self.name == "f5-tiny" else device
        self.arch = {**V1_BASE, **(arch or {})}
        self.tiny = self.name == "f5-tiny"
        self.files = {} if self.tiny else self._locate(weights_dir, vocoder_dir)
        self.espeak_executable = espeak  # speaks the default reference of a character without a clip
        self._espeak: EspeakTTS | None = None
        self._model: tuple[Any, Any, dict[str, int]] | None = None
        self._refs: dict[str, tuple[np.ndarray, str, str]] = {}  # default references, spoken once each
        self._tmp = tempfile.TemporaryDirectory(prefix="f5-refs-")
        self._lock = threading.Lock()
        self.loads = 0

    # ------------------------------------------------------------ weights

    @staticmethod
    def _file(model_id: str, folder: str | None, names: tuple[str, ...], option: str) -> tuple[list[str], Path]:
        """(problems, path) of the first of `names` found in `folder` (or the hub cache of `model_id`)."""
        problems: list[str] = []
        for name in names:
            problems = hub.weights_problems("dub", "f5-tts", model_id, folder, name)
            if not problems:
                if folder:
                    return [], Path(folder).expanduser() / name
                from huggingface_hub import try_to_load_from_cache

                return [], Path(str(try_to_load_from_cache(model_id, name)))
        return [p.replace("stages.dub.options.weights_dir", f"stages.dub.options.{option}") for p in problems], Path()

    def _locate(self, weights_dir: str | None, vocoder_dir: str | None) -> dict[str, Path]:
        """The checkpoint, vocabulary and vocoder files (local only); WeightsMissing names each one missing."""
        found, problems = {}, []
        for key, model_id, folder, names, option in (
                ("checkpoint", MODEL_ID, weights_dir, (CHECKPOINT, Path(CHECKPOINT).name), "weights_dir"),
                ("vocab", MODEL_ID, weights_dir, ("F5TTS_v1_Base/vocab.txt", "vocab.txt"), "weights_dir"),
                ("vocoder_config", VOCODER_ID, vocoder_dir, ("config.yaml",), "vocoder_dir"),
                ("vocoder", VOCODER_ID, vocoder_dir, ("pytorch_model.bin",), "vocoder_dir")):
            missing, path = self._file(model_id, folder, names, option)
            problems += missing[:1]
            found[key] = path
        if problems:
            raise hub.WeightsMissing(problems)
        return found

    def load(self) -> None:
        """Load the model and vocoder now (otherwise on the first line)."""
        self._loaded()

    def _loaded(self) -> tuple[Any, Any, dict[str, int]]:
        with self._lock:
            if self._model is None:
                if self.tiny:
                    from models import tiny

                    cfm, vocoder, vocab = tiny.f5(self.tiny_seed)
                else:
                    cfm, vocoder, vocab = load_f5(self.files, self.arch, self.dtype,
                                                  hub.pick_device(self.device))
                self._model = (cfm, vocoder, vocab)
                self.loads += 1
        return self._model

    # ------------------------------------------------------------ voices

    def reference(self, speaker: str, code: str, voice: dict[str, Any], emotion: str | None,
                  ) -> tuple[np.ndarray, str, dict[str, Any], tuple[dict, ...]]:
        """(clip at 24 kHz, its transcript, params, AI usage) of the voice `speaker` speaks with."""
        if voice.get("reference"):
            if not str(voice.get("transcript") or "").strip():
                raise ValueError(f"stages.dub.voices.{speaker}.transcript: the reference clip needs its exact "
                                 "transcript (F5-TTS continues the clip after what it says)")
            path = Path(str(voice["reference"]))
            clip = read_clip(path, f"stages.dub.voices.{speaker}.reference")
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            return clip, str(voice["transcript"]).strip(), {"reference": "clip", "reference_sha256": sha,
                                                            "emotion_via": "speed"}, ()
        hints = {k: voice[k] for k in ("gender", "espeak", "pitch", "speed") if k in voice}
        key = hashlib.sha256(repr((speaker, code, sorted(hints.items()), emotion)).encode()).hexdigest()
        usage: tuple[dict, ...] = ()
        with self._lock:
            if key not in self._refs:
                wav = Path(self._tmp.name) / f"{key[:16]}.wav"
                if self._espeak is None:
                    self._espeak = EspeakTTS(executable=self.espeak_executable)
                result = self._espeak.speak(DEFAULT_TRANSCRIPTS[code], wav, lang=code, speaker=speaker,
                                           voice=hints, emotion=emotion)
                data = wav.read_bytes()
                self._refs[key] = (read_clip(wav, f"default reference of {speaker}", (1.0, 30.0)), DEFAULT_TRANSCRIPTS[code],
                                   hashlib.sha256(data).hexdigest())
                usage = result.ai_usage
        clip, text, sha = self._refs[key]
        return clip, text, {"reference": "espeak-ng default", "reference_sha256": sha,
                            "emotion_via": "reference"}, usage

    # ------------------------------------------------------------ speech

    def speak(self, text: str, out_path: Path, *, lang: str, speaker: str, voice: dict[str, Any],
              emotion: str | None) -> BackendResult:
        import torch

        code = normalize_lang(lang)
        if code not in DEFAULT_TRANSCRIPTS:
            raise ValueError(f"dub {self.name}: F5TTS_v1_Base speaks Mandarin and English, not {lang!r}; pick "
                             "another stages.dub.backend for that language")
        if not text.strip():
            raise ValueError(f"dub {self.name}: empty line for {speaker!r}")
        voice = voice or {}
        mood, delivery = emotion_delivery(emotion)
        clip, ref_text, ref_params, ref_usage = self.reference(speaker, code, voice, mood)
        pace = float(voice.get("pace", 1.0) or 1.0)
        speed = self.speed * pace * (delivery.speed if ref_params["emotion_via"] == "speed" else 1.0)
        char_seed = int(voice["seed"]) if voice.get("seed") is not None else zlib.crc32(speaker.encode("utf-8"))
        line_seed = zlib.crc32(f"{self.seed}|{char_seed}|{code}|{text}".encode("utf-8"))
        cfm, vocoder, _ = self._loaded()
        audio = torch.from_numpy(clip).unsqueeze(0)
        rms = float(torch.sqrt(torch.mean(torch.square(audio))))
        if rms < TARGET_RMS:
            audio = audio * TARGET_RMS / rms
        ref_text = ref_text + " " if len(ref_text[-1].encode("utf-8")) == 1 else ref_text
        ref_frames = audio.shape[-1] // HOP
        frames = planned_frames(ref_frames, ref_text, text, speed)
        convert = _modules()["convert_char_to_pinyin"]
        device = next(cfm.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
            mel, _ = cfm.sample(cond=audio.to(device), text=convert([ref_text + text]), duration=ref_frames + frames,
                                steps=self.steps, cfg_strength=self.cfg_strength,
                                sway_sampling_coef=self.sway, seed=line_seed)
            mel = mel.to(torch.float32)[:, ref_frames:, :].permute(0, 2, 1)
            wav = vocoder.decode(mel.to(next(vocoder.parameters()).dtype)).float()
        if rms < TARGET_RMS:
            wav = wav * rms / TARGET_RMS
        samples = wav.squeeze().cpu().numpy().astype(np.float32)
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(out_path, samples, SAMPLE_RATE)
        duration = len(samples) / SAMPLE_RATE
        return BackendResult(
            outputs={"wav": str(out_path), "duration_s": duration, "sample_rate": SAMPLE_RATE},
            ai_usage=(*ref_usage, {"tool": self.name, "unit": "char", "quantity": len(text)},
                      {"tool": f"{self.name}:audio", "unit": "second", "quantity": round(duration, 6)}),
            params={"model": f"tiny-random-f5(seed={self.tiny_seed})" if self.tiny else "F5TTS_v1_Base",
                    "lang": code, "seed": line_seed, "voice_seed": char_seed, "steps": self.steps,
                    "cfg_strength": self.cfg_strength, "speed": round(speed, 4), "emotion": mood,
                    "emotion_requested": emotion, **ref_params,
                    "emotion_via": ref_params["emotion_via"] if mood else None,
                    "reference_transcript": ref_text.strip(), "frames": frames, "seconds": round(duration, 4)})


class F5Tiny(F5TTS):
    name = "f5-tiny"


def _modules() -> dict[str, Any]:
    from models.tts import f5_modules

    return f5_modules.load()


def vocab_map(path: Path) -> dict[str, int]:
    """F5's custom tokenizer: one entry per line of vocab.txt (index 0 is the space)."""
    return _modules()["get_tokenizer"](str(path), "custom")[0]


def build(vocab: dict[str, int], arch: dict[str, Any], vocoder: dict[str, Any]) -> tuple[Any, Any]:
    """An F5 CFM around a DiT of `arch`, and a Vocos decoder (backbone + ISTFT head) of `vocoder`'s sizes."""
    import torch

    m = _modules()
    cfm = m["CFM"](transformer=m["DiT"](**arch, text_num_embeds=len(vocab), mel_dim=N_MELS),
                   mel_spec_kwargs={"n_fft": 1024, "hop_length": HOP, "win_length": 1024,
                                    "n_mel_channels": N_MELS, "target_sample_rate": SAMPLE_RATE,
                                    "mel_spec_type": "vocos"},
                   odeint_kwargs={"method": "euler"}, vocab_char_map=vocab)
    decoder = m["VocosDecoder"](m["VocosBackbone"](**vocoder["backbone"]), m["ISTFTHead"](**vocoder["head"]))
    return cfm.eval(), decoder.eval().to(torch.float32)


def load_f5(files: dict[str, Path], arch: dict[str, Any], dtype: str, device: str) -> tuple[Any, Any, dict]:
    """The real model from local files, as f5_tts.infer.utils_infer.load_model/load_checkpoint and
    load_vocoder do (EMA weights, the mel buffers of old checkpoints dropped; Vocos without its encoder)."""
    import torch
    import yaml
    from safetensors.torch import load_file

    vocab = vocab_map(files["vocab"])
    config = yaml.safe_load(files["vocoder_config"].read_text(encoding="utf-8"))
    sizes = {"backbone": config["backbone"]["init_args"], "head": config["head"]["init_args"]}
    cfm, decoder = build(vocab, arch, sizes)
    path = files["checkpoint"]
    raw = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                                   weights_only=True)
    if "ema_model_state_dict" in raw:
        raw = raw["ema_model_state_dict"]
    state = {k.replace("ema_model.", ""): v for k, v in raw.items() if k not in ("initted", "step")}
    for key in ("mel_spec.mel_stft.mel_scale.fb", "mel_spec.mel_stft.spectrogram.window"):
        state.pop(key, None)
    cfm.load_state_dict(state)
    voc = torch.load(files["vocoder"], map_location="cpu", weights_only=True)
    decoder.load_state_dict({k: v for k, v in voc.items() if k.startswith(("backbone.", "head."))})
    return cfm.to(device, hub.torch_dtype(dtype)), decoder.to(device), vocab
