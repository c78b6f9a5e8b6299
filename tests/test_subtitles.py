"""Subtitle reading rules (pipeline/subtitles.py): minimum time on screen, characters per second, no overlap,
two wrapped lines per cue for CJK and Latin text; files written and read back with pysubs2."""
from __future__ import annotations

import pysubs2
import pytest
from hypothesis import given, settings, strategies as st

from pipeline.subtitles import events, rules, wrap, write_ass, write_srt


def _shots(lines: list[tuple[float, float, str]], lang: str, end: float) -> list[dict]:
    return [{"start": 0.0, "end": end, "lines": [{"timing": {lang: [a, b]}, "text": {lang: t}} for a, b, t in lines]}]


def _check(evs, lang: str, end: float) -> None:
    r = rules(lang)
    for i, (a, b, text) in enumerate(evs):
        lines = text.split("\n")
        assert len(lines) <= r.max_lines and all(len(x) <= r.max_line for x in lines), text
        assert b <= end + 1e-9
        if i + 1 < len(evs):
            assert b <= evs[i + 1][0] + 1e-9  # never overlaps the next cue


def test_a_short_english_cue_is_held_to_the_minimum_unless_the_next_cue_comes_first():
    """'Who are you?' spoken in 0.44 s stays up 5/6 s; held to the next cue's start less 2 frames."""
    evs = events(_shots([(0.10, 0.54, "Who are you?")], "en", 5.0), "en", "en")
    assert evs == [(0.10, pytest.approx(0.10 + 5 / 6), "Who are you?")]
    close = events(_shots([(0.10, 0.54, "Who are you?"), (0.70, 1.5, "Nobody.")], "en", 5.0), "en", "en")
    assert close[0][1] == pytest.approx(0.70 - 2 / 24) and close[0][1] > 0.54


def test_chinese_is_held_to_nine_characters_per_second_and_split_at_punctuation():
    text = "我昨天晚上替你签了那份合同，你现在必须记住这件事，因为它非常重要。"  # 33 characters
    evs = events(_shots([(0.2, 2.5, text)], "zh", 10.0), "zh", "zh")
    _check(evs, "zh", 10.0)
    assert "".join(t.replace("\n", "") for _, _, t in evs) == text  # nothing lost
    assert evs[0][2] == "我昨天晚上替你签了那份合同，\n你现在必须记住这件事，"  # at the commas
    for a, b, t in evs:
        assert (b - a) >= len(t.replace("\n", "")) / 9 - 1e-9


def test_latin_wraps_at_the_balancing_space():
    assert wrap("I am the one who signed it for you last night", "en", 42) == \
        "I am the one who signed\nit for you last night"
    assert wrap("Short line.", "en", 42) == "Short line."
    assert wrap("签了它。", "zh", 16) == "签了它。"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.05, 4.0), st.text(alphabet="abc de，。林晓?!", min_size=1, max_size=120)),
                min_size=1, max_size=6), st.sampled_from(["en", "zh"]))
def test_any_cues_obey_the_rules(spans, lang):
    t, lines = 0.0, []
    for length, text in spans:
        if text.split():
            lines.append((t, t + length, text))
        t += length + 0.3
    evs = events(_shots(lines, lang, t), lang, lang)
    _check(evs, lang, t)
    for (a, b, _), (a0, b0, _) in zip(evs, lines) if len(evs) == len(lines) else []:
        assert a == a0 and b >= b0  # starts with the speech, never ends before it


def test_files_read_back_with_pysubs2(tmp_path):
    evs = events(_shots([(0.1, 0.5, "Who are you?"), (1.0, 3.0, "A {brace} and a \\ backslash, long enough to wrap "
                                                                "over two lines here")], "en", 5.0), "en", "en")
    write_srt(tmp_path / "a.srt", evs)
    write_ass(tmp_path / "a.ass", evs, font="Noto Sans CJK SC")
    srt, ass = pysubs2.load(str(tmp_path / "a.srt")), pysubs2.load(str(tmp_path / "a.ass"))
    assert [(e.start, e.end) for e in srt] == [(round(a * 1000), round(b * 1000)) for a, b, _ in evs]
    written = (tmp_path / "a.srt").read_text("utf-8")  # pysubs2's reader takes {…} for tags: look at the file
    assert all(f"{t}\n" in written for _, _, t in evs) and "{brace}" in written
    assert [(e.start, e.end) for e in ass] == [(round(a * 100) * 10, round(b * 100) * 10) for a, b, _ in evs]  # cs
    assert ass.info["PlayResY"] == "1920" and ass.styles["Default"].marginv == 1920 - 1545
    assert "\\{brace\\}" in (tmp_path / "a.ass").read_text("utf-8")  # literal braces, not an override block
