"""MLflow layout: experiment per drama, a parent run per episode job, a child run per stage, artifacts.

Metrics come from the ledger's usage and cost entries for the run (the same figures finance claims),
never from a second bookkeeping. Backend options that look like secrets never reach params or tags.
"""
from __future__ import annotations

import csv
import json
import os
import re
import tempfile
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.money import exact_sum

SECRET = re.compile(r"(key|token|secret|passw|auth|credential)", re.I)
DEFAULT_URI = "sqlite:///mlflow.db"
STAGE_ORDER = ("script", "translate", "cast", "storyboard", "dub", "video", "edit")
UNIT_METRIC = {"token": "tokens", "second": "video_seconds", "image": "images", "char": "chars",
               "call": "calls", "step": "steps", "frame": "frames"}
AUDIO_SUFFIX = ":audio"  # TTS backends report seconds of speech as "<tool>:audio" (not seconds of video)


def absolute_sqlite(url: str) -> str:
    """sqlite:///relative.db → sqlite:////abs/relative.db, so Ray workers with another cwd agree."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str(Path(url[len(prefix):]).resolve())
    return url


def tracking_uri_of(uri: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (in $MICRODRAMA_STATE_DIR when set,
    pipeline/state.py; a relative SQLite path made absolute)."""
    from pipeline import state

    return absolute_sqlite(uri or os.environ.get("MLFLOW_TRACKING_URI") or state.default_tracking_uri())


