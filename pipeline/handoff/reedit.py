"""`microdrama edit --timeline FILE`: render an editor's cut (trimmed, reordered, dropped or repeated shots in
an OTIO, FCP X XML or FCP 7 XML timeline exported by this pipeline) back into the episode.

The cut is read from the timeline's shots track; each clip is matched to its shot (OTIO metadata, else
the clip's name, else its media file) and keeps its frames, with the shot's dialogue cut alongside. The
render is one edit-stage execution through the usual cache and meter: its usage record and cost lines go
to the ledger under the episode (drama, episode, a new run id), and MLflow gets a parent run for the
episode like any run, so the re-edit is part of what the episode cost. Then the episode folder is
republished (master, subtitles, timelines, JianYing draft, covers, deliveries) for the new cut.
"""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional

import typer

from pipeline.errors import UserError
from pipeline.handoff import otio_timeline, timeline


def find_published(path: Path, meta: dict[str, Any], cut: list[dict[str, Any]]) -> Path:
    """The published timeline.json the cut came from: beside the file, or beside its media."""
    places = [path.resolve().parent / "timeline.json"]
    places += [Path(c["media"]).parent.parent / "timeline.json" for c in cut if c.get("media")]
    for place in places:
        if place.is_file():
            return place
    raise UserError(f"--timeline {path}: cannot find the episode's timeline.json beside it or beside its media; "
                    "edit the timeline exported into the episode folder (out/<drama>/<episode>/episode.otio)")


def load_job_for(doc: dict[str, Any], job_file: Path | None, overrides: list[str]) -> Any:
    from pipeline.job import Job, JobError, _format_errors, apply_overrides, load_job, validate
    from pydantic import ValidationError

    if job_file is not None:
        return load_job(job_file, overrides)
    data = apply_overrides(doc["job"], overrides)
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        raise JobError(_format_errors(exc)) from None
    problems = validate(job)
    if problems:
        raise JobError(problems)
    return job


