"""Screenplay parser: Fountain elements, the note extensions, errors with exact lines, limits, fuzzing."""
from __future__ import annotations

import re
import time
from pathlib import Path
from textwrap import dedent

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import UserError
from pipeline.screenplay import MAX_BYTES, ScreenplayError, load, parse
from pipeline.script import CAMERA_MOVES, FRAMINGS, Script

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "episodes" / "demo" / "episode.fountain"


def sp(text: str, **kw) -> Script:
    return parse(dedent(text).lstrip("\n"), **kw)


def error(text: str, **kw) -> ScreenplayError:
    with pytest.raises(ScreenplayError) as info:
        sp(text, **kw)
    return info.value


# ---------------------------------------------------------------- scenes

def test_scene_headings_latin_chinese_and_forced():
    script = sp("""
        INT. OFFICE - NIGHT
        Rain on the glass.

        ext. rooftop - dawn #datong #12A#
        Wind.

        内景. 亦庄 办公室 - 夜 #yizhuang #Datong
        灯灭了。

        外景：古城墙——黄昏
        风。

        .闪回 - 三年前
        婚礼。

        I/E CAR - DAY
        Engine idles.
        """)
    got = [(s.heading, s.location, s.time_of_day, s.interior, s.location_tags) for s in script.scenes]
    assert got == [
        ("INT. OFFICE - NIGHT", "OFFICE", "NIGHT", True, ()),
        ("ext. rooftop - dawn", "rooftop", "dawn", False, ("datong",)),
        ("内景. 亦庄 办公室 - 夜", "亦庄 办公室", "夜", True, ("yizhuang", "datong")),
        ("外景：古城墙——黄昏", "古城墙", "黄昏", False, ()),
        ("闪回 - 三年前", "闪回", "三年前", True, ()),
        ("I/E CAR - DAY", "CAR", "DAY", True, ()),
    ]
    assert [s.number for s in script.scenes] == [1, 2, 3, 4, 5, 6]
    assert [sh.id for sh in script.shots] == [f"s0{n}-sh01" for n in range(1, 7)]
    assert script.shots[2].location_tags == ("yizhuang", "datong")


def test_tags_note_tags_the_scene_or_the_shot_after_a_shot_note():
    script = sp("""
        INT. OFFICE - NIGHT #huairou [[tags: office]]
        Desk.
        [[tags: night]]

        [[shot: close]]
        [[tags: #Datong]]
        Hands.
        """)
    scene = script.scenes[0]
    assert scene.location_tags == ("huairou", "office", "night")
    assert [sh.location_tags for sh in scene.shots] == [
        ("huairou", "office", "night"), ("huairou", "office", "night", "datong")]


# ---------------------------------------------------------------- dialogue

def test_latin_cues_with_extensions_dual_caret_and_forced_cue():
    script = sp("""
        INT. KITCHEN - DAY

        BOB (V.O.)
        Anyone home?

        ALICE ^
        In here.
        Come in.

        @McCLANE
        Yippee.
        """, language="en")
    lines = script.shots[0].lines
    assert [(ln.speaker, ln.text) for ln in lines] == [
        ("BOB", {"en": "Anyone home?"}), ("ALICE", {"en": "In here. Come in."}), ("McCLANE", {"en": "Yippee."})]
    assert [ln.source_line for ln in lines] == [4, 7, 11]
    assert list(script.characters) == ["BOB", "ALICE", "McCLANE"]


def test_cjk_cues_forced_action_and_join_without_spaces():
    script = sp("""
        内景. 办公室 - 夜

        走廊尽头没有人。

        林晓
        我不回去，
        永远不。

        !门口
        一个影子。

        @小林（画外音）
        我在这里。
        """)
    shot = script.shots[0]
    assert [(ln.speaker, ln.text["zh"]) for ln in shot.lines] == [("林晓", "我不回去，永远不。"), ("小林", "我在这里。")]
    assert shot.action == "走廊尽头没有人。\n门口一个影子。"
    assert script.language == "zh"  # detected from the dialogue


def test_parentheticals_set_emotion_and_split_lines():
    script = sp("""
        INT. OFFICE - NIGHT

        GU CHEN
        (coldly)
        Sign it.
        (to the lawyer)
        Witness this.
        (beat)
        Now.
        [[emotion: angry]]

        LIN XIAO
        （低声）
        好。
        """, language="en")
    got = [(ln.text["en"], ln.parenthetical, ln.emotion) for ln in script.shots[0].lines]
    assert got == [("Sign it.", "coldly", "coldly"), ("Witness this.", "to the lawyer", None),
                   ("Now.", "beat", "angry"), ("好。", "低声", "低声")]


