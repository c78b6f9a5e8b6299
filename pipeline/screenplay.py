"""Screenplay parsing: Fountain with light note extensions (docs/screenplay.md) into a typed Script."""
from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import fountain as fo, safe_io
from pipeline import writing_systems as ws
from pipeline.fountain import Numbered, ScreenplayError
from pipeline.script import Character, Line, Scene, Script, Shot

__all__ = ["MAX_BYTES", "MAX_CHARACTERS", "MAX_LINES", "MAX_SHOTS", "ScreenplayError", "Treatment", "load", "load_treatment",
           "parse", "parse_treatment"]

MAX_BYTES = 1 << 20  # 1 MiB: a feature film is ~250 KB of Fountain, a micro-drama episode ~5 KB
MAX_SHOTS = 2000
MAX_CHARACTERS = 200
MAX_LINES = 10_000  # lines of dialogue
OPENING = "OPENING"  # the location of what comes before the first scene heading
_HEADING_HINT = "start the scene with a heading such as 'INT. OFFICE - NIGHT' or '内景. 办公室 - 夜'"


@dataclass
class _LineDraft:
    speaker: str
    cue_line: int
    source_line: int = 0
    parts: list[str] = field(default_factory=list)
    parenthetical: str | None = None
    emotion: str | None = None
    translations: dict[str, str] = field(default_factory=dict)
    translated_at: dict[str, tuple[int, int]] = field(default_factory=dict)  # lang -> (note line, #parts)


@dataclass
class _ShotDraft:
    index: int
    source_line: int
    noted: bool = False  # opened by a [[shot: ...]] note
    framing: str = "medium"
    camera: str = "hold"
    duration: float | None = None
    notes: str = ""
    tags: list[str] = field(default_factory=list)
    action: list[str] = field(default_factory=list)
    lines: list[_LineDraft] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.action or self.lines or self.duration)


@dataclass
class _SceneDraft:
    number: int
    heading: str
    location: str
    time_of_day: str
    interior: bool
    tags: list[str]
    source_line: int
    shots: list[_ShotDraft] = field(default_factory=list)


def _add_unique(target: list[str], items: list[str]) -> None:
    target.extend(t for t in dict.fromkeys(items) if t not in target)


