"""Metered figures of a drama-year: which runs count (MLflow), what they cost (the ledger), their runtime by district.

The rules are in pipeline/finance/build.py's docstring; this module only reads. Amounts are summed exactly
(`exact_sum`), runtimes are exact fractions of whole frames.
"""
from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Context, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.money import ZERO, D, exact_sum  # noqa: F401  (exact_sum: re-exported for build)
from pipeline.finance.scenario import DISTRICTS

CST = dt.timezone(dt.timedelta(hours=8), "CST")  # China Standard Time: the claim year's clock
COMPUTE_KINDS = ("compute", "idle")  # a rented node's idle time is compute cost
AI_TOOL_KINDS = ("ai_tool",)
SHARE_PLACES = Decimal("1e-12")
MINUTE_PLACES = Decimal("1e-6")
_WIDE = Context(prec=60)


class MeteringError(UserError):
    """MLflow and the ledger cannot back the figures: no such drama, a missing manifest, a ledger mismatch."""


@dataclass(frozen=True)
class MeteredRun:
    """One episode's latest finished run in the year: its MLflow runs, runtime by district, cost entries."""

    episode: str
    mlflow_run_id: str
    run_id: str  # microdrama.run_id: the `job` of its ledger entries
    started: dt.datetime
    company: str
    stage_runs: dict[str, str]  # stage -> MLflow child run id
    runtime: Fraction  # seconds, exact (frames / fps)
    by_district: dict[str, Fraction]  # seconds in shots tagged with the district
    lines: tuple[Any, ...]  # ledger Entry objects of kind "cost"
    checkpoint_size: int | None = None  # the run's own signed checkpoint (MLflow tags), when it recorded one
    checkpoint_root: str = ""

    def cost(self, kinds: tuple[str, ...] | None = None) -> Decimal:
        """Exact sum of this run's cost lines (of these kinds; all when None)."""
        return exact_sum(D(e.body["amount"]) for e in self.lines if kinds is None or e.body["kind"] in kinds)


@dataclass(frozen=True)
class MeteredDrama:
    """A drama's metered figures for one year, with the runs and ledger entries behind them."""

    drama: str
    year: int
    tracking_uri: str
    ledger_url: str
    experiment_found: bool
    runs: tuple[MeteredRun, ...] = ()
    superseded: tuple[str, ...] = ()  # MLflow ids of older finished runs of the same episodes, not counted
    unlogged: dict[str, Decimal] = field(default_factory=dict)  # job -> ledger cost of jobs MLflow has no run of

    def total(self, kinds: tuple[str, ...]) -> Decimal:
        """Exact sum of the amounts of the cost lines of these kinds."""
        return exact_sum(run.cost(kinds) for run in self.runs)

    @property
    def compute(self) -> Decimal:
        return self.total(COMPUTE_KINDS)

    @property
    def ai_tools(self) -> Decimal:
        return self.total(AI_TOOL_KINDS)

    @property
    def list_value(self) -> Decimal:
        return exact_sum(D(e.body.get("list_value") or "0") for run in self.runs for e in run.lines)

    @property
    def runtime(self) -> Fraction:
        return sum((run.runtime for run in self.runs), Fraction(0))

    def runtime_share(self) -> dict[str, Decimal]:
        """district -> share of the runtime in shots tagged with it (districts that appear only)."""
        total = self.runtime
        if not total:
            return {}
        out = {}
        for district in DISTRICTS:
            seconds = sum((run.by_district.get(district, Fraction(0)) for run in self.runs), Fraction(0))
            if seconds:
                out[district] = _decimal(seconds / total, SHARE_PLACES, ROUND_HALF_EVEN)
        return out

    def longest_minutes(self) -> Decimal | None:
        longest = max((run.runtime for run in self.runs), default=None)
        return None if not longest else _decimal(longest / 60, MINUTE_PLACES, ROUND_CEILING)

    def lines(self) -> list[tuple[MeteredRun, Any]]:
        """(run, ledger entry) for every cost line, in ledger order."""
        return sorted(((run, e) for run in self.runs for e in run.lines), key=lambda pair: pair[1].index)


def _decimal(value: Fraction, places: Decimal, rounding: str) -> Decimal:
    exact = _WIDE.divide(Decimal(value.numerator), Decimal(value.denominator))
    return exact.quantize(places, rounding=rounding).normalize()


