"""Subtitle files from the edit timeline: SRT and ASS (styled for 1080×1920, CJK font) per language, written
with pysubs2, and the reading rules every cue follows (docs/subtitles.md).

A cue starts when its line is spoken and is held long enough to be read: at least `min_s` on screen and no
faster than `max_cps` characters per second, extended into the silence after the line but never into the
next cue (a `gap_s` apart) or past the episode's end. Its text is wrapped to at most two lines of
`max_line` characters (CJK: split at punctuation near the middle, else the middle; Latin: at the space that
balances the lines); a line too long for two lines becomes consecutive cues, timed by their length.

The figures are the Netflix Timed Text Style Guide's: English 42 characters per line, 20 characters per
second (adult programmes); Simplified and Traditional Chinese 16 characters per line, 9 characters per
second; every language at least 5/6 s (20 frames at 24 fps) on screen, 2 frames between cues, two lines.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pysubs2

from pipeline import layout

CJK = ("zh", "ja", "ko", "yue")
_CJK_BREAKS = "，。！？；：、…—,.!?;:"
_SENTENCE = re.compile(r"(?<=[。！？!?.…])\s*")


@dataclass(frozen=True)
class ReadingRules:
    """How long a cue must be held and how its text is broken (one language)."""

    max_line: int  # characters per line
    max_cps: float  # characters per second, spaces and punctuation counted
    min_s: float = 5 / 6  # 20 frames at 24 fps
    gap_s: float = 2 / 24  # between consecutive cues
    max_lines: int = 2


def rules(lang: str) -> ReadingRules:
    if lang.split("-")[0] in CJK:
        return ReadingRules(max_line=16, max_cps=9.0)
    return ReadingRules(max_line=42, max_cps=20.0)


def _raw(shots: list[dict[str, Any]], lang: str, fallback: str) -> list[tuple[float, float, str]]:
    out = []
    for shot in shots:
        for line in shot["lines"]:
            timing = line["timing"].get(lang) or line["timing"][fallback]
            text = " ".join(str(line["text"].get(lang) or "").split())
            if text:
                out.append((shot["start"] + timing[0], shot["start"] + timing[1], text))
    return out


def events(shots: list[dict[str, Any]], lang: str, fallback: str) -> list[tuple[float, float, str]]:
    """(start, end, text) on the episode clock for one language, timed by its own dub or the fallback's,
    held to the reading rules and wrapped (lines joined by "\\n")."""
    r = rules(lang)
    end_of_episode = max((s["end"] for s in shots), default=0.0)
    spoken = _raw(shots, lang, fallback)
    out = []
    for i, (a, b, text) in enumerate(spoken):
        limit = spoken[i + 1][0] - r.gap_s if i + 1 < len(spoken) else end_of_episode
        chunks = _chunks(text, lang, r.max_line * r.max_lines)
        n, chars = len(chunks), sum(len(c) for c in chunks)
        want = max(b, a + n * r.min_s + (n - 1) * r.gap_s, a + chars / r.max_cps + (n - 1) * r.gap_s)
        out += split(a, max(b, min(want, limit)), chunks, lang, r)
    return out


def split(a: float, b: float, chunks: list[str], lang: str, r: ReadingRules) -> list[tuple[float, float, str]]:
    """One spoken line's pieces as consecutive cues over [a, b], `gap_s` apart, each its share by length."""
    gap = r.gap_s if len(chunks) > 1 and (b - a) > r.gap_s * len(chunks) else 0.0
    span = (b - a) - gap * (len(chunks) - 1)
    total = sum(len(c) for c in chunks)
    out, t = [], a
    for i, c in enumerate(chunks):
        u = b if i == len(chunks) - 1 else t + span * len(c) / total
        out.append((t, u, wrap(c, lang, r.max_line)))
        t = u + gap
    return out


