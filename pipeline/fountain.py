"""Fountain lexing for the screenplay parser: numbered clean lines, notes, headings, cues and title page."""
from __future__ import annotations

import functools
import io
import re
from collections.abc import Iterable, Iterator

from pipeline.errors import UserError
from pipeline.script import CAMERA_MOVES, FRAMINGS, Character

Numbered = tuple[int, str]  # (1-based line number, text)

ISO_639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv
dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig
ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh
mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru
rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug
uk ur uz ve vi vo wa wo xh yi yo za zh zu yue cmn wuu nan hak fil
""".split())
LANG_CODE = re.compile(r"^([a-z]{2,3})(-[A-Za-z0-9]{2,8})*$")
FRAMING_ALIASES = {"全景": "wide", "远景": "wide", "中景": "medium", "近景": "close", "特写": "close",
                   "大特写": "extreme-close", "过肩": "over-shoulder"}
CAMERA_ALIASES = {"固定": "hold", "推": "push-in", "拉": "pull-out", "左摇": "pan-left", "右摇": "pan-right",
                  "上摇": "tilt-up", "下摇": "tilt-down"}
NOTE_KINDS = {"shot": "shot", "tags": "tags", "tag": "tags", "emotion": "emotion",
              "char": "char", "character": "char"}

_HEADING = re.compile(
    r"^(?:(?P<latin>int\.?/ext|ext\.?/int|i/e|e/i|int|ext|est)(?:[.。]|\s)"
    r"|(?P<cjk>内外景|内/外景|外/内景|内景|外景)(?:[.。:：、]|\s))\s*", re.IGNORECASE)
_SCENE_NUMBER = re.compile(r"\s#[\w.-]+#\s*$")
_TAG = re.compile(r"(?:^|(?<=\s))#([\w-]+)(?=\s|$)")
_WIDE_CLASS = "\u3040-\u9fff\uac00-\ud7af"  # kana, Chinese characters, Hangul
_TIME_SPLIT = re.compile(rf"\s+[-–—]+\s+|\s*－\s*|\s*——\s*|(?<=[{_WIDE_CLASS}])[-–—](?=[{_WIDE_CLASS}])")
_EXTENSION = re.compile(r"\s*[(（][^()（）]*[)）]\s*$")
_PAREN = re.compile(r"^[(（](.*)[)）]$", re.S)
_TITLE_KEY = re.compile(r"^([A-Za-z][A-Za-z ]{0,30})[:：](.*)$")
_NOTE_KEY = re.compile(r"^\s*([A-Za-z][A-Za-z0-9-]{0,15})\s*(?::(.*))?$", re.S)
_PAGE_BREAK = re.compile(r"^={3,}$")
_DURATION = re.compile(r"^(\d{1,3}(?:\.\d{1,3})?)(?:s|sec|秒)$")
_CN_TRANSITION = re.compile(r"^(?:切至|切到|转场|淡入|淡出|叠化|黑场|フェードイン|フェードアウト|カットイン)[:：。.]?$")
# time-of-day words: in `EXT. PATIO - DAY - FLASHBACK (1944)` the time is DAY, not the last piece
TIME_WORDS = frozenset("""
day night morning evening afternoon noon midnight dawn dusk sunrise sunset twilight continuous later same
日 夜 晨 早 晚 白天 夜晚 夜里 深夜 清晨 早晨 上午 中午 下午 傍晚 黄昏 凌晨 黎明 午夜 日落 日出 朝 昼 夕方
낮 밤 아침 저녁 день ночь утро вечер
""".split())
# ISO 639-1 codes that are also common English words: a `[[so: …]]` note is a translation only when the
# screenplay's Language: or Languages: names the code
WORD_CODES = frozenset("am an as be he hi id is it me my na ne no or so to us".split()) & ISO_639_1
_UNDERLINE = re.compile(r"(?<![\w\\])_|(?<!\\)_(?!\w)")
MAX_CJK_CUE = 8
NOT_EMOTIONS = {"beat", "pause", "continuing", "cont'd", "停顿", "顿", "继续"}
CUE_HINT = "write the name in CAPS, start it with '@', or declare it under Characters:"


class ScreenplayError(UserError):
    """A screenplay that does not parse; str is `source:line: message (fix hint)`."""

    def __init__(self, line: int, message: str, source: str = "<screenplay>", hint: str = ""):
        self.line, self.message, self.source, self.hint = line, message, source, hint
        where = f"{source}:{line}" if line > 0 else source
        super().__init__(f"{where}: {message}" + (f" ({hint})" if hint else ""))

    def with_source(self, source: str) -> ScreenplayError:
        return ScreenplayError(self.line, self.message, source, hint=self.hint)


# ---------------------------------------------------------------- lines, boneyard, notes

def numbered_lines(text: str) -> Iterator[Numbered]:
    """Numbered lines (lazily) with boneyard removed and multi-line notes joined onto their first line."""
    stream = io.StringIO(text.removeprefix("\ufeff"), newline=None)  # \r\n and \r read as \n
    return _join_notes(_strip_boneyard(line.removesuffix("\n") for line in stream))


def _strip_boneyard(lines: Iterable[str]) -> Iterator[Numbered]:
    open_at = 0
    for no, raw in enumerate(lines, 1):
        if not open_at and "/*" not in raw:
            yield no, raw
            continue
        kept, pos, touched = [], 0, bool(open_at)
        while pos <= len(raw):
            if open_at:
                end = raw.find("*/", pos)
                if end < 0:
                    break
                open_at, pos = 0, end + 2
            else:
                start = raw.find("/*", pos)
                if start < 0:
                    kept.append(raw[pos:])
                    break
                kept.append(raw[pos:start])
                open_at, pos, touched = no, start + 2, True
        line = "".join(kept)
        if not (touched and not line.strip()):
            yield no, line
    if open_at:
        raise ScreenplayError(open_at, "boneyard '/*' is never closed", hint="add '*/' where the cut text ends")


def _inside_note_after(text: str, inside: bool) -> bool:
    pos = 0
    while True:
        j = text.find("]]" if inside else "[[", pos)
        if j < 0:
            return inside
        inside, pos = not inside, j + 2


def is_kept_blank(raw: str) -> bool:
    """Fountain's "two spaces" line: a blank line that belongs to the dialogue, action or note around it."""
    return len(raw) >= 2 and not raw.strip()


