"""Identity check backends: faces in a keyframe against the characters' reference faces, by ArcFace embedding.

A face detector finds faces (OpenCV's Haar frontal-face cascade, whose trained weights ship inside the
opencv package; or `full-frame` for the tiny profile, whose random-weight keyframes hold no real faces:
the centre square of the whole image stands in for the one face — mechanics, not faces). Each face is cut
with a margin, resized to 112×112 and embedded by an ArcFace recogniser through onnxruntime (insightface's
`w600k_r50.onnx` interface from a local weights dir, or the tiny random IResNet of models/tiny.py). The
score of a character is the cosine similarity of its matched keyframe face with the mean of its reference
faces, in [-1, 1]; faces and characters are matched one to one so that the summed similarity is highest.
A character with no face to compare gets score None and the reason.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from models import hub, options as opt

hub.require_packages("onnxruntime", "numpy", "PIL", "cv2", "scipy")

ARCFACE_FILE = "w600k_r50.onnx"  # insightface's buffalo_l model pack: the ArcFace R50 recogniser (WebFace600K)
DETECTORS = ("haar", "full-frame")
FACE_SIZE = 112
MARGIN = 0.2  # of the box side, added around a detected face before the crop


@dataclass(frozen=True)
class FaceSpec:
    name: str
    tiny: bool
    detector: str


SPECS = {"arcface-tiny": FaceSpec("arcface-tiny", True, "full-frame"),
         "arcface-r50": FaceSpec("arcface-r50", False, "haar")}


def _crop(image: Any, box: tuple[int, int, int, int] | None) -> Any:
    """A square crop around `box` (x, y, w, h) with MARGIN, or the centre square of the image, at 112×112."""
    from PIL import Image

    if box is None:
        side = min(image.size)
        x, y = (image.width - side) // 2, (image.height - side) // 2
        region = (x, y, x + side, y + side)
    else:
        bx, by, bw, bh = box
        side = max(bw, bh) * (1 + 2 * MARGIN)
        cx, cy = bx + bw / 2, by + bh / 2
        region = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
    return image.crop(region).resize((FACE_SIZE, FACE_SIZE), Image.Resampling.BILINEAR)


def _haar() -> Any:
    import cv2

    path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise ValueError(f"the OpenCV face cascade {path} did not load; reinstall opencv-python-headless")
    return cascade


def detect(image: Any, detector: str, cascade: Any = None) -> list[tuple[int, int, int, int] | None]:
    """Face boxes (x, y, w, h), largest first; `full-frame` gives one pseudo-face (None: the centre square)."""
    if detector == "full-frame":
        return [None]
    import cv2
    import numpy as np

    gray = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    side = min(gray.shape)
    found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(max(16, side // 12),) * 2)
    boxes = [tuple(int(v) for v in b) for b in (found if len(found) else [])]
    return sorted(boxes, key=lambda b: -b[2] * b[3])


def match(sims: Any) -> list[int | None]:
    """For each character (row), the face (column) it is matched to, one to one, maximising the summed
    similarity (Hungarian method); None where there are fewer faces than characters."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-sims)
    out: list[int | None] = [None] * sims.shape[0]
    for r, c in zip(rows, cols):
        out[int(r)] = int(c)
    return out


class IdentityOptions(opt.BackendOptions):
    weights_dir: opt.FilePath | None = None  # the folder holding w600k_r50.onnx (insightface's buffalo_l)
    detector: Literal["haar", "full-frame"] | None = None  # default: the backend's (haar; tiny: full-frame)
    providers: list[opt.Annotated[str, opt.Field(pattern=r"^[A-Za-z]{1,40}ExecutionProvider$")]] | None = \
        opt.Field(None, max_length=8)  # onnxruntime execution providers, default CPU
    tiny_seed: opt.Seed = 0


