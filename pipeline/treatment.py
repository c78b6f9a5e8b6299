"""Treatments: a logline and a beat sheet as a Fountain outline, what an LLM screenwriter expands."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline import fountain as fo
from pipeline.fountain import ScreenplayError

MAX_BEATS = 60


@dataclass(frozen=True)
class Treatment:
    """A logline and a beat sheet, written as a Fountain outline: a title page (Title, Logline, Language,
    Characters…) and one synopsis line (`= …`) per beat — what Fountain apps show in their outline view."""

    title: str
    logline: str
    beats: tuple[str, ...]
    language: str | None
    title_page: str  # the title page as written, handed to the screenwriter (cast, voices)


def parse_treatment(text: str, *, source: str = "<treatment>") -> Treatment:
    """Title page keys, then beats: `= …` synopsis lines (else each non-blank body paragraph is a beat)."""
    lines = text.splitlines()
    page, i, key = {}, 0, None
    while i < len(lines) and lines[i].strip():
        raw = lines[i]
        if raw[:1] in " \t" and key:
            page[key] = (page[key] + "\n" + raw.strip()).strip()
        elif ":" in raw:
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            page[key] = value.strip()
        else:
            break
        i += 1
    body = lines[i:]
    beats = [ln.strip()[1:].strip() for ln in body if ln.strip().startswith("=") and ln.strip()[1:].strip()]
    if not beats:  # a plain beat sheet: one paragraph a beat (sections `#` and notes skipped)
        para: list[str] = []
        for ln in [*body, ""]:
            if ln.strip() and not ln.strip().startswith(("#", "[[")):
                para.append(ln.strip())
            elif para:
                beats.append(" ".join(para))
                para = []
    logline = page.get("logline") or page.get("synopsis") or ""
    if not logline and not beats:
        raise ScreenplayError(1, "a treatment needs a logline or beats", source,
                              hint="write a title page with 'Logline: …' and one '= beat' line per beat")
    if len(beats) > MAX_BEATS:
        raise ScreenplayError(0, f"{len(beats)} beats; an episode takes at most {MAX_BEATS}", source,
                              hint="split the treatment into episodes")
    language = page.get("language") or None
    if language is not None and not fo.is_language(language):
        raise ScreenplayError(1, f"Language: {language!r} is not a language code", source, hint="e.g. zh or en")
    head = "\n".join(lines[:i])
    return Treatment(title=page.get("title", ""), logline=logline, beats=tuple(beats), language=language,
                     title_page=head)


def load_treatment(path: str | Path, *, max_bytes: int = 64 * 1024) -> Treatment:
    source = str(path)
    try:
        if Path(path).stat().st_size > max_bytes:
            raise ScreenplayError(0, f"treatment is larger than the {max_bytes:,}-byte limit", source,
                                  hint="a logline and a beat sheet fit in a few KB")
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as err:
        raise ScreenplayError(0, f"cannot read treatment: {err.strerror or err}", source,
                              hint="check the job's screenplay: path") from None
    except UnicodeDecodeError:
        raise ScreenplayError(0, "not UTF-8 text", source, hint="save the treatment as UTF-8") from None
    return parse_treatment(text, source=source)
