"""Cache entries are immutable and verified: outputs leave the cache as copies (never hard links), entry
files are read-only with recorded SHA-256 digests, a hit whose files changed is a miss (re-rendered and
reported), and `microdrama cache verify` checks the whole cache."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cache import Cache, file_digest, place
from tests.short_jobs import write_job

SMALL = ["stages.storyboard.width=144", "stages.storyboard.height=256", "stages.video.width=144",
         "stages.video.height=256", "stages.video.fps=8", "stages.edit.preset=ultrafast"]
CUE = "\n99\n00:00:30,000 --> 00:00:31,000\nan editor's extra cue\n"


@pytest.fixture(scope="module")
def episode(tmp_path_factory, ray_session):
    """A two-shot episode at a tiny size, run once through the CLI (in this process: the session's Ray)."""
    work = tmp_path_factory.mktemp("integrity")
    job = write_job(work / "job", "integrity", "ep01")
    args = ["run", str(job), f"output_dir={work / 'out'}", f"cache_dir={work / 'cache'}",
            *SMALL, "--quiet", "--ledger", f"sqlite:///{work / 'ledger.db'}",
            "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"]
    first = run(args)
    assert first.exit_code == 0, first.output
    out = work / "out" / "integrity" / "ep01"
    return {"work": work, "args": args, "out": out, "cache": Cache(work / "cache")}


def run(args: list[str]):
    from pipeline.cli import _mount, app

    if "cache" not in {g.name for g in app.registered_groups}:
        _mount()
    return CliRunner().invoke(app, args)


def verify(cache_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "cache", "verify", "--cache-dir", str(cache_dir),
                           *extra], capture_output=True, text=True, timeout=120)


def manifest(episode) -> dict:
    return json.loads((episode["out"] / "manifest.json").read_text(encoding="utf-8"))


def edit_entry(episode) -> Path:
    return episode["cache"].path(manifest(episode)["cache"]["edit_key"])


def test_outputs_are_copies_and_entries_read_only(episode) -> None:
    published = [p for p in episode["out"].rglob("*") if p.is_file()]
    assert len(published) > 10
    assert [p for p in published if p.stat().st_nlink != 1] == []  # no hard link into the cache
    assert [p for p in published if p.is_symlink()] == []
    assert all(p.stat().st_mode & stat.S_IWUSR for p in published)  # the user's copy is theirs to edit
    entries = list(episode["cache"].keys())
    assert len(entries) == 9  # script, translate, edit + 2 shots × storyboard, dub, video
    for key in entries:
        record = json.loads((episode["cache"].path(key) / "entry.json").read_text(encoding="utf-8"))
        files = [p for p in episode["cache"].path(key).rglob("*") if p.is_file()]
        assert {p.relative_to(episode["cache"].path(key)).as_posix() for p in files} == {*record["digests"], "entry.json"}
        assert all(file_digest(episode["cache"].path(key) / f) == d for f, d in record["digests"].items())
        assert [p for p in files if p.stat().st_mode & 0o222] == [], key  # read-only


