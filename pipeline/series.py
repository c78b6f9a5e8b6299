"""Series bible: a drama's characters declared once (names per language, look, reference images, voice clip,
seed) and shared by every episode job of the series, and the series' cast state (the sheets a person approved).

A job names its bible with `series: series.yaml` (beside the job, or one folder up); paths in the bible
resolve against the bible's own folder and must stay inside it. Screenplay cues are matched to the bible by
any of a character's names; a cue the bible lacks is an error naming it and the fix (docs/series.md).
"""
from __future__ import annotations

import functools
import getpass
import hashlib
import json
import os
import re
import tempfile
import unicodedata
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline import safe_io
from pipeline.errors import JobError, UserError
from pipeline.script import Character, Script

MAX_SERIES_BYTES = 256 * 1024
MAX_SERIES_VALUES = 20_000
MAX_CHARACTERS = 200  # as a screenplay's cast (pipeline/screenplay.py)
MAX_REFERENCE_IMAGES = 8
MAX_IMAGE_BYTES = 32 << 20
MAX_AUDIO_BYTES = 64 << 20
SEED_MAX = 2**32 - 1  # numpy/torch/TTS generators all take a 32-bit seed
LANGS = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
DIGEST = re.compile(r"^[0-9a-f]{64}$")
# allowed reference files: suffix -> (what, a test on the first bytes)
IMAGE_TYPES = {".png": lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"),
               ".jpg": lambda b: b.startswith(b"\xff\xd8\xff"), ".jpeg": lambda b: b.startswith(b"\xff\xd8\xff"),
               ".webp": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP"}
AUDIO_TYPES = {".wav": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WAVE", ".flac": lambda b: b.startswith(b"fLaC"),
               ".mp3": lambda b: b.startswith(b"ID3") or (len(b) > 1 and b[0] == 0xFF and b[1] & 0xE0 == 0xE0),
               ".ogg": lambda b: b.startswith(b"OggS"), ".m4a": lambda b: b[4:8] == b"ftyp"}
STATUSES = ("supplied", "approved", "generated")
SHEET_VIEWS = ("portrait", "figure")  # front portrait, full figure: both 9:16


def _plain(v: str, limit: int) -> str:
    """One line of text: no control characters (a newline, tab, NUL), at most `limit` characters."""
    v = v.strip()
    bad = sorted({f"U+{ord(c):04X}" for c in v if unicodedata.category(c) == "Cc"})
    if bad:
        raise ValueError(f"must not contain control characters ({', '.join(bad[:4])}); write it on one line")
    if len(v) > limit:
        raise ValueError(f"at most {limit} characters, got {len(v):,}")
    return v


def _name(v: str) -> str:
    v = _plain(v, 64)
    if not v or any(c in v for c in "|=[]"):
        raise ValueError("a name must be non-empty and free of '|', '=', '[' and ']' (screenplay cue syntax)")
    return v


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class BibleEntry(_Frozen):
    """One character as the series declares it (paths as written, relative to the bible's folder)."""

    names: dict[str, str] = Field(default_factory=dict)  # lang -> the name in that language
    description: str = ""  # how the character looks: every keyframe prompt and the character sheet use it
    voice: dict[str, str] = Field(default_factory=dict)  # hints: gender f|m, age, <backend>: voice id
    reference_images: list[str] = Field(default_factory=list, max_length=MAX_REFERENCE_IMAGES)
    voice_reference: str | None = None
    voice_transcript: str | None = None
    seed: int | None = Field(None, ge=0, le=SEED_MAX, strict=True)

    @field_validator("names")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not LANGS.fullmatch(str(k))]
        if bad:
            raise ValueError(f"keys must be language codes (e.g. en: Lin Xiao), got {bad[:3]}")
        return {k: _name(n) for k, n in v.items()}

    @field_validator("description")
    @classmethod
    def _description(cls, v: str) -> str:
        return _plain(v, 2000)

    @field_validator("voice_transcript")
    @classmethod
    def _transcript(cls, v: str | None) -> str | None:
        return None if v is None else _plain(v, 2000)

    @field_validator("voice", mode="before")
    @classmethod
    def _voice(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out = {}
        for key, value in v.items():
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise ValueError(f"{key}: a voice hint is text or a whole number, got {value!r}")
            out[str(key)] = _plain(str(value), 100)
        gender = out.get("gender")
        if gender is not None:
            if gender.lower() not in ("f", "m", "female", "male", "女", "男"):
                raise ValueError(f"gender: {gender!r} is not f or m")
            out["gender"] = "f" if gender.lower() in ("f", "female", "女") else "m"
        return out

    @field_validator("reference_images")
    @classmethod
    def _refs(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("lists an image twice; list each once")
        return v


class Series(_Frozen):
    """A loaded bible: characters with absolute, checked paths, in the order the bible lists them."""

    series: str
    title: str = ""
    characters: dict[str, Character] = Field(default_factory=dict)
    path: Path  # the bible file

    @property
    def state_path(self) -> Path:
        return state_path(self.path)

    def find(self, name: str) -> str | None:
        """The bible's name for a cue (any of a character's names, case-insensitive), or None."""
        return _aliases(self).get(name.casefold())


class _SeriesFile(_Frozen):
    series: str
    title: str = ""
    characters: dict[str, BibleEntry] = Field(min_length=1, max_length=MAX_CHARACTERS)

    @field_validator("series")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not SLUG.fullmatch(v):
            raise ValueError(f"{v!r} must be a slug: lowercase letters, digits, '-', '_' or '.'")
        return v

    @field_validator("title")
    @classmethod
    def _title(cls, v: str) -> str:
        return _plain(v, 200)


def state_path(series_path: Path) -> Path:
    """The series' cast state (approvals) beside the bible: series.yaml → series.approved.json."""
    return series_path.with_name(f"{series_path.stem}.approved.json")


def locate(job: Any) -> tuple[Path | None, str | None]:
    """The job's bible file: `series:` resolved against the job's folder, or its parent folder (episode
    folders beside the bible); never further out."""
    from pipeline.job import resolve_in

    rel = Path(job.series)
    full, err = resolve_in(job.job_dir.parent, Path(job.job_dir.name) / rel, "series")
    if err is None:
        return full, None
    return None, (f"series: {rel} is outside the job's folder {job.job_dir} and its parent; keep the series "
                  "file beside the job or one folder up")


def for_job(job: Any) -> Series | None:
    """The job's series bible, loaded and checked (None for a single-episode job without `series:`)."""
    if getattr(job, "series", None) is None:
        return None
    path, err = locate(job)
    if err:
        raise JobError(err)
    return load(path)


def load(path: str | Path) -> Series:
    """Read a bible through the bounded reader and check every field; JobError listing every problem."""
    path = Path(path).resolve()
    where = path.name
    try:
        data = safe_io.load_yaml(path, "series", max_bytes=MAX_SERIES_BYTES, max_values=MAX_SERIES_VALUES)
    except safe_io.InputError as exc:
        raise JobError(str(exc)) from None
    if not isinstance(data, dict):
        raise JobError(f"{where}: expected a mapping with series: and characters: at the top level")
    try:
        parsed = _SeriesFile.model_validate(data)
    except ValidationError as exc:
        from pipeline.job import _format_errors

        raise JobError(_format_errors(exc, prefix=f"{where}: ")) from None
    problems: list[str] = []
    chars: dict[str, Character] = {}
    for name, entry in parsed.characters.items():
        field = f"{where}: characters.{name}"
        try:
            _name(name)
        except ValueError as exc:
            problems.append(f"{field}: {exc}")
            continue
        images = [_checked(path.parent, ref, f"{field}.reference_images[{i}]", IMAGE_TYPES, MAX_IMAGE_BYTES,
                           problems) for i, ref in enumerate(entry.reference_images)]
        clip = None if entry.voice_reference is None else _checked(
            path.parent, entry.voice_reference, f"{field}.voice_reference", AUDIO_TYPES, MAX_AUDIO_BYTES, problems)
        if entry.voice_transcript and entry.voice_reference is None:
            problems.append(f"{field}.voice_transcript: given without voice_reference; add the clip it transcribes")
        chars[name] = Character(name=name, names=entry.names, voice=entry.voice, description=entry.description,
                                reference_images=tuple(str(p) for p in images if p), voice_reference=clip and str(clip),
                                voice_transcript=entry.voice_transcript, seed=entry.seed)
    series = Series(series=parsed.series, title=parsed.title, characters=chars, path=path)
    problems += _alias_problems(series, where)
    if problems:
        raise JobError(problems)
    return series


def _checked(root: Path, rel: str, field: str, types: dict, limit: int, problems: list[str]) -> Path | None:
    """A reference file inside the bible's folder, regular, of an allowed type (suffix and content agree)."""
    from pipeline.job import resolve_in

    if not rel or "\x00" in rel or len(rel) > 1024:
        problems.append(f"{field}: must be a path without NUL characters, at most 1024 characters long")
        return None
    full, err = resolve_in(root, Path(rel), field)
    if err:
        problems.append(err.replace("the job's folder", "the series file's folder").replace(
            "beside the job file", "beside the series file"))
        return None
    suffix = full.suffix.lower()
    if suffix not in types:
        problems.append(f"{field}: {rel} is not one of {', '.join(sorted(types))}; convert it to one of those")
        return None
    try:
        head = safe_io.read_bytes(full, field, max_bytes=limit)[:16]
    except safe_io.InputError as exc:
        problems.append(f"{exc}; point it at a {suffix} file beside the series file")
        return None
    if not types[suffix](head):
        problems.append(f"{field}: {rel} is named {suffix} but its content is not a {suffix[1:].upper()} file; "
                        "save it in the format its name says")
        return None
    return full


def _aliases(series: Series) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, char in series.characters.items():
        for alias in (name, *char.names.values()):
            out.setdefault(alias.casefold(), name)
    return out


def _alias_problems(series: Series, where: str) -> list[str]:
    seen: dict[str, str] = {}
    problems = []
    for name, char in series.characters.items():
        for alias in dict.fromkeys((name, *char.names.values())):
            other = seen.setdefault(alias.casefold(), name)
            if other != name:
                problems.append(f"{where}: characters.{name}: shares the name {alias!r} with {other!r}; give each "
                                "character names of its own")
    return problems


# ---------------------------------------------------------------- the bible applied to an episode's script

def cast_problems(script: Script, series: Series) -> list[str]:
    """One problem per screenplay character (cue or declared) the bible does not know."""
    problems = []
    for name, char in script.characters.items():
        if _match(name, char, series) is None:
            problems.append(f"series: the screenplay's character {name!r} is not in the series bible "
                            f"{series.path.name}; add it under characters: there (e.g. `{name}: {{description: …}}`) "
                            "or fix the cue's spelling — every episode of a series takes its cast from the bible")
    return problems


def _match(name: str, char: Character, series: Series) -> str | None:
    found = series.find(name)
    for alias in char.names.values():
        found = found or series.find(alias)
    return found


def apply(script: Script, series: Series) -> Script:
    """The script with its cast taken from the bible: every bible character, in bible order (the look of a
    procedural figure follows that order), cues renamed to the bible's names, the screenplay's names and
    voice hints kept where the bible is silent, and bible characters named in a shot's action added to it."""
    problems = cast_problems(script, series)
    if problems:
        raise UserError(problems)
    from pipeline.screenplay import _mention_test, _mentioned

    rename = {name: _match(name, char, series) for name, char in script.characters.items()}
    chars: dict[str, Character] = {}
    for name, entry in series.characters.items():
        own = [c for n, c in script.characters.items() if rename[n] == name]
        base = own[0] if own else None
        chars[name] = entry.model_copy(update={
            "names": {**(base.names if base else {}), **entry.names, script.language: entry.names.get(
                script.language, name)},
            "voice": {**(base.voice if base else {}), **entry.voice},
            "description": entry.description or (base.description if base else "")})
    tests = [(name, _mention_test(char)) for name, char in chars.items()]
    data = json.loads(script.model_dump_json())
    data["characters"] = {n: c.model_dump(mode="json") for n, c in chars.items()}
    for scene in data["scenes"]:
        for shot in scene["shots"]:
            for line in shot["lines"]:
                line["speaker"] = rename.get(line["speaker"], line["speaker"])
            names = [rename.get(n, n) for n in shot["characters"]]
            action = shot["action"].casefold()
            names += [n for n, t in tests if _mentioned(action, t)]
            shot["characters"] = list(dict.fromkeys(names))
    return Script.model_validate(data)


# ---------------------------------------------------------------- cache keys: only a shot's characters

@functools.lru_cache(maxsize=4096)
def _digest_at(path: str, mtime_ns: int, size: int) -> str:
    from pipeline.cache import file_digest

    return file_digest(path)


def file_key(path: str) -> str:
    """A reference file's content digest (memoised per path, mtime and size)."""
    st = os.stat(path)
    return _digest_at(path, st.st_mtime_ns, st.st_size)


def character_key(char: Character, index: int | None = None) -> dict[str, Any]:
    """What of a character determines a shot's output: its bible entry, with reference files by content
    (not by where they lie), and its place in the cast (a procedural figure's colour follows it)."""
    data = char.model_dump(mode="json")
    data["reference_images"] = [file_key(p) for p in char.reference_images]
    data["voice_reference"] = file_key(char.voice_reference) if char.voice_reference else None
    if index is not None:
        data["cast_index"] = index
    return data


def shot_characters_key(script: Script, names: Any) -> dict[str, Any]:
    """The cache-key part for a shot: the bible entries of exactly the named characters."""
    order = list(script.characters)
    return {n: character_key(script.characters[n], order.index(n)) for n in names if n in script.characters}


def voice_key(char: Character | None) -> dict[str, Any]:
    """What of a character determines its voice: hints, reference clip (by content), transcript, seed."""
    if char is None:
        return {}
    return {"voice": dict(char.voice), "reference": file_key(char.voice_reference) if char.voice_reference else None,
            "transcript": char.voice_transcript, "seed": char.seed}


# ---------------------------------------------------------------- sheets and approvals

def sheet_digest(sheets: dict[str, str]) -> str:
    """One digest for a character's sheet: its views' file digests, by view name."""
    from pipeline.cache import file_digest

    text = "\n".join(f"{view}:{file_digest(path)}" for view, path in sorted(sheets.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def approvals(series_path: Path) -> dict[str, dict[str, Any]]:
    """The approved sheets of a series (character → record), from its state file beside the bible."""
    path = state_path(series_path)
    if not path.exists():
        return {}
    text = safe_io.read_text(path, "series cast state", max_bytes=4 << 20)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"series cast state {path}: not JSON ({exc.msg}, line {exc.lineno}); restore it or delete "
                        "it and approve the sheets again") from None
    if not isinstance(data, dict) or not isinstance(data.get("approved"), dict):
        raise UserError(f"series cast state {path}: expected {{\"approved\": {{character: …}}}}; restore it or "
                        "delete it and approve the sheets again")
    return data["approved"]


def status(char: Character, digest: str | None, approved: dict[str, dict[str, Any]]) -> str:
    """supplied (the bible gives reference images), approved (a person approved this exact sheet), else generated."""
    if char.reference_images:
        return "supplied"
    record = approved.get(char.name)
    return "approved" if record and digest and record.get("digest") == digest else "generated"


def approve(series_path: str | Path, character: str, digest: str, *, note: str = "") -> dict[str, Any]:
    """Record `digest` as the approved sheet of `character` in the series' state (atomic write)."""
    series = load(series_path)
    name = series.find(character)
    if name is None:
        raise UserError(f"cast approve: {character!r} is not a character of {series.path.name}; its characters: "
                        f"{', '.join(series.characters)}")
    if series.characters[name].reference_images:
        raise UserError(f"cast approve: {name!r} has reference_images in {series.path.name}: supplied images need no "
                        "approval (remove them to use a generated sheet instead)")
    if not DIGEST.fullmatch(digest):
        raise UserError(f"cast approve --digest: {digest!r} is not a sheet digest (64 hex characters); copy it from "
                        "the run's message or manifest.json (cast.<character>.digest)")
    data = {"format": 1, "approved": approvals(series.path)}
    record = {"digest": digest, "approved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "by": _user(), "note": _plain(note, 500)}
    data["approved"][name] = record
    _write_atomic(series.state_path, json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True) + "\n")
    return {"character": name, **record}


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def planned_sheets(job: Any, script: Script) -> int:
    """Character sheets a run of `job` on `script` will make (for the estimate and the budget guard)."""
    series = for_job(job)
    if not needs_sheet(job, series):
        return 0
    if series is not None:
        try:
            script = apply(script, series)
        except UserError:  # a treatment's stand-in speakers, or a cue the bible lacks (validate names it)
            return 0
    present = {n for s in script.shots for n in (*s.characters, *(ln.speaker for ln in s.lines))}
    return sum(1 for n, c in script.characters.items() if n in present and not c.reference_images)


def needs_sheet(job: Any, series: Series | None) -> bool:
    """Whether the job's run makes character sheets: `cast.sheets`, by default on for a series job."""
    sheets = getattr(getattr(job, "cast", None), "sheets", None)
    return series is not None if sheets is None else bool(sheets)


class CastNotApproved(UserError):
    """`cast.require_approval`: a generated sheet no one approved yet; the run stops before the storyboard."""

    exit_code = 5


def require_approved(series: Series | None, cast: dict[str, dict[str, Any]]) -> None:
    """Stop (CastNotApproved) while any of the episode's characters has a sheet no person approved, listing
    each with its sheet files and the command that approves it."""
    waiting = {name: entry for name, entry in cast.items() if entry["status"] == "generated"}
    if not waiting:
        return
    where = series.path if series is not None else Path("series.yaml")
    lines = [f"cast.require_approval: {len(waiting)} character sheet(s) wait for a person's approval, so the run "
             "stopped before the storyboard (finished stages are cached; re-run after approving):"]
    for name, entry in waiting.items():
        views = ", ".join(f"{view} {path}" for view, path in entry["sheets"].items())
        lines.append(f"  {name}: {views}")
        lines.append(f"    approve: microdrama cast approve {where} {name} --digest {entry['digest']}")
    lines.append("  or replace a sheet: put your image beside the series file and list it under the character's "
                 "reference_images (docs/series.md)")
    raise CastNotApproved(lines)
