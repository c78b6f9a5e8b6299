"""Cost before spending: per-stage cost per execution learnt from past MLflow runs, and the budget guard."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pipeline.errors import UserError
from pipeline.job_backends import backend_name
from pipeline.money import exact_sum, shown, shown_rate


class BudgetExceeded(UserError):
    """The next stage would push the episode past `budget.max_cny`; the run stops cleanly before it."""

    exit_code = 3


@dataclass(frozen=True)
class StageRate:
    stage: str
    backend: str
    per_execution: Decimal  # CNY per executed (non-cached) stage execution
    samples: int  # executions it was learnt from


def learn_rates(tracking_uri: str, drama: str | None = None) -> dict[tuple[str, str], StageRate]:
    """(stage, backend) → average cost per executed run, from every logged stage child run."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    query = "tags.`microdrama.kind` = 'stage'"
    if drama:
        query += f" and tags.drama = '{drama}'"
    try:
        runs = mlflow.search_runs(search_all_experiments=True, filter_string=query, output_format="list",
                                  max_results=50000)
    except Exception:  # no tracking store yet: nothing learnt
        return {}
    cost: dict[tuple[str, str], list[Decimal]] = defaultdict(list)
    n: dict[tuple[str, str], int] = defaultdict(int)
    for run in runs:
        key = (run.data.tags.get("stage", ""), run.data.params.get("backend", ""))
        worked = int(run.data.metrics.get("executions", 0) - run.data.metrics.get("cache_hits", 0))
        if worked > 0:
            cost[key].append(Decimal(run.data.tags.get("cost.total_cny", "0")))
            n[key] += worked
    return {k: StageRate(k[0], k[1], exact_sum(cost[k]) / n[k], n[k]) for k in cost if n[k]}


def plan(job: Any, shots: int, sheets: int = 0) -> dict[str, int]:
    """Executions per stage for an episode of `shots` shots making `sheets` new character sheets."""
    return {"script": 1, "translate": 1, **({"cast": sheets} if sheets else {}), "storyboard": shots, "dub": shots,
            "video": shots, "edit": 1}


def estimate(job: Any, shots: int, tracking_uri: str) -> dict[str, Any]:
    """Predicted cost per stage and in total (exact text; `total_cny` is None when no stage could be estimated);
    stages with no history are priced from the table's planned AI-tool units where they have them, else listed
    as unknown, and `message` says in words what the total covers."""
    from pipeline.finance import plan as planned_units

    rates = learn_rates(tracking_uri, job.drama) or learn_rates(tracking_uri)
    planned = planned_units.for_job(job)  # AI-tool units priced from the table: no history needed
    lines, known, unknown = [], [], []
    for stage, count in plan(job, shots, planned.get("sheets", 0)).items():
        backend = backend_name(job, stage)
        rate = rates.get((stage, backend))
        if rate is None and stage in planned["stages"]:
            rate = StageRate(stage, backend, planned["stages"][stage] / max(1, count), 0)  # AI tools only, no compute
        if rate is None:
            unknown.append(stage)
            lines.append({"stage": stage, "backend": backend, "executions": count, "per_execution": None,
                          "estimate_cny": None, "samples": 0})
            continue
        amount = rate.per_execution * count
        known.append(amount)
        lines.append({"stage": stage, "backend": backend, "executions": count,
                      "per_execution": str(rate.per_execution.quantize(Decimal("0.000001"))),
                      "estimate_cny": str(amount.quantize(Decimal("0.01"))), "estimate_exact": str(amount),
                      "samples": rate.samples})
    total = exact_sum(known) if known else None
    return {"drama": job.drama, "episode": job.episode, "shots": shots, "stages": lines,
            "total_cny": None if total is None else str(total.quantize(Decimal("0.01"))),
            "total_exact": None if total is None else str(total), "unknown_stages": unknown,
            "message": _message(total, [l for l in lines if l["stage"] in unknown]),
            "planned": planned_units.as_json(planned)}


def _message(total: Decimal | None, unknown: list[dict[str, Any]]) -> str:
    missing = ", ".join(f"{l['stage']} ({l['backend']})" for l in unknown)
    if total is None:
        return f"no estimate: no history and no price for {missing}; run the episode once to learn its cost"
    text = f"total: {shown(total)} CNY" + (f" ({shown_rate(total)} exactly)" if shown(total) != shown_rate(total)
                                          and total < 1 else "")
    return text + (f", not counting {missing}: no history and no price for them" if unknown else "")


class BudgetGuard:
    """Called before each stage: spent so far (ledger) + the stage's estimate must stay within budget."""

    def __init__(self, job: Any, run_id: str, ledger_url: str, tracking_uri: str):
        self.job, self.run_id, self.ledger_url = job, run_id, ledger_url
        self.limit: Decimal = job.budget.max_cny
        self.rates = learn_rates(tracking_uri, job.drama) or learn_rates(tracking_uri)
        from pipeline.finance.plan import for_job

        try:
            self.planned = for_job(job)["stages"]
        except Exception:  # a job that cannot be planned before its script exists: history only
            self.planned = {}

    def spent(self) -> Decimal:
        from pipeline.metering.ledger import Ledger

        ledger = Ledger.open(self.ledger_url)
        try:
            return exact_sum(e.body["amount"] for e in ledger.entries(kind="cost", where={"job": self.run_id}))
        finally:
            ledger.close()

    def __call__(self, stage: str, executions: int) -> None:
        backend = backend_name(self.job, stage)
        rate = self.rates.get((stage, backend))
        if rate is None and stage in self.planned:  # no history: the planned AI-tool cost of the stage
            rate = StageRate(stage, backend, self.planned[stage] / max(1, executions), 0)
        upcoming = rate.per_execution * executions if rate else Decimal(0)
        spent = self.spent()
        if spent + upcoming > self.limit:
            basis = (f"an estimated {shown_rate(upcoming)} CNY for {executions} execution(s) = "
                     f"{shown_rate(spent + upcoming)} CNY" if rate else
                     f"no history and no price for {stage} ({backend}) to estimate it from, so the budget can "
                     f"only stop the run once it is spent")
            raise BudgetExceeded(
                f"budget.max_cny: stopped before stage '{stage}': spent {shown_rate(spent)} CNY + {basis} > "
                f"{shown_rate(self.limit)} CNY. Raise budget.max_cny or pick a cheaper profile; finished stages "
                f"are cached and a re-run resumes from them.")