class FaceIdentity:
    """Scores a keyframe's faces against reference faces (resident: the ONNX session is made once).

    Options: ``weights_dir`` (a folder holding ``w600k_r50.onnx``; real backend only), ``detector``
    (haar | full-frame), ``providers`` (onnxruntime execution providers, default CPU), ``tiny_seed``.
    """

    spec: FaceSpec = SPECS["arcface-tiny"]
    Options = IdentityOptions
    resident = True

    def __init__(self, *, weights_dir: str | None = None, detector: str | None = None,
                 providers: list[str] | None = None, tiny_seed: int = 0) -> None:
        s = self.spec
        self.detector = detector or s.detector
        if self.detector not in DETECTORS:
            raise ValueError(f"stages.storyboard.identity.options.detector must be one of {', '.join(DETECTORS)}, "
                             f"got {self.detector!r}")
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.tiny_seed = int(tiny_seed)
        self.model_path: Path | None = None
        if not s.tiny:
            if not weights_dir or not (Path(weights_dir).expanduser() / ARCFACE_FILE).is_file():
                raise hub.WeightsMissing([
                    f"stages.storyboard.identity.backend={s.name!r}: stages.storyboard.identity.options.weights_dir="
                    f"{weights_dir!r} does not hold {ARCFACE_FILE} (insightface's buffalo_l ArcFace recogniser); "
                    "unpack the buffalo_l model pack where the worker can read it and point weights_dir at it"])
            self.model_path = Path(weights_dir).expanduser() / ARCFACE_FILE
        self.loads = 0
        self._session: Any = None
        self._cascade: Any = None
        self._refs: dict[str, Any] = {}  # sha256 of a reference image -> its face embedding (or None)

    @property
    def model(self) -> str:
        return str(self.model_path) if self.model_path else f"tiny-random-arcface(seed={self.tiny_seed})"

    def load(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            from models import tiny

            model = tiny.arcface_onnx(self.tiny_seed) if self.model_path is None else str(self.model_path)
            self._session = ort.InferenceSession(model, providers=self.providers)
            if self.detector == "haar":
                self._cascade = _haar()
            self.loads += 1
        return self._session

    def embed(self, faces: list[Any]) -> Any:
        """L2-normalised embeddings of 112×112 RGB face crops (ArcFace input: (x − 127.5) / 127.5, NCHW)."""
        import numpy as np

        session = self.load()
        batch = np.stack([np.asarray(f.convert("RGB"), dtype=np.float32) for f in faces]).transpose(0, 3, 1, 2)
        out = session.run(None, {session.get_inputs()[0].name: (batch - 127.5) / 127.5})[0]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def faces(self, path: str | Path) -> tuple[list[Any], Any]:
        """(boxes, embeddings) of the faces in an image file, largest first."""
        from PIL import Image

        self.load()
        image = Image.open(path).convert("RGB")
        boxes = detect(image, self.detector, self._cascade)
        return boxes, (self.embed([_crop(image, b) for b in boxes]) if boxes else None)

    def reference(self, paths: list[str]) -> tuple[Any, int]:
        """Mean embedding of the largest face of each reference image (re-normalised) and how many images
        had a face; embeddings are kept per image digest for the life of the process."""
        import numpy as np

        found = []
        for p in paths:
            digest = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            if digest not in self._refs:
                _, emb = self.faces(p)
                self._refs[digest] = None if emb is None else emb[0]
            if self._refs[digest] is not None:
                found.append(self._refs[digest])
        if not found:
            return None, 0
        mean = np.mean(found, axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12), len(found)

    def check(self, keyframe: str | Path, references: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
        """Per character: {"score": cosine similarity or None, "reason", "face": box or "full-frame"}."""
        import numpy as np

        out: dict[str, dict[str, Any]] = {}
        refs: dict[str, Any] = {}
        for name, paths in references.items():
            emb, n = self.reference(paths)
            if emb is None:
                out[name] = {"score": None, "reason": f"no face found in {len(paths)} reference image(s)"}
            else:
                refs[name] = emb
        boxes, faces = self.faces(keyframe)
        names = list(refs)
        if names and faces is None:
            out.update({n: {"score": None, "reason": "no face detected in the keyframe"} for n in names})
        elif names:
            sims = np.stack([refs[n] for n in names]) @ faces.T
            # full-frame is no detection: the one pseudo-face stands for everyone in the shot
            cols = [0] * len(names) if boxes == [None] else match(sims)
            for name, col, row in zip(names, cols, sims):
                if col is None:
                    out[name] = {"score": None, "reason": f"{len(boxes)} face(s) in the keyframe for "
                                                          f"{len(names)} characters; none left for this one"}
                else:
                    out[name] = {"score": round(float(row[col]), 6), "reason": None,
                                 "face": "full-frame" if boxes[col] is None else list(boxes[col])}
        return {n: out[n] for n in references}


class ArcFaceTiny(FaceIdentity):
    spec = SPECS["arcface-tiny"]


class ArcFaceR50(FaceIdentity):
    spec = SPECS["arcface-r50"]