def test_translations_inline_next_line_after_blank_and_wrapped():
    script = sp("""
        Languages: zh, en, ja

        内景. 办公室 - 夜

        林晓
        我不回去。[[en: I'm not going back.]]
        [[ja: 戻らない。]]

        顾辰
        你敢。
        [[en: You dare.]]
        再说一遍。
        [[en: Say it again.]]

        [[ja: もう一度。]]
        """)
    a, b = script.shots[0].lines
    assert script.language == "zh"
    assert a.text == {"zh": "我不回去。", "en": "I'm not going back.", "ja": "戻らない。"}
    assert b.text == {"zh": "你敢。再说一遍。", "en": "You dare. Say it again.", "ja": "もう一度。"}
    assert list(a.text) == ["zh", "en", "ja"]  # first = as written


# ---------------------------------------------------------------- shots and characters

def test_shot_notes_settings_ids_and_implicit_first_shot():
    script = sp("""
        内景. 办公室 - 夜
        夜。办公室里只剩她一个人。

        [[shot: close, push-in, 3s | 手在发抖]]
        她的手。

        [[shot: Wide pan-left #datong]]
        窗外。
        [[shot: 特写 推 2.5秒]]

        EXT. STREET - DAY

        [[shot: over-shoulder]]
        Cars.
        """)
    got = [(sh.id, sh.framing, sh.camera, sh.duration_s, sh.notes, sh.location_tags) for sh in script.shots]
    assert got == [
        ("s01-sh01", "medium", "hold", None, "", ()),
        ("s01-sh02", "close", "push-in", 3.0, "手在发抖", ()),
        ("s01-sh03", "wide", "pan-left", None, "", ("datong",)),
        ("s01-sh04", "close", "push-in", 2.5, "", ()),
        ("s02-sh01", "over-shoulder", "hold", None, "", ()),
    ]
    assert [sh.source_line for sh in script.shots] == [2, 4, 7, 9, 13]
    assert script.shots[2].action == "窗外。" and script.shots[3].action == ""


def test_cast_block_char_note_voices_and_mentions():
    script = sp("""
        Title: _**总裁的替身**_
        Characters:
            林晓 | en=Lin Xiao | voice=f | voice.espeak=cmn+f3 | age=23 | desc=实习生
            顾辰 | en=Gu Chen | gender=m

        [[char: 苏曼 | en=Su Man | voice=女]]

        内景. 办公室 - 夜
        顾辰看着林晓。Su Man waits outside.

        LIN XIAO
        你好。
        """)
    assert script.title == "总裁的替身"
    lin = script.characters["林晓"]
    assert lin.names == {"zh": "林晓", "en": "Lin Xiao"}
    assert lin.voice == {"gender": "f", "espeak": "cmn+f3", "age": "23"} and lin.description == "实习生"
    assert script.characters["苏曼"].voice == {"gender": "f"}
    shot = script.shots[0]
    assert shot.lines[0].speaker == "林晓"  # cue in the English name resolves to the cast entry
    assert shot.characters == ("林晓", "顾辰", "苏曼")


def test_boneyard_notes_sections_transitions_keep_line_numbers():
    script = sp("""
        # ACT ONE
        = the deal
        FADE IN:

        INT. OFFICE - NIGHT
        /* cut:
        a whole paragraph

        and another */
        Desk. /* inline */ Lamp. [[a writer's note]]
        [[multi-line
        note]]

        CUT TO:

        BOB
        *Sign* it, _now_. \\*really\\*
        ===
        >THE END<
        """, language="en")
    shot = script.shots[0]
    assert shot.action == "Desk. Lamp.\nTHE END"
    assert shot.lines[0].text == {"en": "Sign it, now. *really*"}
    assert shot.lines[0].source_line == 17


# ---------------------------------------------------------------- errors with exact lines

