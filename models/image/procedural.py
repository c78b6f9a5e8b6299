"""Storyboard backend "procedural": a labelled storyboard panel drawn with Pillow, no model needed."""
from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from models import options as opt
from models.image import sketch
from models.registry import BackendResult
from pipeline import layout
from pipeline.script import Script, Shot

_FONT_FAMILY = "Noto Sans CJK SC"
_SET_BLUR = {"close": 0.004, "extreme-close": 0.007, "over-shoulder": 0.003}
_NO_LINE_START = set("，。、；：！？）」』】》…,.;:!?)")
GAP = 0.012  # between text boxes, a fraction of the height


@functools.lru_cache(maxsize=8)
def find_font(family: str = _FONT_FAMILY, style: str = "Regular") -> tuple[str, int]:
    """(file, face index) of an installed CJK font, located with fontconfig's fc-match."""
    hint = "install it with: apt-get install fonts-noto-cjk, or pass the backend option font=/path/to/font.ttc"
    if shutil.which("fc-match") is None:
        raise FileNotFoundError(f"storyboard procedural: fc-match (fontconfig) not found; {hint}")
    out = subprocess.run(["fc-match", "-f", "%{file}|%{index}|%{family}", f"{family}:style={style}"],
                         capture_output=True, text=True, check=False).stdout
    path, _, rest = out.partition("|")
    index, _, matched = rest.partition("|")
    if "CJK" not in matched or not Path(path).is_file():
        raise FileNotFoundError(
            f"storyboard procedural: no {family!r} font (fc-match gave {matched or 'nothing'!r}); {hint}")
    return path, int(index or 0)


class ProceduralOptions(opt.BackendOptions):
    font: opt.FilePath | None = None  # a font file (default Noto Sans CJK SC via fc-match)
    bold_font: opt.FilePath | None = None
    font_index: int = opt.Field(0, ge=0, le=255)  # the face in a .ttc
    supersample: opt.Literal[1, 2, 3, 4] = 2
    caption: opt.Literal["top", "bottom", "none"] = "top"
    header: bool = True
    move_margin: float = opt.Field(0.10, ge=0, le=0.3)  # the largest camera-move amount the text survives