def _join_notes(lines: Iterator[Numbered]) -> Iterator[Numbered]:
    """Join a note spanning lines onto its first line. A `[[` not closed before a blank line (a line of two
    spaces does not count) is plain text, as in Fountain; the lines after it are read again (a note opened
    in one of them cannot close before that blank line either: every line of the failed note ended inside it)."""
    pending: list[Numbered] = []
    fails_at = 0  # the blank line (or end) that an unclosed note ran into
    while True:
        nxt = pending.pop() if pending else next(lines, None)
        if nxt is None:
            return
        no, line = nxt
        parts, taken = [line], []
        inside = _inside_note_after(line, False) and no > fails_at
        while inside:
            follow = pending.pop() if pending else next(lines, None)
            if follow is None or not (follow[1].strip() or is_kept_blank(follow[1])):
                fails_at = follow[0] if follow is not None else 1 << 62
                pending.extend(reversed(taken + ([follow] if follow is not None else [])))
                parts = [line]
                break
            taken.append(follow)
            parts.append(follow[1].strip())
            inside = _inside_note_after(parts[-1], True)
        yield no, " ".join(p for p in parts if p) if len(parts) > 1 else line


def split_notes(line: str) -> tuple[str, tuple[str, ...]]:
    """Text of a line without its `[[notes]]`, and the note bodies in order."""
    if "[[" not in line:
        return line, ()
    return _split_notes(line)


