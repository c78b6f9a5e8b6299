"""Procedural drawing for storyboard panels: time-of-day palettes, sets, weather and character figures."""
from __future__ import annotations

import colorsys
import hashlib
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

RGB = tuple[int, int, int]

# First match wins, so "傍晚" (dusk) is tested before "晚" (night).
_TIME_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("dusk", ("dusk", "sunset", "evening", "twilight", "黄昏", "傍晚", "日落")),
    ("night", ("night", "midnight", "夜", "晚")),
    ("dawn", ("dawn", "morning", "sunrise", "清晨", "早", "晨", "日出")),
)
_SKY: dict[str, tuple[RGB, RGB]] = {
    "day": ((104, 166, 232), (206, 230, 250)),
    "dawn": ((150, 172, 220), (252, 214, 168)),
    "dusk": ((62, 52, 112), (246, 146, 86)),
    "night": ((6, 10, 30), (30, 40, 80)),
}
_LIGHT = {"day": 1.0, "dawn": 0.9, "dusk": 0.72, "night": 0.42}
_SKINS: tuple[RGB, ...] = ((241, 204, 170), (226, 185, 143), (198, 152, 112), (160, 114, 80), (250, 220, 192))
_HAIRS: tuple[RGB, ...] = ((24, 20, 20), (52, 36, 28), (88, 60, 40), (130, 120, 118), (36, 30, 46))
_FURNITURE_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bed", ("bedroom", "hospital", "ward", "卧室", "医院", "病房", "酒店", "hotel")),
    ("desk", ("office", "study", "办公", "公司", "书房", "会议", "meeting")),
    ("sofa", ("living", "home", "apartment", "客厅", "家", "公寓", "别墅")),
    ("table", ("cafe", "café", "coffee", "restaurant", "bar", "kitchen", "咖啡", "餐厅", "酒吧", "厨房")),
)
_PARK_WORDS = ("park", "garden", "forest", "woods", "公园", "花园", "树林", "山")


