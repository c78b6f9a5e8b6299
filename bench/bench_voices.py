"""Benchmark: the dub stage's voices — seconds per line of speech and real-time factor, as ratios to espeak-ng.

M lines (quick: 3, default: 8), alternating Mandarin and English, are spoken by each backend through its
`speak(text, out_path, lang=, speaker=, voice=, emotion=)` method, exactly as the dub stage calls it:

- `espeak-ng` (the reference: a formant synthesiser, one subprocess per line),
- `vits-tiny` (the tiny random VITS of models/tiny.py, through transformers' VitsModel),
- `f5-tiny` (the tiny random F5-TTS twin: the real CFM + DiT + Vocos code path; `steps` flow steps, 4 by
  default here where F5's default is 32), cloning one 4 s synthetic reference clip with its transcript.

Each backend is built and warmed with one line per language first (model build / load and the reference
clip's processing are reported apart, as `load_and_warm_s`); then every line is spoken `--repeats` times
(default 3) and its best time counts. Figures: seconds of compute per line, real-time factor (seconds of
compute per second of audio produced) and both as ratios to espeak-ng's, measured in the same process.
On a shared machine single lines can still be noisy; `per_line` keeps each line's figures. f5-tiny has
random weights: its figures are speed mechanics only, its audio is noise; the real F5TTS_v1_Base needs its
weights and, for speed, a GPU (not measured here).

Run `python -m bench.bench_voices` (`--quick` for 3 lines; `--steps N` for F5's flow steps). Writes
bench/results/voices.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.media import voice_clip

RESULTS = Path(__file__).parent / "results" / "voices.json"

LINES = [("zh", "签了它，我们明天再谈。"), ("en", "Sign it, and we will talk tomorrow."),
         ("zh", "你以为我会就这样放弃吗？"), ("en", "You think I would just give up like that?"),
         ("zh", "三年前的那场大火，我都记得。"), ("en", "I remember the fire three years ago."),
         ("zh", "从今天起，你就是我的助理。"), ("en", "From today on, you are my assistant.")]
CLIP_TEXT = "今天天气很好，我们一起走吧。"  # the reference clip's transcript (as tests/test_voices.py)
SPEAKER = "林晓"


clip = voice_clip  # tests/media.py


def lines(m: int) -> list[tuple[str, str]]:
    return [LINES[i % len(LINES)] for i in range(m)]


def run_backend(name: str, options: dict[str, Any], voice: dict[str, Any], todo: list[tuple[str, str]],
                work: Path, repeats: int) -> dict[str, Any]:
    from models.registry import resolve

    t0 = time.perf_counter()
    backend = resolve("dub", name)(**options)
    for lang, text in {lang: text for lang, text in reversed(todo)}.items():  # one warm-up line per language
        backend.speak(text, work / f"{name}-warm-{lang}.wav", lang=lang, speaker=SPEAKER, voice=voice, emotion=None)
    load_s = time.perf_counter() - t0
    per_line = []
    for i, (lang, text) in enumerate(todo):
        times = []
        for _ in range(repeats):  # best of `repeats`: the machine may be shared
            t = time.perf_counter()
            r = backend.speak(text, work / f"{name}-{i}.wav", lang=lang, speaker=SPEAKER, voice=voice, emotion=None)
            times.append(time.perf_counter() - t)
        per_line.append({"lang": lang, "chars": len(text), "compute_s": round(min(times), 4),
                         "audio_s": round(float(r.outputs["duration_s"]), 4),
                         "sample_rate": int(r.outputs["sample_rate"])})
    compute = sum(x["compute_s"] for x in per_line)
    audio = sum(x["audio_s"] for x in per_line)
    return {"options": options, "load_and_warm_s": round(load_s, 3), "lines": len(per_line),
            "s_per_line": round(compute / len(per_line), 4), "audio_s_per_line": round(audio / len(per_line), 4),
            "rtf": round(compute / audio, 4) if audio else None, "per_line": per_line}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 lines instead of 8")
    p.add_argument("--lines", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3, help="times each line is spoken; the best counts")
    p.add_argument("--steps", type=int, default=4, help="F5 flow-matching steps (F5's default is 32)")
    args = p.parse_args(argv if argv is not None else [])
    import torch

    m = args.lines or (3 if args.quick else 8)
    todo = lines(m)
    work = Path(tempfile.mkdtemp(prefix="bench-voices-"))
    ref = clip(work / "ref.wav")
    backends = {"espeak-ng": ({}, {"gender": "f"}),
                "vits-tiny": ({}, {}),
                "f5-tiny": ({"steps": args.steps}, {"reference": str(ref), "transcript": CLIP_TEXT, "seed": 11})}
    report: dict[str, Any] = {
        "bench": "voices",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available()},
        "lines": m, "repeats": args.repeats, "langs": sorted({lang for lang, _ in todo}),
        "reference_backend": "espeak-ng",
        "notes": {"f5-tiny": f"tiny random-weight F5-TTS twin, {args.steps} flow steps (F5's default 32): speed "
                             "mechanics only, the audio is noise",
                  "vits-tiny": "tiny random-weight VITS: speed mechanics only",
                  "f5-tts real": "not measured: F5TTS_v1_Base needs its weights (SWivid/F5-TTS) and, for speed, "
                                 "a GPU" + ("" if torch.cuda.is_available() else "; no GPU here")},
        "backends": {}}
    for name, (options, voice) in backends.items():
        report["backends"][name] = run_backend(name, options, voice, todo, work, args.repeats)
        b = report["backends"][name]
        print(f"{name}: {b['s_per_line']} s/line, rtf {b['rtf']}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    ref_b = report["backends"]["espeak-ng"]
    report["ratios_to_espeak"] = {
        name: {"s_per_line": round(b["s_per_line"] / ref_b["s_per_line"], 2),
               "rtf": round(b["rtf"] / ref_b["rtf"], 2) if b["rtf"] and ref_b["rtf"] else None}
        for name, b in report["backends"].items() if name != "espeak-ng"}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(report["ratios_to_espeak"], indent=2))
    print(f"wrote {RESULTS}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