class _Parser:
    """One pass over numbered lines building drafts; `build()` validates across the file into a Script."""

    def __init__(self, max_shots: int, opening: bool = True):
        self.max_shots, self.opening = max_shots, opening
        self.scenes: list[_SceneDraft] = []
        self.declared: dict[str, Character] = {}
        self.known: dict[str, str] = {}  # casefolded name (any language) -> character name
        self.cues: list[tuple[str, int]] = []
        self.title = ""
        self.language: tuple[str, int] | None = None
        self.languages: tuple[list[str], int] | None = None
        self.last: _LineDraft | None = None  # the line a later translation/emotion note attaches to
        self.shot_count = 0
        self.line_count = 0

    # ------------------------------------------------------------ title page and blocks

    def feed(self, lines: Iterator[Numbered]) -> None:
        head = _head(lines)
        entries, start = fo.title_page(head)
        for key, (no, values) in entries.items():
            self._title_entry(key, no, values)
        for block in _blocks(itertools.chain(head[start:], lines)):
            self._block(block)
        self._close_scene()

    def _title_entry(self, key: str, no: int, values: list[Numbered]) -> None:
        text = " ".join(v for _, v in values)
        if key == "title":
            self.title = fo.join_text([fo.clean_inline(v) for _, v in values])
        elif key == "language":
            if not fo.is_language(text):
                raise ScreenplayError(no, f"Language: {text!r} is not a language code", hint="e.g. Language: zh")
            self.language = (text, no)
        elif key == "languages":
            codes = fo.tag_list(text)
            bad = [c for c in codes if not fo.is_language(c)]
            if bad or not codes or len(set(codes)) < len(codes):
                raise ScreenplayError(no, f"Languages: {text!r} is not a list of distinct language codes",
                                      hint="e.g. Languages: zh, en")
            self.languages = (codes, no)
        elif key == "characters":
            for line_no, spec in values:
                self._declare(fo.character_spec(spec, line_no), line_no)

    def _block(self, block: list[Numbered]) -> None:
        i, after_break = 0, True
        while i < len(block):
            no, raw = block[i]
            text, notes = fo.split_notes(raw)
            if not text.strip():
                for body in notes:
                    self._note(body, no)
                i, after_break = i + 1, True
            elif after_break and fo.section_or_synopsis(text):  # `= synopsis` right under a heading
                i += 1
            elif h := fo.heading(text):
                self._heading(no, fo.heading_label(text), h, notes)
                i, after_break = i + 1, True
            elif after_break and fo.transition(text):
                for body in notes:
                    self._note(body, no)
                i += 1
            elif after_break and _has_text_after(block, i) and (name := fo.cue_name(text, self.known)):
                i = self._dialogue(block, i, name)
            else:
                i, after_break = self._action(block, i, after_break), False

    # ------------------------------------------------------------ elements

    def _heading(self, no: int, label: str, h: tuple[str, bool], notes: Iterable[str]) -> None:
        self._close_scene()
        rest, interior = h
        location, time_of_day, tags = fo.heading_parts(rest)
        location = location or label  # `INT.` alone, `.` forced: the heading is all there is
        self.scenes.append(_SceneDraft(len(self.scenes) + 1, label, location, time_of_day, interior,
                                       list(dict.fromkeys(tags)), no))
        self.last = None
        for body in notes:
            self._note(body, no)

    def _dialogue(self, block: list[Numbered], i: int, name: str) -> int:
        cue_no = block[i][0]
        self.cues.append((name, cue_no))
        shot, self.last = self._shot(cue_no), None
        draft = _LineDraft(name, cue_no)
        for no, raw in block[i + 1:]:
            text, notes = fo.split_notes(raw)
            paren = fo.parenthetical(text)
            if paren is not None and draft.parts:
                self._finish(shot, draft)
                draft = _LineDraft(name, no, parenthetical=paren)
            elif paren is not None:
                draft.parenthetical = paren if draft.parenthetical is None else f"{draft.parenthetical}, {paren}"
            elif text.strip():  # a line of two spaces keeps the speech going
                draft.parts.append(fo.spoken(text))
                draft.source_line = draft.source_line or no
            for body in notes:
                self._note(body, no, draft=draft)
        if draft.parts:
            self._finish(shot, draft)
        elif draft.parenthetical:  # a parenthetical with no line after it is a stage direction
            shot.action.append(f"{name} ({draft.parenthetical})")
        return len(block)

    def _finish(self, shot: _ShotDraft, draft: _LineDraft) -> None:
        self.line_count += 1
        if self.line_count > MAX_LINES:
            raise ScreenplayError(draft.source_line, f"more than {MAX_LINES} lines of dialogue",
                                  hint="split the screenplay into one file per episode")
        shot.lines.append(draft)
        self.last = draft

    def _action(self, block: list[Numbered], i: int, after_break: bool) -> int:
        start, self.last = i, None
        if after_break:
            fo.check_not_dialogue(block, i)
        shot, parts = self._shot(block[i][0]), []
        while i < len(block):
            no, raw = block[i]
            text, notes = fo.split_notes(raw)
            if i > start and (not text.strip() and notes or fo.heading(text)):
                break
            parts.append(fo.clean_inline(fo.unforce(text.strip())))
            for body in notes:
                self._note(body, no, inline=True)
            i += 1
        shot.action.append(fo.join_text(parts))
        return i

    # ------------------------------------------------------------ notes

    def note_languages(self) -> frozenset[str]:
        """Codes a `[[xx: …]]` note surely translates into: the title page's Language: and Languages:."""
        return frozenset(([self.language[0]] if self.language else []) + (self.languages[0] if self.languages else []))

    def _note(self, body: str, no: int, draft: _LineDraft | None = None, inline: bool = False) -> None:
        kind, key, value = fo.note_kind(body, self.note_languages())
        if kind == "lang":
            self._translation(key, fo.clean_inline(value), no, draft)
        elif kind == "emotion":
            self._emotion(value, no, draft)
        elif kind == "shot" and (draft is not None or inline):
            raise ScreenplayError(no, "a shot note must stand on its own line",
                                  hint="move [[shot: ...]] to a line of its own before the shot's action")
        elif kind == "shot":
            self._shot_note(value, no)
        elif kind == "tags":
            self._tags(value, no)
        elif kind == "char":
            self._declare(fo.character_spec(value, no), no)

    def _translation(self, lang: str, text: str, no: int, draft: _LineDraft | None) -> None:
        target = draft if draft is not None and draft.parts else self.last
        if target is None:
            raise ScreenplayError(no, f"translation note [[{lang}: ...]] has no dialogue before it",
                                  hint="put it on the line right after the dialogue it translates")
        if not text:
            raise ScreenplayError(no, f"translation note [[{lang}: ...]] is empty", hint="write the translation")
        if lang in target.translated_at and target.translated_at[lang][1] == len(target.parts):
            raise ScreenplayError(no, f"second {lang!r} translation for the same line",
                                  hint="keep one translation per language per line")
        target.translations[lang] = fo.join_text([target.translations.get(lang, ""), text])
        target.translated_at[lang] = (no, len(target.parts))

    def _emotion(self, value: str, no: int, draft: _LineDraft | None) -> None:
        target = draft if draft is not None else self.last
        if target is None:
            raise ScreenplayError(no, "emotion note has no dialogue", hint="put it right after the line it colours")
        if not value:
            raise ScreenplayError(no, "emotion note is empty", hint="e.g. [[emotion: angry]]")
        if target.emotion is not None:
            raise ScreenplayError(no, "second emotion note for the same line", hint="keep one")
        target.emotion = value

    def _shot_note(self, value: str, no: int) -> None:
        scene = self._scene(no, "shot note")
        framing, camera, duration, tags, notes = fo.shot_spec(value, no)
        self._check_last_shot(scene)
        shot = self._new_shot(scene, no, noted=True)
        shot.framing, shot.camera, shot.duration, shot.notes = framing, camera, duration, notes
        _add_unique(shot.tags, tags)
        self.last = None

    def _tags(self, value: str, no: int) -> None:
        scene = self._scene(no, "tags note")
        tags = fo.tag_list(value)
        if not tags:
            raise ScreenplayError(no, "tags note is empty", hint="e.g. [[tags: datong, office]]")
        noted = scene.shots and scene.shots[-1].noted
        _add_unique(scene.shots[-1].tags if noted else scene.tags, tags)

    def _declare(self, char: Character, no: int) -> None:
        if char.name in self.declared:
            raise ScreenplayError(no, f"character {char.name!r} is declared twice", hint="keep one entry")
        if len(self.declared) >= MAX_CHARACTERS:
            raise ScreenplayError(no, f"more than {MAX_CHARACTERS} characters", hint="split the screenplay")
        for alias in (*char.names.values(), char.name):
            other = self.known.get(alias.casefold(), char.name)
            if other != char.name:
                raise ScreenplayError(no, f"{char.name!r} and {other!r} share the name {alias!r}",
                                      hint="give each character names of its own")
            self.known[alias.casefold()] = char.name
        self.declared[char.name] = char

    # ------------------------------------------------------------ scenes and shots

    def _scene(self, no: int, what: str) -> _SceneDraft:
        """The current scene; before the first heading, an opening scene (a cold open, an epigraph, the
        action after FADE IN:) titled after the screenplay."""
        if not self.scenes and not self.opening:
            raise ScreenplayError(no, f"{what} before the first scene heading", hint=_HEADING_HINT)
        if not self.scenes:
            self.scenes.append(_SceneDraft(1, "", self.title or OPENING, "", False, [], no))
        return self.scenes[-1]

    def _shot(self, no: int) -> _ShotDraft:
        scene = self._scene(no, "action or dialogue")
        return scene.shots[-1] if scene.shots else self._new_shot(scene, no, noted=False)

    def _new_shot(self, scene: _SceneDraft, no: int, noted: bool) -> _ShotDraft:
        self.shot_count += 1
        if self.shot_count > self.max_shots:
            raise ScreenplayError(no, f"more than {self.max_shots} shots",
                                  hint="split the screenplay into one file per episode")
        scene.shots.append(_ShotDraft(len(scene.shots) + 1, no, noted=noted))
        return scene.shots[-1]

    def _check_last_shot(self, scene: _SceneDraft) -> None:
        if scene.shots and scene.shots[-1].empty():
            shot = scene.shots[-1]
            raise ScreenplayError(shot.source_line, f"shot s{scene.number:02d}-sh{shot.index:02d} is empty",
                                  hint="give it action, dialogue or a duration (e.g. [[shot: wide, 2s]])")

    def _close_scene(self) -> None:
        if not self.scenes:
            return
        scene = self.scenes[-1]
        if not scene.shots:  # a heading with nothing under it: an establishing shot of the place
            self._new_shot(scene, scene.source_line, noted=False)
            scene.shots[-1].framing = "wide"
            scene.shots[-1].action.append(scene.heading or scene.location)
        self._check_last_shot(scene)

    # ------------------------------------------------------------ build

    def build(self, language: str | None) -> Script:
        if not self.scenes:
            raise ScreenplayError(0, "no scene headings found, and no action or dialogue", hint=_HEADING_HINT)
        drafts = [d for s in self.scenes for sh in s.shots for d in sh.lines]
        lang = self._primary_language(language, drafts)
        self._check_translations(lang, drafts)
        chars = self._characters(lang)
        matchers = [(name, _mention_test(char)) for name, char in chars.items()]
        scenes = tuple(_scene_model(s, lang, self._resolve, matchers) for s in self.scenes)
        return Script(title=self.title, language=lang, characters=chars, scenes=scenes)

    def _resolve(self, name: str) -> str:
        return self.known.get(name.casefold(), name)

    def _primary_language(self, requested: str | None, drafts: list[_LineDraft]) -> str:
        declared, no = self.language or (None, 0)
        codes, codes_no = self.languages or ([], 0)
        if declared and codes and declared not in codes:
            raise ScreenplayError(codes_no, f"Languages: {', '.join(codes)} lacks Language: {declared}",
                                  hint="list the dialogue language in Languages:")
        primary = declared or (codes[0] if codes else None)
        if primary and requested and primary != requested:
            raise ScreenplayError(no or codes_no, f"the screenplay is written in {primary!r} but {requested!r} "
                                  "was asked for", hint="make Language: agree with the job's first language")
        if requested and not fo.is_language(requested):
            raise ScreenplayError(0, f"language {requested!r} is not a language code", hint="e.g. zh or en")
        if primary:
            return primary
        counts = ws.letter_counts(p for d in drafts for p in d.parts)
        script = ws.main_script(counts)
        if requested and script and not ws.written_in(requested, script):
            first = next((d.source_line for d in drafts if d.parts), 0)
            raise ScreenplayError(first, f"the dialogue is in {script} script ({ws.language_of(counts)}?) but "
                                  f"{requested!r} was asked for", hint=(
                                      "write Language: on the title page and make the job's first language agree"))
        return requested or ws.language_of(counts)

    def _check_translations(self, lang: str, drafts: list[_LineDraft]) -> None:
        required = self.languages[0] if self.languages else []
        for d in drafts:
            for code, (no, _) in d.translated_at.items():
                if code == lang:
                    raise ScreenplayError(no, f"translation note in the screenplay's own language {lang!r}",
                                          hint="translations are for other languages; edit the line itself")
                if required and code not in required:
                    raise ScreenplayError(no, f"translation into {code!r}, which Languages: does not list",
                                          hint=f"add {code} to Languages: or drop the note")
            for code in required:
                if code != lang and code not in d.translations:
                    raise ScreenplayError(d.source_line, f"line has no {code!r} translation",
                                          hint=f"add [[{code}: ...]] after it, or drop {code} from Languages:")

    def _characters(self, lang: str) -> dict[str, Character]:
        if self.declared:
            for name, no in self.cues:
                if name.casefold() not in self.known:
                    known = ", ".join(list(self.declared)[:10])
                    raise ScreenplayError(no, f"unknown character {name!r}", hint=(
                        f"declare it under Characters: (known: {known}), or start the line with '!' if it is action"))
            chars = self.declared
        else:
            chars = {}
            for name, no in self.cues:
                if name not in chars and len(chars) >= MAX_CHARACTERS:
                    raise ScreenplayError(no, f"more than {MAX_CHARACTERS} characters", hint="split the screenplay")
                chars.setdefault(name, Character(name=name))
        return {n: c.model_copy(update={"names": {lang: n, **c.names}}) for n, c in chars.items()}


