"""Content-addressed stage outputs: a key from everything that determines an output, stored atomically.

An entry is a folder `<root>/<key[:2]>/<key>/` holding the stage's files and `entry.json` (the outputs
dict, with file paths relative to the folder, and the SHA-256 of every file). Entries are built in a
temporary sibling folder and renamed into place, so a half-written entry is never visible; re-runs and
resumes pay nothing twice.

Entries are immutable and verified: their files are made read-only when committed, every hit re-checks
the digests, and a hit whose files no longer match is a miss (`Lookup.problem` says why; the stage
re-renders and the run reports it). Outputs leave the cache as copies or reflinks (`place`), never hard
links, so editing a published file cannot reach the cache.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHE_FORMAT = 2  # 2: per-file SHA-256 digests, read-only files (format-1 entries are misses, rebuilt once)
ENTRY = "entry.json"
FICLONE = 0x40049409  # linux/fs.h _IOW(0x94, 9, int): share the source's extents (btrfs, XFS, bcachefs)
READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


def digest(*parts: Any) -> str:
    """SHA-256 over the canonical JSON of the parts (sorted keys, no whitespace)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Lookup:
    """What a lookup found: the outputs (paths absolute) of a sound entry, or why there is none to use.
    `problem` is set only for an entry that exists but fails its check (a corrupt entry), not for a miss."""

    outputs: dict[str, Any] | None
    problem: str | None = None


