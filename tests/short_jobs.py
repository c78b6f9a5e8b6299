"""Short episode jobs for cluster, PostgreSQL and scale tests: two shots, one language, 270×480, preview-cpu."""
from __future__ import annotations

from pathlib import Path

SCREENPLAY = """\
Title: 试映
Language: zh
Languages: zh
Characters:
    林晓 | en=Lin Xiao | voice=f | age=23 | desc=实习生
    顾辰 | en=Gu Chen | voice=m | age=32 | desc=总裁

内景. 办公室 - 夜

[[shot: close, push-in]]
顾辰
{first}

[[shot: medium, hold]]
林晓
{second}
"""

JOB = """\
drama: {drama}
episode: {episode}
title: 试映 {episode}
company: 示例影业有限公司
languages: [zh]
profile: preview-cpu
screenplay: episode.fountain
seed: {seed}
stages:
  storyboard: {{width: 270, height: 480}}
  video: {{width: 270, height: 480, fps: 12}}
  dub: {{languages: [zh]}}
  edit: {{preset: ultrafast}}
"""

LINES = [("签了它。", "好。"), ("你是谁？", "我是替身。"), ("明天见。", "再见。"), ("为什么？", "因为你像她。")]


def write_job(folder: Path, drama: str, episode: str, n: int = 0) -> Path:
    """folder/job.yaml + folder/episode.fountain; `n` picks the dialogue, so episodes differ in content."""
    folder.mkdir(parents=True, exist_ok=True)
    first, second = LINES[n % len(LINES)]
    if n >= len(LINES):
        first, second = f"{first}（第{n}次）", second
    (folder / "episode.fountain").write_text(SCREENPLAY.format(first=first, second=second), encoding="utf-8")
    path = folder / "job.yaml"
    path.write_text(JOB.format(drama=drama, episode=episode, seed=1000 + n), encoding="utf-8")
    return path


def write_batch(folder: Path, drama: str, count: int, start: int = 0) -> list[Path]:
    """count jobs under folder/<episode>/job.yaml (episodes ep01, ep02, …)."""
    return [write_job(folder / f"ep{i + 1:02d}", drama, f"ep{i + 1:02d}", i) for i in range(start, start + count)]