class ProceduralStoryboard:
    """Draws set, figures, header (scene heading, shot id, framing/camera) and an action caption.

    Options: ``font``/``bold_font`` (font file paths; default Noto Sans CJK SC via fc-match),
    ``font_index`` (face index in a .ttc), ``supersample`` (anti-aliasing factor for shapes, default 2),
    ``caption`` ("top" — under the header, keeping the lower third clear for subtitles — "bottom" or
    "none"), ``header`` (bool, default True), ``move_margin`` (default 0.10: the largest camera move —
    `stages.video.options.amount` — the panel's text survives).

    Every piece of text (header, caption, name tags) lies in `pipeline.layout.panel_text_area` and out of
    the keep-outs of the AI label and the subtitles, so no camera move of up to ``move_margin`` crops it,
    puts it under a player's UI or under an overlay of the edit; the boxes are in the result's params.
    """

    Options = ProceduralOptions
    resident = False

    def __init__(self, *, font: str | None = None, bold_font: str | None = None, font_index: int = 0,
                 supersample: int = 2, caption: str = "top", header: bool = True, move_margin: float = 0.10) -> None:
        if caption not in ("top", "bottom", "none"):
            raise ValueError(f"storyboard procedural: caption must be top, bottom or none, got {caption!r}")
        if supersample not in (1, 2, 3, 4):
            raise ValueError(f"storyboard procedural: supersample must be 1..4, got {supersample!r}")
        regular = (font, font_index) if font else find_font(style="Regular")
        bold = (bold_font, font_index) if bold_font else (regular if font else _bold_or(regular))
        for path, _ in (regular, bold):
            if not Path(path).is_file():
                raise FileNotFoundError(f"storyboard procedural: font file {path!r} does not exist")
        self.regular, self.bold = regular, bold
        self.supersample, self.caption, self.header = supersample, caption, header
        self.move_margin = float(move_margin)

    def render(self, shot: Shot, script: Script, out_path: Path, *, width: int, height: int,
               seed: int) -> BackendResult:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        image, figures = self._scene(shot, script, width, height, seed)
        overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        area = layout.panel_text_area(self.move_margin)
        label = layout.panel_keep_out(layout.LABEL, self.move_margin)
        subs = layout.panel_keep_out(layout.SUBTITLES, self.move_margin)
        boxes: list[dict] = []
        top = max(area.y0, label.y1 + GAP) * height  # below every place the AI label can reach
        floor = subs.y0 * height  # above every place the subtitles can reach
        if self.header:
            top = self._draw_header(draw, shot, script, width, height, area, top, boxes) + GAP * height
        tag_h = self._tag_height(width)
        if self.caption != "none":
            room = floor - top - tag_h - 2 * GAP * height  # keep a row for the name tags
            y_bottom = self._draw_caption(draw, _caption_text(shot), width, height, area, top, floor, room, boxes)
            if self.caption == "top" and y_bottom:
                top = y_bottom + GAP * height
        self._draw_labels(draw, figures, width, height, area, top, floor, boxes)
        image = Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")
        image.save(out_path, format="PNG", compress_level=6)
        return BackendResult(
            outputs={"image": str(out_path)},
            params={"font": self.regular[0], "seed": seed, "width": width, "height": height,
                    "framing": shot.framing, "supersample": self.supersample, "caption": self.caption,
                    "move_margin": self.move_margin,
                    "text_boxes": [{**b, "box": [round(v, 5) for v in b["box"]]} for b in boxes]},
        )

    # --- picture ------------------------------------------------------------------------------------

    def _scene(self, shot: Shot, script: Script, width: int, height: int,
               seed: int) -> tuple[Image.Image, list[sketch.Figure]]:
        ss = self.supersample
        canvas = sketch.Canvas(Image.new("RGB", (width * ss, height * ss)))
        pal = sketch.draw_set(canvas, location=shot.location, interior=shot.interior,
                              time_of_day=shot.time_of_day, tags=shot.location_tags, seed=seed,
                              blur=_SET_BLUR.get(shot.framing, 0.0))
        figures = sketch.stage_figures(shot.framing, _looks(shot, script), _focus(shot), height / width)
        for figure in sorted(figures, key=lambda f: f.r):  # smaller (farther) first, foreground last
            sketch.draw_figure(canvas, figure, pal.light, sketch.shade(pal.floor, 0.6))
        image = canvas.image.reduce(ss) if ss > 1 else canvas.image
        return image, figures

    # --- text ---------------------------------------------------------------------------------------

    def _font(self, size: float, bold: bool = False) -> ImageFont.FreeTypeFont:
        path, index = self.bold if bold else self.regular
        return _load_font(path, index, max(8, round(size)))

    def _draw_header(self, draw: ImageDraw.ImageDraw, shot: Shot, script: Script, width: int, height: int,
                     area: layout.Rect, y: float, boxes: list[dict]) -> float:
        """Scene heading and shot id · framing · camera on a dark box; returns the box's bottom edge."""
        unit = width / 1080
        pad = 14 * unit
        left, max_w = area.x0 * width + pad, (area.x1 - area.x0) * width - 2 * pad
        head_font = self._fit(_heading(shot, script), 50 * unit, max_w, bold=True)
        sub_font = self._font(34 * unit)
        sub = f"{shot.id}  ·  {shot.framing.upper()}  ·  {shot.camera.upper()}"
        if shot.duration_s:
            sub += f"  ·  {shot.duration_s:g}s"
        head, sub = _ellipsize(_heading(shot, script), head_font, max_w), _ellipsize(sub, sub_font, max_w)
        bottom = y + 2 * pad + head_font.size * 1.3 + sub_font.size * 1.25
        text_w = max(head_font.getlength(head), sub_font.getlength(sub))
        box = (area.x0 * width, y, area.x0 * width + text_w + 2 * pad, bottom)
        draw.rounded_rectangle(box, radius=12 * unit, fill=(0, 0, 0, 150))
        draw.text((left, y + pad), head, font=head_font, fill=(255, 255, 255, 255))
        draw.text((left, y + pad + head_font.size * 1.3), sub, font=sub_font, fill=(255, 214, 102, 255))
        boxes.append({"kind": "header", "box": _frac(box, width, height)})
        return bottom

    def _draw_caption(self, draw: ImageDraw.ImageDraw, text: str, width: int, height: int, area: layout.Rect,
                      top: float, floor: float, room: float, boxes: list[dict]) -> float | None:
        """The action caption in a box under the header (or just above the subtitles' reach); returns its
        bottom edge. It gets at most the lines that fit `room`."""
        if not text:
            return None
        unit = width / 1080
        font = self._font(38 * unit)
        pad, left, right = 22 * unit, area.x0 * width, area.x1 * width
        line_h = font.size * 1.4
        fit = int((room - 2 * pad + (line_h - font.size)) // line_h)
        lines = wrap_text(text, font, right - left - 2 * pad, max_lines=max(1, min(5, fit)))
        box_h = len(lines) * line_h + 2 * pad - (line_h - font.size)
        y0 = top if self.caption == "top" else floor - GAP * height - box_h
        box = (left, y0, right, y0 + box_h)
        draw.rounded_rectangle(box, radius=18 * unit, fill=(12, 12, 20, 170))
        for i, line in enumerate(lines):
            draw.text((left + pad, y0 + pad + i * line_h), line, font=font, fill=(245, 245, 245, 255))
        boxes.append({"kind": "caption", "box": _frac(box, width, height)})
        return y0 + box_h

    def _tag_height(self, width: int) -> float:
        unit = width / 1080
        return 34 * unit * 1.25 + 16 * unit

    def _draw_labels(self, draw: ImageDraw.ImageDraw, figures: list[sketch.Figure], width: int,
                     height: int, area: layout.Rect, top: float, floor: float, boxes: list[dict]) -> None:
        """Name tags under (or, for small figures, above) the heads, moved into the band between the
        header/caption and the subtitles' reach, and inside the text area."""
        unit = width / 1080
        font = self._font(34 * unit, bold=True)
        taken = [b["box"] for b in boxes]
        for fig in figures:
            label = fig.name
            text_w = font.getlength(label)
            pad_x, pad_y = 16 * unit, 8 * unit
            box_h = font.size * 1.25 + 2 * pad_y
            # above the head (the chest, where a tag used to go, is where the subtitles are); a close-up's
            # head reaches higher than the caption, so its tag sits just under the caption, over the hair
            cy = (fig.head_y - 1.35 * fig.r) * height - box_h + pad_y
            cy = min(max(cy, top + pad_y), floor - GAP * height - box_h + pad_y)
            cx = min(max(fig.cx * width, area.x0 * width + text_w / 2 + pad_x),
                     area.x1 * width - text_w / 2 - pad_x)
            box = (cx - text_w / 2 - pad_x, cy - pad_y, cx + text_w / 2 + pad_x, cy - pad_y + box_h)
            frac = _frac(box, width, height)
            if any(layout.Rect(*frac).intersects(layout.Rect(*t)) for t in taken):
                continue  # two figures side by side: one tag would sit on the other (the figure shows who)
            draw.rounded_rectangle(box, radius=font.size * 0.6, fill=(*sketch.shade(fig.clothes, 0.55), 225),
                                   outline=(255, 255, 255, 200), width=max(1, round(2 * unit)))
            draw.text((cx - text_w / 2, cy), label, font=font, fill=(255, 255, 255, 255))
            boxes.append({"kind": "name", "name": label, "box": frac})
            taken.append(frac)

    def _fit(self, text: str, size: float, max_w: float, *, bold: bool = False) -> ImageFont.FreeTypeFont:
        """The largest font ≤ size (down to 60 %) that fits text on one line."""
        font = self._font(size, bold)
        while font.getlength(text) > max_w and font.size > size * 0.6:
            smaller = self._font(font.size - 2, bold)
            if smaller.size >= font.size:  # at the smallest size already (tiny panels): the caller ellipsizes
                break
            font = smaller
        return font


@functools.lru_cache(maxsize=64)
def _frac(box: tuple[float, float, float, float], width: int, height: float) -> list[float]:
    return [box[0] / width, box[1] / height, box[2] / width, box[3] / height]


def _load_font(path: str, index: int, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size=size, index=index)


def _bold_or(regular: tuple[str, int]) -> tuple[str, int]:
    try:
        return find_font(style="Bold")
    except FileNotFoundError:
        return regular


def _heading(shot: Shot, script: Script) -> str:
    for scene in script.scenes:
        if scene.number == shot.scene and scene.heading:
            return scene.heading
    prefix = "INT." if shot.interior else "EXT."
    return f"{prefix} {shot.location}" + (f" - {shot.time_of_day}" if shot.time_of_day else "")


def _caption_text(shot: Shot) -> str:
    if shot.action.strip():
        return " ".join(shot.action.split())
    if shot.lines:
        line = shot.lines[0]
        return f"{line.speaker}: {next(iter(line.text.values()), '')}"
    return shot.notes.strip()


def _focus(shot: Shot) -> str | None:
    return shot.lines[0].speaker if shot.lines else (shot.characters[0] if shot.characters else None)


def _looks(shot: Shot, script: Script) -> dict[str, tuple]:
    """Each on-screen character's colours: the cast order in the script fixes the hue, so a character
    looks the same in every shot."""
    cast = list(script.characters)
    names = list(dict.fromkeys([*shot.characters, *(line.speaker for line in shot.lines)]))
    looks = {}
    for name in names:
        character = script.characters.get(name)
        gender = character.voice.get("gender", "") if character else ""
        looks[name] = sketch.character_look(name, cast.index(name) if name in cast else None, gender)
    return looks


def _tokens(text: str) -> list[str]:
    """Break points for wrapping: CJK characters one by one, other words with their trailing space."""
    tokens: list[str] = []
    word = ""
    for ch in text:
        if ch in _NO_LINE_START and (word or tokens):  # kinsoku: closing punctuation never starts a line
            if word:
                word += ch
            else:
                tokens[-1] += ch
            continue
        if ord(ch) >= 0x2E80 or ch.isspace():
            if word:
                tokens.append(word)
                word = ""
            tokens.append(ch)
        else:
            word += ch
    if word:
        tokens.append(word)
    return tokens


def wrap_text(text: str, font: ImageFont.FreeTypeFont, max_w: float, *, max_lines: int) -> list[str]:
    """Greedy wrap by rendered width (works for mixed CJK / Latin); the last line gets an ellipsis."""
    lines, current = [], ""
    for token in _tokens(text):
        if font.getlength(current + token) <= max_w or not current.strip():
            current += token
            continue
        lines.append(current.rstrip())
        current = token.lstrip()
    if current.strip():
        lines.append(current.rstrip())
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _ellipsize(lines[-1] + "…", font, max_w)
    return [_ellipsize(line, font, max_w) for line in lines]


def _ellipsize(text: str, font: ImageFont.FreeTypeFont, max_w: float) -> str:
    if font.getlength(text) <= max_w:
        return text
    while text and font.getlength(text + "…") > max_w:
        text = text[:-1]
    return text + "…"
