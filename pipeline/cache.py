"""Content-addressed stage outputs: a key from everything that determines an output, stored atomically.

An entry is a folder `<root>/<key[:2]>/<key>/` holding the stage's files and `entry.json` (the outputs
dict, with file paths relative to the folder). Entries are built in a temporary sibling folder and
renamed into place, so a half-written entry is never visible; re-runs and resumes pay nothing twice.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

CACHE_FORMAT = 1


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


class Cache:
    """A folder of immutable, content-addressed entries."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored outputs with file paths made absolute, or None when absent or incomplete."""
        entry = self.path(key) / "entry.json"
        try:
            data = json.loads(entry.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if data.get("format") != CACHE_FORMAT:
            return None
        base = self.path(key)
        files = data.get("files", [])
        if any(not (base / f).exists() for f in files):
            return None
        return _absolutise(data["outputs"], base, set(files))

    def staging(self) -> Path:
        """A fresh private folder to build an entry in."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "tmp"
        tmp.mkdir(exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="build-", dir=tmp))

    def commit(self, key: str, staging: Path, outputs: dict[str, Any]) -> dict[str, Any]:
        """Move a built entry into place atomically; a concurrent identical build wins harmlessly."""
        files = sorted(_relative_files(outputs, staging))
        record = {"format": CACHE_FORMAT, "key": key, "files": files,
                  "outputs": _relativise(outputs, staging)}
        (staging / "entry.json").write_text(json.dumps(record, ensure_ascii=False, indent=1), "utf-8")
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staging, final)
        except OSError:  # already there (another worker built it) or a stale incomplete entry
            if self.get(key) is None:
                stale = final.with_name(f"{key}.stale-{uuid.uuid4().hex[:8]}")
                os.rename(final, stale)
                os.rename(staging, final)
                shutil.rmtree(stale, ignore_errors=True)
            else:
                shutil.rmtree(staging, ignore_errors=True)
        result = self.get(key)
        assert result is not None, f"cache entry {key} missing right after commit"
        return result


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