def _chunks(text: str, lang: str, limit: int) -> list[str]:
    """Pieces of at most `limit` characters, cut at sentence ends, then clause breaks, then words."""
    if len(text) <= limit:
        return [text]
    out: list[str] = []
    for sentence in (s for s in _SENTENCE.split(text) if s):
        while len(sentence) > limit:
            cut = _cut(sentence, lang, limit)
            out.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if out and len(out[-1]) + len(sentence) + (0 if _is_cjk(lang) else 1) <= limit:
            out[-1] = out[-1] + ("" if _is_cjk(lang) else " ") + sentence
        elif sentence:
            out.append(sentence)
    return out


def _cut(text: str, lang: str, limit: int) -> int:
    """Where to cut `text` so the first part fits in `limit`: the last break within it."""
    window = text[:limit + 1]
    marks = [i + 1 for i, ch in enumerate(window[:limit]) if ch in _CJK_BREAKS] if _is_cjk(lang) else \
        [i for i, ch in enumerate(window) if ch == " "]
    marks = [m for m in marks if m > limit // 3]
    return marks[-1] if marks else limit


def wrap(text: str, lang: str, max_line: int) -> str:
    """At most two lines ("\\n" between): CJK split at the punctuation nearest the middle, Latin at the space
    that balances the lines; text that fits one line stays one line."""
    if len(text) <= max_line:
        return text
    mid = len(text) / 2
    if _is_cjk(lang):
        marks = [i + 1 for i, ch in enumerate(text[:-1]) if ch in _CJK_BREAKS]
        fits = [m for m in marks if m <= max_line and len(text) - m <= max_line]
        cut = min(fits, key=lambda m: abs(m - mid)) if fits else min(max_line, max(len(text) - max_line, round(mid)))
        return f"{text[:cut].rstrip()}\n{text[cut:].lstrip()}"
    spaces = [i for i, ch in enumerate(text) if ch == " "]
    fits = [s for s in spaces if s <= max_line and len(text) - s - 1 <= max_line] or spaces
    if not fits:
        return text
    cut = min(fits, key=lambda s: abs(s - mid))
    return f"{text[:cut]}\n{text[cut + 1:]}"


def _is_cjk(lang: str) -> bool:
    return lang.split("-")[0] in CJK


def _file(evs: list[tuple[float, float, str]], ass: bool) -> pysubs2.SSAFile:
    subs = pysubs2.SSAFile()
    for a, b, text in evs:
        ev = pysubs2.SSAEvent(start=round(a * 1000), end=round(b * 1000))
        if ass:
            ev.text = _ass_escape(text)
        else:
            ev.plaintext = text
        subs.append(ev)
    return subs


def write_srt(path: Path, evs: list[tuple[float, float, str]]) -> None:
    _file(evs, ass=False).save(str(path), format_="srt", encoding="utf-8", keep_ssa_tags=True)  # text as written


def write_ass(path: Path, evs: list[tuple[float, float, str]], *, font: str, width: int = 1080,
              height: int = 1920, size: int = layout.SUBTITLE_FONT_PX) -> None:
    """ASS with one style, bottom-aligned in `layout.SUBTITLES`: above the players' bottom band, left of
    their button column, clear of the AI label."""
    margins = layout.subtitle_margins(width, height)
    subs = _file(evs, ass=True)
    subs.info.update({"PlayResX": str(width), "PlayResY": str(height), "WrapStyle": "0",
                      "ScaledBorderAndShadow": "yes"})
    subs.styles["Default"] = pysubs2.SSAStyle(
        fontname=font, fontsize=size, primarycolor=pysubs2.Color(255, 255, 255, 0),
        secondarycolor=pysubs2.Color(255, 0, 0, 0), outlinecolor=pysubs2.Color(0, 0, 0, 0),
        backcolor=pysubs2.Color(0, 0, 0, 0x64), bold=True, borderstyle=1, outline=4, shadow=1,
        alignment=pysubs2.Alignment.BOTTOM_CENTER, encoding=1, **margins)
    subs.save(str(path), format_="ass", encoding="utf-8")


def _ass_escape(text: str) -> str:
    """Cue text as ASS markup: braces and backslashes literal, line breaks as \\N."""
    return text.replace("\\", "\\\\").replace("{", "\\{").replace("}", "\\}").replace("\n", "\\N")
