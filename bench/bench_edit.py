"""Edit stage vs one hand-written ffmpeg command making the same final file; end-to-end preview speed.

1. Runs the demo job (preview-cpu) into a fresh workspace: end-to-end seconds per second of output.
2. Re-runs the edit stage on the cached shot inputs (ours: subtitles, audio join, loudness measurement,
   final encode) and, alternately, a single ffmpeg command that produces the same final file from the
   same inputs (concat, scale, burned subtitles, label, one-pass loudnorm, x264/AAC). Ratio = ours/ref,
   best of N each; target ≤ 1.2.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ffmpeg

from pipeline.cache import Cache
from pipeline.job import CONFIGS, load_job
from pipeline.stages import StageCall, StageRun
from pipeline.stages.edit import EditStage, build_graph, timeline

RESULTS = Path(__file__).parent / "results"


def run_reference(job, inputs: dict, subs: dict, out: Path) -> None:
    """The whole edit as one ffmpeg command: shot WAVs concatenated in-graph, one-pass loudnorm."""
    shots = timeline(inputs["shots"])
    langs = list(shots[0]["audio"])
    audio = {}
    for lang in langs:
        parts = [ffmpeg.input(s["audio"][lang]).audio for s in shots]
        audio[lang] = ffmpeg.concat(*parts, v=0, a=1) if len(parts) > 1 else parts[0]
    graph = build_graph(job, [s["clip"] for s in shots], {lang: "" for lang in langs}, {}, subs, out,
                        inputs["content_id"], two_pass=False, audio_streams=audio)
    graph.run(quiet=True, overwrite_output=True)


def main(repeats: int = 3) -> dict:
    from pipeline.episode import run_job

    work = Path(tempfile.mkdtemp(prefix="bench-edit-"))
    shutil.copytree(CONFIGS / "episodes" / "demo", work / "job")
    job = load_job(work / "job" / "job.yaml", [f"output_dir={work / 'out'}", f"cache_dir={work / 'cache'}"])
    t0 = time.perf_counter()
    manifest = run_job(job, quiet=True, tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                       ledger_url=f"sqlite:///{work / 'ledger.db'}")
    e2e = time.perf_counter() - t0
    edit_out = Cache(work / "cache").get(manifest["cache"]["edit_key"])
    inputs = json.loads(Path(edit_out["inputs"]).read_text("utf-8"))
    subs = edit_out["subtitles"]
    ours, ref = [], []
    for i in range(repeats):
        d = work / f"ours{i}"
        d.mkdir()
        t = time.perf_counter()
        EditStage(job).run(StageCall(None, inputs), StageRun(workdir=d, backend=None,
                                                             report_usage=lambda *a: None))
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_reference(job, inputs, subs, work / f"ref{i}.mp4")
        ref.append(time.perf_counter() - t)
    result = {"episode_seconds": manifest["duration_s"], "shots": len(manifest["shots"]),
              "end_to_end_s": round(e2e, 2),
              "end_to_end_s_per_output_s": round(e2e / manifest["duration_s"], 3),
              "edit_stage_s": round(min(ours), 3), "single_ffmpeg_s": round(min(ref), 3),
              "edit_ratio": round(min(ours) / min(ref), 3), "target_edit_ratio": 1.2,
              "cpus": os.cpu_count()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "edit.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
