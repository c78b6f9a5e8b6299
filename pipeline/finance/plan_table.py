"""The README's cost-per-finished-minute table: `microdrama estimate`'s planned AI-tool cost of the demo episode
on each hosted profile and video provider, printed as Markdown (`python -m pipeline.finance.plan_table`)."""
from __future__ import annotations

import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "configs" / "episodes" / "demo" / "job.yaml"
# (label, overrides) — the demo is a writer's screenplay, so the script stage reads it (fountain)
VARIANTS: list[tuple[str, list[str]]] = [
    ("api — Wan 2.5 i2v 720p, Wan 2.2 keyframes, Qwen-TTS, Qwen-Plus", ["profile=api"]),
    ("api with Wan 2.5 i2v 480p", ["profile=api", "stages.video.options.resolution=480p"]),
    ("api with Seedance 1.0 pro 720p", ["profile=api", "stages.video.backend=seedance-api",
                                        "stages.video.options={model: doubao-seedance-1-0-pro-250528, resolution: 720p}"]),
    ("api with Kling v2.1 std", ["profile=api", "stages.video.backend=kling-api", "stages.video.options={model: kling-v2-1, mode: std}"]),
    ("api with Seedream 3.0 keyframes", ["profile=api", "stages.storyboard.backend=seedream-api",
                                         "stages.storyboard.options={model: doubao-seedream-3-0-t2i-250415}"]),
    ("hybrid — Kling v2.1 std on local keyframes and voices", ["profile=hybrid"]),
]


def rows(job_path: Path = DEMO, tracking_uri: str = "sqlite:///:memory:") -> list[tuple[str, str, str, str]]:
    """(variant, finished minutes, AI tools per episode, per finished minute), each computed by estimate."""
    from pipeline.finance.estimate import estimate
    from pipeline.finance.plan import source_script
    from pipeline.job import load_job

    out = []
    for label, overrides in VARIANTS:
        job = load_job(job_path, [*overrides, "stages.script.backend=fountain", "stages.script.options={}"])
        planned = estimate(job, len(source_script(job).shots), tracking_uri)["planned"]
        minutes = planned["seconds"] / 60
        out.append((label, f"{minutes:.2f}", planned["ai_tools_cny"], planned["ai_tools_per_finished_minute_cny"]))
    return out


def markdown(job_path: Path = DEMO) -> str:
    lines = ["| profile / video provider | demo length (min) | AI tools per episode (CNY) | per finished minute (CNY) |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(job_path)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown() + "\n")