# ---------------------------------------------------------------- module helpers

def _head(lines: Iterator[Numbered]) -> list[Numbered]:
    """The lines up to the first blank line after some text: where a title page can be."""
    head: list[Numbered] = []
    seen_text = False
    for no, raw in lines:
        head.append((no, raw))
        if seen_text and not raw.strip():
            break
        seen_text = seen_text or bool(raw.strip())
    return head


def _blocks(lines: Iterable[Numbered]) -> Iterator[list[Numbered]]:
    """Paragraphs of consecutive non-blank lines. A line of two spaces stays inside its paragraph (Fountain's
    blank line within dialogue); page breaks end one; a section `#` or synopsis `=` line is skipped where it
    opens a paragraph or follows a heading, and is text inside dialogue or action; a line holding only a
    shot note is a paragraph of its own."""
    block: list[Numbered] = []
    for no, raw in lines:
        s = raw.strip()
        if not s and not (block and fo.is_kept_blank(raw)) or fo.page_break(s):
            text, notes = "", ()
        elif fo.section_or_synopsis(s) and (not block or fo.heading(fo.split_notes(block[-1][1])[0])):
            if block:
                yield block
                block = []
            continue
        elif not s:
            block.append((no, raw))
            continue
        else:
            text, notes = fo.split_notes(raw)
        shot_only = not text.strip() and any(fo.note_kind(n)[0] == "shot" for n in notes)
        if block and (not text.strip() and not notes or shot_only):
            yield block
            block = []
        if shot_only:
            yield [(no, raw)]
        elif text.strip() or notes:
            block.append((no, raw))
    if block:
        yield block


