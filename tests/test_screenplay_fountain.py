"""Fountain as writers and their tools write it: real files by others (tests/data/fountain/SOURCES.md) compared
with the reference parser screenplain, each Fountain 1.1 element, language by script, a season validated."""
from __future__ import annotations

import io
import re
from pathlib import Path
from textwrap import dedent

import pytest
from screenplain import types as ref_types
from screenplain.parsers import fountain as ref_fountain
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.screenplay import ScreenplayError, load, parse
from pipeline.script import Script

FILES = Path(__file__).resolve().parent / "data" / "fountain"
REAL = sorted(FILES.glob("*.fountain"))
NOTHING_TO_FILM = {"screenplain-forced-transition.fountain"}  # a transition and nothing else
CJK_HEADINGS = {"afterwriting-jp.fountain", "afterwriting-sc.fountain"}  # `INT。` and cues without '@'


def sp(text: str, **kw) -> Script:
    return parse(dedent(text).lstrip("\n"), **kw)


def reference(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """screenplain's scene headings and speeches (speaker, words), a speech split at its parentheticals as
    ours is, the lyric marker '~' and emphasis dropped, whitespace collapsed."""
    headings, speeches = [], []
    for par in ref_fountain.parse(io.StringIO(text)).paragraphs:
        if isinstance(par, ref_types.Slug):
            headings.append(" ".join(str(par.line).split()))
        dialogs = ([par.left, par.right] if isinstance(par, ref_types.DualDialog)
                   else [par] if isinstance(par, ref_types.Dialog) else [])
        for d in dialogs:
            name = re.sub(r"\s*\(.*$", "", str(d.character)).lstrip("@").rstrip("^ ").strip()
            words: list[str] = []
            for is_paren, line in d.blocks:
                if is_paren and words:
                    speeches.append((name, _norm(" ".join(words))))
                    words = []
                elif not is_paren:
                    words.append(str(line).removeprefix("~"))
            if words:
                speeches.append((name, _norm(" ".join(words))))
    return headings, speeches


def _norm(text: str) -> str:
    return " ".join(text.replace("*", "").split())


def ours(script: Script) -> tuple[list[str], list[tuple[str, str]]]:
    headings = [" ".join(s.heading.split()) for s in script.scenes if s.heading]
    speeches = [(line.speaker, _norm(line.text[script.language])) for shot in script.shots for line in shot.lines]
    return headings, speeches


# ---------------------------------------------------------------- real files against screenplain

@pytest.mark.parametrize("path", [p for p in REAL if p.name not in NOTHING_TO_FILM | CJK_HEADINGS],
                         ids=lambda p: p.name)
def test_real_files_match_the_reference_parser(path: Path) -> None:
    text = path.read_text(encoding="utf-8-sig")
    script = load(path)
    assert script.shots and all(s.action or s.lines for s in script.shots)
    got_headings, got_speeches = ours(script)
    want_headings, want_speeches = reference(text)
    assert got_headings == want_headings
    assert got_speeches == want_speeches
    assert len(got_speeches) == sum(len(s.lines) for s in script.shots)


def test_the_real_files_hold_every_kind_of_element() -> None:
    """The comparison above means something: the corpus has scenes, speeches, dual dialogue and more."""
    texts = "\n".join(p.read_text(encoding="utf-8-sig") for p in REAL)
    for mark in ("^\n", "\n> ", "<\n", "\n~", "/*", "[[", "\n===", "\n# ", "\n= ", "\n.", "#1#", "\n!", "\n@",
                 "Title:", "(V.O.)", "  \n"):
        assert mark in texts, mark
    totals = [ours(load(p)) for p in REAL if p.name not in NOTHING_TO_FILM]
    assert sum(len(h) for h, _ in totals) > 100 and sum(len(s) for _, s in totals) > 350


def test_a_file_with_nothing_to_film_is_refused_with_the_fix() -> None:
    with pytest.raises(ScreenplayError, match="no action or dialogue") as info:
        load(FILES / "screenplain-forced-transition.fountain")
    assert "INT." in info.value.hint


def test_chinese_and_japanese_fixtures_read_int_full_stop_and_cues_without_at() -> None:
    sc, jp = load(FILES / "afterwriting-sc.fountain"), load(FILES / "afterwriting-jp.fountain")
    assert (sc.title, sc.language, jp.title, jp.language) == ("电影", "zh", "映画", "ja")
    assert [(s.heading, s.location, s.time_of_day, s.interior) for s in sc.scenes] == [
        ("INT。 医院-天", "医院", "天", True)]
    assert [(s.location, s.time_of_day) for s in jp.scenes] == [("病院", "日")]
    line = sc.shots[0].lines[0]
    assert (line.speaker, line.parenthetical, line.text) == ("约翰", "丢失", {"zh": "这是什么地方？"})
    assert "淡入" not in sc.shots[0].action and "淡出" not in sc.shots[0].action
    assert jp.shots[0].lines[0].text == {"ja": "この場所は何ですか？"} and "フェード" not in jp.shots[0].action


def test_brick_and_steel_title_centered_forced_headings_and_boneyard() -> None:
    script = load(FILES / "brick-and-steel.fountain")
    assert script.title == "BRICK & STEEL FULL RETIRED"
    titles = next(s for s in script.scenes if s.heading == "OPENING TITLES")
    assert titles.shots[0].action == "BRICK BRADDOCK & DICK STEEL IN\nBRICK & STEEL FULL RETIRED"
    assert not titles.shots[0].lines  # the centered lines are no cue and no speech
    assert "SNIPER SCOPE POV" in [s.heading for s in script.scenes]
    cut = load(FILES / "screenplain-boneyard.fountain")  # a scene inside /* */ is gone
    assert [s.heading for s in cut.scenes if s.heading] == ["EXT. PALATIAL MANSION - DAY"]
    assert not any("GARAGE" in shot.action or shot.lines and "PORSCHE" in shot.action for shot in cut.shots)
    assert script.shots[-1].action.endswith("THE END")


# ---------------------------------------------------------------- what used to be refused

def test_text_before_the_first_heading_is_an_opening_shot():
    script = sp("""
        Title: Cold Open

        FADE IN:

        "All that glitters is not gold." -- an epigraph

        BOB
        Before the titles.

        INT. ROOM - DAY

        A room.
        """)
    opening, room = script.scenes
    assert (opening.number, opening.heading, opening.location) == (1, "", "Cold Open")
    assert opening.shots[0].action == '"All that glitters is not gold." -- an epigraph'
    assert opening.shots[0].lines[0].text == {"en": "Before the titles."}
    assert room.shots[0].id == "s02-sh01" and room.shots[0].action == "A room."
    assert sp("Just some action.\n").scenes[0].location == "OPENING"
    fade_in = sp("FADE IN:\nA dark room.\n\nINT. HOUSE - DAY\nx\n")  # `FADE IN:` is no title-page key
    assert [sc.shots[0].action for sc in fade_in.scenes] == ["A dark room.", "x"] and fade_in.title == ""


def test_an_empty_heading_is_an_establishing_shot():
    script = sp("INT. A - DAY\nx\n\nEXT. CASTLE - NIGHT\n\nINT. C - DAY\ny\n")
    castle = script.scenes[1]
    assert [(s.id, s.framing, s.action, s.lines) for s in castle.shots] == [
        ("s02-sh01", "wide", "EXT. CASTLE - NIGHT", ())]
    assert sp("INT.\n").scenes[0].location == "INT."


def test_a_parenthetical_with_no_line_after_it_is_direction():
    shot = sp("INT. A - DAY\n\nBOB\nHi.\n(walks off)\n\nANNA\n(nods)\n").shots[0]
    assert [(ln.speaker, ln.text["en"]) for ln in shot.lines] == [("BOB", "Hi.")]
    assert shot.action == "BOB (walks off)\nANNA (nods)"
    assert shot.characters == ("BOB", "ANNA")  # ANNA is in the shot through her direction


def test_two_space_lines_keep_dialogue_and_notes_going():
    script = parse("INT. A - DAY\n\nDEALER\nDealer gets a seven.\n  \nHit or stand sir?\n\n"
                "Action [[multi\nline\n  \nnote]] after.\n")
    shot = script.shots[0]
    assert shot.lines[0].text == {"en": "Dealer gets a seven. Hit or stand sir?"}
    assert shot.action == "Action after."


def test_an_unclosed_note_before_a_blank_line_is_plain_text():
    shot = sp("INT. A - DAY\nThis is not [[\na proper note\n\nbecause ]] of the blank.\n\n"
              "BOB\nHi. [[fr: Salut.]]\n").shots[0]
    assert shot.action == "This is not [[ a proper note\nbecause ]] of the blank."
    assert shot.lines[0].text == {"en": "Hi.", "fr": "Salut."}  # the notes after it are read again


def test_centered_runs_are_action_not_cues():
    shot = sp("INT. A - DAY\n\n> BRICK BRADDOCK <\n> AND STEEL <\n\n>THE END<\n").shots[0]
    assert shot.action == "BRICK BRADDOCK AND STEEL\nTHE END" and not shot.lines


def test_hash_and_equals_lines_are_text_inside_dialogue_and_action():
    script = sp("""
        # ACT ONE

        = The set-up.

        INT. A - DAY
        = synopsis under the heading

        BOB
        We're #1 in the charts.
        #2 is Anna.

        The board reads:
        #1 BOB

        ===

        ## Section two
        """)
    shot = script.shots[0]
    assert shot.lines[0].text == {"en": "We're #1 in the charts. #2 is Anna."}
    assert shot.action == "The board reads: #1 BOB"
    assert [s.heading for s in script.scenes] == ["INT. A - DAY"]


def test_notes_keyed_by_english_words_are_ordinary_unless_the_language_is_declared():
    plain = sp("INT. A - DAY\n\nBOB\nHi.\n[[so: what now?]]\n[[it: a note]]\n").shots[0].lines[0]
    assert plain.text == {"en": "Hi."}
    declared = sp("Languages: en, so\n\nINT. A - DAY\n\nBOB\nHi.\n[[so: Haye.]]\n").shots[0].lines[0]
    assert declared.text == {"en": "Hi.", "so": "Haye."}
    job = parse("INT. A - DAY\n\nBOB\nHi.\n[[it: Ciao.]]\n", language="en").shots[0].lines[0]
    assert job.text == {"en": "Hi."}  # the title page decides, so parsing depends on the file alone
    with pytest.raises(ScreenplayError, match="no dialogue before it"):  # a real translation in the wrong place
        sp("INT. A - DAY\nThe door opens.\n[[fr: La porte s'ouvre.]]\n")


def test_emphasised_transitions_lyrics_and_time_of_day():
    script = sp("""
        **FADE IN:**

        EXT. BRICK'S PATIO - DAY - FLASHBACK (1944)

        A patio.

        BOB
        ~Happy birthday to you!
        ~*Happy* birthday!

        _CUT TO:_

        INT. HALL - LATER THAT NIGHT - RAIN
        Rain.

        INT. KITCHEN - NIGHT (1998)
        Pots.
        """)
    assert [(s.location, s.time_of_day) for s in script.scenes] == [
        ("BRICK'S PATIO", "DAY"), ("HALL", "LATER THAT NIGHT"), ("KITCHEN", "NIGHT (1998)")]
    shot = script.shots[0]
    assert shot.action == "A patio." and shot.lines[0].text == {"en": "Happy birthday to you! Happy birthday!"}


def test_fountain_elements_title_page_numbers_dual_forced_and_page_breaks():
    script = sp("""
        Title: _**T**_
        Credit: by
        Author: A

        INT. ONE - DAY #1A#

        !FORCED ACTION IN CAPS
        Next line.

        BRICK ^
        Left.

        @McCLANE (V.O.)
        Right.

        ===

        .FLASHBACK

        >CUT TO BLACK.

        /* cut
        BOB
        gone */
        Kept.
        """)
    assert script.title == "T" and [s.heading for s in script.scenes] == ["INT. ONE - DAY", "FLASHBACK"]
    one = script.scenes[0].shots[0]
    assert one.action == "FORCED ACTION IN CAPS Next line."
    assert [(ln.speaker, ln.text["en"]) for ln in one.lines] == [("BRICK", "Left."), ("McCLANE", "Right.")]
    assert script.scenes[1].shots[0].action == "Kept."


# ---------------------------------------------------------------- language by script, the job's languages

@pytest.mark.parametrize(("speech", "language"), [
    ("Привет, как дела?", "ru"), ("ఎక్కడికి వెళ్తున్నావు?", "te"), ("Γεια σου.", "el"), ("مرحبا بك", "ar"),
    ("नमस्ते, आप कैसे हैं?", "hi"), ("안녕하세요", "ko"), ("こんにちは、元気？", "ja"), ("你好，林晓。", "zh"),
    ("OK，我们走吧。", "zh"), ("Hello there.", "en"), ("שלום", "he"), ("สวัสดีครับ", "th")])
def test_language_is_detected_from_the_script_of_the_dialogue(speech, language):
    assert sp(f"INT. A - DAY\n\n@X\n{speech}\n").language == language


def test_the_job_language_is_checked_against_the_screenplay():
    with pytest.raises(ScreenplayError, match="written in 'en' but 'zh' was asked for"):
        parse("Language: en\n\nINT. A - DAY\n\nBOB\nHi.\n", language="zh")
    with pytest.raises(ScreenplayError, match="Cyrillic script") as info:
        parse("INT. A - DAY\n\nМАША\nПривет.\n", language="zh")
    assert info.value.line == 4 and "Language:" in info.value.hint
    assert parse("INT. A - DAY\n\nANNA\nHi.\n", language="zh").language == "zh"  # Latin goes with any language
    assert parse("INT. A - DAY\n\nМАША\nПривет.\n", language="uk").language == "uk"


def _job(folder: Path, episode: str, screenplay: str, languages: str = "[zh]") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ep.fountain").write_text(screenplay, encoding="utf-8")
    path = folder / "job.yaml"
    path.write_text(f"drama: d\nepisode: {episode}\nscreenplay: ep.fountain\nlanguages: {languages}\n",
                    encoding="utf-8")
    return path


def test_validate_checks_a_season_in_one_command_and_passes_the_job_language(tmp_path):
    zh = "Title: t\nLanguage: zh\n\n内景. 办公室 - 夜\n\n林晓\n你好。\n"
    jobs = [_job(tmp_path / f"ep{i}", f"e{i}", zh) for i in (1, 2, 3)]
    run = CliRunner().invoke(app, ["validate", *map(str, jobs), f"output_dir={tmp_path / 'out'}"])
    assert run.exit_code == 0, run.output
    assert [ln.split()[1] for ln in run.output.splitlines()] == ["d/e1", "d/e2", "d/e3"]
    bad = _job(tmp_path / "ep4", "e4", "Language: en\n\nINT. A - DAY\n\nBOB\nHi.\n")
    again = _job(tmp_path / "ep5", "e1", zh)
    run = CliRunner().invoke(app, ["validate", str(jobs[0]), str(bad), str(again), "--set", f"output_dir={tmp_path}"])
    assert run.exit_code == 2 and "Traceback" not in run.output
    assert "ok: d/e1" in run.output
    said = f"{bad}: {bad.parent / 'ep.fountain'}:1: the screenplay is written in 'en' but 'zh' was asked for"
    assert said in run.output
    assert f"{again}: episode: d/e1 is also the episode of {jobs[0]}" in run.output
    run = CliRunner().invoke(app, ["validate", "stages.video.fps=12"])
    assert run.exit_code == 2 and "no job file given" in run.output


# ---------------------------------------------------------------- a feature-length screenplay

def feature() -> str:
    """About 300 KB of real Fountain (four copies of the fixture corpus, scenes renamed per copy)."""
    body = "\n\n".join(p.read_text(encoding="utf-8-sig").split("\n\n", 1)[1] for p in REAL
                       if p.name not in NOTHING_TO_FILM and p.stat().st_size > 1000)
    return "Title: Feature\n\n" + "\n\n".join(body.replace(" - DAY", f" - DAY #{i}#") for i in range(4))


def test_a_feature_length_screenplay_parses_whole():
    text = feature()
    assert len(text) > 200_000
    script = parse(text)
    headings, speeches = ours(script)
    want_headings, want_speeches = reference(text)
    assert len(headings) == len(want_headings) > 400 and speeches == want_speeches and len(speeches) > 1200


def test_a_model_screenplay_must_open_with_a_heading():
    with pytest.raises(ScreenplayError, match="before the first scene heading") as info:
        parse("Hello.\n\nINT. A - DAY\nx\n", opening=False)
    assert info.value.line == 1 and "INT." in info.value.hint
