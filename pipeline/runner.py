"""Episode runs from the driver's side: one Ray session, the DAG submitted, progress shown, outputs published."""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray

from pipeline.errors import UserError
from pipeline.job import Job
from pipeline.metering.attempts import driver_identity
from pipeline.orchestrate import (RunInfo, is_resident, new_run_id, stage_task,
                                  backend_settings, registry_snapshot)
from pipeline.progress import Progress
from pipeline.stages import StageCall
from pipeline.stages.script import load_script
from pipeline.stages.storyboard import shot_seed

SHOT_STAGES = ("storyboard", "dub", "video")
SETTLE_S = float(os.environ.get("MICRODRAMA_SETTLE_S", "600"))  # after a failure, wait this long for siblings


def ensure_ray(address: str | None = None) -> None:
    """One Ray session per process: local by default, or a cluster address (`auto`, `ray://…`)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    root = str(Path(__file__).resolve().parents[1])
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False,
                                  namespace="microdrama")
    if address:
        kwargs["runtime_env"] = {"working_dir": root, "excludes": [".venv", "out", ".cache", "*.db"]}
    ray.init(address=address, **kwargs)


def check_resources(job: Job) -> None:
    """Refuse, before any work, a stage that asks for a custom resource no live node of the cluster has:
    Ray would keep it pending for ever. (A KubeRay autoscaler that adds such nodes on demand needs a
    minimum of one in the worker group.)"""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    have = {k for res in nodes for k, v in res.items() if v > 0}
    problems = []
    for section, settings in job.stages.backends().items():
        missing = [name for name in settings.resources if name not in have]
        for name in missing:
            problems.append(f"stages.{section}.resources.{name}: no live node of this Ray cluster has the "
                            f"resource {name!r}; start one with `ray start --resources='{{\"{name}\": 1}}'` "
                            "or remove it from the job")
        if not missing:
            problems += _fit_problems(section, settings, nodes)
    if problems:
        raise UserError(problems)


def _fit_problems(section: str, settings: Any, nodes: list[dict[str, float]]) -> list[str]:
    """A stage's whole ask (GPUs, CPUs, custom resources) must fit on one live node, or Ray waits for ever."""
    ask = {"GPU": float(settings.num_gpus), "CPU": float(settings.num_cpus), **settings.resources}
    ask = {k: v for k, v in ask.items() if v > 0}
    if any(all(res.get(k, 0) >= v for k, v in ask.items()) for res in nodes):
        return []
    most_gpus = max((res.get("GPU", 0) for res in nodes), default=0)
    most_cpus = max((res.get("CPU", 0) for res in nodes), default=0)
    if ask.get("GPU", 0) > most_gpus:
        return [f"stages.{section}.num_gpus: {settings.num_gpus:g} GPU(s) asked, but no live node of this Ray "
                f"cluster has more than {most_gpus:g}; lower num_gpus (0 runs on CPU) or add a GPU node"]
    if ask.get("CPU", 0) > most_cpus:
        return [f"stages.{section}.num_cpus: {settings.num_cpus:g} CPU(s) asked, but no live node of this Ray "
                f"cluster has more than {most_cpus:g}; lower num_cpus"]
    return [f"stages.{section}: no single live node has all of {ask}; lower num_gpus/num_cpus/resources"]


