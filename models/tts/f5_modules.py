"""F5-TTS's model classes (DiT, CFM, tokenizer) and the Vocos decoder, imported without their packages' extras.

`import f5_tts.model` runs a package `__init__` that imports the trainer (wandb, datasets, accelerate, EMA), and
`import vocos` imports the feature extractors (EnCodec, torchaudio); inference needs neither. The modules used
here are loaded directly, under a package object that skips those `__init__`s.

Two of them import torchaudio and librosa at import time for the mel front end: torchaudio has no build for
this project's torch (2.13.0, CPU), and librosa is only for the BigVGAN mel. When torchaudio is not
importable, those names are bound, for these modules only, to `models.tts.mel`: a port of torchaudio's
`MelSpectrogram` (HTK mel scale, no filter normalisation: what F5-TTS's "vocos" mel uses) and its mel/Hz
conversions. Nothing is left in `sys.modules` under torchaudio's or librosa's names. The BigVGAN mel is
refused with a clear error.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()
_LOADED: dict[str, Any] = {}


def _package(name: str) -> None:
    """A package object for `name` whose `__init__` is not run, so its submodules import on their own."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    module = types.ModuleType(name)
    module.__path__ = list(spec.submodule_search_locations)
    module.__file__ = None
    sys.modules[name] = module


def _stand_ins() -> dict[str, types.ModuleType]:
    """torchaudio and librosa names for the import of F5's and Vocos's modules (only where not installed)."""
    from models.tts import mel

    out: dict[str, types.ModuleType] = {}
    if importlib.util.find_spec("torchaudio") is None:
        audio, transforms = types.ModuleType("torchaudio"), types.ModuleType("torchaudio.transforms")
        functional, inner = types.ModuleType("torchaudio.functional"), types.ModuleType("torchaudio.functional.functional")
        transforms.MelSpectrogram = mel.MelSpectrogram
        inner._hz_to_mel, inner._mel_to_hz = mel.hz_to_mel, mel.mel_to_hz
        audio.transforms, audio.functional, functional.functional = transforms, functional, inner
        out.update({"torchaudio": audio, "torchaudio.transforms": transforms, "torchaudio.functional": functional,
                    "torchaudio.functional.functional": inner})
    if importlib.util.find_spec("librosa") is None:
        librosa, filters = types.ModuleType("librosa"), types.ModuleType("librosa.filters")

        def _bigvgan_mel(**_: Any) -> Any:
            raise ValueError("F5-TTS's BigVGAN mel needs librosa, which is not installed; use the vocos mel "
                             "(mel_spec_type: vocos, what F5TTS_v1_Base is trained with)")

        filters.mel = _bigvgan_mel
        librosa.filters = filters
        out.update({"librosa": librosa, "librosa.filters": filters})
    return out


def load() -> dict[str, Any]:
    """{"DiT", "CFM", "get_tokenizer", "convert_char_to_pinyin", "VocosBackbone", "ISTFTHead",
    "VocosDecoder"}, imported once."""
    with _LOCK:
        if _LOADED:
            return _LOADED
        for name in ("f5_tts", "f5_tts.model", "f5_tts.model.backbones", "vocos"):
            if name == "f5_tts":
                importlib.import_module(name)  # its __init__ is empty
            else:
                _package(name)
        shims = {k: v for k, v in _stand_ins().items() if k not in sys.modules}
        sys.modules.update(shims)
        try:
            dit = importlib.import_module("f5_tts.model.backbones.dit")
            cfm = importlib.import_module("f5_tts.model.cfm")
            utils = importlib.import_module("f5_tts.model.utils")
            models = importlib.import_module("vocos.models")
            heads = importlib.import_module("vocos.heads")
        finally:
            for name in shims:
                sys.modules.pop(name, None)
        _LOADED.update(DiT=dit.DiT, CFM=cfm.CFM, get_tokenizer=utils.get_tokenizer,
                       convert_char_to_pinyin=utils.convert_char_to_pinyin, VocosBackbone=models.VocosBackbone,
                       ISTFTHead=heads.ISTFTHead, VocosDecoder=_decoder_class())
        return _LOADED


def _decoder_class() -> type:
    import torch

    class VocosDecoder(torch.nn.Module):
        """Vocos's mel → waveform path (`Vocos.decode`: backbone, then ISTFT head), without its feature
        extractor; state-dict keys as in Vocos (backbone.*, head.*)."""

        def __init__(self, backbone: torch.nn.Module, head: torch.nn.Module) -> None:
            super().__init__()
            self.backbone, self.head = backbone, head

        def decode(self, features: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone(features))

    return VocosDecoder


def packaged_vocab() -> Path:
    """The F5-TTS character/pinyin vocabulary shipped in the package (the one F5TTS_v1_Base is trained on)."""
    spec = importlib.util.find_spec("f5_tts")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("No module named 'f5_tts'", name="f5_tts")
    return Path(list(spec.submodule_search_locations)[0]) / "infer" / "examples" / "vocab.txt"