@functools.lru_cache(maxsize=256)  # the parser looks at a line a few times in a row
def _split_notes(line: str) -> tuple[str, tuple[str, ...]]:
    text, notes, pos = [], [], 0
    while True:
        start = line.find("[[", pos)
        end = line.find("]]", start + 2) if start >= 0 else -1
        if end < 0:
            text.append(line[pos:])
            return "".join(text), tuple(notes)
        text.append(line[pos:start])
        notes.append(line[start + 2:end])
        pos = end + 2


def note_kind(body: str, languages: frozenset[str] = frozenset()) -> tuple[str, str, str]:
    """(kind, key, value) of a note: shot, tags, emotion, char, lang (a translation) or other. A key that is a
    language code is a translation; one that is also an English word (`so`, `it`, `no`) only when `languages`
    (the title page's Language: and Languages:) names it."""
    m = _NOTE_KEY.match(body)
    if not m:
        return "other", "", body.strip()
    key, value = m.group(1), (m.group(2) or "").strip()
    if key.lower() in NOTE_KINDS:
        return NOTE_KINDS[key.lower()], key.lower(), value
    if m.group(2) is not None and is_language(key) and (key in languages or key.split("-")[0] not in WORD_CODES):
        return "lang", key, value
    return "other", key, value


def is_language(code: str) -> bool:
    """A lower-case BCP-47-style code whose base is an ISO 639-1 code (or a common 3-letter one)."""
    m = LANG_CODE.fullmatch(code)
    return bool(m) and m.group(1) in ISO_639_1


# ---------------------------------------------------------------- text helpers

def _wide(ch: str) -> bool:
    o = ord(ch)
    return (0x2E80 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0xFF00 <= o <= 0xFFEF
            or 0x20000 <= o <= 0x3FFFF)


def is_cjk_name(text: str) -> bool:
    letters = [c for c in text if c not in "·•・"]
    return 0 < len(letters) <= MAX_CJK_CUE and all(_wide(c) and c.isalpha() for c in letters)


def join_text(parts: list[str]) -> str:
    """Join wrapped lines: no space between wide (CJK) characters, one space otherwise."""
    out = ""
    for part in (p for p in parts if p):
        out += part if not out or _wide(out[-1]) or _wide(part[0]) else " " + part
    return out


def clean_inline(text: str) -> str:
    """Drop Fountain emphasis markers (*italic*, **bold**, _underline_) and unescape \\* and \\_."""
    if "*" in text:
        text = text.replace("\\*", "\x00").replace("*", "").replace("\x00", "*")
    if "_" in text:
        text = _UNDERLINE.sub("", text).replace("\\_", "_")
    return " ".join(text.split())


def parenthetical(text: str) -> str | None:
    m = _PAREN.match(text.strip())
    return m.group(1).strip() if m else None


# ---------------------------------------------------------------- element recognisers

def heading(text: str) -> tuple[str, bool] | None:
    """(text after the INT./EXT./内景. prefix, interior) when the line is a scene heading."""
    s = text.strip()
    if s.startswith(".") and len(s) > 1 and s[1] not in ". \t":
        return s[1:].strip(), True
    m = _HEADING.match(s)
    if not m:
        return None
    prefix = (m.group("latin") or m.group("cjk")).lower()
    return s[m.end():].strip(), prefix[0] in "i内"  # the first of INT/EXT decides


def heading_parts(rest: str) -> tuple[str, str, list[str]]:
    """(location, time of day, #tags) of a heading's text; a trailing Fountain scene number is dropped."""
    rest = _SCENE_NUMBER.sub("", " " + rest).strip()
    tags = [t.lower() for t in _TAG.findall(rest)]
    rest = " ".join(_TAG.sub(" ", rest).split())
    pieces = [p.strip() for p in _TIME_SPLIT.split(rest)]
    if len(pieces) == 1:
        return rest, "", tags
    at = next((i for i in range(1, len(pieces)) if _is_time(pieces[i])), len(pieces) - 1)
    return " - ".join(pieces[:at]), pieces[at], tags