@dataclass
class Submitter:
    """Places one run's stage executions on Ray: plain tasks, or requests to the cluster's shared model pools
    (pipeline/pools.py), which the run claims while it has work for a stage and lets go when the stage is done."""

    info: RunInfo
    claimed: dict[str, str] = field(default_factory=dict)  # stage -> pool key
    actor_stats: dict[str, list[dict[str, int]]] = field(default_factory=dict)
    submitted: list[ray.ObjectRef] = field(default_factory=list)
    pool_calls: set = field(default_factory=set)
    _pools: Any = None

    def submit(self, stage: str, call: StageCall, **upstream: Any) -> ray.ObjectRef:
        names, refs = tuple(upstream), tuple(upstream.values())
        settings = backend_settings(self.info.job, stage)
        if settings is not None and is_resident(self.info.job, stage):
            key = self._claim(stage)
            ref = self.pools().call.remote(key, self.info, call, names, *refs)
            self.pool_calls.add(ref)
            return self._track(ref)
        opts: dict[str, Any] = {"num_cpus": settings.num_cpus if settings else 1, "max_retries": 2,
                                "retry_exceptions": False}
        if settings is not None and settings.resources:
            opts["resources"] = dict(settings.resources)
        self._make_room(opts["num_cpus"])
        return self._track(stage_task.options(**opts).remote(self.info, stage, call, names, *refs))

    def pools(self) -> Any:
        if self._pools is None:
            from pipeline.pools import get_pools

            self._pools = get_pools()
        return self._pools

    def _claim(self, stage: str) -> str:
        if stage not in self.claimed:
            from pipeline.pools import pool_spec

            spec = pool_spec(self.info.job, stage, self.info.backends)
            self.claimed[stage] = ray.get(self.pools().claim.remote(spec, self.info.run_id))
        return self.claimed[stage]

    def _make_room(self, num_cpus: float) -> None:
        """A plain task must not wait for ever on CPUs held by pools no run claims (a cluster too small for
        its pools): ask the pools to make room (pipeline/pools.py)."""
        if num_cpus > 0:
            ray.get(self.pools().make_room.remote({"CPU": float(num_cpus)}))

    def _track(self, ref: ray.ObjectRef) -> ray.ObjectRef:
        self.submitted.append(ref)
        return ref

    def settle(self, timeout_s: float = SETTLE_S) -> None:
        """After a failure: let executions already under way finish, so their usage records land and their
        outputs are cached for the re-run (executions waiting on the failed one fail at once, unrun);
        what is still running or queued after `timeout_s` is cancelled (a pool request not started yet never
        runs; plain tasks' attempts are closed as dead)."""
        if not self.submitted:
            return
        _, left = ray.wait(self.submitted, num_returns=len(self.submitted), timeout=timeout_s)
        for ref in left:
            try:
                ray.cancel(ref, force=ref not in self.pool_calls)  # actor calls cannot be forced
            except Exception:  # finished meanwhile
                pass

    def release(self, stage: str) -> None:
        """This run is done with `stage`: its pool may serve other episodes or, unclaimed, give its resources
        back; the replicas that served this run (pid, node, model loads, executions) go in the manifest."""
        key = self.claimed.pop(stage, None)
        if key is not None:
            self.actor_stats[stage] = ray.get(self.pools().release.remote(key, self.info.run_id))

    def close(self) -> None:
        for stage in list(self.claimed):
            try:
                self.release(stage)
            except Exception:  # the pools actor is gone with its node: nothing to let go of
                self.claimed.pop(stage, None)