def default_tracking_uri(uri: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (relative paths made absolute)."""
    from pipeline.metering.mlflow_sink import DEFAULT_URI

    return _absolute(uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI)


def default_ledger(url: str | None = None) -> str:
    """--ledger, else $MICRODRAMA_LEDGER, else sqlite:///ledger.db (relative paths made absolute)."""
    from pipeline.metering.ledger import default_ledger_url

    return _absolute(url or default_ledger_url())


def _absolute(url: str) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str(Path(url[len(prefix):]).resolve())
    return url


def open_ledger(url: str) -> Any:
    """The ledger at `url`, opened read-only: a missing SQLite file is an error, never a new ledger."""
    from pipeline.metering.ledger import Ledger

    try:
        return Ledger.open(url, create=False, read_only=True)
    except (FileNotFoundError, ValueError, ImportError, OSError) as err:
        raise MeteringError(f"--ledger: cannot open {url}: {err}") from None


def _year_bounds(year: int) -> tuple[dt.datetime, dt.datetime]:
    return dt.datetime(year, 1, 1, tzinfo=CST), dt.datetime(year + 1, 1, 1, tzinfo=CST)


def _run_time(run: Any) -> dt.datetime:
    """When the episode ran: the MLflow start time, or the queue time of a run logged late."""
    delayed = run.data.tags.get("microdrama.delayed_from")
    if delayed:
        return dt.datetime.fromisoformat(delayed.replace("Z", "+00:00")).astimezone(CST)
    return dt.datetime.fromtimestamp(run.info.start_time / 1000, tz=dt.timezone.utc).astimezone(CST)


def _search_all(client: Any, experiment_id: str, query: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def latest_runs(client: Any, experiment_id: str, year: int) -> tuple[list[Any], list[str], set[str]]:
    """The latest finished episode run of each episode in the year, the ids of the runs they supersede, and
    the job ids (microdrama.run_id) of every episode run MLflow knows for the drama, any year or status."""
    first, end = _year_bounds(year)
    every = _search_all(client, experiment_id, "tags.`microdrama.kind` = 'episode'")
    known = {r.data.tags.get("microdrama.run_id", "") for r in every}
    runs = [r for r in every if r.info.status == "FINISHED" and first <= _run_time(r) < end]
    runs.sort(key=lambda r: (_run_time(r), r.info.start_time))
    latest: dict[str, Any] = {}
    older = []
    for run in runs:
        episode = run.data.tags.get("episode", "")
        if episode in latest:
            older.append(latest[episode].info.run_id)
        latest[episode] = run
    return [latest[e] for e in sorted(latest)], older, known


def _manifest(tracking_uri: str, run: Any, tmp: str) -> dict[str, Any]:
    import json

    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars on finance's terminal
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="episode/manifest.json",
                                                   dst_path=tmp, tracking_uri=tracking_uri)
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except Exception as err:  # MlflowException, OSError, bad JSON: the run cannot back a claim
        raise MeteringError(f"MLflow run {run.info.run_id} ({run.data.tags.get('episode')}): cannot read its "
                            f"episode/manifest.json artifact ({type(err).__name__}: {err})") from None


def _runtime(manifest: dict[str, Any], where: str) -> tuple[Fraction, dict[str, Fraction]]:
    """Exact runtime (frames / fps) of every shot and of the shots tagged with each district."""
    try:
        fps = int(manifest["fps"])
        total, by_district = Fraction(0), {}
        for shot in manifest["shots"]:
            seconds = Fraction(int(shot["frames"]), fps)
            total += seconds
            for tag in dict.fromkeys(t.lower() for t in shot.get("location_tags", [])):
                if tag in DISTRICTS:
                    by_district[tag] = by_district.get(tag, Fraction(0)) + seconds
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
        raise MeteringError(f"{where}: manifest.json lacks a usable fps/shots timeline ({err!r})") from None
    return total, by_district


def _check_ledger_checkpoint(ledger: Any, run: Any, size: int) -> None:
    """The run recorded the ledger's signed head when it ended; this ledger must still extend it."""
    tags = run.data.tags
    if "ledger.checkpoint.size" not in tags:
        return
    recorded, root = int(tags["ledger.checkpoint.size"]), tags.get("ledger.checkpoint.root", "")
    where = f"MLflow run {run.info.run_id} ({tags.get('episode')})"
    if recorded > size:
        raise MeteringError(f"--ledger: {where} recorded a ledger of {recorded} entries but {ledger.url} has "
                            f"{size}: is this the ledger the runs wrote to?")
    if ledger.root_hash(recorded) != root:
        raise MeteringError(f"--ledger: the first {recorded} entries of {ledger.url} do not hash to the root "
                            f"{where} recorded; wrong ledger, or it was altered (run `microdrama ledger verify`)")


def meter_drama(drama: str, year: int, tracking_uri: str, ledger: Any,
                costs_by_job: dict[str, list[Any]] | None = None) -> MeteredDrama:
    """The drama's metered figures for `year`: latest finished run per episode, their ledger cost lines."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(drama)
    if exp is None:
        return MeteredDrama(drama, year, tracking_uri, ledger.url, experiment_found=False)
    parents, older, known = latest_runs(client, exp.experiment_id, year)
    if costs_by_job is None:
        costs_by_job = cost_entries_by_job(ledger)
    unlogged = {job: exact_sum(D(e.body["amount"]) for e in lines) for job, lines in costs_by_job.items()
                if job not in known and any(e.body.get("drama") == drama for e in lines)}
    children = _stage_runs(client, exp.experiment_id, {p.info.run_id for p in parents})
    size = ledger.size()
    runs = []
    with tempfile.TemporaryDirectory(prefix="microdrama-build-") as tmp:
        for parent in parents:
            runs.append(_metered_run(tracking_uri, ledger, parent, children, costs_by_job, size, tmp))
    return MeteredDrama(drama, year, tracking_uri, ledger.url, True, tuple(runs), tuple(older), unlogged)


def _metered_run(tracking_uri: str, ledger: Any, parent: Any, children: dict[str, dict[str, str]],
                 costs_by_job: dict[str, list[Any]], size: int, tmp: str) -> MeteredRun:
    tags = parent.data.tags
    where = f"MLflow run {parent.info.run_id} ({tags.get('episode')})"
    run_id = tags.get("microdrama.run_id")
    if not run_id:
        raise MeteringError(f"{where}: has no microdrama.run_id tag, so its ledger entries cannot be found")
    _check_ledger_checkpoint(ledger, parent, size)
    manifest = _manifest(tracking_uri, parent, os.path.join(tmp, parent.info.run_id))
    if manifest.get("run_id") != run_id:
        raise MeteringError(f"{where}: its manifest is of run {manifest.get('run_id')!r}, not {run_id!r}")
    runtime, by_district = _runtime(manifest, where)
    return MeteredRun(episode=tags.get("episode", ""), mlflow_run_id=parent.info.run_id, run_id=run_id,
                      started=_run_time(parent), company=tags.get("company", ""),
                      stage_runs=children.get(parent.info.run_id, {}), runtime=runtime,
                      by_district=by_district, lines=tuple(costs_by_job.get(run_id, ())),
                      checkpoint_size=int(tags["ledger.checkpoint.size"]) if "ledger.checkpoint.size" in tags else None,
                      checkpoint_root=tags.get("ledger.checkpoint.root", ""))


def _stage_runs(client: Any, experiment_id: str, parents: set[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    if not parents:
        return out
    for child in _search_all(client, experiment_id, "tags.`microdrama.kind` = 'stage'"):
        parent = child.data.tags.get("mlflow.parentRunId")
        if parent in parents:
            out.setdefault(parent, {})[child.data.tags.get("stage", "")] = child.info.run_id
    return out


def cost_entries_by_job(ledger: Any, public_key: Any = None) -> dict[str, list[Any]]:
    """Every ledger `cost` entry a signed checkpoint covers, grouped by the job (microdrama run id) it bills.

    Nothing stored is trusted: the latest checkpoint must verify against the pinned key (`public_key`, else
    $MICRODRAMA_LEDGER_PUBKEY, else the trust file), and the bytes of every entry it covers must hash, in
    order, to its signed root. Entries after that checkpoint are not evidence yet and are left out."""
    from pipeline.metering.ledger import Entry
    from pipeline.metering.merkle import MerkleTree, leaf_hash

    cp = ledger.latest_checkpoint()
    if cp is None:
        return {}
    verifier = ledger.trusted_public_key(public_key)
    if verifier is None:
        raise MeteringError(f"--ledger: no key is pinned for {ledger.origin}; pass --pubkey VKEY, set "
                            "$MICRODRAMA_LEDGER_PUBKEY or run `microdrama ledger pin VKEY` (the ledger's vkey, "
                            "received when it was set up)")
    bad = verifier.problems(cp)
    if bad:
        raise MeteringError(f"--ledger: its latest checkpoint #{cp.id} does not verify against the pinned key "
                            f"({'; '.join(bad)}); run `microdrama ledger verify`")
    signed = [e for e in ledger.entries() if e.index < cp.tree_size]
    rebuilt = [Entry.from_canonical(e.canonical) for e in signed]
    if [e.index for e in rebuilt] != list(range(cp.tree_size)) or \
            MerkleTree([leaf_hash(e.canonical) for e in rebuilt]).root().hex() != cp.root_hash:
        named = next((f"entry {e.index} ({e.idempotency_key}) was altered: " for e, r in zip(signed, rebuilt)
                      if e.leaf_hash != r.leaf_hash or e.index != r.index), "")
        raise MeteringError(f"--ledger: {named}the bytes of entries 0..{cp.tree_size - 1} do not hash to the root "
                            f"signed by checkpoint #{cp.id}; run `microdrama ledger verify`")
    out: dict[str, list[Any]] = {}
    for entry in rebuilt:
        if entry.kind == "cost":
            out.setdefault(entry.body.get("job", ""), []).append(entry)
    return out


def plain_text(amount: Decimal) -> str:
    """An exact amount as plain decimal text without trailing zeros or exponent: 0.000150508700 -> '0.0001505087'
    (never rounded: `Decimal.normalize` would round to the context's 28 digits)."""
    text = format(amount, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def public_url(url: str) -> str:
    """A URL without credentials (postgresql://user:pw@host/db -> postgresql://host/db), for headers and packets."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return url