def _is_time(piece: str) -> bool:
    """`DAY`, `LATER THAT NIGHT`, `夜`: a short piece naming a time of day."""
    words = re.sub(r"[(（].*?[)）]", " ", piece).casefold().split()
    return 0 < len(words) <= 3 and any(w in TIME_WORDS for w in words)


def heading_label(text: str) -> str:
    """The heading as written, without a forcing '.', #tags and a scene number."""
    s = text.strip()
    s = s[1:] if s.startswith(".") else s
    return " ".join(_TAG.sub(" ", _SCENE_NUMBER.sub("", " " + s)).split())


def centered(text: str) -> bool:
    s = text.strip()
    return len(s) >= 2 and s.startswith(">") and s.endswith("<")


def section_or_synopsis(text: str) -> bool:
    """A Fountain section (`# Act one`) or synopsis (`= …`) line; `===` (a page break) counts too."""
    s = text.lstrip()
    return s.startswith(("#", "="))


def page_break(text: str) -> bool:
    return bool(_PAGE_BREAK.match(text.strip()))


def transition(text: str) -> bool:
    s = clean_inline(text.strip())
    if s.startswith(">") and not s.endswith("<"):
        return True
    if s in ("FADE IN:", "FADE OUT.", "FADE TO BLACK.", "CUT TO BLACK.") or _CN_TRANSITION.match(s):
        return True
    return s.endswith("TO:") and s.isupper()


def cue_name(text: str, known: dict[str, str]) -> str | None:
    """The speaker named by a character-cue line, or None. `known` maps casefolded names to names."""
    s = text.strip()
    forced = s.startswith("@")
    if s.startswith(("!", "~", ">", "#", "=")) or transition(s) or heading(s):
        return None
    s = s.lstrip("@").rstrip("^").rstrip()
    for _ in range(3):
        s = _EXTENSION.sub("", s)
    if not s:
        return None
    if forced or s.casefold() in known:
        return known.get(s.casefold(), s)
    if any(c.isupper() for c in s) and not any(c.islower() for c in s):
        return s
    return s if is_cjk_name(s) else None


def check_not_dialogue(block: list[Numbered], i: int) -> None:
    """Refuse a paragraph shaped like dialogue whose first line is not a character cue."""
    if i + 1 >= len(block):
        return
    first, second = (split_notes(raw)[0] for _, raw in block[i:i + 2])
    if parenthetical(first) is not None and second.strip():
        raise ScreenplayError(block[i][0], "dialogue without a character cue",
                              hint="put the speaker's name on its own line above, after a blank line")
    if parenthetical(second) is not None:
        raise ScreenplayError(block[i][0], f"{first.strip()!r} is followed by a parenthetical but is not a "
                              "character cue", hint=CUE_HINT)


def unforce(text: str) -> str:
    """Action text without Fountain's forcing marks: `!action`, `~lyric`, centered `> text <`."""
    if centered(text):
        return text.strip()[1:-1].strip()
    return text[1:] if text[:1] in ("!", "~") else text


def spoken(text: str) -> str:
    """A dialogue line as spoken: a sung `~lyric` loses its marker, emphasis is dropped."""
    s = text.strip()
    return clean_inline(s[1:] if s.startswith("~") else s)


def paren_emotion(paren: str | None) -> str | None:
    if paren and len(paren) <= 12 and not any(c.isspace() for c in paren) and paren.lower() not in NOT_EMOTIONS:
        return paren
    return None


# ---------------------------------------------------------------- shot notes, tags, characters