class Cache:
    """A folder of immutable, content-addressed, verified entries."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored outputs with file paths made absolute, or None when absent, incomplete or corrupt."""
        return self.lookup(key).outputs

    def lookup(self, key: str) -> Lookup:
        base = self.path(key)
        try:
            data = json.loads((base / ENTRY).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Lookup(None)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return Lookup(None, f"{ENTRY} unreadable ({type(exc).__name__})")
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            return Lookup(None)  # an older format: rebuilt once, not reported as corrupt
        problem = check_files(base, data)
        if problem:
            return Lookup(None, problem)
        return Lookup(_absolutise(data["outputs"], base, set(data["files"])))

    def staging(self) -> Path:
        """A fresh private folder to build an entry in."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "tmp"
        tmp.mkdir(exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="build-", dir=tmp))

    def commit(self, key: str, staging: Path, outputs: dict[str, Any]) -> dict[str, Any]:
        """Seal a built entry (digests recorded, files read-only) and move it into place atomically; a
        concurrent identical build wins harmlessly; a corrupt or stale entry in the way is replaced."""
        files = sorted(_relative_files(outputs, staging))
        digests = {}  # every file of the entry, named in the outputs or not (a timeline's side files)
        for path in sorted(p for p in staging.rglob("*") if p.is_file() and not p.is_symlink()):
            digests[path.relative_to(staging).as_posix()] = file_digest(path)
            os.chmod(path, READ_ONLY)
        record = {"format": CACHE_FORMAT, "key": key, "files": files, "digests": digests,
                  "outputs": _relativise(outputs, staging)}
        (staging / ENTRY).write_text(json.dumps(record, ensure_ascii=False, indent=1), "utf-8")
        os.chmod(staging / ENTRY, READ_ONLY)
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staging, final)
        except OSError:  # already there (another worker built it) or a stale, incomplete or corrupt entry
            if self.get(key) is None:
                self.remove(key)
                os.rename(staging, final)
            else:
                shutil.rmtree(staging, ignore_errors=True)
        result = self.get(key)
        assert result is not None, f"cache entry {key} missing right after commit"
        return result

    def remove(self, key: str) -> None:
        """Take an entry out of use at once (renamed aside), then delete it."""
        final = self.path(key)
        stale = final.with_name(f"{key}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(final, stale)
        except FileNotFoundError:
            return
        shutil.rmtree(stale, ignore_errors=True)

    def keys(self) -> Iterator[str]:
        """Every committed entry's key (staging and stale folders skipped)."""
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            if len(shard.name) != 2 or not shard.is_dir():
                continue
            for entry in sorted(shard.iterdir()):
                if entry.is_dir() and "." not in entry.name and entry.name.startswith(shard.name):
                    yield entry.name

    def verify(self) -> Iterator[tuple[str, str]]:
        """(key, problem) for every entry that fails its check; sound entries yield nothing."""
        for key in self.keys():
            base = self.path(key)
            try:
                data = json.loads((base / ENTRY).read_text(encoding="utf-8"))
            except FileNotFoundError:
                yield key, f"no {ENTRY} (an incomplete entry)"
                continue
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                yield key, f"{ENTRY} unreadable ({type(exc).__name__})"
                continue
            if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
                yield key, f"format {data.get('format') if isinstance(data, dict) else '?'} entry (current: " \
                           f"{CACHE_FORMAT}); it is rebuilt on its next use"
                continue
            if data.get("key") != key:
                yield key, f"{ENTRY} is for key {str(data.get('key'))[:16]}…, filed under another"
                continue
            problem = check_files(base, data)
            if problem:
                yield key, problem


def check_files(base: Path, data: dict[str, Any]) -> str | None:
    """None when every file of the entry is there with its recorded SHA-256; else the first problem."""
    files, digests = data.get("files"), data.get("digests")
    if not isinstance(files, list) or not isinstance(digests, dict) or not set(files) <= set(digests):
        return f"{ENTRY} lists no digest for some files"
    for name in sorted(digests):
        path = base / name
        try:
            actual = file_digest(path)
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as exc:
            return f"{name} unreadable ({exc.strerror or exc})"
        if actual != digests[name]:
            return f"{name} was changed after it was cached (SHA-256 {actual[:12]}…, recorded {digests[name][:12]}…)"
    return None


def place(src: str | Path, dst: str | Path) -> str:
    """Publish a cache file as an independent file: a reflink where the filesystem shares extents
    (FICLONE), else an in-kernel copy (copy_file_range), else a plain copy; never a hard link. The copy
    is writable by its owner (the cache's own file stays read-only). Returns how it was placed."""
    src, dst = Path(src), Path(dst)
    try:
        with open(src, "rb") as fi, open(dst, "xb") as fo:
            try:
                fcntl.ioctl(fo.fileno(), FICLONE, fi.fileno())
                how = "reflink"
            except OSError:
                how = _copy(fi, fo, os.fstat(fi.fileno()).st_size)
    except OSError as exc:
        if exc.filename is None:  # a failed write (a full disk) names no file: name the one being written
            raise OSError(exc.errno, exc.strerror, str(dst)) from exc
        raise
    os.chmod(dst, 0o644)
    return how


def _copy(fi: Any, fo: Any, size: int) -> str:
    try:
        done = 0
        while done < size:
            n = os.copy_file_range(fi.fileno(), fo.fileno(), size - done)
            if n == 0:
                break
            done += n
        if done == size:
            return "copy"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
            raise
    fi.seek(0)
    fo.seek(0)
    fo.truncate()
    shutil.copyfileobj(fi, fo, 1 << 20)
    return "copy"


def _relative_files(outputs: Any, base: Path) -> set[str]:
    found: set[str] = set()
    if isinstance(outputs, dict):
        for v in outputs.values():
            found |= _relative_files(v, base)
    elif isinstance(outputs, list):
        for v in outputs:
            found |= _relative_files(v, base)
    elif isinstance(outputs, str) and outputs.startswith(str(base) + os.sep):
        found.add(os.path.relpath(outputs, base))
    return found


def _relativise(outputs: Any, base: Path) -> Any:
    if isinstance(outputs, dict):
        return {k: _relativise(v, base) for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [_relativise(v, base) for v in outputs]
    if isinstance(outputs, str) and outputs.startswith(str(base) + os.sep):
        return os.path.relpath(outputs, base)
    return outputs


def _absolutise(outputs: Any, base: Path, files: set[str]) -> Any:
    if isinstance(outputs, dict):
        return {k: _absolutise(v, base, files) for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [_absolutise(v, base, files) for v in outputs]
    if isinstance(outputs, str) and outputs in files:
        return str(base / outputs)
    return outputs
