"""Storyboard stage: one 9:16 keyframe per shot, from the shot's framing, place, people and action.

With `stages.storyboard.identity` set, each keyframe's faces are scored against the reference faces of the
shot's characters; below `min_similarity` the shot is re-rendered with another seed, up to `max_tries`
renders, every render and every check reported as AI usage of this one execution (docs/identity.md).
"""
from __future__ import annotations

import hashlib
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.job import Job
from pipeline.script import Script, Shot
from pipeline.series import shot_characters_key
from pipeline.stages import StageCall, StageRun, report_all

VERSION = 3  # 2: characters keyed by bible entry, reference images by content, cast position; 3: identity check


def shot_seed(job_seed: int, shot_id: str) -> int:
    return (job_seed * 1_000_003 + zlib.crc32(shot_id.encode())) % (2**31)


def draws_dialogue(backend: str) -> bool:
    """Whether a storyboard backend's picture depends on the shot's dialogue (its class says
    `draws_dialogue = False` when not, e.g. text-to-image models prompted from action and place)."""
    from models.registry import resolve

    try:
        return bool(getattr(resolve("storyboard", backend), "draws_dialogue", True))
    except Exception:  # an unknown backend is named by validate(); keep the key conservative
        return True


def identity_references(shot: Shot, script: Script) -> dict[str, list[str]]:
    """Character → its reference images, for the shot's characters that have any."""
    refs = {}
    for name in shot.characters:
        char = script.characters.get(name)
        if char is not None and char.reference_images:
            refs[name] = [str(p) for p in char.reference_images]
    return refs


def reference_digests(shot: Shot, script: Script) -> dict[str, list[str]]:
    """SHA-256 of every reference image of the shot's characters: a replaced sheet re-renders its shots."""
    return {name: [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]
            for name, paths in identity_references(shot, script).items()}


def verdict(scores: dict[str, dict[str, Any]], min_similarity: float) -> str:
    """passed: every character scored at or above the threshold; failed: one scored below it (re-render);
    no-face: nobody could be scored; partial: those scored passed, someone could not be scored."""
    values = [v["score"] for v in scores.values()]
    scored = [v for v in values if v is not None]
    if any(v < min_similarity for v in scored):
        return "failed"
    if not scored:
        return "no-face"
    return "passed" if len(scored) == len(values) else "partial"


def _worst(t: dict[str, Any]) -> float:
    scored = [v["score"] for v in t["scores"].values() if v["score"] is not None]
    return min(scored) if scored else float("-inf")


@dataclass(frozen=True)
class StoryboardStage:
    job: Job
    name: str = "storyboard"
    reads: tuple[str, ...] = ("script.shot",)
    writes: tuple[str, ...] = ("image",)

    def cache_key_parts(self, call: StageCall) -> list[Any]:
        """Everything the backend may draw from: the shot (its dialogue too when the backend draws it:
        `draws_dialogue`, default True — the procedural panel captions a shot without action with its
        first line and stages every speaker), the scene heading, each drawn character's entry in the
        cast (description, names, voice hints) and its place in the cast (it picks the colours)."""
        s = self.job.stages.storyboard
        shot: Shot = call.inputs["shot"]
        script: Script = call.inputs["script"]
        dialogue = draws_dialogue(s.backend)
        visual = shot.model_dump(mode="json", exclude={"source_line", "lines"})
        names = list(shot.characters)
        if dialogue:
            visual["lines"] = [ln.model_dump(mode="json", exclude={"source_line", "parenthetical"})
                               for ln in shot.lines]
            names += [ln.speaker for ln in shot.lines]
        # only this shot's characters (bible entries, reference images by content, place in the cast):
        # changing one character re-renders only the shots it is in
        chars = shot_characters_key(script, dict.fromkeys(names))
        heading = next((sc.heading for sc in script.scenes if sc.number == shot.scene), "")
        identity = s.identity.model_dump(mode="json") if s.identity is not None else None
        return [self.name, VERSION, s.backend, s.options, s.width, s.height, visual, chars, heading, identity,
                shot_seed(self.job.seed, shot.id)]

    def run(self, call: StageCall, run: StageRun) -> dict[str, Any]:
        s = self.job.stages.storyboard
        shot: Shot = call.inputs["shot"]
        script: Script = call.inputs["script"]
        out = run.workdir / f"{shot.id}.png"
        seed = shot_seed(self.job.seed, shot.id)
        checker = run.aux_backends.get("identity")
        refs = identity_references(shot, script)
        if checker is None or not refs:
            result = run.backend.render(shot, script, out, width=s.width, height=s.height, seed=seed)
            report_all(run, result.ai_usage)
            produced = {"image": str(out), "seed": seed, "params": result.params}
            if s.identity is not None:
                why = "no characters in the shot" if not shot.characters else \
                    "no reference images for the shot's characters"
                produced["identity"] = {"status": "unchecked", "reason": why, "tries": []}
            return produced
        return self._checked(shot, script, run, checker, refs, seed, out)

    def _checked(self, shot: Shot, script: Script, run: StageRun, checker: Any, refs: dict[str, list[str]],
                 seed: int, out: Path) -> dict[str, Any]:
        """Render, score, re-render below the threshold; keep the first passing try, else the best one."""
        s = self.job.stages.storyboard
        ident = s.identity
        tries: list[dict[str, Any]] = []
        results = []
        for i in range(ident.max_tries):
            path = run.workdir / "tries" / f"{shot.id}.try{i + 1}.png"
            t0 = time.perf_counter()
            again = {"try_index": i} if i else {}  # a re-render draws another seed (backends with identity_retries)
            result = run.backend.render(shot, script, path, width=s.width, height=s.height, seed=seed, **again)
            report_all(run, result.ai_usage)
            render_s = time.perf_counter() - t0
            scores = checker.check(path, refs)
            run.report_usage(checker.spec.name, "image", 1)  # one keyframe's faces checked
            status = verdict(scores, ident.min_similarity)
            tries.append({"try": i + 1, "seed": result.params.get("seed"), "image": str(path), "status": status,
                          "scores": scores, "render_s": round(render_s, 3),
                          "check_s": round(time.perf_counter() - t0 - render_s, 3)})
            results.append(result)
            if status != "failed":
                break
        chosen = next((t for t in tries if t["status"] != "failed"), None) or max(tries, key=_worst)
        shutil.copyfile(chosen["image"], out)
        status = chosen["status"] if chosen["status"] != "failed" else "flagged"
        reasons = {"flagged": f"below min_similarity {ident.min_similarity} after {len(tries)} tries; kept the best "
                              f"(try {chosen['try']})",
                   "no-face": "no face could be scored; identity not checked",
                   "partial": "some characters could not be scored"}
        return {"image": str(out), "seed": seed, "params": results[chosen["try"] - 1].params,
                "identity": {"status": status, "reason": reasons.get(status), "backend": checker.spec.name,
                             "model": checker.model, "detector": checker.detector,
                             "min_similarity": ident.min_similarity, "max_tries": ident.max_tries,
                             "chosen_try": chosen["try"], "scores": chosen["scores"], "tries": tries}}