def shot_spec(value: str, line: int) -> tuple[str, str, float | None, list[str], str]:
    """(framing, camera, duration, tags, notes) of `[[shot: close, push-in, 3s #tag | free note]]`."""
    value, _, notes = value.partition("|")
    framing = camera = ""
    duration: float | None = None
    tags: list[str] = []
    for token in re.split(r"[\s,，、]+", value.strip()):
        low = token.lower()
        if not token:
            continue
        if token.startswith("#") and len(token) > 1:
            tags.append(low[1:])
        elif low in FRAMINGS or token in FRAMING_ALIASES:
            framing = _once(framing, FRAMING_ALIASES.get(token, low), "framing", line)
        elif low in CAMERA_MOVES or token in CAMERA_ALIASES:
            camera = _once(camera, CAMERA_ALIASES.get(token, low), "camera move", line)
        elif m := _DURATION.match(low):
            duration = _duration(float(m.group(1)), duration, line)
        else:
            raise ScreenplayError(line, f"unknown shot setting {token!r}", hint=(
                f"framing is one of {', '.join(FRAMINGS)}; camera is one of {', '.join(CAMERA_MOVES)}; "
                "duration like 3s"))
    return framing or "medium", camera or "hold", duration, tags, notes.strip()


def _once(current: str, new: str, what: str, line: int) -> str:
    if current:
        raise ScreenplayError(line, f"shot note gives two {what}s: {current!r} and {new!r}", hint="keep one")
    return new


def _duration(seconds: float, current: float | None, line: int) -> float:
    if current is not None:
        raise ScreenplayError(line, "shot note gives two durations", hint="keep one")
    if not 0 < seconds <= 60:
        raise ScreenplayError(line, f"shot duration {seconds:g}s is out of range", hint="use 0.1s to 60s")
    return seconds


def tag_list(value: str) -> list[str]:
    return [t.lstrip("#").lower() for t in re.split(r"[\s,，、]+", value) if t.lstrip("#")]


def character_spec(spec: str, line: int) -> Character:
    """`林晓 | en=Lin Xiao | voice=f | voice.espeak=cmn+f3 | age=23 | desc=intern` → Character."""
    name, *fields = [f.strip() for f in spec.split("|")]
    if not name or "=" in name:
        raise ScreenplayError(line, f"character entry {spec.strip()!r} has no name",
                              hint="write it as 'NAME | en=Name in English | voice=f'")
    names: dict[str, str] = {}
    voice: dict[str, str] = {}
    desc = ""
    for field in filter(None, fields):
        key, eq, value = (x.strip() for x in field.partition("="))
        if not eq or not value:
            raise ScreenplayError(line, f"character field {field!r} is not key=value", hint="e.g. en=Lin Xiao")
        if key in ("voice", "gender"):
            if value.lower() not in ("f", "m", "female", "male", "女", "男"):
                raise ScreenplayError(line, f"{key}={value!r} is not f or m",
                                      hint="use voice=f|m, and voice.<backend>=<voice id> for a backend voice")
            voice["gender"] = "f" if value.lower() in ("f", "female", "女") else "m"
        elif key.startswith("voice.") and len(key) > 6:
            voice[key[6:]] = value
        elif key == "age":
            voice["age"] = value
        elif key in ("desc", "description"):
            desc = value
        elif is_language(key):
            names[key] = value
        else:
            raise ScreenplayError(line, f"unknown character field {key!r}", hint=(
                "use a language code (en=...), voice=f|m, voice.<backend>=..., age=..., desc=..."))
    return Character(name=name, names=names, voice=voice, description=desc)


def title_page(lines: list[Numbered]) -> tuple[dict[str, tuple[int, list[Numbered]]], int]:
    """Title-page entries (lower-case key → (key line, value lines)) and the index where the body starts."""
    i = 0
    while i < len(lines) and not lines[i][1].strip():
        i += 1
    if i == len(lines) or heading(lines[i][1]) or transition(lines[i][1]) or not _TITLE_KEY.match(lines[i][1]):
        return {}, 0  # `FADE IN:` looks like a key but opens the body
    entries: dict[str, tuple[int, list[Numbered]]] = {}
    values: list[Numbered] = []
    while i < len(lines) and lines[i][1].strip() and not heading(lines[i][1]):
        no, text = lines[i]
        if m := _TITLE_KEY.match(text):
            values, text = [], m.group(2)
            entries[" ".join(m.group(1).lower().split())] = (no, values)
        if text.strip():
            values.append((no, text.strip()))
        i += 1
    return entries, i
