"""The frame layout (pipeline/layout.py): the edit's overlays inside the players' safe area and apart, and
the procedural panel's own text where no camera move can crop it or carry it under an overlay."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import layout
from pipeline.layout import LABEL, PLATFORM_UI, SAFE, SUBTITLES, Rect

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_overlays_sit_inside_the_safe_area_and_apart():
    assert layout.check() == []
    assert SAFE.contains(LABEL) and SAFE.contains(SUBTITLES) and not LABEL.intersects(SUBTITLES)
    assert not any(ui.intersects(r) for ui in PLATFORM_UI for r in (LABEL, SUBTITLES))
    m = layout.subtitle_margins()  # the ASS style puts bottom-aligned lines inside SUBTITLES
    assert (m["marginl"], 1080 - m["marginr"], 1920 - m["marginv"]) == (60, 930, 1545)


def windows(amount: float) -> list[tuple[float, float, float]]:
    """(x offset, y offset, size) of the camera-move windows at their extremes: the push-in's tightest
    zoom, and the pans and tilts at both ends (fractions of the panel)."""
    z = 1 / (1 + amount)
    return [(0, 0, 1), ((1 - z) / 2, (1 - z) / 2, z), (0, 0, 1 - amount), (amount, amount, 1 - amount),
            (0, amount, 1 - amount), (amount, 0, 1 - amount)]


def on_screen(box: Rect, window: tuple[float, float, float]) -> Rect:
    x, y, s = window
    return Rect((box.x0 - x) / s, (box.y0 - y) / s, (box.x1 - x) / s, (box.y1 - y) / s)


def _panels(tmp_path, amount):
    from models.registry import resolve
    from pipeline import screenplay

    script = screenplay.parse((CONFIGS / "episodes" / "demo" / "episode.fountain").read_text("utf-8"))
    backend = resolve("storyboard", "procedural")(move_margin=amount)
    long = script.shots[0].model_copy(update={"action": "一份合同啪地摔在桌上，" * 12})  # a caption that must give way
    for shot in [*script.shots, long]:
        for size in ((480, 832), (1080, 1920)):
            r = backend.render(shot, script, tmp_path / f"{shot.id}.png", width=size[0], height=size[1], seed=3)
            yield shot, [(b["kind"], Rect(*b["box"])) for b in r.params["text_boxes"]]


@pytest.mark.parametrize("amount", [0.10, 0.2])
def test_panel_text_survives_every_camera_window_clear_of_the_overlays(tmp_path, amount):
    """Each text box of each demo panel, through every extreme window of a camera move of `amount`, stays
    inside SAFE (not cropped, not under the players' UI) and off the AI label and the subtitles."""
    seen = set()
    for shot, boxes in _panels(tmp_path, amount):
        assert boxes and boxes[0][0] == "header"
        for i, (kind, box) in enumerate(boxes):
            seen.add(kind)
            for other_kind, other in boxes[i + 1:]:
                assert not box.intersects(other), (shot.id, kind, other_kind)
            for w in windows(amount):
                shown = on_screen(box, w)
                grown = Rect(SAFE.x0 - 1e-4, SAFE.y0 - 1e-4, SAFE.x1 + 1e-4, SAFE.y1 + 1e-4)  # boxes: 5 decimals
                assert grown.contains(shown), (shot.id, kind, w, shown)
                assert not shown.intersects(LABEL) and not shown.intersects(SUBTITLES), (shot.id, kind, w, shown)
    assert seen == {"header", "caption", "name"}


def test_a_camera_move_larger_than_the_panels_margin_is_refused(tmp_path):
    from pipeline.errors import JobError
    from pipeline.job import load_job

    (tmp_path / "ep.fountain").write_text("Title: t\nLanguage: zh\n\n内景. 办公室 - 夜\n\n林晓\n签了它。\n", "utf-8")
    (tmp_path / "job.yaml").write_text("drama: d\nepisode: e\nscreenplay: ep.fountain\n", "utf-8")
    with pytest.raises(JobError, match=r"stages\.video\.options\.amount: 0\.25 moves the panel further .* \("
                                       r"stages\.storyboard\.options\.move_margin 0\.1\)"):
        load_job(tmp_path / "job.yaml", ["stages.video.options={amount: 0.25}"])
    job = load_job(tmp_path / "job.yaml", ["stages.video.options={amount: 0.25}",
                                           "stages.storyboard.options={move_margin: 0.25}"])
    assert job.stages.video.options["amount"] == 0.25


def test_the_label_fits_its_place_or_is_refused(tmp_path):
    from pipeline.errors import JobError
    from pipeline.job import load_job
    from pipeline.stages.edit import font_file

    font = font_file("Noto Sans CJK SC")
    assert layout.label_font_px("AI生成", font) == 56  # the default at full size
    assert layout.LABEL_MIN_FONT_PX <= layout.label_font_px("人工智能生成内容", font) < 56
    (tmp_path / "ep.fountain").write_text("Title: t\nLanguage: zh\n\n内景. 办公室 - 夜\n\n林晓\n签了它。\n", "utf-8")
    (tmp_path / "job.yaml").write_text("drama: d\nepisode: e\nscreenplay: ep.fountain\n", "utf-8")
    with pytest.raises(JobError, match=r"stages\.edit\.label_text: .* does not fit the label's place"):
        load_job(tmp_path / "job.yaml", ["stages.edit.label_text=本视频由AI人工智能技术生成请注意甄别"])


def test_a_tiny_panel_with_a_long_heading_renders(tmp_path):
    """144×256 (the tests' and tuning notebooks' size): the heading cannot shrink below the smallest font, so
    it is ellipsized instead of shrinking for ever (it hung before)."""
    from models.registry import resolve
    from pipeline import screenplay

    script = screenplay.parse("Title: t\nLanguage: zh\n\n内景. 怀柔 顾氏集团 总裁办公室 走廊尽头的会议室 - 夜\n\n林晓\n签了它。\n")
    r = resolve("storyboard", "procedural")().render(script.shots[0], script, tmp_path / "p.png", width=144,
                                                     height=256, seed=1)
    area = layout.panel_text_area(0.10)
    assert all(area.contains(Rect(*(v for v in b["box"]))) or b["kind"] == "name" for b in r.params["text_boxes"])
