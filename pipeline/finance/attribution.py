"""An episode's production cost across runs: every metered ledger line of a drama, attributed to a category.

One rule set, used by `microdrama report`, `claims build` and claim packets, so they agree to the digit:

* **final** — the lines of the runs whose outputs are in the final episode (each episode's latest finished
  run). A stage output the final run took from the cache is attributed to the run that produced it (the
  usage record with the same `cache_key`, or for ledgers written before cache keys were recorded the latest
  earlier execution of the same stage and shot): its production lines count, once, as final. The cache
  hit's own lines (the lookup) are final too. A re-cut (`microdrama edit --timeline`) renders only the edit
  stage: the stages of the run it re-cut (its base, MLflow tag `microdrama.base_run`) are final with it.
* **superseded** — lines of finished runs whose outputs are not in the final cut (earlier iterations).
* **failed** — lines of failed attempts (a usage record with status `failed`), in any run.
* **stopped** — the other lines of runs that never finished (a budget stop, a failure elsewhere in the run,
  an interrupted driver): MLflow has no finished run for them.
* **idle** — idle time of a rented node (`ledger bill-idle --drama`), a line of kind `idle`.

superseded, failed and stopped are rework. A line is in exactly one category; which categories a programme's
basis takes is data in its policy file (scenario fields below, each cited there).
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Iterable

from pipeline.money import D, exact_sum

CATEGORIES = ("final", "superseded", "failed", "stopped", "idle")
REWORK = ("superseded", "failed", "stopped")
LABELS = {"final": "in the final episode", "superseded": "rework: superseded run",
          "failed": "rework: failed attempt", "stopped": "rework: run that did not finish (budget stop, failure)",
          "idle": "idle rented node"}
# scenario field -> (categories, line kinds) it sums; the claims engine reads the fields, policies cite them
FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "costs.compute": (("final",), ("compute",)),
    "costs.ai_tools": (("final",), ("ai_tool",)),
    "costs.rework_compute": (REWORK, ("compute",)),
    "costs.rework_ai_tools": (REWORK, ("ai_tool",)),
    "costs.idle": (("idle",), ("idle",)),
}


@dataclass(frozen=True)
class Line:
    """One ledger cost line of the drama, with its category and the episode and runs it belongs to."""

    entry: Any  # ledger Entry of kind "cost"
    category: str
    episode: str
    job: str  # the run (microdrama run id) that spent it
    attributed_to: str = ""  # for a producer's line counted in a later run's final cut: that run's id

    @property
    def body(self) -> dict[str, Any]:
        return self.entry.body

    @property
    def amount(self) -> Decimal:
        return D(self.body["amount"])

    @property
    def kind(self) -> str:
        return self.body["kind"]


def total(lines: Iterable[Line], categories: Iterable[str] | None = None,
          kinds: Iterable[str] | None = None) -> Decimal:
    """Exact sum of the lines of these categories and kinds (all when None)."""
    cats = set(categories) if categories is not None else None
    ks = set(kinds) if kinds is not None else None
    return exact_sum(l.amount for l in lines if (cats is None or l.category in cats) and (ks is None or l.kind in ks))


def field_totals(lines: Iterable[Line]) -> dict[str, Decimal]:
    """The metered scenario fields (FIELDS) of these lines, exact."""
    lines = list(lines)
    return {name: total(lines, cats, kinds) for name, (cats, kinds) in FIELDS.items()}


def _producers(usages: list[Any]) -> tuple[dict[str, dict], dict[tuple[str, str, str], list[tuple[int, dict]]]]:
    """Executions that built an output: by cache key, and by (episode, stage, shot) in ledger order."""
    by_key: dict[str, dict] = {}
    by_place: dict[tuple[str, str, str], list[tuple[int, dict]]] = {}
    for entry in usages:
        u = entry.body
        if u.get("status") != "ok" or u.get("cache_hit"):
            continue
        key = (u.get("meta") or {}).get("cache_key")
        if key:
            by_key.setdefault(key, u)
        by_place.setdefault((u.get("episode", ""), u.get("stage", ""), u.get("shot") or ""), []).append((entry.index, u))
    return by_key, by_place


def _producer(hit: Any, by_key: dict[str, dict], by_place: dict) -> dict | None:
    u = hit.body
    key = (u.get("meta") or {}).get("cache_key")
    if key:
        return by_key.get(key)
    earlier = [p for i, p in by_place.get((u.get("episode", ""), u.get("stage", ""), u.get("shot") or ""), [])
               if i < hit.index]
    return earlier[-1] if earlier else None


def attribute(drama: str, usages: list[Any], costs: list[Any], final_jobs: dict[str, str],
              finished_jobs: set[str], bases: dict[str, str] | None = None) -> list[Line]:
    """Every cost line of `drama` (ledger order) with its category.

    `usages`/`costs`: the ledger's usage and cost entries (any drama; filtered here); `final_jobs`: episode ->
    run id of its final run; `finished_jobs`: run ids MLflow has a finished episode run of; `bases`: run id ->
    the run it re-cut (`microdrama edit --timeline` renders only the edit stage over an earlier run's shots:
    that run's other stages are in the final episode too).
    """
    usages = [e for e in usages if e.body.get("drama") == drama]
    costs = [e for e in costs if e.body.get("drama") == drama]
    status = {e.body.get("idempotency_key"): e.body.get("status") for e in usages}
    by_key, by_place = _producers(usages)
    final: dict[str, str] = {}  # usage key -> the final run it is attributed to (counted once: first wins)
    finals = set(final_jobs.values())

    def count(entry: Any, job: str) -> None:
        """The execution is in `job`'s final cut, and so is the producer of an output it took from the cache."""
        u = entry.body
        if u.get("status") == "failed":
            return
        final.setdefault(u.get("idempotency_key"), job)
        if u.get("cache_hit") and (producer := _producer(entry, by_key, by_place)) is not None:
            final.setdefault(producer.get("idempotency_key"), job)

    by_job: dict[str, list[Any]] = {}
    for entry in usages:
        by_job.setdefault(entry.body.get("job", ""), []).append(entry)
        if entry.body.get("job") in finals:
            count(entry, entry.body["job"])
    for job in dict.fromkeys(final_jobs.values()):  # a re-cut's bases: the stages it did not render again
        done, seen, base = {e.body.get("stage") for e in by_job.get(job, [])}, {job}, (bases or {}).get(job)
        while base and base not in seen:
            seen.add(base)
            for entry in by_job.get(base, []):
                if entry.body.get("stage") not in done:
                    count(entry, job)
            done |= {e.body.get("stage") for e in by_job.get(base, [])}
            base = (bases or {}).get(base)
    out = []
    for entry in costs:
        c = entry.body
        key, job = c.get("usage_key", ""), c.get("job", "")
        if c.get("kind") == "idle":
            category = "idle"
        elif key in final:
            category = "final"
        elif status.get(key) == "failed":
            category = "failed"
        elif job in finished_jobs:
            category = "superseded"
        else:
            category = "stopped"
        attributed = final.get(key, "") if category == "final" and final.get(key) != job else ""
        out.append(Line(entry, category, c.get("episode", ""), job, attributed))
    return out