def match(cut: list[dict[str, Any]], doc: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """Edit-stage input for the cut: each clip as its shot's original media, audio and lines plus a trim."""
    fps = doc["fps"]
    by_id = {}
    for s in doc["shots"]:
        by_id.setdefault(s["id"], s)
    by_stem = {Path(s["media"]).stem: s for s in by_id.values()}
    shots, problems = [], []
    for i, c in enumerate(cut, 1):
        base = by_id.get(c.get("shot") or "") or by_id.get(c["name"]) or \
            by_stem.get(Path(c["media"]).stem if c.get("media") else "")
        if base is None:
            problems.append(f"--timeline {path.name}: clip {i} ({c['name']!r}) is no shot of {doc['drama']}/"
                            f"{doc['episode']}; only the episode's own shots can be rendered back")
            continue
        if c["in"] < 0 or c["frames"] < 1 or c["in"] + c["frames"] > base["media_frames"]:
            problems.append(f"--timeline {path.name}: clip {i} ({base['id']}) uses frames {c['in']}–"
                            f"{c['in'] + c['frames'] - 1}, but the shot has frames 0–{base['media_frames'] - 1}")
            continue
        clip = base.get("source") if Path(base.get("source", "")).is_file() else base["media"]
        audio = base.get("source_audio") or base["audio_media"]
        if not all(Path(p).is_file() for p in audio.values()):
            audio = base["audio_media"]
        shots.append({"id": base["id"], "clip": clip, "audio": audio, "lines": base.get("source_lines", base["lines"]),
                      "duration_s": base["media_frames"] / fps, "media_frames": base["media_frames"],
                      "trim": {"in": c["in"], "frames": c["frames"]}})
    if problems:
        raise UserError(problems)
    if not shots:
        raise UserError(f"--timeline {path.name}: the shots track is empty; keep at least one shot")
    return shots


def render(job: Any, shots: list[dict[str, Any]], previous: dict[str, Any], source: Path, *,
           ledger_url: str | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """One metered edit-stage execution for the cut, then checkpoint, publish and log; returns the manifest."""
    import ray

    from pipeline.episode import close_attempts, guard_secrets, resolve_ledger_url, shared_writer, tracking_uri_of, \
        MLFLOW_LOCK, _public_url
    from pipeline.metering.attempts import driver_identity
    from pipeline.metering.ledger import Ledger
    from pipeline.metering.mlflow_queue import log_or_queue
    from pipeline.money import exact_sum
    from pipeline.orchestrate import RunInfo, new_run_id, registry_snapshot, stage_task
    from pipeline.runner import ensure_ray, publish
    from pipeline.stages import StageCall

    ensure_ray()
    guard_secrets(job)
    url = resolve_ledger_url(ledger_url)
    run_id = new_run_id(job)
    cache_root = str(job.cache_dir if job.cache_dir.is_absolute() else (Path.cwd() / job.cache_dir).resolve())
    with shared_writer(url) as writer:
        info = RunInfo(run_id=run_id, job=job, cache_root=cache_root, sink=writer, ledger_url=url,
                       backends=registry_snapshot(), driver=driver_identity())
        try:
            result = ray.get(stage_task.options(num_cpus=1, max_retries=2, retry_exceptions=False).remote(
                info, "edit", StageCall(None, {"shots": shots}), ()))
        finally:
            close_attempts(url, writer, job, run_id)
            checkpoint = ray.get(writer.checkpoint.remote()).to_dict()
    with Ledger.open(url) as ledger:
        usage = [e.body for e in ledger.entries(kind="usage", where={"job": run_id})]
        costs = [e.body for e in ledger.entries(kind="cost", where={"job": run_id})]
    edit = result["outputs"]
    manifest = cut_manifest(job, previous, edit, run_id, result, source)
    total = exact_sum(c["amount"] for c in costs)
    manifest["cost"] = {"total_cny": str(total.quantize(Decimal("0.01"))), "exact_cny": str(total),
                        "usage_records": len(usage), "cost_lines": len(costs)}
    manifest["ledger"] = {"url": _public_url(url), "tree_size": checkpoint["tree_size"],
                          "root_hash": checkpoint["root_hash"], "key_id": checkpoint["key_id"]}
    out = publish(job, edit, manifest)
    with MLFLOW_LOCK:
        manifest["mlflow"] = log_or_queue(tracking_uri=tracking_uri_of(tracking_uri), job=job, manifest=manifest,
                                          usage=usage, costs=costs, out_dir=out, checkpoint=checkpoint)
    return manifest


def cut_manifest(job: Any, previous: dict[str, Any], edit: dict[str, Any], run_id: str, result: dict[str, Any],
                 source: Path) -> dict[str, Any]:
    """The previous manifest with the new cut's shots (each keeps its facts: scene, framing, seed…)."""
    from pipeline.runner import corrupt_entries

    fps = job.stages.video.fps
    facts = {s["id"]: s for s in previous.get("shots", [])}
    shots = []
    for entry in edit["timeline"]:
        shot = {k: v for k, v in facts.get(entry["id"], {"id": entry["id"]}).items()}
        shot.update(start=entry["start"], end=entry["end"], duration_s=entry["duration_s"],
                    frames=entry["frames"], source_in=entry["source_in"], lines=entry["lines"])
        shots.append(shot)
    hit = bool(result["cache_hit"])
    return {**{k: v for k, v in previous.items() if k not in ("cost", "ledger", "mlflow", "actors")},
            "run_id": run_id, "job_hash": job.config_hash(), "shots": shots,
            "duration_s": round(edit["duration_s"], 6), "fps": fps, "content_id": edit["content_id"],
            "audio_languages": edit["audio_languages"],
            "cache": {"executions": 1, "hits": int(hit), "all_cached": hit, "edit_key": result["key"],
                      "corrupt_entries": corrupt_entries([("edit", None)], [result])},
            "attempts": {"retried": int(result.get("attempts", 1) > 1)},
            "outputs": {"episode": "episode.mp4",
                        "subtitles": {lang: {"srt": f"episode.{lang}.srt", "ass": f"episode.{lang}.ass"}
                                      for lang in job.languages}},
            "reedit": {"timeline": source.name, "previous_run": previous.get("run_id"),
                       "shots": [f"{s['id']}@{s['source_in']}+{s['frames']}" for s in shots]},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def edit(timeline_file: Path = typer.Option(..., "--timeline", help="Edited OTIO / FCP X XML / FCP 7 XML timeline"),
         overrides: list[str] = typer.Argument(None, help="Dotted overrides of the episode's job, KEY=VALUE"),
         job_file: Optional[Path] = typer.Option(None, "--job", help="Job YAML (default: the job the timeline "
                                                                     "was exported from)"),
         quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the episode path"),
         tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI"),
         ledger: Optional[str] = typer.Option(None, "--ledger", envvar="MICRODRAMA_LEDGER")) -> None:
    """Render an edited timeline (trimmed or reordered shots) back into the episode, metered to it."""
    import json

    from pipeline.cli import _fail, err

    try:
        if not timeline_file.is_file():
            raise UserError(f"--timeline: file not found: {timeline_file}")
        try:
            meta, cut = otio_timeline.read_cut(timeline_file)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        except Exception as exc:  # not a timeline OTIO can read
            raise UserError(f"--timeline {timeline_file}: not a timeline OpenTimelineIO reads "
                            f"(.otio, .fcpxml, FCP 7 .xml): {type(exc).__name__}: {exc}") from None
        published = find_published(timeline_file, meta, cut)
        doc = timeline.read(published)
        job = load_job_for(doc, job_file, overrides or [])
        shots = match(cut, doc, timeline_file)
        manifest_path = published.parent / "manifest.json"
        previous = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    except UserError as exc:
        _fail(exc, 2)
    try:
        manifest = render(job, shots, previous, timeline_file, ledger_url=ledger, tracking_uri=tracking_uri)
    except UserError as exc:
        _fail(exc, exc.exit_code)
    except Exception as exc:
        from pipeline.orchestrate import format_failure

        _fail(RuntimeError(format_failure(exc)), 1)
    out = job.out_path / "episode.mp4"
    if quiet:
        typer.echo(str(out))
    else:
        err.print(f"[green]re-edited[/] {out}  {manifest['duration_s']:.2f}s, {len(manifest['shots'])} shots, "
                  f"cost {manifest['cost']['total_cny']} CNY (run {manifest['run_id']})")
