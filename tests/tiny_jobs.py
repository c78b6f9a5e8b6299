"""Tiny episode jobs for fault, security and load tests: one language, 144×256 pictures, 12 fps, ~2 s a shot."""
from __future__ import annotations

from pathlib import Path

import yaml

SHOT = """
[[shot: medium, hold]]
林晓
{line}
"""

SCREENPLAY = """\
Title: 试映
Language: zh
Characters:
    林晓 | en=Lin Xiao | voice=f | age=23 | desc=实习生

内景. 办公室 - 夜
{shots}"""

LINES = ["你好。", "签了它。", "明天见。", "为什么？", "好吧。", "再见。"]


def write_job(folder: Path, *, drama: str = "fault-drama", episode: str = "ep01", shots: int = 1,
              seed: int = 7, stages: dict | None = None, line: str | None = None, **fields) -> Path:
    """folder/job.yaml + folder/episode.fountain; `stages` and `fields` are merged into the job."""
    folder.mkdir(parents=True, exist_ok=True)
    body = "".join(SHOT.format(line=line or f"{LINES[i % len(LINES)]}（{episode}·{i + 1}）")
                   for i in range(shots))
    (folder / "episode.fountain").write_text(SCREENPLAY.format(shots=body), encoding="utf-8")
    job = {"drama": drama, "episode": episode, "title": f"试映 {episode}", "company": "示例影业有限公司",
           "languages": ["zh"], "profile": "preview-cpu", "screenplay": "episode.fountain", "seed": seed,
           "stages": {"storyboard": {"width": 144, "height": 256},
                      "video": {"width": 144, "height": 256, "fps": 12},
                      "dub": {"languages": ["zh"], "min_shot_s": 1.5},
                      "edit": {"preset": "ultrafast"}}}
    for section, values in (stages or {}).items():
        job["stages"].setdefault(section, {}).update(values)
    job.update(fields)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def places(work: Path) -> list[str]:
    """Overrides keeping every output of a test inside its temp folder."""
    return [f"output_dir={work / 'out'}", f"cache_dir={work / 'cache'}"]


def ledger_entries(url: str, kind: str | None = None, **where) -> list:
    from pipeline.metering.ledger import Ledger

    with Ledger.open(url) as led:
        return led.entries(kind=kind, where=where or None)


def check_exactly_once(url: str) -> dict[str, dict]:
    """Every started attempt has exactly one usage record under its key and every usage record of a stage
    attempt was started; every cost line prices an existing usage record. Returns usage bodies by key."""
    starts = {e.body["usage_key"]: e.body for e in ledger_entries(url, "attempt")}
    usage = [e.body for e in ledger_entries(url, "usage")]
    keys = [u["idempotency_key"] for u in usage]
    assert len(keys) == len(set(keys)), "a usage key appears twice"
    by_key = {u["idempotency_key"]: u for u in usage}
    assert set(starts) == set(by_key), (set(starts) ^ set(by_key))
    for key, u in by_key.items():
        s = starts[key]
        assert (u["job"], u["stage"], u["shot"], u["attempt"]) == (s["job"], s["stage"], s["shot"], s["attempt"])
    for c in (e.body for e in ledger_entries(url, "cost")):
        assert c["usage_key"] in by_key or c["usage_key"].startswith("idle/"), c["usage_key"]
    return by_key


def cli(*args: str):
    """`microdrama ARGS` in this process (sharing the test session's Ray instance); a click Result."""
    from typer.testing import CliRunner

    from pipeline import cli as cli_mod

    if not getattr(cli_mod, "_mounted_for_tests", False):
        cli_mod._mount()
        cli_mod._mounted_for_tests = True
    return CliRunner().invoke(cli_mod.app, list(args), catch_exceptions=False)
