"""Subtitle files from the edit timeline: SRT and ASS (styled for 1080×1920, CJK font) per language."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def events(shots: list[dict[str, Any]], lang: str, fallback: str) -> list[tuple[float, float, str]]:
    """(start, end, text) on the episode clock for one language, timed by its own dub or the fallback's."""
    out = []
    for shot in shots:
        for line in shot["lines"]:
            timing = line["timing"].get(lang) or line["timing"][fallback]
            text = line["text"].get(lang)
            if text:
                out.append((shot["start"] + timing[0], shot["start"] + timing[1], text))
    return out


def _srt_time(t: float) -> str:
    ms = round(t * 1000)
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def _ass_time(t: float) -> str:
    cs = round(t * 100)
    h, rem = divmod(cs, 360_000)
    m, rem = divmod(rem, 6000)
    s, cs = divmod(rem, 100)
    return f"{h:d}:{m:02d}:{s:02d}.{cs:02d}"


def write_srt(path: Path, evs: list[tuple[float, float, str]]) -> None:
    blocks = [f"{i}\n{_srt_time(a)} --> {_srt_time(b)}\n{text}\n" for i, (a, b, text) in enumerate(evs, 1)]
    path.write_text("\n".join(blocks), encoding="utf-8")


def write_ass(path: Path, evs: list[tuple[float, float, str]], *, font: str, width: int = 1080,
              height: int = 1920, size: int = 64, margin_v: int = 300) -> None:
    """ASS with one style; bottom margin keeps lines clear of platform UI on vertical players."""
    head = (
        "[Script Info]\nScriptType: v4.00+\nWrapStyle: 0\nScaledBorderAndShadow: yes\n"
        f"PlayResX: {width}\nPlayResY: {height}\n\n[V4+ Styles]\n"
        "Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold,"
        " Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow,"
        " Alignment, MarginL, MarginR, MarginV, Encoding\n"
        f"Style: Default,{font},{size},&H00FFFFFF,&H000000FF,&H00000000,&H64000000,-1,0,0,0,100,100,0,0,1,"
        f"4,1,2,60,60,{margin_v},1\n\n[Events]\n"
        "Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
    )
    body = "".join(
        f"Dialogue: 0,{_ass_time(a)},{_ass_time(b)},Default,,0,0,0,,{_ass_escape(text)}\n" for a, b, text in evs
    )
    path.write_text(head + body, encoding="utf-8")


def _ass_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("{", "\\{").replace("}", "\\}").replace("\n", "\\N")
