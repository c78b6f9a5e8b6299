"""Screenplay parser vs the reference Fountain parser screenplain on one feature-length screenplay.

The feature is four copies of the real Fountain files in tests/data/fountain (~250 KB, the size of a
feature film). Both parsers read the same text in the same process, alternately, best of N each;
ratio = ours/ref. The figure to keep an eye on: ours stays well under a second and near the reference.
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

from pipeline.screenplay import parse

RESULTS = Path(__file__).parent / "results"
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "data" / "fountain"


def feature(copies: int = 4) -> str:
    """Bodies (title pages cut) of the fixtures over 1 KB, `copies` times, scene numbers telling copies apart."""
    bodies = [p.read_text(encoding="utf-8-sig").split("\n\n", 1)[1] for p in sorted(FIXTURES.glob("*.fountain"))
              if p.stat().st_size > 1000]
    body = "\n\n".join(bodies)
    return "Title: Feature\n\n" + "\n\n".join(body.replace(" - DAY", f" - DAY #{i}#") for i in range(copies))


def main(repeats: int = 5) -> dict:
    from screenplain.parsers import fountain as reference

    text = feature()
    ours, ref = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        script = parse(text)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        reference.parse(io.StringIO(text))
        ref.append(time.perf_counter() - t)
    result = {"bytes": len(text.encode("utf-8")), "scenes": len(script.scenes), "shots": len(script.shots),
              "lines": sum(len(s.lines) for s in script.shots), "ours_s": round(min(ours), 4),
              "screenplain_s": round(min(ref), 4), "ratio": round(min(ours) / min(ref), 3)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "screenplay.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
