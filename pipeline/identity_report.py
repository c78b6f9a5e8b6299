"""The identity check across an episode: per-shot scores for the manifest, the review list, warning lines, MLflow.

The storyboard stage scores each keyframe (pipeline/stages/storyboard.py); this module only reports what it
found. A shot is for review when it never passed (`flagged`), when nobody in it could be scored (`no-face`)
or when someone could not be (`partial`) — never silently counted as fine.
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

REVIEW = ("flagged", "no-face", "partial")


def shot_identity(outputs: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's view of one storyboard execution's identity check (None when the check is off)."""
    ident = outputs.get("identity")
    if not isinstance(ident, dict):
        return None
    tries = [{"try": t["try"], "seed": t["seed"], "status": t["status"], "image": t["image"],
              "scores": {n: v["score"] for n, v in t["scores"].items()},
              "reasons": {n: v["reason"] for n, v in t["scores"].items() if v.get("reason")}}
             for t in ident.get("tries") or []]
    out = {"status": ident["status"], "reason": ident.get("reason"), "tries": tries}
    if tries:
        out.update({"chosen_try": ident["chosen_try"], "min_similarity": ident["min_similarity"],
                    "scores": {n: v["score"] for n, v in ident["scores"].items()},
                    "backend": ident.get("backend"), "model": ident.get("model"), "detector": ident.get("detector")})
    return out


def summary(shots: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(episode summary, review list) from the manifest's shots."""
    checked = [s for s in shots if s.get("identity") and s["identity"]["tries"]]
    renders = sum(len(s["identity"]["tries"]) for s in checked)
    by_status: dict[str, list[str]] = {}
    for s in shots:
        if s.get("identity"):
            by_status.setdefault(s["identity"]["status"], []).append(s["id"])
    review = [{"shot": s["id"], "status": s["identity"]["status"], "reason": s["identity"]["reason"],
               "scores": s["identity"].get("scores", {}),
               "images": [t["image"] for t in s["identity"]["tries"]]}
              for s in shots if s.get("identity") and s["identity"]["status"] in REVIEW]
    scores = [v for s in checked for t in s["identity"]["tries"] for v in t["scores"].values() if v is not None]
    return ({"checked_shots": len(checked), "renders": renders,
             "rerendered_shots": sum(1 for s in checked if len(s["identity"]["tries"]) > 1),
             "rerender_rate": round((renders - len(checked)) / len(checked), 6) if checked else 0.0,
             "by_status": by_status, "min_score": min(scores) if scores else None,
             "max_score": max(scores) if scores else None}, review)


def warning_lines(manifest: dict[str, Any]) -> list[str]:
    """One line per shot for review, to print after the run."""
    lines = []
    for r in manifest.get("review", []):
        scores = ", ".join(f"{n} {'none' if v is None else format(v, '.2f')}" for n, v in r["scores"].items())
        lines.append(f"warning: storyboard[{r['shot']}]: identity {r['status']}, for review: {r['reason']}"
                     + (f" ({scores})" if scores else "") + "; see manifest.json \"review\"")
    return lines


def _metric(name: str) -> str:
    return re.sub(r"[^\w.\- ]", "_", name)


def log_storyboard_run(mlflow: Any, manifest: dict[str, Any], settings: Any) -> None:
    """Inside the storyboard stage's MLflow run: the check's settings (params), the scores per shot per
    character (metrics `identity.<shot>.<character>`, one step per try), the counts, and identity.json
    (every try of every shot) as an artifact. `settings` is the job's stages.storyboard.identity."""
    if settings is None:
        return
    shots = [s for s in manifest.get("shots", []) if s.get("identity")]
    first = next((s["identity"] for s in shots if s["identity"]["tries"]), {})
    mlflow.log_params({"identity.backend": settings.backend, "identity.min_similarity": str(settings.min_similarity),
                       "identity.max_tries": str(settings.max_tries),
                       **{f"identity.{k}": str(first[k]) for k in ("model", "detector") if first.get(k)}})
    for s in shots:
        for t in s["identity"]["tries"]:
            for name, score in t["scores"].items():
                if score is not None:
                    mlflow.log_metric(_metric(f"identity.{s['id']}.{name}"), float(score), step=t["try"])
    summ = manifest.get("identity", {})
    metrics = {"identity_checked_shots": summ.get("checked_shots", 0), "identity_renders": summ.get("renders", 0),
               "identity_rerender_rate": summ.get("rerender_rate", 0.0),
               "identity_review_shots": len(manifest.get("review", []))}
    for status, ids in summ.get("by_status", {}).items():
        metrics[_metric(f"identity_{status}_shots")] = len(ids)
    mlflow.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "identity.json"
        path.write_text(json.dumps({"summary": summ, "review": manifest.get("review", []),
                                    "shots": {s["id"]: s["identity"] for s in shots}}, ensure_ascii=False,
                                   indent=1), "utf-8")
        mlflow.log_artifact(str(path), artifact_path="identity")
