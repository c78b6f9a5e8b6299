"""Short episode jobs for cluster, PostgreSQL and scale tests: two shots, one language; preview-cpu at 270×480,
or the tiny profile (tiny random models) at its 144×256."""
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
profile: {profile}
screenplay: episode.fountain
seed: {seed}
stages:
  storyboard: {{width: {width}, height: {height}}}
  video: {{width: {width}, height: {height}, fps: {fps}}}
  dub: {{languages: [zh]}}
  edit: {{preset: ultrafast}}
"""

LINES = [("签了它。", "好。"), ("你是谁？", "我是替身。"), ("明天见。", "再见。"), ("为什么？", "因为你像她。")]


SIZES = {"preview-cpu": (270, 480, 12), "tiny": (144, 256, 8)}  # width, height, fps


def write_job(folder: Path, drama: str, episode: str, n: int = 0, profile: str = "preview-cpu") -> Path:
    """folder/job.yaml + folder/episode.fountain; `n` picks the dialogue, so episodes differ in content."""
    folder.mkdir(parents=True, exist_ok=True)
    first, second = LINES[n % len(LINES)]
    if n >= len(LINES):
        first, second = f"{first}（第{n}次）", second
    (folder / "episode.fountain").write_text(SCREENPLAY.format(first=first, second=second), encoding="utf-8")
    path = folder / "job.yaml"
    width, height, fps = SIZES[profile]
    path.write_text(JOB.format(drama=drama, episode=episode, seed=1000 + n, profile=profile, width=width,
                               height=height, fps=fps), encoding="utf-8")
    return path


def write_batch(folder: Path, drama: str, count: int, start: int = 0, profile: str = "preview-cpu") -> list[Path]:
    """count jobs under folder/<episode>/job.yaml (episodes ep01, ep02, …)."""
    return [write_job(folder / f"ep{i + 1:02d}", drama, f"ep{i + 1:02d}", i, profile)
            for i in range(start, start + count)]
