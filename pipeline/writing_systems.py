"""Writing systems (Unicode scripts) of dialogue text: which script a text is in, which language that
suggests, and whether a language is written in it."""
from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable

# (first code point, last code point, script), sorted; letters outside every range are not counted
_RANGES = sorted([
    (0x0041, 0x005A, "Latin"), (0x0061, 0x007A, "Latin"), (0x00C0, 0x024F, "Latin"), (0x1E00, 0x1EFF, "Latin"),
    (0x0370, 0x03FF, "Greek"), (0x1F00, 0x1FFF, "Greek"), (0x0400, 0x052F, "Cyrillic"),
    (0x0530, 0x058F, "Armenian"), (0x0590, 0x05FF, "Hebrew"), (0x0600, 0x06FF, "Arabic"),
    (0x0750, 0x077F, "Arabic"), (0x0900, 0x097F, "Devanagari"), (0x0980, 0x09FF, "Bengali"),
    (0x0A00, 0x0A7F, "Gurmukhi"), (0x0A80, 0x0AFF, "Gujarati"), (0x0B00, 0x0B7F, "Oriya"),
    (0x0B80, 0x0BFF, "Tamil"), (0x0C00, 0x0C7F, "Telugu"), (0x0C80, 0x0CFF, "Kannada"),
    (0x0D00, 0x0D7F, "Malayalam"), (0x0D80, 0x0DFF, "Sinhala"), (0x0E00, 0x0E7F, "Thai"),
    (0x0E80, 0x0EFF, "Lao"), (0x0F00, 0x0FFF, "Tibetan"), (0x1000, 0x109F, "Myanmar"),
    (0x10A0, 0x10FF, "Georgian"), (0x1100, 0x11FF, "Hangul"), (0x1200, 0x139F, "Ethiopic"),
    (0x1780, 0x17FF, "Khmer"), (0x1800, 0x18AF, "Mongolian"), (0x2E80, 0x2FDF, "Han"),
    (0x3040, 0x30FF, "Kana"), (0x3130, 0x318F, "Hangul"), (0x31F0, 0x31FF, "Kana"), (0x3400, 0x4DBF, "Han"),
    (0x4E00, 0x9FFF, "Han"), (0xAC00, 0xD7AF, "Hangul"), (0xF900, 0xFAFF, "Han"), (0xFB1D, 0xFB4F, "Hebrew"),
    (0xFB50, 0xFDFF, "Arabic"), (0xFE70, 0xFEFF, "Arabic"), (0xFF21, 0xFF5A, "Latin"), (0xFF66, 0xFF9F, "Kana"),
    (0xFFA0, 0xFFDC, "Hangul"), (0x20000, 0x3FFFF, "Han"),
])
_STARTS = [r[0] for r in _RANGES]

# the language a script suggests when nothing else says (a script shared by many languages: the most used)
SCRIPT_LANGUAGE = {
    "Latin": "en", "Greek": "el", "Cyrillic": "ru", "Armenian": "hy", "Hebrew": "he", "Arabic": "ar",
    "Devanagari": "hi", "Bengali": "bn", "Gurmukhi": "pa", "Gujarati": "gu", "Oriya": "or", "Tamil": "ta",
    "Telugu": "te", "Kannada": "kn", "Malayalam": "ml", "Sinhala": "si", "Thai": "th", "Lao": "lo",
    "Tibetan": "bo", "Myanmar": "my", "Georgian": "ka", "Hangul": "ko", "Ethiopic": "am", "Khmer": "km",
    "Mongolian": "mn", "Kana": "ja", "Han": "zh",
}
# the scripts a language is written in, where it is not (only) Latin
_LANGUAGE_SCRIPTS: dict[str, tuple[str, ...]] = {
    **{code: ("Han",) for code in ("zh", "yue", "cmn", "wuu", "nan", "hak", "lzh")},
    "ja": ("Han", "Kana"), "ko": ("Hangul", "Han"),
    **{code: ("Cyrillic",) for code in ("ru", "uk", "be", "bg", "mk", "kk", "ky", "tg", "tt", "ba", "cv", "ce",
                                        "os", "ab", "av", "kv", "cu")},
    "sr": ("Cyrillic", "Latin"), "mn": ("Cyrillic", "Mongolian"), "el": ("Greek",), "hy": ("Armenian",),
    **{code: ("Arabic",) for code in ("ar", "fa", "ur", "ps", "ug", "sd", "ks")}, "ku": ("Arabic", "Latin"),
    "he": ("Hebrew",), "yi": ("Hebrew",), **{code: ("Devanagari",) for code in ("hi", "mr", "ne", "sa", "bh")},
    "bn": ("Bengali",), "as": ("Bengali",), "pa": ("Gurmukhi", "Arabic"), "gu": ("Gujarati",),
    "or": ("Oriya",), "ta": ("Tamil",), "te": ("Telugu",), "kn": ("Kannada",), "ml": ("Malayalam",),
    "si": ("Sinhala",), "th": ("Thai",), "lo": ("Lao",), "bo": ("Tibetan",), "dz": ("Tibetan",),
    "my": ("Myanmar",), "ka": ("Georgian",), "am": ("Ethiopic",), "ti": ("Ethiopic",), "km": ("Khmer",),
}
LATIN_WEIGHT = 0.25  # a Latin word of ~4 letters weighs about one Chinese character
MAX_SAMPLE = 20_000


def script_of(ch: str) -> str | None:
    o = ord(ch)
    i = bisect.bisect_right(_STARTS, o) - 1
    return _RANGES[i][2] if i >= 0 and o <= _RANGES[i][1] else None


def letter_counts(texts: Iterable[str]) -> Counter[str]:
    """Letters per script over (at most MAX_SAMPLE characters of) the texts."""
    counts: Counter[str] = Counter()
    seen = 0
    for text in texts:
        for ch in text[:MAX_SAMPLE - seen]:
            if ch.isalpha() and (name := script_of(ch)):
                counts[name] += 1
        seen += len(text)
        if seen >= MAX_SAMPLE:
            break
    return counts


def main_script(counts: Counter[str]) -> str | None:
    """The script most of the text is in (Latin letters weighed as a quarter: words against characters);
    Chinese characters with kana are Japanese, with Hangul Korean."""
    if not counts:
        return None
    weighed = {k: v * (LATIN_WEIGHT if k == "Latin" else 1) for k, v in counts.items()}
    top = max(weighed, key=lambda k: (weighed[k], k))
    if top in ("Han", "Kana") and counts["Kana"]:
        return "Kana"
    if top in ("Han", "Hangul") and counts["Hangul"]:
        return "Hangul"
    return top


def language_of(counts: Counter[str]) -> str:
    """The language the script suggests (en for Latin, or when there is no text)."""
    return SCRIPT_LANGUAGE.get(main_script(counts) or "Latin", "en")


def written_in(language: str, script: str) -> bool:
    """Whether `language` (a code such as zh, ja, ru, pt-BR) is written in `script`; Latin text goes with any
    language (names, romanisation, placeholder lines)."""
    base = language.split("-")[0].lower()
    own = _LANGUAGE_SCRIPTS.get(base, ("Latin",))
    return script == "Latin" or script in own or (script == "Kana" and "Kana" in own) or (
        script == "Han" and "Han" in own)
