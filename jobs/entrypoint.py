"""Ray job entrypoint: run one or many episode jobs inside a Ray cluster and print a JSON summary.

    python -m jobs.entrypoint configs/episodes/demo/job.yaml [more jobs or folders] \\
        [--set stages.video.fps=12] [--parallel 2] [--min-nodes 2] [--tracking-uri URI] [--ledger URL]

Run from the project root (the Ray job's working_dir, or /app in the image). It joins the cluster it runs in
(`--address auto`), starts or finds the cluster's one ledger writer (a detached named actor for the ledger
URL), runs the episodes (`--parallel` at a time) and logs them to MLflow at the tracking
URI given (default $MLFLOW_TRACKING_URI). The last line on stdout is the JSON summary.

Exit codes: 0 every episode done, 1 an episode failed or was stopped by its budget, 2 bad input (nothing ran).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.batch import EXIT_BAD_INPUT, connect, exit_code, find_jobs, load_jobs, run_batch, wait_for_nodes
from pipeline.errors import UserError


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m jobs.entrypoint", description=__doc__.split("\n")[0])
    ap.add_argument("targets", nargs="+", type=Path, help="job.yaml files, or folders: every job.yaml under them")
    ap.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override for every job, e.g. output_dir=/data/out (repeatable)")
    ap.add_argument("--address", default="auto", help="Ray address (default: the cluster this job runs in)")
    ap.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    ap.add_argument("--ledger", default=None, help="ledger URL (default $MICRODRAMA_LEDGER)")
    ap.add_argument("--parallel", type=int, default=2, help="episodes run at once (default 2)")
    ap.add_argument("--min-nodes", type=int, default=0, help="wait until this many Ray nodes are alive")
    ap.add_argument("--node-timeout", type=float, default=300.0, help="seconds to wait for --min-nodes")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        paths = [p for t in args.targets for p in find_jobs(t)]
        jobs = load_jobs(paths, args.overrides)
    except UserError as exc:
        print(json.dumps({"ok": False, "errors": exc.problems}, ensure_ascii=False), flush=True)
        return EXIT_BAD_INPUT
    connect(args.address)
    if args.min_nodes:
        wait_for_nodes(args.min_nodes, args.node_timeout)
    summary = run_batch(paths, jobs, tracking_uri=args.tracking_uri, ledger_url=args.ledger,
                        parallel=args.parallel)
    for e in summary["episodes"]:
        print(f"{e['status']:>7}  {e['drama']}/{e['episode']}  {e.get('output') or e.get('error', '')}",
              file=sys.stderr, flush=True)
    print(json.dumps(summary, ensure_ascii=False), flush=True)
    return exit_code(summary)


if __name__ == "__main__":
    sys.exit(main())