def test_an_edited_output_is_not_republished_and_a_corrupt_entry_is_rerendered(episode) -> None:
    """The issue's case: a cue appended in place to an output .srt (vim writes in place)."""
    srt = episode["out"] / "episode.zh.srt"
    pristine = srt.read_text(encoding="utf-8")
    with open(srt, "a", encoding="utf-8") as fh:
        fh.write(CUE)
    cached = edit_entry(episode) / "episode.zh.srt"
    assert CUE not in cached.read_text(encoding="utf-8")  # the edit stayed in the copy
    assert verify(episode["work"] / "cache").returncode == 0
    again = run(episode["args"])
    assert again.exit_code == 0, again.output
    assert manifest(episode)["cache"]["all_cached"] is True
    assert manifest(episode)["cache"]["corrupt_entries"] == []
    assert srt.read_text(encoding="utf-8") == pristine  # the cache's own file, not the edited one

    # the same append reaching the cache itself (as the old hard links let it, or a tool ignoring the mode)
    os.chmod(cached, 0o644)
    with open(cached, "a", encoding="utf-8") as fh:
        fh.write(CUE)
    bad = verify(episode["work"] / "cache")
    assert bad.returncode == 1
    key = manifest(episode)["cache"]["edit_key"]
    lines = bad.stdout.splitlines()
    assert lines[0].startswith(f"bad: {key[:2]}/{key}: episode.zh.srt was changed after it was cached")
    assert len(lines) == 1  # one line per bad entry, nothing else
    third = run(episode["args"])
    assert third.exit_code == 0, third.output
    assert third.stdout.splitlines()[-1] == str(episode["out"] / "episode.mp4")
    warning = [ln for ln in third.stderr.splitlines() if "corrupt" in ln]
    assert len(warning) == 1 and "cache: 1 corrupt entry re-rendered (edit)" in warning[0], third.stderr
    m = manifest(episode)
    assert [(c["stage"], c["shot"], c["key"]) for c in m["cache"]["corrupt_entries"]] == [("edit", None, key)]
    assert m["cache"]["hits"] == m["cache"]["executions"] - 1  # only the corrupt entry re-rendered
    assert CUE not in srt.read_text(encoding="utf-8")
    assert CUE not in (edit_entry(episode) / "episode.zh.srt").read_text(encoding="utf-8")
    assert verify(episode["work"] / "cache").returncode == 0
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{episode['work'] / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["integrity"], filter_string="tags.`microdrama.kind` = 'episode'",
                              order_by=["attributes.start_time DESC"])
    assert runs.iloc[0]["tags.cache.corrupt_entries"] == "1"
    assert runs.iloc[1]["tags.cache.corrupt_entries"] == "0"


def test_verify_repair_removes_bad_entries(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    keys = []
    for i in range(3):
        staging = cache.staging()
        (staging / "panel.png").write_bytes(b"frame %d" % i)
        keys.append(f"{i:02d}" + "ab" * 31)
        cache.commit(keys[-1], staging, {"image": str(staging / "panel.png")})
    assert verify(tmp_path / "cache").stdout.startswith("ok: 3 entries verified")
    damaged = cache.path(keys[1]) / "panel.png"
    os.chmod(damaged, 0o644)
    damaged.write_bytes(b"bit rot")
    (cache.path(keys[2]) / "panel.png").unlink()
    assert cache.get(keys[0]) is not None and cache.get(keys[1]) is None
    assert "changed after it was cached" in cache.lookup(keys[1]).problem
    assert cache.lookup(keys[2]).problem == "panel.png is missing"
    bad = verify(tmp_path / "cache")
    assert bad.returncode == 1 and len(bad.stdout.splitlines()) == 2
    fixed = verify(tmp_path / "cache", "--repair")
    assert fixed.returncode == 0 and fixed.stdout.count("removed: ") == 2
    assert not cache.path(keys[1]).exists() and not cache.path(keys[2]).exists()
    assert verify(tmp_path / "cache").stdout.startswith("ok: 1 entries verified")
    missing = verify(tmp_path / "nowhere")
    assert missing.returncode == 2 and "--cache-dir" in missing.stderr


def test_place_copies_never_links(tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(3 << 20))
    os.chmod(src, 0o444)
    how = place(src, tmp_path / "b.bin")
    assert how in ("reflink", "copy")
    assert (tmp_path / "b.bin").read_bytes() == src.read_bytes()
    assert os.stat(tmp_path / "b.bin").st_ino != os.stat(src).st_ino and os.stat(src).st_nlink == 1
    with open(tmp_path / "b.bin", "ab") as fh:
        fh.write(b"edit")
    assert src.stat().st_size == 3 << 20
    with pytest.raises(FileExistsError):
        place(src, tmp_path / "b.bin")  # never over an existing file
