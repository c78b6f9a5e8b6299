"""Run every benchmark: `python -m bench` (or `make bench`); figures land in bench/results/*.json."""
from __future__ import annotations

import importlib
import sys

BENCHES = ["bench.bench_claims", "bench.bench_client_sessions", "bench.bench_edit", "bench.bench_farm", "bench.bench_identity", "bench.bench_metering",
           "bench.bench_resident", "bench.bench_scale", "bench.bench_screenplay", "bench.bench_voices"]


def main(argv: list[str]) -> int:
    chosen = [b for b in BENCHES if not argv or any(a in b for a in argv)]
    for name in chosen:
        print(f"== {name}", flush=True)
        module = importlib.import_module(name)
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