def _has_text_after(block: list[Numbered], i: int) -> bool:
    """Whether a line with text (not only notes) follows line i in its paragraph."""
    return any(fo.split_notes(block[j][1])[0].strip() for j in range(i + 1, len(block)))


_Mention = list[tuple[str, re.Pattern[str] | None]]


def _mention_test(char: Character) -> _Mention:
    """Casefolded names with a whole-word pattern for Latin names; CJK names match as substrings."""
    names = [n.casefold() for n in dict.fromkeys((char.name, *char.names.values())) if n]
    return [(n, None if any(fo.is_cjk_name(c) for c in n) else re.compile(rf"(?<!\w){re.escape(n)}(?!\w)"))
            for n in names]


def _mentioned(action_cf: str, tests: _Mention) -> bool:
    return any(n in action_cf and (p is None or p.search(action_cf)) for n, p in tests)


def _line_model(d: _LineDraft, lang: str, resolve: Callable[[str], str]) -> Line:
    return Line(speaker=resolve(d.speaker), text={lang: fo.join_text(d.parts), **d.translations},
                emotion=d.emotion or fo.paren_emotion(d.parenthetical), parenthetical=d.parenthetical,
                source_line=d.source_line)


def _scene_model(s: _SceneDraft, lang: str, resolve: Callable[[str], str],
                 matchers: list[tuple[str, _Mention]]) -> Scene:
    shots = []
    for sh in s.shots:
        lines = tuple(_line_model(d, lang, resolve) for d in sh.lines)
        action = "\n".join(sh.action)
        speakers = list(dict.fromkeys(line.speaker for line in lines))
        action_cf = action.casefold()
        _add_unique(speakers, [name for name, tests in matchers if _mentioned(action_cf, tests)])
        shots.append(Shot(
            id=f"s{s.number:02d}-sh{sh.index:02d}", scene=s.number, index=sh.index, location=s.location,
            time_of_day=s.time_of_day, interior=s.interior, location_tags=tuple(dict.fromkeys(s.tags + sh.tags)),
            framing=sh.framing, camera=sh.camera, action=action, characters=tuple(speakers), lines=lines,
            duration_s=sh.duration, notes=sh.notes, source_line=sh.source_line))
    return Scene(number=s.number, heading=s.heading, location=s.location, time_of_day=s.time_of_day,
                 interior=s.interior, location_tags=tuple(s.tags), shots=tuple(shots))