ERRORS = [
    ("INT. A - DAY\n\n[[shot: close, pan]]\nx\n", 3, "unknown shot setting 'pan'", "pan-left"),
    ("INT. A - DAY\n\n[[shot: huge]]\nx\n", 3, "unknown shot setting 'huge'", "over-shoulder"),
    ("INT. A - DAY\nThe door opens.\n[[en: It opens.]]\n", 3, "has no dialogue before it", ""),
    ("[[en: Hello.]]\n\nINT. A - DAY\nx\n", 1, "has no dialogue before it", ""),
    ("INT. A - DAY\n\n(whispering)\nI'm here.\n", 3, "dialogue without a character cue", "speaker"),
    ("INT. A - DAY\n\nBob\n(whispering)\nI'm here.\n", 3, "is followed by a parenthetical", "CAPS"),
    ("Characters:\n  林晓\n\n内景. 办公室 - 夜\n\n林晓\n好。\n\n林小\n不。\n", 9, "unknown character '林小'", "林晓"),
    ("Languages: zh, en\n\n内景. 办公室 - 夜\n\n林晓\n好。\n[[en: OK.]]\n\n顾辰\n不。\n", 10, "no 'en' translation", ""),
    ("内景. 办公室 - 夜\n\n林晓\n好。\n[[zh: 好。]]\n", 5, "own language 'zh'", ""),
    ("内景. 办公室 - 夜\n\n林晓\n好。\n[[en: OK.]]\n[[en: Fine.]]\n", 6, "second 'en' translation", ""),
    ("INT. A - DAY\n\n[[shot: close]]\n\n[[shot: wide]]\nx\n", 3, "shot s01-sh01 is empty", "duration"),
    ("INT. A - DAY\n\n[[shot: wide, 0s]]\nx\n", 3, "out of range", ""),
    ("INT. A - DAY\nx\n/* never\nclosed\n", 3, "boneyard '/*' is never closed", "*/"),
    ("INT. A - DAY\nShe runs. [[shot: close]]\n", 2, "shot note must stand on its own line", ""),
    ("Language: en\n\nINT. A - DAY\nx\n", 1, "written in 'en' but 'zh' was asked for", ""),
    ("Characters:\n  林晓 | voice=alto\n\nINT. A - DAY\nx\n", 2, "voice='alto'", "voice.<backend>"),
    ("Characters:\n  林晓 | height=160\n\nINT. A - DAY\nx\n", 2, "unknown character field 'height'", ""),
    ("INT. A - DAY\n\nBOB\nHi.\n\nShe nods. [[en: She nods.]]\n", 6, "has no dialogue before it", ""),
    ("Characters:\n  林晓 | en=Boss\n  顾辰 | en=boss\n\nINT. A - DAY\nx\n", 3, "share the name 'boss'", ""),
    ("", 0, "no scene headings found", ""),
    ("FADE IN:\n\n# Act\n\n= beat\n", 0, "no action or dialogue", "INT."),
    ("INT. A - DAY\n\nМАША\nПривет.\n", 4, "dialogue is in Cyrillic script (ru?) but 'zh' was asked for", "Language:"),
    ("Languages: zh, so\n\n内景. 办公室 - 夜\n\n林晓\n好。\n[[so: Haa.]]\n[[so: Maya.]]\n", 8, "second 'so' translation", ""),
]


@pytest.mark.parametrize(("text", "line", "message", "hint"), ERRORS)
def test_errors_name_the_line_and_the_fix(text, line, message, hint):
    err = error(text, language="zh")
    assert err.line == line, str(err)
    assert message in err.message
    assert hint in err.hint


def test_error_str_is_source_line_message_hint():
    with pytest.raises(ScreenplayError) as info:
        parse("INT. A - DAY\n\n[[shot: close, zoom]]\nx\n", source="ep.fountain")
    err = info.value
    assert isinstance(err, UserError) and err.exit_code == 2
    assert re.fullmatch(r"ep\.fountain:3: unknown shot setting 'zoom' \(framing is one of .+\)", str(err))
    assert all(v in str(err) for v in FRAMINGS + CAMERA_MOVES)


def test_load_reports_encoding_errors_and_missing_files(tmp_path):
    bad = tmp_path / "bad.fountain"
    bad.write_bytes("INT. A - DAY\n好\n".encode() + b"\xff\xfe oops\n")
    with pytest.raises(ScreenplayError, match=r"bad\.fountain:3: not UTF-8 text"):
        load(bad)
    with pytest.raises(ScreenplayError, match=r"missing\.fountain: cannot read screenplay"):
        load(tmp_path / "missing.fountain")


# ---------------------------------------------------------------- the shipped screenplay and docs

def test_demo_episode_parses_into_the_expected_shots():
    script = load(DEMO, language="zh")
    assert script.title == "总裁的替身" and script.language == "zh"
    assert len(script.scenes) == 2 and len(script.shots) == 7
    assert set(script.characters) == {"林晓", "顾辰", "苏曼"}
    lines = [ln for sh in script.shots for ln in sh.lines]
    assert all(set(ln.text) == {"zh", "en"} for ln in lines)
    spoken = sum(len(re.findall(r"[\u4e00-\u9fff]", ln.text["zh"])) for ln in lines)
    assert 90 <= spoken <= 140  # ~4 syllables/s: 25–35 s of speech
    assert script.shots[0].lines, "the hook: the first shot speaks"
    assert {"push-in", "pan-right", "hold"} <= {sh.camera for sh in script.shots}
    assert len({sh.framing for sh in script.shots}) >= 4
    assert script.scenes[0].location_tags == ("huairou",) and script.scenes[1].location_tags == ("datong",)


