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

from pipeline.cache import place
from pipeline.errors import UserError
from pipeline.identity_report import shot_identity, summary
from pipeline.job import Job
from pipeline.metering.attempts import driver_identity
from pipeline.orchestrate import (RunInfo, is_resident, new_run_id, stage_task,
                                  backend_settings, registry_snapshot)
from pipeline.progress import Progress
from pipeline.services import init_ray
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
        from pipeline.submit import EXCLUDES  # what `submit` leaves out of the upload: keys, databases, venvs

        kwargs["runtime_env"] = {"working_dir": root, "excludes": list(EXCLUDES)}
    init_ray(address, **kwargs)


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of each live node and of one node of each group the autoscaler may start."""
    return [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")] + scalable_node_groups()


def check_resources(job: Job, nodes: list[dict[str, float]] | None = None) -> None:
    """Refuse, before any work, a stage no node can ever run: Ray would keep it pending for ever. A node is
    a live one or one the cluster's autoscaler may start (a KubeRay worker group at zero replicas until work
    arrives counts with its resources, as long as its maxReplicas is not 0)."""
    nodes = cluster_nodes() if nodes is None else nodes
    have = {k for res in nodes for k, v in res.items() if v > 0}
    problems = []
    for section, settings in job.stages.placements().items():
        missing = [name for name in settings.resources if name not in have]
        for name in missing:
            problems.append(f"stages.{section}.resources.{name}: no node of this Ray cluster (live or in an "
                            f"autoscaling group) has the resource {name!r}; start one with "
                            f"`ray start --resources='{{\"{name}\": 1}}'` or remove it from the job")
        if not missing:
            problems += _fit_problems(section, settings, nodes)
    if problems:
        raise UserError(problems)


def cluster_gpu_models(nodes: list[dict[str, float]]) -> list[str]:
    """The GPU models of `cluster_nodes()` (Ray's `accelerator_type:<model>` resource)."""
    return sorted({k.split(":", 1)[1] for res in nodes if res.get("GPU", 0) > 0 for k in res
                   if k.startswith("accelerator_type:")})


def scalable_node_groups() -> list[dict[str, float]]:
    """The resources of one node of each group the autoscaler may start (Ray's cluster config in the GCS,
    written by the KubeRay autoscaler); [] where the cluster has no autoscaler."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # an older Ray, Ray Client, no GCS access: the live nodes decide alone
        return []
    if config is None:
        return []
    return [{k: float(v) for k, v in group.resources.items()} for group in config.node_group_configs
            if group.max_count != 0]


def _fit_problems(section: str, settings: Any, nodes: list[dict[str, float]]) -> list[str]:
    """A stage's whole ask (GPUs, CPUs, custom resources) must fit on one node, or Ray waits for ever."""
    ask = {"GPU": float(settings.num_gpus), "CPU": float(settings.num_cpus), **settings.resources}
    ask = {k: v for k, v in ask.items() if v > 0}
    if any(all(res.get(k, 0) >= v for k, v in ask.items()) for res in nodes):
        return []
    most_gpus = max((res.get("GPU", 0) for res in nodes), default=0)
    most_cpus = max((res.get("CPU", 0) for res in nodes), default=0)
    if ask.get("GPU", 0) > most_gpus:
        return [f"stages.{section}.num_gpus: {settings.num_gpus:g} GPU(s) asked, but no live node of this Ray "
                f"cluster (nor any node its autoscaler may start) has more than {most_gpus:g}; lower num_gpus "
                "(0 runs on CPU) or add a GPU node"]
    if ask.get("CPU", 0) > most_cpus:
        return [f"stages.{section}.num_cpus: {settings.num_cpus:g} CPU(s) asked, but no live node of this Ray "
                f"cluster (nor any node its autoscaler may start) has more than {most_cpus:g}; lower num_cpus"]
    return [f"stages.{section}: no single node has all of {ask}; lower num_gpus/num_cpus/resources"]


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
        hosting = settings if settings is not None else self.info.job.stages.edit  # the edit: a plain task
        opts: dict[str, Any] = {"num_cpus": hosting.num_cpus, "max_retries": 2, "retry_exceptions": False}
        if hosting.resources:
            opts["resources"] = dict(hosting.resources)
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

    def cancel(self) -> None:
        """The driver was told to stop: cancel every execution not finished (their workers die, so their open
        attempts end at their last heartbeat and are closed by the run's end)."""
        for ref in self.submitted:
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
    nodes = cluster_nodes()
    check_resources(job, nodes)
    from pipeline.finance.plan import gpu_price_problems, preflight_prices

    unpriced = preflight_prices(job)  # a billed item without a price stops the run before it starts
    unpriced += gpu_price_problems(job, cluster_gpu_models(nodes))
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
            script, cast = run_cast(job, script, sub, progress, guard)
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
            guard("edit", 1)  # the edit stage names the content itself (its ProduceID: a digest of it)
            results["edit"] = progress.wait("edit", [sub.submit("edit", StageCall(None, {"shots": edit_input}))])[0]
    except Exception:  # a stage failed (not Ctrl-C): let siblings under way finish and be metered first
        sub.settle()
        raise
    except BaseException:  # stopped (`ray job stop`, SIGTERM, Ctrl-C): no settling, cancel what runs
        sub.cancel()
        raise
    finally:
        sub.close()
    manifest = build_manifest(job, info, script, per_shot, results)
    manifest["cast"] = cast
    cast_runs = [entry["cache_hit"] for entry in cast.values() if "cache_hit" in entry]
    if cast_runs:  # the cast stage's executions count with the others
        c = manifest["cache"]
        c["executions"] += len(cast_runs)
        c["hits"] += sum(cast_runs)
        c["all_cached"] = c["hits"] == c["executions"]
    manifest["actors"] = sub.actor_stats  # the shared pools' replicas that served this run, with their loads
    return manifest, results["edit"]["outputs"]


def run_cast(job: Job, script: Any, sub: Submitter, progress: Progress,
             guard: Any) -> tuple[Any, dict[str, dict[str, Any]]]:
    """The series bible applied to the script, then a character sheet for each of the episode's characters
    without reference images (cast stage, cached per series); returns the script whose characters carry
    their sheets as `reference_images`, and each character's sheet for the manifest. With
    `cast.require_approval`, stops here while any sheet is not approved (CastNotApproved)."""
    from pipeline import series as bible

    series = bible.for_job(job)
    if series is not None:
        script = bible.apply(script, series)
    present = set().union(*([set(s.characters) | {ln.speaker for ln in s.lines} for s in script.shots] or [set()]))
    names = [n for n in script.characters if n in present]
    todo = [n for n in names if not script.characters[n].reference_images] if bible.needs_sheet(job, series) else []
    made: dict[str, Any] = {}
    if todo:
        guard("cast", len(todo))
        tag = {"series": series.series if series else f"{job.drama}/{job.episode}",
               "series_title": (series.title if series else "") or script.title}
        refs = [sub.submit("cast", StageCall(f"cast:{n}", {"script": script, "character": n, **tag})) for n in todo]
        made = dict(zip(todo, progress.wait("cast", refs, todo)))
        sub.release("cast")
    approved = bible.approvals(series.path) if series is not None else {}
    chars, cast = dict(script.characters), {}
    for name in names:
        char = chars[name]
        if name in made:
            out = made[name]["outputs"]
            sheets = out["sheets"]
            chars[name] = char.model_copy(update={"reference_images": tuple(sheets[v] for v in bible.SHEET_VIEWS)})
            cast[name] = {"status": bible.status(char, out["digest"], approved), "digest": out["digest"],
                          "sheets": dict(sheets), "seed": out["seed"], "cache_hit": made[name]["cache_hit"]}
        elif char.reference_images:
            images = {f"image{i + 1}": p for i, p in enumerate(char.reference_images)}
            cast[name] = {"status": "supplied", "digest": bible.sheet_digest(images), "sheets": images}
    if job.cast.require_approval:
        bible.require_approved(series, cast)
    return script.model_copy(update={"characters": chars}), cast


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
        ident = shot_identity(res["storyboard"]["outputs"])
        if ident is not None:
            shots[-1]["identity"] = ident
    identity, review = summary(shots)
    executions = [results["script"], results["translate"], results["edit"]] + \
        [per_shot[s.id][st] for s in script.shots for st in SHOT_STAGES]
    hits = sum(1 for r in executions if r["cache_hit"])
    names = [("script", None), ("translate", None), ("edit", None)] + \
        [(st, s.id) for s in script.shots for st in SHOT_STAGES]
    return {
        "drama": job.drama, "episode": job.episode, "title": job.title, "company": job.company,
        "run_id": info.run_id, "job_hash": job.config_hash(), "profile": job.profile,
        "languages": job.languages, "audio_languages": edit["audio_languages"],
        "backends": {st: backend_settings(job, st).backend for st in
                     ("script", "translate", "storyboard", "dub", "video")} | {"edit": "ffmpeg"},
        "seed": job.seed, "duration_s": round(edit["duration_s"], 6), "fps": job.stages.video.fps,
        "shots": shots, "content_id": edit["content_id"],
        **({"identity": identity, "review": review} if job.stages.storyboard.identity is not None else {}),
        "cache": {"executions": len(executions), "hits": hits, "all_cached": hits == len(executions),
                  "edit_key": results["edit"]["key"],
                  "corrupt_entries": corrupt_entries(names, executions)},
        "attempts": {"retried": sum(1 for r in executions if r.get("attempts", 1) > 1)},
        "outputs": {"episode": "episode.mp4",
                    "subtitles": {lang: {"srt": f"episode.{lang}.srt", "ass": f"episode.{lang}.ass"}
                                  for lang in job.languages}},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def corrupt_entries(names: list[tuple[str, str | None]], executions: list[dict]) -> list[dict[str, Any]]:
    """Cache entries found changed after they were cached (re-rendered by this run), for the manifest."""
    return [{"stage": stage, "shot": shot, "key": r["key"], "problem": r["cache_corrupt"]}
            for (stage, shot), r in zip(names, executions) if r.get("cache_corrupt")]


def corrupt_line(manifest: dict[str, Any]) -> str | None:
    """The one line a run prints when it found corrupt cache entries (None when it found none)."""
    bad = manifest.get("cache", {}).get("corrupt_entries") or []
    if not bad:
        return None
    where = ", ".join(f"{b['stage']}[{b['shot']}]" if b["shot"] else b["stage"] for b in bad)
    return (f"cache: {len(bad)} corrupt entr{'y' if len(bad) == 1 else 'ies'} re-rendered ({where}): "
            f"{bad[0]['problem']}; `microdrama cache verify` checks the whole cache")


def publish(job: Job, edit: dict[str, Any], manifest: dict[str, Any]) -> Path:
    """Copy outputs into a private folder, then swap it into place: a finished-looking folder is finished.
    Files come out of the cache as copies or reflinks (`cache.place`), never hard links: editing a
    published file leaves the cache entry it came from intact."""
    final = job.out_path.resolve()
    root = job.output_dir.resolve()
    if root not in final.parents:  # out/<drama> (or <episode>) is a symlink leading elsewhere
        raise UserError(f"output_dir: {job.out_path} resolves to {final}, outside {root}; remove the symlink")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        place(edit["episode"], staging / "episode.mp4")
        for lang, files in edit["subtitles"].items():
            for kind, path in files.items():
                place(path, staging / f"episode.{lang}.{kind}")
        from pipeline.handoff.publish import publish as publish_handoff  # timelines, covers, deliveries

        manifest["outputs"].update(publish_handoff(job, edit, staging, final))
        _publish_cast(manifest.get("cast") or {}, staging)
        publish_review(manifest, staging)
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


def _publish_cast(cast: dict[str, dict[str, Any]], staging: Path) -> None:
    """Each character's sheet (or supplied images) into cast/ of the episode folder, for a person to look at;
    the manifest then names those copies (relative paths) beside the sheet's digest and status."""
    if not cast:
        return
    (staging / "cast").mkdir()
    for i, (name, entry) in enumerate(cast.items(), start=1):
        published = {}
        for view, path in entry["sheets"].items():
            rel = f"cast/{i:02d}-{view}{Path(path).suffix.lower()}"
            place(path, staging / rel)
            published[view] = rel
        entry["sheets"] = published


def publish_review(manifest: dict[str, Any], staging: Path) -> None:
    """Every try of each shot for review goes beside the manifest (review/<shot>.tryN.png) for a person to
    compare with the reference sheets; the manifest then names those copies."""
    by_id = {s["id"]: s for s in manifest["shots"]}
    for entry in manifest.get("review", []):
        tries = by_id[entry["shot"]]["identity"]["tries"]
        for t in tries:
            src = Path(t["image"])
            if src.is_file():
                (staging / "review").mkdir(exist_ok=True)
                place(src, staging / "review" / src.name)
                t["image"] = f"review/{src.name}"
        entry["images"] = [t["image"] for t in tries]