# ---------------------------------------------------------------- public API

def parse(text: str, *, source: str = "<screenplay>", language: str | None = None,
          opening: bool = True, max_bytes: int = MAX_BYTES, max_shots: int = MAX_SHOTS) -> Script:
    """Parse screenplay text into a Script; raise ScreenplayError (with source and line) when it does not parse.

    `language` is the dialogue language the job expects (used when the title page has no Language:, and
    checked against it and against the script the dialogue is written in). `opening=False` refuses text
    before the first scene heading instead of making it an opening shot (for a model's screenplay, which must
    have scenes).
    """
    try:
        if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
            raise ScreenplayError(0, f"screenplay is larger than the {max_bytes:,}-byte limit "
                                  f"({len(text):,} characters)", hint="one screenplay per episode")
        parser = _Parser(max_shots, opening)
        parser.feed(fo.numbered_lines(text))
        return parser.build(language)
    except ScreenplayError as err:
        raise err.with_source(source) from None


def load(path: str | Path, *, language: str | None = None, max_bytes: int = MAX_BYTES,
         max_shots: int = MAX_SHOTS) -> Script:
    """Read a UTF-8 screenplay file (size checked before reading) and parse it."""
    source = str(path)
    try:
        data = safe_io.read_bytes(path, "screenplay", max_bytes=max_bytes)
    except safe_io.InputError as err:
        if err.kind == "size":
            raise ScreenplayError(0, f"screenplay is larger than the {max_bytes:,}-byte limit", source,
                                  hint="one screenplay per episode") from None
        raise ScreenplayError(0, f"cannot read screenplay: {err.detail}", source,
                              hint="check the job's screenplay: path") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ScreenplayError(data[:err.start].count(b"\n") + 1, "not UTF-8 text", source,
                              hint="save the screenplay as UTF-8") from None
    return parse(text, source=source, language=language, max_bytes=max_bytes, max_shots=max_shots)


# ---------------------------------------------------------------- treatments (what an LLM screenwriter expands)

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
        text = safe_io.read_text(path, "treatment", max_bytes=max_bytes)
    except safe_io.InputError as err:
        raise ScreenplayError(0, f"cannot read treatment: {err.detail}", source,
                              hint="check the job's screenplay: path (a UTF-8 text file)") from None
    return parse_treatment(text, source=source)
