"""The layout of the 1080×1920 frame that every overlay respects (docs/layout.md).

Vertical players (Douyin, Kuaishou, WeChat Channels, TikTok) draw their own UI over the picture: the status
bar and top tabs, a right-hand column of buttons (avatar, like, comment, share, the music disc) and a bottom
band (account name, description, music line, the navigation bar). What must be seen goes inside `SAFE`,
clear of all three; the figures follow the published 9:16 safe-zone templates for those apps (top ≈ 8 %,
bottom ≈ 19 %, right column ≈ 14 % of the width from ~36 % to ~84 % of the height), rounded outwards.

Inside SAFE the edit burns two overlays, which never meet: the visible AI label (`LABEL`, top right, for
its whole duration) and the subtitles (`SUBTITLES`, the band above the bottom UI, two lines). A storyboard
panel that draws text of its own (the procedural backend) keeps it where no camera move of up to `amount`
can carry it off the frame, under the platform UI or under either overlay: `panel_text_area` and
`panel_keep_out` give those regions in panel fractions.

All rectangles are fractions of the frame (x0, y0, x1, y1), so any 9:16 size uses them as they are.
"""
from __future__ import annotations

from dataclasses import dataclass

WIDTH, HEIGHT = 1080, 1920


@dataclass(frozen=True)
class Rect:
    """A rectangle in fractions of the frame: x to the right, y down."""

    x0: float
    y0: float
    x1: float
    y1: float

    def intersects(self, other: Rect) -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def contains(self, other: Rect) -> bool:
        eps = 1e-9
        return (self.x0 - eps <= other.x0 and other.x1 <= self.x1 + eps and self.y0 - eps <= other.y0
                and other.y1 <= self.y1 + eps)

    def px(self, width: int = WIDTH, height: int = HEIGHT) -> tuple[int, int, int, int]:
        return (round(self.x0 * width), round(self.y0 * height), round(self.x1 * width), round(self.y1 * height))

    @staticmethod
    def of_px(x0: float, y0: float, x1: float, y1: float, width: int = WIDTH, height: int = HEIGHT) -> Rect:
        return Rect(x0 / width, y0 / height, x1 / width, y1 / height)


# the players' own UI (Douyin/Kuaishou-style full-screen 9:16 feed)
TOP_UI = Rect.of_px(0, 0, 1080, 150)  # status bar, tabs, search / live icons
RIGHT_UI = Rect.of_px(930, 690, 1080, 1610)  # avatar, like, comment, share, music disc
BOTTOM_UI = Rect.of_px(0, 1560, 1080, 1920)  # account, description, music line, navigation bar
PLATFORM_UI = (TOP_UI, RIGHT_UI, BOTTOM_UI)
SAFE = Rect.of_px(60, 150, 930, 1560)  # clear of all of them, 60 px from the left edge

# the edit's overlays, inside SAFE and apart from each other
LABEL = Rect.of_px(480, 170, 930, 262)  # the visible AI label: right-aligned, 56 px text on a 50 % box
LABEL_FONT_PX, LABEL_PAD_PX = 56, 16
SUBTITLES = Rect.of_px(60, 1290, 930, 1545)  # two lines of 64 px text, bottom-aligned
SUBTITLE_FONT_PX = 64


def subtitle_margins(width: int = WIDTH, height: int = HEIGHT) -> dict[str, int]:
    """ASS MarginL / MarginR / MarginV (bottom alignment) that put the subtitles in `SUBTITLES`."""
    x0, _, x1, y1 = SUBTITLES.px(width, height)
    return {"marginl": x0, "marginr": width - x1, "marginv": height - y1}


def label_box(text_w: float, text_h: float, width: int = WIDTH, height: int = HEIGHT) -> tuple[float, float]:
    """Top-left corner of the label text, right-aligned in `LABEL` (its box adds LABEL_PAD_PX around)."""
    x0, y0, x1, _ = LABEL.px(width, height)
    pad = LABEL_PAD_PX * width / WIDTH
    return x1 - pad - text_w, y0 + pad


def panel_text_area(amount: float) -> Rect:
    """Where a panel may draw text so that every window of a camera move of up to `amount` (a zoom to
    1/(1+amount) or a pan over (1-amount) of the frame) shows it inside SAFE."""
    a = float(amount)
    return Rect(a + (1 - a) * SAFE.x0, a + (1 - a) * SAFE.y0, (1 - a) * SAFE.x1, (1 - a) * SAFE.y1)


def panel_keep_out(overlay: Rect, amount: float) -> Rect:
    """The panel points that some window of such a camera move carries into `overlay`: panel text stays out."""
    a = float(amount)
    return Rect((1 - a) * overlay.x0, (1 - a) * overlay.y0, a + (1 - a) * overlay.x1, a + (1 - a) * overlay.y1)


def check() -> list[str]:
    """The layout's own promises (tested): overlays inside SAFE, apart, clear of the platform UI."""
    problems = []
    for name, rect in (("LABEL", LABEL), ("SUBTITLES", SUBTITLES)):
        if not SAFE.contains(rect):
            problems.append(f"{name} is not inside SAFE")
        problems += [f"{name} meets the platform UI" for ui in PLATFORM_UI if ui.intersects(rect)]
    if LABEL.intersects(SUBTITLES):
        problems.append("LABEL meets SUBTITLES")
    return problems


LABEL_MIN_FONT_PX = 36


def label_font_px(text: str, font_path: str) -> int | None:
    """The label's font size: 56 px, or smaller (down to 36) so the text fits `LABEL`; None: it cannot fit."""
    from PIL import ImageFont

    x0, y0, x1, y1 = LABEL.px()
    room_w, room_h = x1 - x0 - 2 * LABEL_PAD_PX, y1 - y0 - 2 * LABEL_PAD_PX
    for size in range(LABEL_FONT_PX, LABEL_MIN_FONT_PX - 1, -2):
        left, top, right, bottom = ImageFont.truetype(font_path, size).getbbox(text)
        if right - left <= room_w and size <= room_h:
            return size
    return None
