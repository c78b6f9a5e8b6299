"""Episode covers: the best keyframe of the cut (one candidate per shot, from the lossless clips, before any
label or subtitle), cropped to each cover size, with the title and the visible "AI生成" label inside the
platforms' safe area.

A candidate is a shot's first frame in the cut (for an untrimmed shot, its storyboard keyframe: image-to-
video and camera-move clips start on it; decoding one frame keeps this cheap); its score is colourfulness (Hasler & Süsstrunk 2003) plus
sharpness (the variance of a Laplacian), each scaled to the episode's best, so the cover is the most vivid,
crispest picture of the episode. Every score is returned, so the choice can be checked.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DEFAULT_SAFE = {"top": 0.12, "bottom": 0.25, "left": 0.05, "right": 0.15}
DEFAULT_SIZES = [(1080, 1920), (1080, 1440)]


def frame_at(clip: str, index: int, out: Path) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", clip,
                    "-vf", f"select=eq(n\\,{index})", "-frames:v", "1", str(out)], check=True, capture_output=True)
    return out


def colourfulness(rgb: np.ndarray) -> float:
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def sharpness(rgb: np.ndarray) -> float:
    y = rgb.astype(np.float64).mean(axis=2)
    lap = -4 * y[1:-1, 1:-1] + y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:]
    return float(lap.var())


def candidates(shots: list[dict[str, Any]], workdir: Path) -> list[dict[str, Any]]:
    """One scored keyframe per shot (the first frame of the clip the cut uses), scored at ≤ 540 px wide."""
    out = []
    for i, shot in enumerate(shots):
        png = frame_at(shot["clip"], 0, workdir / f"keyframe-{i:03d}.png")
        img = Image.open(png).convert("RGB")
        if img.width > 540:
            img = img.resize((540, round(img.height * 540 / img.width)), Image.BILINEAR)
        rgb = np.asarray(img)
        out.append({"shot": shot["id"], "frame": shot.get("source_in", 0), "image": str(png),
                    "colourfulness": round(colourfulness(rgb), 3), "sharpness": round(sharpness(rgb), 3)})
    best_c = max((c["colourfulness"] for c in out), default=1.0) or 1.0
    best_s = max((c["sharpness"] for c in out), default=1.0) or 1.0
    for c in out:
        c["score"] = round(c["colourfulness"] / best_c + c["sharpness"] / best_s, 4)
    return out


def fill(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale to cover `size`, then crop the centre (a 3:4 cover keeps the middle of a 9:16 frame)."""
    w, h = size
    scale = max(w / img.width, h / img.height)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    return img.crop((left, top, left + w, top + h))


def safe_box(size: tuple[int, int], safe: dict[str, float]) -> tuple[int, int, int, int]:
    w, h = size
    return (round(w * safe["left"]), round(h * safe["top"]), round(w * (1 - safe["right"])),
            round(h * (1 - safe["bottom"])))


def wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Break at spaces where there are any, else between characters (CJK), to fit `width` pixels."""
    units = text.split(" ") if " " in text else list(text)
    joiner = " " if " " in text else ""
    lines, line = [], ""
    for unit in units:
        trial = f"{line}{joiner}{unit}" if line else unit
        if font.getlength(trial) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = unit
    return lines + ([line] if line else [])


def compose(frame: Path, size: tuple[int, int], title: str, label: str, font_path: str,
            safe: dict[str, float], out: Path) -> dict[str, Any]:
    """One cover: the frame filled to `size`, the title at the foot of the safe area on a dark band, the
    AI label at its top-right corner. Returns where each was drawn (to check they sit inside the safe area)."""
    img = fill(Image.open(frame).convert("RGB"), size)
    x0, y0, x1, y1 = safe_box(size, safe)
    draw = ImageDraw.Draw(img, "RGBA")
    px = round(size[0] * 0.085)
    while True:  # at most two lines, each (with its outline) inside the safe width
        font, stroke = ImageFont.truetype(font_path, px), max(2, px // 18)
        lines = wrap(title, font, x1 - x0 - 2 * stroke)
        if px <= 24 or (len(lines) <= 2 and all(font.getlength(ln) + 2 * stroke <= x1 - x0 for ln in lines)):
            break
        px -= 4
    line_h = round(px * 1.25)
    block_h = line_h * len(lines)
    top = y1 - block_h - round(px * 0.4)
    draw.rectangle((x0, top - round(px * 0.3), x1, y1), fill=(0, 0, 0, 140))
    boxes = []
    for i, line in enumerate(lines):
        lw = font.getlength(line)
        x, y = x0 + ((x1 - x0) - lw) / 2, top + i * line_h
        draw.text((x, y), line, font=font, fill=(255, 255, 255), stroke_width=stroke, stroke_fill=(0, 0, 0))
        boxes.append([round(v) for v in draw.textbbox((x, y), line, font=font, stroke_width=stroke)])
    small = ImageFont.truetype(font_path, round(size[0] * 0.045))
    lx = x1 - small.getlength(label) - 16
    draw.rectangle((lx - 12, y0 + 8, x1 - 4, y0 + 20 + small.size * 1.2), fill=(0, 0, 0, 128))
    draw.text((lx, y0 + 12), label, font=small, fill=(255, 255, 255))
    label_box = [round(v) for v in draw.textbbox((lx, y0 + 12), label, font=small)]
    img.save(out, "JPEG", quality=90)
    return {"file": str(out), "size": list(size), "safe_area": [x0, y0, x1, y1], "title_boxes": boxes,
            "label_box": label_box}


def make_covers(shots: list[dict[str, Any]], *, title: str, label: str, font_path: str,
                sizes: list[tuple[int, int]], safe: dict[str, float], workdir: Path) -> dict[str, Any]:
    """Covers for every size from the episode's best keyframe, with the scores behind the choice."""
    cands = candidates(shots, workdir)
    best = max(cands, key=lambda c: c["score"])
    covers = {}
    for w, h in sizes:
        name = f"cover-{w}x{h}.jpg"
        covers[f"{w}x{h}"] = compose(Path(best["image"]), (w, h), title, label, font_path, safe, workdir / name)
    return {"chosen": {k: best[k] for k in ("shot", "frame", "score")}, "candidates": cands, "covers": covers}


def strictest(safes: list[dict[str, float]]) -> dict[str, float]:
    """The safe area clear of every selected platform's overlays (the largest margin on each side)."""
    if not safes:
        return dict(DEFAULT_SAFE)
    return {side: max(s[side] for s in safes) for side in ("top", "bottom", "left", "right")}
