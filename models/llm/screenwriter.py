"""LLM screenwriting shared by every script backend: prompt, validate by parsing, re-prompt, repair or reject.

A model's screenplay is accepted only if `pipeline.screenplay.parse` accepts it. Otherwise the model is
re-prompted once with the parser's error; if that fails too, `repair="skeleton"` builds a screenplay
that parses by construction — one scene per beat, the beat as action, and whatever well-formed lines of
dialogue the model did write (`NAME: line` or cue-then-line), spoken by the characters it named (or
stock leads). `repair="reprompt"` or `"none"` reject with the parser's error instead. What happened is
reported in the result's params (`repair`, `first_error`, `lines_from_model`), never hidden.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Callable

from pipeline.errors import UserError

REPAIRS = ("skeleton", "reprompt", "none")
Messages = list[dict[str, str]]

FORMAT_GUIDE = """Write the screenplay in Fountain with these notes:
- Title page first: `Title: ...`, `Language: {lang}`, then `Characters:` with one indented line per
  character: `NAME | voice=f | desc=short description` (voice=f or voice=m). End the title page with a blank line.
- Scene headings on their own line: `INT. PLACE - NIGHT` / `EXT. PLACE - DAY` (Chinese: `内景. 地点 - 夜`).
- Before each shot a note on its own line: `[[shot: FRAMING, CAMERA]]` with FRAMING one of wide, medium,
  close, extreme-close, over-shoulder and CAMERA one of hold, push-in, pull-out, pan-left, pan-right,
  tilt-up, tilt-down; add a duration like `3s` when the shot has no dialogue.
- Action is a plain paragraph. Dialogue: a blank line, the character's name alone on a line
  (Latin names in CAPS), the line of dialogue on the next line; optional `(emotion)` between them.
- Output only the screenplay, no commentary, no code fences.

Example:
Title: The Stand-in
Language: en
Characters:
    LIN | voice=f | desc=stubborn intern
    GU | voice=m | desc=cold CEO

INT. CEO OFFICE - NIGHT

[[shot: close, push-in]]
A contract slaps onto the desk. Gu stares at Lin.

GU
(cold)
Sign it.

[[shot: wide, pan-right, 3s]]
Red lanterns sway in the wind.
"""
STOCK_CAST = {"zh": [("女主", "f"), ("男主", "m")], "en": [("HEROINE", "f"), ("HERO", "m")]}
HEADINGS = {"zh": "内景. 第{n}场 - 日", "en": "INT. SCENE {n} - DAY"}
_CJK_NAME = re.compile(r"^[\u3400-\u9fff·]{1,8}$")
_LATIN_NAME = re.compile(r"^[A-Z][A-Za-z.'-]*(?: [A-Z][A-Za-z.'-]*){0,2}$")
_COLON_LINE = re.compile(r"^\s*\**([^\s:：*][^:：]{0,30}?)\**\s*[:：]\s*(.+)$")
_FOUNTAIN_MARKS = re.compile(r"\[\[|\]\]|/\*|\*/|[*_~^@#=><|\\]")


class ScreenwriterError(UserError):
    """The model's screenplay did not parse and the configured repair could not (or may not) fix it."""


def messages(logline: str, beats: list[str], language: str) -> Messages:
    """The chat messages asking for an episode from a logline and a beat sheet."""
    beat_lines = "\n".join(f"{i}. {b}" for i, b in enumerate(beats, 1)) or "(none: invent 3 beats)"
    user = (f"Write one episode of a vertical micro-drama, dialogue in language `{language}`.\n"
            f"Logline: {logline}\nBeats (one scene each, 1-3 shots per scene, short punchy lines, "
            f"end on a cliffhanger):\n{beat_lines}")
    return [{"role": "system", "content": "You are a screenwriter for vertical short dramas.\n"
             + FORMAT_GUIDE.format(lang=language)},
            {"role": "user", "content": user}]


def retry_messages(first: Messages, answer: str, error: str) -> Messages:
    """Re-prompt with the parser's error message."""
    return first + [{"role": "assistant", "content": answer[:6000]},
                    {"role": "user", "content": f"That screenplay does not parse: {error}\n"
                                                f"Write the whole screenplay again, corrected, and nothing else."}]


def clean(text: str) -> str:
    """Strip code fences and any chatter before the title page or first scene heading."""
    text = re.sub(r"^```[a-zA-Z]*\s*$", "", text.replace("\r\n", "\n"), flags=re.M)
    m = re.search(r"^(Title:|INT[. ]|EXT[. ]|内景|外景)", text, flags=re.M | re.I)
    return (text[m.start():] if m else text).strip() + "\n"


def check(text: str, language: str) -> str | None:
    """None when the text parses as a screenplay in `language`, else the parser's message."""
    from pipeline import screenplay

    try:
        script = screenplay.parse(text, source="model output", language=language, opening=False)
    except screenplay.ScreenplayError as err:
        return str(err)
    return None if script.shots else "no shots"


# ---------------------------------------------------------------- deterministic repair