def run_episode(job: Job, *, quiet: bool = False, address: str | None = None, sink: Any = None,
                run_id: str | None = None, before_stage: Any = None,
                ledger_url: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the whole episode on Ray; returns (manifest, edit outputs). Publishing is the caller's.

    `before_stage(stage, executions)` is called before each stage is submitted (the budget guard).
    `ledger_url` (of the ledger behind `sink`) lets a Ray retry find the attempts its dead worker started."""
    ensure_ray(address)
    info = RunInfo(run_id=run_id or new_run_id(job), job=job,
                   cache_root=str((Path.cwd() / job.cache_dir).resolve()
                                  if not job.cache_dir.is_absolute() else job.cache_dir), sink=sink,
                   ledger_url=ledger_url, backends=registry_snapshot(), driver=driver_identity())
    check_resources(job)
    from pipeline.finance.plan import preflight_prices

    unpriced = preflight_prices(job)  # a billed item without a price stops the run before it starts
    if unpriced:
        raise UserError(unpriced)
    sub = Submitter(info)
    progress = Progress(quiet=quiet, title=f"{job.drama}/{job.episode}")
    results: dict[str, Any] = {}
    guard = before_stage or (lambda stage, n: None)
    try:
        with progress:
            guard("script", 1)
            results["script"] = progress.wait("script", [sub.submit("script", StageCall(None))])[0]
            guard("translate", 1)
            results["translate"] = progress.wait("translate", [sub.submit(
                "translate", StageCall(None), script=ray.put(results["script"]))])[0]
            sub.release("translate")
            script = load_script(results["translate"]["outputs"])
            shots = script.shots
            per_shot = {}
            for stage in SHOT_STAGES:
                guard(stage, len(shots))
            for shot in shots:
                base = StageCall(shot.id, {"shot": shot, "script": script})
                sb = sub.submit("storyboard", base)
                dub = sub.submit("dub", base)
                vid = sub.submit("video", StageCall(shot.id, {"shot": shot}), storyboard=sb, dub=dub)
                per_shot[shot.id] = {"storyboard": sb, "dub": dub, "video": vid}
            for stage in SHOT_STAGES:
                done = progress.wait(stage, [per_shot[s.id][stage] for s in shots], [s.id for s in shots])
                for shot, res in zip(shots, done):
                    per_shot[shot.id][stage] = res
                sub.release(stage)  # e.g. the storyboard model's CPU/GPU goes to the video model
            edit_input = [{"id": s.id, "clip": per_shot[s.id]["video"]["outputs"]["clip"],
                           "audio": per_shot[s.id]["dub"]["outputs"]["audio"],
                           "lines": per_shot[s.id]["dub"]["outputs"]["lines"],
                           "duration_s": per_shot[s.id]["dub"]["outputs"]["duration_s"]} for s in shots]
            content_id = f"{job.drama}/{job.episode}/{job.config_hash()}"
            guard("edit", 1)
            results["edit"] = progress.wait("edit", [sub.submit(
                "edit", StageCall(None, {"shots": edit_input, "content_id": content_id}))])[0]
    except Exception:  # a stage failed (not Ctrl-C): let siblings under way finish and be metered first
        sub.settle()
        raise
    finally:
        sub.close()
    manifest = build_manifest(job, info, script, per_shot, results)
    manifest["actors"] = sub.actor_stats  # the shared pools' replicas that served this run, with their loads
    return manifest, results["edit"]["outputs"]


def build_manifest(job: Job, info: RunInfo, script: Any, per_shot: dict, results: dict) -> dict[str, Any]:
    edit = results["edit"]["outputs"]
    shots = []
    for entry, shot in zip(edit["timeline"], script.shots):
        res = per_shot[shot.id]
        shots.append({
            "id": shot.id, "scene": shot.scene, "start": entry["start"], "end": entry["end"],
            "duration_s": entry["duration_s"], "frames": res["dub"]["outputs"]["frames"],
            "location": shot.location, "location_tags": list(shot.location_tags),
            "framing": shot.framing, "camera": shot.camera, "characters": list(shot.characters),
            "seed": shot_seed(job.seed, shot.id), "lines": entry["lines"],
            "stretch": res["dub"]["outputs"]["stretch"],
            "cache_hit": {st: res[st]["cache_hit"] for st in SHOT_STAGES},
        })
    executions = [results["script"], results["translate"], results["edit"]] + \
        [per_shot[s.id][st] for s in script.shots for st in SHOT_STAGES]
    hits = sum(1 for r in executions if r["cache_hit"])
    return {
        "drama": job.drama, "episode": job.episode, "title": job.title, "company": job.company,
        "run_id": info.run_id, "job_hash": job.config_hash(), "profile": job.profile,
        "languages": job.languages, "audio_languages": edit["audio_languages"],
        "backends": {st: backend_settings(job, st).backend for st in
                     ("script", "translate", "storyboard", "dub", "video")} | {"edit": "ffmpeg"},
        "seed": job.seed, "duration_s": round(edit["duration_s"], 6), "fps": job.stages.video.fps,
        "shots": shots, "content_id": edit["content_id"],
        "cache": {"executions": len(executions), "hits": hits, "all_cached": hits == len(executions),
                  "edit_key": results["edit"]["key"]},
        "attempts": {"retried": sum(1 for r in executions if r.get("attempts", 1) > 1)},
        "outputs": {"episode": "episode.mp4",
                    "subtitles": {lang: {"srt": f"episode.{lang}.srt", "ass": f"episode.{lang}.ass"}
                                  for lang in job.languages}},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def publish(job: Job, edit: dict[str, Any], manifest: dict[str, Any]) -> Path:
    """Copy outputs into a private folder, then swap it into place: a finished-looking folder is finished."""
    final = job.out_path.resolve()
    root = job.output_dir.resolve()
    if root not in final.parents:  # out/<drama> (or <episode>) is a symlink leading elsewhere
        raise UserError(f"output_dir: {job.out_path} resolves to {final}, outside {root}; remove the symlink")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        _link_or_copy(Path(edit["episode"]), staging / "episode.mp4")
        for lang, files in edit["subtitles"].items():
            for kind, path in files.items():
                _link_or_copy(Path(path), staging / f"episode.{lang}.{kind}")
        from pipeline.handoff.publish import publish as publish_handoff  # timelines, covers, deliveries

        manifest["outputs"].update(publish_handoff(job, edit, staging, final))
        (staging / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2), "utf-8")
        if final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(final, old)
            os.rename(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