def test_docs_example_parses():
    doc = (ROOT / "docs" / "screenplay.md").read_text(encoding="utf-8")
    example = re.search(r"```fountain\n(.*?)```", doc, re.S).group(1)
    script = parse(example, source="docs/screenplay.md")
    assert [sh.id for sh in script.shots] == ["s01-sh01", "s01-sh02", "s02-sh01"]
    assert script.characters["顾辰"].voice == {"gender": "m", "espeak": "cmn+m3"}


# ---------------------------------------------------------------- limits

def test_ten_megabyte_input_is_refused_quickly():
    text = "INT. A - DAY\n" + "x" * (10 * 1024 * 1024)
    started = time.perf_counter()
    with pytest.raises(ScreenplayError, match=r"larger than the 1,048,576-byte limit"):
        parse(text)
    assert time.perf_counter() - started < 0.5


def test_oversized_file_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.fountain"
    big.write_bytes(b"x" * (MAX_BYTES + 1))
    with pytest.raises(ScreenplayError, match="big.fountain: screenplay is larger"):
        load(big)


def test_ten_thousand_shots_refused_at_the_limit_or_parsed_in_bounded_time():
    text = "INT. A - DAY\n\n" + "".join(f"[[shot: close, 1s]]\nShot {i}.\n\n" for i in range(10_000))
    started = time.perf_counter()
    with pytest.raises(ScreenplayError) as info:
        parse(text)
    assert info.value.line == 3 + 3 * 2000 and "more than 2000 shots" in info.value.message
    script = parse(text, max_shots=10_000)
    assert len(script.shots) == 10_000 and script.shots[-1].id == "s01-sh10000"
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize("unit", [
    "x\n[[a note]]\n",  # a text line after every note line: each is a cue candidate
    "a\n",  # one long paragraph
    "\n",  # nothing but blank lines
    "林晓\n(低声)\n好。\n\n",  # many short speeches
])
def test_pathological_quarter_megabyte_inputs_parse_in_linear_time(unit):
    text = "INT. A - DAY\nx\n\n" + unit * (256 * 1024 // len(unit.encode()))
    started = time.perf_counter()
    try:
        parse(text)
    except ScreenplayError:
        pass
    assert time.perf_counter() - started < 3


# ---------------------------------------------------------------- properties

FRAGMENTS = [
    "", "", "INT. OFFICE - NIGHT", "内景. 办公室 - 夜 #huairou", "EXT. X #datong #1#", ".FORCED", "林晓", "LIN XIAO",
    "@bob", "(whispering)", "（低声）", "我不回去。", "Hello there.", "[[en: I'm not going.]]", "[[zh: x]]",
    "[[shot: close, push-in, 3s]]", "[[shot: wide]]", "[[shot: pan]]", "[[tags: a, b]]", "[[emotion: angry]]",
    "[[char: 林晓 | en=Lin | voice=f]]", "/*", "*/", "[[", "]]", "Title: T", "Language: zh", "Languages: zh, en",
    "Characters:", "    林晓 | en=Lin Xiao", "CUT TO:", "> THE END <", "!FORCED", "# Act", "= synopsis", "===",
    "BOB ^", "BOB (V.O.)", "~lyric", "*bold* _u_", "  ", "\t", "[[note]]", "FADE IN:", "\r\n", "\ufeff",
]
screenplay_like = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=12)), max_size=40).map("\n".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), screenplay_like))
def test_any_text_gives_a_script_or_a_screenplay_error(text):
    try:
        script = parse(text)
    except ScreenplayError as err:
        assert str(err).startswith("<screenplay>") and err.message
    else:
        assert script.scenes and all(scene.shots for scene in script.scenes)
        assert len({sh.id for sh in script.shots}) == len(script.shots)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(FRAMINGS), st.sampled_from(CAMERA_MOVES),
                          st.text(st.characters(categories=["Lo"]), min_size=1, max_size=6)), min_size=1, max_size=12))
def test_generated_shots_round_trip(shots):
    body = "".join(f"[[shot: {f}, {c}]]\n林晓\n{t}\n[[en: line {i}]]\n\n" for i, (f, c, t) in enumerate(shots))
    script = parse("Languages: zh, en\nCharacters:\n  林晓\n\n内景. 办公室 - 夜\n\n" + body)
    assert [(sh.framing, sh.camera) for sh in script.shots] == [(f, c) for f, c, _ in shots]
    assert [sh.lines[0].text["en"] for sh in script.shots] == [f"line {i}" for i in range(len(shots))]