def _printable_share(text: str) -> float:
    good = sum(1 for c in text if c.isalnum() or c.isspace() or unicodedata.category(c).startswith("P"))
    return good / max(1, len(text))


def tidy(text: str, limit: int = 160) -> str:
    """One clean line of plain text: no Fountain markup, no control characters, bounded length."""
    text = "".join(c for c in text if c.isprintable() and c != "\ufffd")
    text = _FOUNTAIN_MARKS.sub(" ", text)
    text = re.sub(r"[()（）\[\]{}]", " ", text)
    text = re.sub(r"\s+", " ", text).strip().lstrip(".!:：")  # a leading . or ! would force a heading/action
    return text[:limit].strip()


def _good_line(text: str) -> bool:
    letters = sum(1 for c in text if c.isalpha())
    return len(text) >= 2 and letters >= 2 and _printable_share(text) >= 0.9


def _name(raw: str, language: str) -> str | None:
    name = tidy(raw, 30)
    if language.startswith(("zh", "yue", "cmn")):
        return name if _CJK_NAME.fullmatch(name) else None
    name = name.upper()
    return name if _LATIN_NAME.fullmatch(name) and name not in ("INT", "EXT", "TITLE", "LANGUAGE") else None


def harvest(text: str, language: str) -> list[tuple[str, str]]:
    """(speaker, line) pairs the model wrote, as `NAME: line` or a cue line followed by a line."""
    pairs: list[tuple[str, str]] = []
    lines = [ln.strip() for ln in text.replace("\r\n", "\n").split("\n")]
    for i, ln in enumerate(lines):
        m = _COLON_LINE.match(ln)
        if m and (name := _name(m.group(1), language)):
            line = tidy(m.group(2))
        elif ln and i + 1 < len(lines) and (name := _name(ln, language)) and ln.strip() == ln.upper():
            line = tidy(lines[i + 1])
        else:
            continue
        if _good_line(line):
            pairs.append((name, line))
    return pairs


def _cast(pairs: list[tuple[str, str]], language: str) -> list[tuple[str, str]]:
    stock = STOCK_CAST["zh" if language.startswith(("zh", "yue", "cmn")) else "en"]
    names = list(dict.fromkeys(n for n, _ in pairs))[:6]
    if not names:
        return stock
    return [(n, stock[i % 2][1]) for i, n in enumerate(names)]


def skeleton(logline: str, beats: list[str], language: str, pairs: list[tuple[str, str]]) -> str:
    """A screenplay that parses by construction: a scene per beat, the model's lines spread over them."""
    zh = language.startswith(("zh", "yue", "cmn"))
    beats = [b for b in (tidy(x, 400) for x in beats) if b] or [tidy(logline, 400) or "..."]
    cast = _cast(pairs, language)
    lines = pairs or []
    out = [f"Title: {tidy(logline, 60) or 'Untitled'}", f"Language: {language}", "Characters:"]
    out += [f"    {name} | voice={voice}" for name, voice in cast]
    out.append("")
    per_scene = -(-len(lines) // len(beats)) if lines else 0
    for n, beat in enumerate(beats, 1):
        heading = HEADINGS["zh" if zh else "en"].format(n=n)
        said = lines[(n - 1) * per_scene:n * per_scene]
        shot = "[[shot: medium, hold]]" if said else "[[shot: wide, hold, 3s]]"
        out += [heading, "", shot, f"!{beat}", ""]
        for speaker, line in said:
            out += [f"@{speaker}", line, ""]
    return "\n".join(out)


def write_screenplay(generate: Callable[[Messages], str], *, logline: str, beats: list[str], language: str,
                     repair: str = "skeleton") -> tuple[str, dict]:
    """Ask, validate, re-prompt once, then repair or reject. Returns (screenplay, params)."""
    if repair not in REPAIRS:
        raise ValueError(f"stages.script.options.repair must be one of {', '.join(REPAIRS)}, got {repair!r}")
    first = messages(logline, beats, language)
    answers = [generate(first)]
    error = check(clean(answers[0]), language)
    if error is None:
        return clean(answers[0]), {"repair": "none", "attempts": 1}
    params = {"first_error": error[:300]}
    if repair != "none":
        answers.append(generate(retry_messages(first, answers[0], error)))
        second_error = check(clean(answers[1]), language)
        if second_error is None:
            return clean(answers[1]), {**params, "repair": "reprompt", "attempts": 2}
        error = second_error
    if repair != "skeleton":
        raise ScreenwriterError(f"script: the model's screenplay does not parse after {len(answers)} attempt(s): "
                                f"{error} (set stages.script.options.repair=skeleton to build one from the beats)")
    pairs = [p for a in answers for p in harvest(a, language)]
    for attempt in (pairs, []):
        text = skeleton(logline, beats, language, attempt)
        if check(text, language) is None:
            return text, {**params, "repair": "skeleton", "attempts": len(answers), "lines_from_model": len(attempt)}
    raise ScreenwriterError(f"script: could not build a screenplay from the beats: {check(text, language)}")