def stable_int(*parts: object) -> int:
    """A process-independent hash (Python's hash() is salted per process)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, max(0.0, min(1.0, s)), max(0.0, min(1.0, v)))
    return (round(r * 255), round(g * 255), round(b * 255))


def mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


def shade(c: RGB, f: float) -> RGB:
    return tuple(max(0, min(255, round(x * f))) for x in c)  # type: ignore[return-value]


def time_bucket(time_of_day: str) -> str:
    """Map a free-text time of day (DAY, 夜, 傍晚 …) to day / dawn / dusk / night."""
    text = time_of_day.strip().lower()
    for bucket, words in _TIME_WORDS:
        if any(word in text for word in words):
            return bucket
    return "day"


def has_word(text: str, words: tuple[str, ...]) -> bool:
    low = text.lower()
    return any(word in low for word in words)


@dataclass(frozen=True)
class Palette:
    """Colours of one location at one time of day (the same in every shot of that location)."""

    bucket: str
    light: float
    wall: RGB
    floor: RGB
    accent: RGB
    sky: tuple[RGB, RGB]


def make_palette(location: str, interior: bool, time_of_day: str) -> Palette:
    rng = random.Random(stable_int("palette", location, interior))
    bucket = time_bucket(time_of_day)
    light = _LIGHT[bucket]
    hue = rng.random()
    wall = hsv(hue, 0.16 + 0.14 * rng.random(), 0.84 * light)
    floor = hsv(hue + 0.07, 0.30, 0.52 * light)
    accent = hsv(hue + 0.5, 0.50, 0.80 * light)
    if bucket == "night":
        wall, floor = mix(wall, (28, 36, 84), 0.30), mix(floor, (20, 24, 60), 0.30)
    elif bucket == "dusk":
        wall = mix(wall, (250, 150, 90), 0.15)
    return Palette(bucket, light, wall, floor, accent, _SKY[bucket])


class Canvas:
    """An RGB image with helpers that take coordinates as fractions of the frame."""

    def __init__(self, image: Image.Image) -> None:
        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.w, self.h = image.size

    def x(self, fx: float) -> int:
        return round(fx * self.w)

    def y(self, fy: float) -> int:
        return round(fy * self.h)

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        return (self.x(x0), self.y(y0), self.x(x1), self.y(y1))

    def gradient(self, y0: float, y1: float, top: RGB, bottom: RGB) -> None:
        """Fill the band y0..y1 (fractions) with a vertical gradient."""
        top_px, bottom_px = self.y(y0), self.y(y1)
        rows = max(1, bottom_px - top_px)
        t = np.linspace(0.0, 1.0, rows, dtype=np.float32)[:, None]
        band = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
        strip = np.repeat(band[:, None, :], self.w, axis=1).round().astype(np.uint8)
        self.image.paste(Image.fromarray(strip, "RGB"), (0, top_px))

    def glow(self, fx: float, fy: float, radius: float, colour: RGB, strength: float) -> None:
        """Blend a soft radial light (radius as a fraction of the frame height) into the image."""
        small_w, small_h = max(1, self.w // 8), max(1, self.h // 8)
        ys, xs = np.mgrid[0:small_h, 0:small_w].astype(np.float32)
        dist = np.hypot(xs - fx * small_w, ys - fy * small_h) / max(1.0, radius * small_h)
        alpha = (np.clip(1.0 - dist, 0.0, 1.0) ** 2 * strength * 255).astype(np.uint8)
        mask = Image.fromarray(alpha, "L").resize((self.w, self.h), Image.BILINEAR)
        self.image.paste(Image.new("RGB", self.image.size, colour), (0, 0), mask)


# --- sets -------------------------------------------------------------------------------------------

def draw_sky(cv: Canvas, pal: Palette, horizon: float, rng: random.Random) -> None:
    cv.gradient(0.0, horizon, *pal.sky)
    if pal.bucket == "night":
        for _ in range(60):
            sx, sy, s = rng.random(), rng.random() * horizon * 0.9, 1 + rng.random() * 2.5
            px, py, rad = cv.x(sx), cv.y(sy), s * cv.w / 1080
            cv.draw.ellipse((px - rad, py - rad, px + rad, py + rad), fill=(230, 232, 255))
        cv.draw.ellipse(cv.box(0.70, 0.10, 0.86, 0.10 + 0.16 * cv.w / cv.h), fill=(240, 238, 214))
    elif pal.bucket == "dusk":
        cv.glow(0.3, horizon, 0.25, (255, 196, 120), 0.8)
    else:
        cv.glow(0.8, 0.12, 0.18, (255, 252, 228), 0.9)
        for _ in range(3):
            cx, cy, cw = rng.random(), horizon * (0.15 + 0.5 * rng.random()), 0.12 + 0.12 * rng.random()
            cv.draw.ellipse(cv.box(cx - cw, cy - 0.015, cx + cw, cy + 0.015), fill=(246, 248, 252))


def draw_window(cv: Canvas, pal: Palette, left: bool, rng: random.Random) -> None:
    x0 = 0.10 if left else 0.56
    x1, y0, y1 = x0 + 0.34, 0.20, 0.46
    frame = shade(mix(pal.wall, (255, 255, 255), 0.35), 1.0)
    cv.draw.rectangle(cv.box(x0 - 0.015, y0 - 0.008, x1 + 0.015, y1 + 0.008), fill=frame)
    inner = Canvas(Image.new("RGB", (cv.x(x1) - cv.x(x0), cv.y(y1) - cv.y(y0))))
    draw_sky(inner, pal, 1.0, rng)
    cv.image.paste(inner.image, (cv.x(x0), cv.y(y0)))
    bar = max(2, cv.w // 160)
    mid_x, mid_y = cv.x((x0 + x1) / 2), cv.y((y0 + y1) / 2)
    cv.draw.rectangle((mid_x - bar, cv.y(y0), mid_x + bar, cv.y(y1)), fill=frame)
    cv.draw.rectangle((cv.x(x0), mid_y - bar, cv.x(x1), mid_y + bar), fill=frame)


def draw_furniture(cv: Canvas, kind: str, pal: Palette, floor_y: float) -> None:
    wood = shade(mix(pal.floor, (120, 80, 50), 0.5), 0.9)
    if kind == "bed":
        cv.draw.rounded_rectangle(cv.box(0.05, floor_y - 0.04, 0.55, floor_y + 0.06), radius=cv.x(0.02),
                                  fill=mix(pal.accent, (240, 240, 240), 0.6))
        cv.draw.rectangle(cv.box(0.05, floor_y - 0.10, 0.09, floor_y + 0.08), fill=wood)
    elif kind == "desk":
        cv.draw.rectangle(cv.box(0.52, floor_y - 0.03, 0.95, floor_y - 0.015), fill=wood)
        cv.draw.rectangle(cv.box(0.55, floor_y - 0.015, 0.57, floor_y + 0.07), fill=shade(wood, 0.7))
        cv.draw.rectangle(cv.box(0.90, floor_y - 0.015, 0.92, floor_y + 0.07), fill=shade(wood, 0.7))
        cv.draw.rectangle(cv.box(0.64, floor_y - 0.12, 0.84, floor_y - 0.045), fill=(40, 44, 52))
        cv.draw.rectangle(cv.box(0.65, floor_y - 0.115, 0.83, floor_y - 0.05), fill=(90, 140, 190))
        cv.draw.rectangle(cv.box(0.73, floor_y - 0.045, 0.75, floor_y - 0.03), fill=(40, 44, 52))
    elif kind == "sofa":
        body = shade(pal.accent, 0.8)
        cv.draw.rounded_rectangle(cv.box(0.08, floor_y - 0.07, 0.70, floor_y + 0.05), radius=cv.x(0.04), fill=body)
        cv.draw.rounded_rectangle(cv.box(0.12, floor_y - 0.02, 0.66, floor_y + 0.04), radius=cv.x(0.03),
                                  fill=shade(body, 1.15))
    else:  # table with cups
        cv.draw.ellipse(cv.box(0.30, floor_y - 0.02, 0.78, floor_y + 0.02), fill=wood)
        cv.draw.rectangle(cv.box(0.53, floor_y + 0.01, 0.55, floor_y + 0.10), fill=shade(wood, 0.7))
        for cx in (0.42, 0.64):
            cv.draw.rounded_rectangle(cv.box(cx - 0.02, floor_y - 0.045, cx + 0.02, floor_y - 0.005),
                                      radius=cv.x(0.006), fill=(244, 240, 232))


def draw_interior(cv: Canvas, shot_text: str, pal: Palette, rng_loc: random.Random,
                  rng_seed: random.Random) -> None:
    floor_y = 0.68
    cv.gradient(0.0, floor_y, shade(pal.wall, 1.08), shade(pal.wall, 0.9))
    cv.gradient(floor_y, 1.0, pal.floor, shade(pal.floor, 0.55))
    line = shade(pal.floor, 0.8)
    for i in range(-6, 7):
        bottom = 0.5 + i * 0.16
        cv.draw.line((cv.x(bottom), cv.h, cv.x(0.5 + i * 0.05), cv.y(floor_y)), fill=line, width=max(1, cv.w // 540))
    cv.draw.rectangle(cv.box(0.0, floor_y - 0.008, 1.0, floor_y), fill=shade(pal.wall, 0.7))
    window_left = rng_loc.random() < 0.5
    draw_window(cv, pal, window_left, rng_seed)
    art_x = 0.66 if window_left else 0.12
    cv.draw.rectangle(cv.box(art_x, 0.25, art_x + 0.2, 0.37), fill=shade(pal.wall, 0.6))
    cv.draw.rectangle(cv.box(art_x + 0.012, 0.257, art_x + 0.188, 0.363), fill=pal.accent)
    kind = next((k for k, words in _FURNITURE_WORDS if has_word(shot_text, words)), None)
    draw_furniture(cv, kind or ("table", "sofa", "desk")[rng_loc.randrange(3)], pal, floor_y)
    if pal.bucket in ("night", "dusk"):
        cv.glow(0.85 if window_left else 0.15, 0.30, 0.35, (255, 200, 130), 0.45)


def draw_buildings(cv: Canvas, pal: Palette, horizon: float, rng_loc: random.Random,
                   rng_seed: random.Random) -> None:
    x = -0.05
    while x < 1.05:
        bw, bh = 0.10 + 0.14 * rng_loc.random(), 0.08 + 0.30 * rng_loc.random()
        body = shade(mix(pal.wall, pal.sky[0], 0.35), 0.55 + 0.3 * rng_loc.random())
        cv.draw.rectangle(cv.box(x, horizon - bh, x + bw, horizon), fill=body)
        lit = pal.bucket in ("night", "dusk")
        for wy in np.arange(horizon - bh + 0.02, horizon - 0.015, 0.03):
            for wx in np.arange(x + 0.02, x + bw - 0.02, 0.04):
                on = rng_seed.random() < (0.45 if lit else 1.0)
                colour = (255, 214, 120) if lit and on else shade(body, 0.75 if lit else 1.25)
                cv.draw.rectangle(cv.box(wx, wy, wx + 0.018, wy + 0.014), fill=colour)
        x += bw + 0.01


def draw_trees(cv: Canvas, pal: Palette, horizon: float, rng_loc: random.Random) -> None:
    for _ in range(7):
        tx, size = rng_loc.random(), 0.05 + 0.06 * rng_loc.random()
        trunk = shade((90, 64, 44), pal.light)
        cv.draw.rectangle(cv.box(tx - 0.01, horizon - size, tx + 0.01, horizon + 0.01), fill=trunk)
        leaf = shade(hsv(0.28 + 0.08 * rng_loc.random(), 0.55, 0.55), pal.light)
        r = size * 0.9
        cv.draw.ellipse(cv.box(tx - r, horizon - size - r * 0.9, tx + r, horizon - size + r * 0.5), fill=leaf)


def draw_exterior(cv: Canvas, shot_text: str, pal: Palette, rng_loc: random.Random,
                  rng_seed: random.Random) -> None:
    horizon = 0.62
    draw_sky(cv, pal, horizon, rng_seed)
    ground = mix(pal.floor, (110, 110, 110), 0.5)
    if has_word(shot_text, _PARK_WORDS):
        draw_trees(cv, pal, horizon, rng_loc)
        ground = shade(hsv(0.27, 0.4, 0.5), pal.light)
    else:
        draw_buildings(cv, pal, horizon, rng_loc, rng_seed)
    cv.gradient(horizon, 1.0, shade(ground, 0.9), shade(ground, 0.5))
    kerb = shade(ground, 1.25)
    cv.draw.polygon([(cv.x(0.38), cv.y(horizon)), (cv.x(0.62), cv.y(horizon)), (cv.x(1.3), cv.h),
                     (cv.x(-0.3), cv.h)], fill=shade(ground, 0.8))
    for side in (0.38, 0.62):
        cv.draw.line((cv.x(side), cv.y(horizon), cv.x(0.5 + (side - 0.5) * 6.7), cv.h), fill=kerb,
                     width=max(2, cv.w // 300))
    if pal.bucket in ("night", "dusk"):
        cv.draw.rectangle(cv.box(0.86, 0.36, 0.875, 0.80), fill=(40, 40, 46))
        cv.glow(0.87, 0.36, 0.22, (255, 210, 140), 0.7)


def draw_weather(cv: Canvas, shot_text: str, rng_seed: random.Random) -> None:
    if has_word(shot_text, ("rain", "storm", "雨")):
        for _ in range(220):
            x, y, length = rng_seed.random(), rng_seed.random(), 0.02 + 0.03 * rng_seed.random()
            cv.draw.line((cv.x(x), cv.y(y), cv.x(x - 0.01), cv.y(y + length)), fill=(190, 200, 220),
                         width=max(1, cv.w // 700))
    elif has_word(shot_text, ("snow", "雪")):
        for _ in range(200):
            px, py, rad = cv.x(rng_seed.random()), cv.y(rng_seed.random()), (1 + 3 * rng_seed.random()) * cv.w / 1080
            cv.draw.ellipse((px - rad, py - rad, px + rad, py + rad), fill=(245, 248, 255))


def draw_set(cv: Canvas, *, location: str, interior: bool, time_of_day: str, tags: tuple[str, ...],
             seed: int, blur: float) -> Palette:
    """Draw the location; palette and layout follow the location, small dressing follows the seed."""
    pal = make_palette(location, interior, time_of_day)
    text = " ".join((location, *tags))
    rng_loc = random.Random(stable_int("layout", location, interior))
    rng_seed = random.Random(stable_int("dressing", location, seed))
    (draw_interior if interior else draw_exterior)(cv, text, pal, rng_loc, rng_seed)
    draw_weather(cv, text, rng_seed)
    if blur > 0:  # shallow depth of field for close framings, blurred cheaply at 1/4 size
        small = cv.image.reduce(4).filter(ImageFilter.GaussianBlur(blur * cv.w / 4))
        cv.image.paste(small.resize(cv.image.size, Image.BILINEAR))
    return pal


# --- figures ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Figure:
    """One character on screen: centre x (fraction of width), head centre y and head radius (fractions of
    height), colours, hair style and whether we see their back (over-the-shoulder foreground)."""

    name: str
    cx: float
    head_y: float
    r: float
    clothes: RGB
    skin: RGB
    hair: RGB
    hair_style: str
    back: bool = False


def character_look(name: str, index: int | None, gender: str) -> tuple[RGB, RGB, RGB, str]:
    """Clothes/skin/hair colours and hair style; cast index → well-separated hues (golden ratio)."""
    h = stable_int("look", name)
    hue = (0.07 + index * 0.618034) % 1.0 if index is not None else (h % 1000) / 1000
    styles = {"f": ("long", "bun"), "m": ("short", "fringe")}.get(gender, ("short", "long", "bun", "fringe"))
    return (hsv(hue, 0.60, 0.82), _SKINS[(h >> 8) % len(_SKINS)], _HAIRS[(h >> 16) % len(_HAIRS)],
            styles[(h >> 24) % len(styles)])


class _Pen:
    """Figure-relative coordinates: units of head radius R around the head centre."""

    def __init__(self, cv: Canvas, fig: Figure) -> None:
        self.d, self.R, self.cx, self.hy = cv.draw, fig.r * cv.h, cv.x(fig.cx), cv.y(fig.head_y)

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return (self.cx + x0 * self.R, self.hy + y0 * self.R, self.cx + x1 * self.R, self.hy + y1 * self.R)

    def pt(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + x * self.R, self.hy + y * self.R)


def draw_figure(cv: Canvas, fig: Figure, light: float, shadow: RGB) -> None:
    """A simple front-facing figure (or a dark back view), feet at 9.2 R below the head centre."""
    k = 0.6 + 0.4 * light
    clothes, skin, hair = shade(fig.clothes, k), shade(fig.skin, k), shade(fig.hair, k)
    if fig.back:
        clothes, skin, hair = shade(clothes, 0.45), shade(skin, 0.45), shade(hair, 0.6)
    pen = _Pen(cv, fig)
    pen.d.ellipse(pen.box(-2.4, 8.8, 2.4, 9.6), fill=shadow)
    for side in (-1, 1):
        pen.d.rectangle(pen.box(min(side * 0.12, side * 1.02), 4.8, max(side * 0.12, side * 1.02), 9.0),
                        fill=shade(clothes, 0.5))
        pen.d.ellipse(pen.box(side * 0.6 - 0.65, 8.8, side * 0.6 + 0.65, 9.3), fill=(30, 28, 30))
    if fig.hair_style == "long" and not fig.back:
        pen.d.rounded_rectangle(pen.box(-1.2, -1.1, 1.2, 2.6), radius=pen.R, fill=hair)
    for side in (-1, 1):
        pen.d.rounded_rectangle(pen.box(min(side * 1.35, side * 2.05), 1.6, max(side * 1.35, side * 2.05), 4.9),
                                radius=0.35 * pen.R, fill=shade(clothes, 0.82))
        pen.d.ellipse(pen.box(side * 1.7 - 0.38, 4.6, side * 1.7 + 0.38, 5.3), fill=skin)
    pen.d.rounded_rectangle(pen.box(-1.6, 1.35, 1.6, 5.2), radius=0.7 * pen.R, fill=clothes)
    pen.d.rectangle(pen.box(-0.35, 0.7, 0.35, 1.55), fill=shade(skin, 0.9))
    if fig.back:
        pen.d.ellipse(pen.box(-1.05, -1.2, 1.05, 1.1), fill=hair)
        return
    pen.d.polygon([pen.pt(-0.45, 1.35), pen.pt(0.45, 1.35), pen.pt(0, 2.0)], fill=shade(skin, 0.9))
    pen.d.ellipse(pen.box(-1.0, -1.15, 1.0, 1.05), fill=skin)
    draw_hair(pen, fig.hair_style, hair)
    draw_face(pen)


def draw_hair(pen: _Pen, style: str, hair: RGB) -> None:
    pen.d.pieslice(pen.box(-1.07, -1.25, 1.07, 0.45), 180, 360, fill=hair)
    if style == "bun":
        pen.d.ellipse(pen.box(-0.45, -1.85, 0.45, -0.95), fill=hair)
    elif style == "fringe":
        pen.d.polygon([pen.pt(-1.0, -0.42), pen.pt(0.2, -0.05), pen.pt(1.0, -0.45)], fill=hair)
    elif style == "long":
        pen.d.rectangle(pen.box(-1.07, -0.42, -0.82, 1.0), fill=hair)
        pen.d.rectangle(pen.box(0.82, -0.42, 1.07, 1.0), fill=hair)


def draw_face(pen: _Pen) -> None:
    if pen.R < 5:
        return
    ink, width = (40, 30, 30), max(1, round(pen.R * 0.06))
    for side in (-1, 1):
        if pen.R > 40:
            pen.d.ellipse(pen.box(side * 0.38 - 0.17, -0.15, side * 0.38 + 0.17, 0.07), fill=(250, 250, 250))
        pen.d.ellipse(pen.box(side * 0.38 - 0.09, -0.12, side * 0.38 + 0.09, 0.06), fill=ink)
        pen.d.line(pen.box(side * 0.22, -0.32, side * 0.58, -0.36), fill=ink, width=width)
    pen.d.arc(pen.box(-0.3, 0.25, 0.3, 0.6), 20, 160, fill=(150, 60, 60), width=width)


def stage_figures(framing: str, looks: dict[str, tuple[RGB, RGB, RGB, str]], focus: str | None,
                  aspect: float) -> list[Figure]:
    """Place the shot's characters for a framing; the focus character gets the close-ups.

    ``aspect`` is height / width, used to keep side-by-side figures from overlapping too much."""
    names = list(looks)
    if not names:
        return []
    focus = focus if focus in looks else names[0]

    def fig(name: str, cx: float, hy: float, r: float, back: bool = False) -> Figure:
        return Figure(name, cx, hy, r, *looks[name], back=back)

    if framing == "extreme-close":
        return [fig(focus, 0.5, 0.60, 0.30)]
    if framing == "over-shoulder":
        others = [n for n in names if n != focus]
        front = fig(focus, 0.64, 0.47, 0.075)
        return [front, fig(others[0], 0.20, 0.80, 0.17, back=True)] if others else [front]
    if framing == "close":
        if len(names) == 1:
            return [fig(focus, 0.5, 0.55, 0.13)]
        other = next(n for n in names if n != focus)
        return [fig(other, 0.74, 0.53, 0.095), fig(focus, 0.30, 0.57, 0.105)]
    n = len(names)
    if framing == "wide":
        r = 0.03 * min(1.0, 3.0 / n)
        spacing = min(0.26, 0.8 / n)
        return [fig(name, 0.5 + (i - (n - 1) / 2) * spacing, 0.88 - 9.2 * r, r) for i, name in enumerate(names)]
    r = min(0.07, 0.9 / (n * 4.1 * aspect))  # medium (and any unknown framing)
    spacing = 0.9 / n
    return [fig(name, 0.5 + (i - (n - 1) / 2) * spacing, 0.50, r) for i, name in enumerate(names)]
