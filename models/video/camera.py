"""Video backend "camera-move": animates a storyboard panel with the shot's camera move, using ffmpeg."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import ffmpeg

from models import options as opt
from models.registry import BackendResult
from pipeline.script import CAMERA_MOVES, Shot

_EASES = ("smooth", "linear")


class CameraMoveOptions(opt.BackendOptions):
    amount: float = opt.Field(0.10, gt=0, le=0.5)  # zoom / travel, a fraction of the frame
    ease: opt.Literal["smooth", "linear"] = "smooth"
    supersample: opt.Literal[1, 2, 3] = 2
    pix_fmt: opt.Literal["yuv420p", "yuv444p"] = "yuv420p"
    preset: opt.Literal[opt.X264_PRESETS] = "ultrafast"  # x264 preset of the lossless intermediate


class CameraMoveVideo:
    """Push-in / pull-out / pans / tilts over a still panel as one ffmpeg graph (zoompan).

    The panel is cover-fitted to the output aspect at ``supersample``× the output size, then ``zoompan``
    picks a window per frame and scales it to width×height. zoompan's window is integer-aligned (and
    even-aligned in 4:2:0), so it runs in 4:4:4 at 2×: the window moves in half-pixel steps and slow
    moves do not judder. ``hold`` skips zoompan entirely (one scaled frame, cloned). Output is x264 lossless (``-qp 0``, ``-preset ultrafast``) in
    Matroska, **yuv420p** BT.709 limited range — the same chroma layout and matrix the final H.264
    encode uses, so the edit stage decodes exact pixels and the only lossy step in the pipeline is its
    single encode. (4:4:4 output would carry chroma the final 4:2:0 file throws away, in bigger files.)

    Options: ``amount`` (zoom for push/pull and the travel margin for pans/tilts, fraction of the frame,
    default 0.10 — matches a 5 % action-safe margin), ``ease`` ("smooth" ease-in-out or "linear"),
    ``supersample`` (1–3, default 2; 1 is faster, coarser sub-pixel motion), ``pix_fmt`` ("yuv420p" or
    "yuv444p"), ``preset`` (x264 preset, default "ultrafast"). The seed is recorded but unused: the
    motion is fully determined by the shot.
    """

    Options = CameraMoveOptions
    resident = False

    def __init__(self, *, amount: float = 0.10, ease: str = "smooth", supersample: int = 2,
                 pix_fmt: str = "yuv420p", preset: str = "ultrafast") -> None:
        if not 0.0 < amount <= 0.5:
            raise ValueError(f"video camera-move: amount must be in (0, 0.5], got {amount!r}")
        if ease not in _EASES:
            raise ValueError(f"video camera-move: ease must be one of {', '.join(_EASES)}, got {ease!r}")
        if supersample not in (1, 2, 3):
            raise ValueError(f"video camera-move: supersample must be 1, 2 or 3, got {supersample!r}")
        if pix_fmt not in ("yuv420p", "yuv444p"):
            raise ValueError(f"video camera-move: pix_fmt must be yuv420p or yuv444p, got {pix_fmt!r}")
        self.amount, self.ease, self.supersample = amount, ease, supersample
        self.pix_fmt, self.preset = pix_fmt, preset

    def render(self, shot: Shot, keyframe: Path, out_path: Path, *, duration_s: float, fps: int,
               width: int, height: int, seed: int) -> BackendResult:
        frames = round(duration_s * fps)
        _check(shot.camera, frames, width, height, Path(keyframe))
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        graph = self._graph(Path(keyframe), shot.camera, frames, fps, width, height)
        output = graph.output(
            str(out_path), vcodec="libx264", qp=0, preset=self.preset, pix_fmt=self.pix_fmt, r=fps,
            vframes=frames, an=None, colorspace="bt709", color_primaries="bt709", color_trc="bt709",
            color_range="tv", f="matroska",
        ).global_args("-nostdin", "-v", "error")
        try:
            output.run(overwrite_output=True, capture_stdout=True, capture_stderr=True)
        except ffmpeg.Error as exc:
            tail = exc.stderr.decode("utf-8", "replace")[-2000:]
            raise RuntimeError(f"video camera-move: ffmpeg failed for shot {shot.id}: {tail}") from exc
        written = count_frames(out_path)
        if written != frames:
            raise RuntimeError(f"video camera-move: shot {shot.id} wrote {written} frames, expected {frames}")
        return BackendResult(
            outputs={"clip": str(out_path), "frames": frames, "width": width, "height": height},
            params={"camera": shot.camera, "fps": fps, "amount": self.amount, "ease": self.ease,
                    "supersample": self.supersample, "pix_fmt": self.pix_fmt, "codec": "libx264 qp0",
                    "seed": seed},
        )

    def _graph(self, keyframe: Path, move: str, frames: int, fps: int, width: int, height: int):
        """ffmpeg-python graph: cover-fit the panel in BT.709 YUV, then clone it (hold) or zoompan."""
        ss = 1 if move == "hold" else self.supersample
        stream = ffmpeg.input(str(keyframe), framerate=fps)
        # RGB -> BT.709 YUV once, on the single panel: swscale's matrix-explicit path is slow per frame.
        stream = (stream.filter("scale", width * ss, height * ss, force_original_aspect_ratio="increase",
                                flags="lanczos", out_color_matrix="bt709", out_range="tv")
                  .filter("crop", width * ss, height * ss).filter("setsar", 1))
        if move == "hold":
            return stream.filter("format", self.pix_fmt).filter("tpad", stop_mode="clone", stop=frames - 1)
        # zoompan in 4:4:4: with 4:2:0 it snaps the window to even pixels (whole output pixels at 2×).
        z, x, y = self.expressions(move, frames)
        stream = stream.filter("format", "yuv444p").filter("zoompan", z=z, x=x, y=y, d=frames,
                                                           s=f"{width}x{height}", fps=fps)
        return stream.filter("format", self.pix_fmt)

    def expressions(self, move: str, frames: int) -> tuple[str, str, str]:
        """zoompan z/x/y expressions (no commas: ffmpeg-python does not escape them)."""
        p = f"(on/{max(1, frames - 1)})"
        e = f"({p}*{p}*(3-2*{p}))" if self.ease == "smooth" else p
        a = f"{self.amount:.6f}"
        cx, cy = "((iw-iw/zoom)/2)", "((ih-ih/zoom)/2)"
        span_x, span_y = "(iw-iw/zoom)", "(ih-ih/zoom)"
        table = {
            "push-in": (f"1+{a}*{e}", cx, cy),
            "pull-out": (f"1+{a}*(1-{e})", cx, cy),
            "pan-left": (f"1+{a}", f"{span_x}*(1-{e})", cy),
            "pan-right": (f"1+{a}", f"{span_x}*{e}", cy),
            "tilt-up": (f"1+{a}", cx, f"{span_y}*(1-{e})"),
            "tilt-down": (f"1+{a}", cx, f"{span_y}*{e}"),
        }
        return table[move]


def _check(move: str, frames: int, width: int, height: int, keyframe: Path) -> None:
    if move not in CAMERA_MOVES:
        raise ValueError(f"video camera-move: unknown camera move {move!r}; choose one of: {', '.join(CAMERA_MOVES)}")
    if frames < 1:
        raise ValueError(f"video camera-move: duration_s*fps must give at least one frame, got {frames}")
    if width % 2 or height % 2 or width < 16 or height < 16:
        raise ValueError(f"video camera-move: width and height must be even and ≥ 16 (4:2:0), got {width}x{height}")
    if not keyframe.is_file():
        raise FileNotFoundError(f"video camera-move: keyframe {keyframe} does not exist")


def count_frames(path: Path) -> int:
    """Number of video packets (= frames for x264 lossless intra/inter streams) as counted by ffprobe."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
         "stream=nb_read_packets", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout
    return int(json.loads(out)["streams"][0]["nb_read_packets"])
