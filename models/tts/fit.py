"""Dubbing fit: how a line's speech fits its shot slot — time-stretch within limits, else extend the shot."""
from __future__ import annotations

from dataclasses import dataclass

MIN_TEMPO, MAX_TEMPO = 0.8, 1.25  # ffmpeg atempo factors that still sound natural for speech


@dataclass(frozen=True)
class Fit:
    """The decision for one line: play at `tempo` (atempo factor, >1 = faster) and extend the shot by `extend_s`."""

    speech_s: float
    slot_s: float
    tempo: float
    fitted_s: float  # speech length after the stretch
    extend_s: float  # how much longer the shot must become (0 when the stretch is enough)

    @property
    def stretched(self) -> bool:
        return abs(self.tempo - 1.0) > 1e-9


def fit_speech(speech_s: float, slot_s: float, *, min_tempo: float = MIN_TEMPO, max_tempo: float = MAX_TEMPO,
               fill: bool = False) -> Fit:
    """Fit `speech_s` seconds of speech into a `slot_s`-second slot.

    Too long: speed up by speech/slot when that is within `max_tempo`, else speed up by `max_tempo` and
    extend the shot by what is left. Shorter than the slot: left alone, or (``fill=True``) slowed down
    to fill the slot, no slower than `min_tempo`.
    """
    if speech_s < 0 or slot_s <= 0:
        raise ValueError(f"fit_speech: speech_s must be >= 0 and slot_s > 0, got {speech_s}, {slot_s}")
    if not 0.5 <= min_tempo <= 1.0 <= max_tempo <= 2.0:
        raise ValueError(f"fit_speech: need 0.5 <= min_tempo <= 1 <= max_tempo <= 2, got {min_tempo}, {max_tempo}")
    ratio = speech_s / slot_s
    if ratio > 1.0:
        tempo = min(ratio, max_tempo)
    elif fill and speech_s > 0:
        tempo = max(ratio, min_tempo)
    else:
        tempo = 1.0
    fitted = speech_s / tempo
    return Fit(speech_s=speech_s, slot_s=slot_s, tempo=tempo, fitted_s=fitted, extend_s=max(0.0, fitted - slot_s))


def atempo_filter(tempo: float) -> str:
    """The ffmpeg audio filter for `tempo` ('' when no change); chained when outside atempo's 0.5–2 range."""
    if abs(tempo - 1.0) < 1e-9:
        return ""
    if tempo <= 0:
        raise ValueError(f"atempo_filter: tempo must be > 0, got {tempo}")
    parts, t = [], tempo
    while t > 2.0:
        parts.append("atempo=2.0")
        t /= 2.0
    while t < 0.5:
        parts.append("atempo=0.5")
        t /= 0.5
    parts.append(f"atempo={t:.6f}")
    return ",".join(parts)
