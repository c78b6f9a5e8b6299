"""Glossary protection for machine translation: names become placeholders before, target names after.

`protect` swaps every glossary source term (longest first; whole words for Latin terms) for a numbered
placeholder; `restore` puts the target terms back and reports placeholders the model lost or repeated.
When that happens the caller falls back to `split`: the text is cut at the terms, the pieces between
are translated on their own and joined with the target terms, so the names are right by construction.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

PLACEHOLDER = "[{i}]"


@dataclass(frozen=True)
class Protected:
    text: str  # the source text with placeholders
    targets: tuple[str, ...]  # target term for placeholder i


def _pattern(glossary: dict[str, str]) -> re.Pattern[str] | None:
    terms = sorted((t for t in glossary if t.strip()), key=len, reverse=True)
    if not terms:
        return None
    # Latin terms match as whole words (a CJK neighbour is a boundary); other scripts match anywhere
    alts = [rf"(?<![A-Za-z0-9]){re.escape(t)}(?![A-Za-z0-9])" if t.isascii() else re.escape(t) for t in terms]
    return re.compile("|".join(alts))


def protect(text: str, glossary: dict[str, str], placeholder: str = PLACEHOLDER) -> Protected:
    """Replace glossary terms by placeholders numbered in order of appearance."""
    pattern = _pattern(glossary)
    if pattern is None:
        return Protected(text, ())
    targets: list[str] = []

    def sub(m: re.Match[str]) -> str:
        targets.append(glossary[m.group(0)])
        return placeholder.format(i=len(targets) - 1)

    return Protected(pattern.sub(sub, text), tuple(targets))


def restore(text: str, targets: tuple[str, ...], placeholder: str = PLACEHOLDER) -> tuple[str, list[int]]:
    """Put target terms back; returns (text, indices of placeholders missing or repeated in `text`)."""
    bad = [i for i in range(len(targets)) if text.count(placeholder.format(i=i)) != 1]
    for i in sorted(range(len(targets)), reverse=True):  # [10] before [1]
        text = text.replace(placeholder.format(i=i), targets[i])
    return text, bad


def clashes(text: str, n: int, placeholder: str = PLACEHOLDER) -> bool:
    """True when the source text already contains something that looks like one of our placeholders."""
    return any(placeholder.format(i=i) in text for i in range(max(n, 1)))


def split(text: str, glossary: dict[str, str]) -> list[tuple[bool, str]]:
    """Cut `text` at glossary terms: [(is_term, piece)], term pieces already in the target language."""
    pattern = _pattern(glossary)
    if pattern is None:
        return [(False, text)]
    out: list[tuple[bool, str]] = []
    pos = 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            out.append((False, text[pos:m.start()]))
        out.append((True, glossary[m.group(0)]))
        pos = m.end()
    if pos < len(text):
        out.append((False, text[pos:]))
    return out


def join(pieces: list[str], tgt: str) -> str:
    """Join translated pieces; spaced for languages written with spaces, tight for zh/ja/ko."""
    sep = "" if tgt.split("-")[0] in ("zh", "ja", "ko", "cmn", "yue", "th") else " "
    text = sep.join(p.strip() for p in pieces if p.strip())
    return re.sub(r"\s+([,.!?;:])", r"\1", text) if sep else text


def misses(sources: list[str], outputs: list[str], glossary: dict[str, str]) -> int:
    """How many glossary terms present in a source line are absent from its translation."""
    count = 0
    for src, out in zip(sources, outputs):
        count += sum(1 for term, target in glossary.items() if term in src and target not in out)
    return count
