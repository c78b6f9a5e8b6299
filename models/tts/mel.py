"""torchaudio's `MelSpectrogram` and mel/Hz conversions, ported to plain torch (torchaudio 2.11 formulas).

F5-TTS computes the mel of the reference clip with `torchaudio.transforms.MelSpectrogram` (HTK scale, no
filter normalisation, magnitude, centred reflect-padded STFT with a periodic Hann window); torchaudio has no
build for this project's torch, so models/tts/f5_modules.py binds F5's torchaudio name to this module. Only
what F5 and Vocos use is here: `norm=None` or "slaney", `mel_scale` "htk" or "slaney", `power` 1 or 2.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def hz_to_mel(freq: float, mel_scale: str = "htk") -> float:
    if mel_scale == "htk":
        return 2595.0 * math.log10(1.0 + freq / 700.0)
    if mel_scale != "slaney":
        raise ValueError('mel_scale should be one of "htk" or "slaney".')
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    mels = freq / f_sp
    if freq >= min_log_hz:
        mels = min_log_hz / f_sp + math.log(freq / min_log_hz) / (math.log(6.4) / 27.0)
    return mels


def mel_to_hz(mels: torch.Tensor, mel_scale: str = "htk") -> torch.Tensor:
    if mel_scale == "htk":
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    if mel_scale != "slaney":
        raise ValueError('mel_scale should be one of "htk" or "slaney".')
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    freqs = f_sp * mels
    log_t = mels >= min_log_mel
    freqs[log_t] = min_log_hz * torch.exp(logstep * (mels[log_t] - min_log_mel))
    return freqs


def melscale_fbanks(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int,
                    norm: str | None = None, mel_scale: str = "htk") -> torch.Tensor:
    """Triangular filter bank (n_freqs, n_mels), as torchaudio.functional.melscale_fbanks."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_pts = torch.linspace(hz_to_mel(f_min, mel_scale), hz_to_mel(f_max, mel_scale), n_mels + 2)
    f_pts = mel_to_hz(m_pts, mel_scale)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down, up = (-1.0 * slopes[:, :-2]) / f_diff[:-1], slopes[:, 2:] / f_diff[1:]
    fb = torch.max(torch.zeros(1), torch.min(down, up))
    if norm == "slaney":
        fb *= (2.0 / (f_pts[2:n_mels + 2] - f_pts[:n_mels])).unsqueeze(0)
    elif norm is not None:
        raise ValueError('norm must be one of None or "slaney"')
    return fb


class MelSpectrogram(nn.Module):
    """(..., time) waveform → (..., n_mels, frames) mel spectrogram, as torchaudio.transforms.MelSpectrogram."""

    def __init__(self, sample_rate: int = 16000, n_fft: int = 400, win_length: int | None = None,
                 hop_length: int | None = None, f_min: float = 0.0, f_max: float | None = None, pad: int = 0,
                 n_mels: int = 128, power: float = 2.0, normalized: bool = False, center: bool = True,
                 pad_mode: str = "reflect", norm: str | None = None, mel_scale: str = "htk", **_: Any) -> None:
        super().__init__()
        if normalized:
            raise ValueError("normalized spectrograms are not ported (F5-TTS uses normalized=False)")
        self.n_fft, self.win_length = n_fft, win_length or n_fft
        self.hop_length = hop_length or self.win_length // 2
        self.pad, self.power, self.center, self.pad_mode = pad, power, center, pad_mode
        self.register_buffer("window", torch.hann_window(self.win_length))
        self.register_buffer("fb", melscale_fbanks(n_fft // 2 + 1, f_min, f_max or float(sample_rate // 2),
                                                   n_mels, sample_rate, norm, mel_scale))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if self.pad > 0:
            waveform = torch.nn.functional.pad(waveform, (self.pad, self.pad), "constant")
        shape = waveform.size()
        spec = torch.stft(waveform.reshape(-1, shape[-1]), n_fft=self.n_fft, hop_length=self.hop_length,
                          win_length=self.win_length, window=self.window, center=self.center,
                          pad_mode=self.pad_mode, normalized=False, onesided=True, return_complex=True)
        spec = spec.reshape(shape[:-1] + spec.shape[-2:]).abs()
        if self.power != 1.0:
            spec = spec.pow(self.power)
        return torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)