def redact_params(options: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten options to MLflow params, dropping anything whose name suggests a secret."""
    out: dict[str, str] = {}
    for key, value in options.items():
        if SECRET.search(str(key)):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(redact_params(value, f"{name}."))
        else:
            out[name] = str(value)[:500]
    return out


def stage_money(costs: list[dict]) -> dict[str, dict[str, str]]:
    """Exact per-stage money as strings (MLflow metrics are floats; tags keep the exact figures)."""
    parts: dict[str, dict[str, list[Decimal]]] = defaultdict(lambda: defaultdict(list))
    for c in costs:
        s = parts[c["stage"]]
        s["cost.total_cny"].append(Decimal(c["amount"]))
        s[f"cost.{c['kind']}_cny"].append(Decimal(c["amount"]))
        s["cost.list_value_cny"].append(Decimal(c.get("list_value") or "0"))
    return {stage: {k: str(exact_sum(v)) for k, v in d.items()} for stage, d in parts.items()}


def stage_metrics(usage: list[dict], costs: list[dict]) -> dict[str, dict[str, float]]:
    """Per stage: sums of wall/CPU/GPU seconds, energy, cost, AI usage; counts of executions and hits."""
    m: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    energy_missing: dict[str, bool] = defaultdict(bool)
    for r in usage:
        s = m[r["stage"]]
        s["executions"] += 1
        s["cache_hits"] += bool(r["cache_hit"])
        s["failed_attempts"] += r["status"] == "failed"
        for k in ("wall_s", "cpu_s", "gpu_s"):
            s[k] += float(r[k])
        s["peak_rss_mb"] = max(s["peak_rss_mb"], r["peak_rss"] / 2**20)
        if r["gpu_energy_j"] is None:
            energy_missing[r["stage"]] = True
        else:
            s["gpu_energy_j"] += float(r["gpu_energy_j"])
        for use in r["ai_usage"]:
            audio = use["unit"] == "second" and str(use["tool"]).endswith(AUDIO_SUFFIX)
            s["audio_seconds" if audio else UNIT_METRIC.get(use["unit"], use["unit"])] += float(use["quantity"])
    for c in costs:
        s = m[c["stage"]]
        s["cost_cny"] += float(Decimal(c["amount"]))
        s[f"cost_{c['kind']}_cny"] += float(Decimal(c["amount"]))
        s["list_value_cny"] += float(Decimal(c.get("list_value") or "0"))
    for stage, missing in energy_missing.items():
        if missing and not m[stage].get("gpu_energy_j"):
            m[stage].pop("gpu_energy_j", None)
    return {k: dict(v) for k, v in m.items()}


def write_usage_table(path: Path, usage: list[dict], costs: list[dict]) -> None:
    """One CSV row per cost line, with the usage figures of the record it prices."""
    by_key = {u["idempotency_key"]: u for u in usage}
    fields = ["usage_key", "stage", "shot", "attempt", "status", "backend", "node", "wall_s", "cpu_s",
              "gpu_s", "gpu_energy_j", "cache_hit", "kind", "item", "quantity", "unit", "rate", "amount",
              "list_value", "price_table"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for c in costs:
            u = by_key.get(c.get("usage_key", ""), {})
            w.writerow({"usage_key": c.get("usage_key"), "stage": c.get("stage"), "shot": c.get("shot"),
                        "attempt": u.get("attempt"), "status": u.get("status"), "backend": u.get("backend"),
                        "node": u.get("node"), "wall_s": u.get("wall_s"), "cpu_s": u.get("cpu_s"),
                        "gpu_s": u.get("gpu_s"), "gpu_energy_j": u.get("gpu_energy_j"),
                        "cache_hit": u.get("cache_hit"), "kind": c.get("kind"), "item": c.get("item"),
                        "quantity": c.get("quantity"), "unit": c.get("unit"), "rate": c.get("rate"),
                        "amount": c.get("amount"), "list_value": c.get("list_value"),
                        "price_table": c.get("price_table")})


def log_episode(*, tracking_uri: str, job: Any, manifest: dict[str, Any], usage: list[dict],
                costs: list[dict], out_dir: Path, checkpoint: dict[str, Any] | None,
                delayed_from: str | None = None) -> str:
    """Log the episode's parent run and its stage child runs; returns the parent run id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.set_experiment(job.drama)
    metrics = stage_metrics(usage, costs)
    total_cost = exact_sum(c["amount"] for c in costs)
    tags = {"company": job.company, "drama": job.drama, "episode": job.episode, "profile": job.profile,
            "microdrama.run_id": manifest["run_id"], "job_hash": manifest["job_hash"],
            "microdrama.kind": "episode", "total_cost_cny": str(total_cost),
            "cache.corrupt_entries": str(len(manifest["cache"].get("corrupt_entries") or []))}
    if (manifest.get("reedit") or {}).get("previous_run"):
        tags["microdrama.base_run"] = manifest["reedit"]["previous_run"]  # a re-cut: finance counts its base
    if delayed_from:
        tags["microdrama.delayed_from"] = delayed_from  # logged late: MLflow was unreachable at run time
    if checkpoint:
        tags.update({"ledger.checkpoint.size": str(checkpoint["tree_size"]),
                     "ledger.checkpoint.root": checkpoint["root_hash"]})
    with mlflow.start_run(experiment_id=exp.experiment_id, run_name=run_name(job, manifest),
                          tags=tags) as parent:
        mlflow.log_params({"languages": ",".join(job.languages), "seed": job.seed,
                           "shots": len(manifest["shots"]), "fps": job.stages.video.fps})
        duration = manifest["duration_s"]
        mlflow.log_metrics({"duration_s": duration, "cost_cny": float(total_cost),
                            "cost_per_minute_cny": float(total_cost) / (duration / 60) if duration else 0.0,
                            "cache_hits": manifest["cache"]["hits"],
                            "executions": manifest["cache"]["executions"],
                            "cache_corrupt_entries": len(manifest["cache"].get("corrupt_entries") or [])})
        money = stage_money(costs)
        for stage in [s for s in STAGE_ORDER if s in metrics]:
            _log_stage(mlflow, job, stage, metrics[stage], money.get(stage, {}), parent.info.run_id, manifest,
                       out_dir=out_dir)
        _log_artifacts(mlflow, out_dir, usage, costs, checkpoint)
        return parent.info.run_id


def run_name(job: Any, manifest: dict[str, Any]) -> str:
    """What the MLflow UI lists: drama, episode, profile and when the run was made (UTC), and a re-cut as one,
    so repeated runs of an episode are told apart at a glance."""
    from datetime import datetime, timezone

    made = datetime.fromisoformat(manifest["created"]).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    kind = " re-cut" if (manifest.get("reedit") or {}).get("previous_run") else ""
    return f"{job.drama}/{job.episode}{kind} · {job.profile} · {made} UTC"


def _log_stage(mlflow: Any, job: Any, stage: str, metrics: dict[str, float], money: dict[str, str],
               parent_id: str, manifest: dict[str, Any] | None = None, out_dir: Path | None = None) -> None:
    from pipeline.job_backends import backend_settings

    settings = backend_settings(job, stage)
    params = {"backend": settings.backend if settings else "ffmpeg"}
    if settings is not None:
        params.update(redact_params(settings.options, "options."))
    if stage in ("cast", "storyboard", "video"):
        s = getattr(job.stages, "storyboard" if stage == "cast" else stage)
        params["resolution"] = f"{s.width}x{s.height}"
    if stage == "video":
        params["fps"] = str(job.stages.video.fps)
    with mlflow.start_run(run_name=stage, nested=True, parent_run_id=parent_id,
                          tags={"microdrama.kind": "stage", "stage": stage, "drama": job.drama,
                                "episode": job.episode, **money}):
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        cast = (manifest or {}).get("cast") if stage == "cast" else None
        if cast:
            _log_cast(mlflow, cast, out_dir)
        if stage == "storyboard" and manifest is not None:  # quality, not money: from the manifest
            from pipeline.identity_report import log_storyboard_run

            log_storyboard_run(mlflow, manifest, job.stages.storyboard.identity)


def _log_cast(mlflow: Any, cast: dict[str, dict[str, Any]], out_dir: Path | None) -> None:
    """The cast run carries each character's sheet: name, status (generated/approved/supplied), digest, files."""
    tags = {}
    for i, (name, entry) in enumerate(cast.items(), start=1):
        tags.update({f"cast.{i:02d}.name": name, f"cast.{i:02d}.status": entry["status"],
                     f"cast.{i:02d}.digest": entry["digest"] or ""})
        for path in entry["sheets"].values():
            full = (out_dir / path) if out_dir is not None else Path(path)
            if full.is_file():
                mlflow.log_artifact(str(full), artifact_path="cast")
    mlflow.set_tags(tags)
    mlflow.log_metrics({"sheets_generated": sum(e["status"] == "generated" for e in cast.values()),
                        "sheets_approved": sum(e["status"] == "approved" for e in cast.values()),
                        "sheets_supplied": sum(e["status"] == "supplied" for e in cast.values())})


def _log_artifacts(mlflow: Any, out_dir: Path, usage: list[dict], costs: list[dict],
                   checkpoint: dict[str, Any] | None) -> None:
    for name in sorted(p.name for p in out_dir.iterdir() if p.is_file()):
        mlflow.log_artifact(str(out_dir / name), artifact_path="episode")
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "usage_costs.csv"
        write_usage_table(table, usage, costs)
        mlflow.log_artifact(str(table), artifact_path="metering")
        (Path(tmp) / "usage.json").write_text(json.dumps(usage, ensure_ascii=False, indent=1), "utf-8")
        mlflow.log_artifact(str(Path(tmp) / "usage.json"), artifact_path="metering")
        if checkpoint:
            (Path(tmp) / "checkpoint.txt").write_text(checkpoint["note"], "utf-8")
            mlflow.log_artifact(str(Path(tmp) / "checkpoint.txt"), artifact_path="ledger")
