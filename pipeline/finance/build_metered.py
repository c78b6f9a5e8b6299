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
from pipeline.finance.attribution import REWORK, Line, attribute, field_totals, total
from pipeline.finance.scenario import DISTRICTS

CST = dt.timezone(dt.timedelta(hours=8), "CST")  # China Standard Time: the claim year's clock
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
    lines: tuple[Any, ...] = ()  # attributed Lines (pipeline/finance/attribution.py) in this episode's final cut
    checkpoint_size: int | None = None  # the run's own signed checkpoint (MLflow tags), when it recorded one
    checkpoint_root: str = ""

    def cost(self, kinds: tuple[str, ...] | None = None) -> Decimal:
        """Exact sum of this run's final-cut lines (of these kinds; all when None)."""
        return total(self.lines, kinds=kinds)


@dataclass(frozen=True)
class MeteredDrama:
    """A drama's metered figures for one year, with the runs and ledger entries behind them."""

    drama: str
    year: int
    tracking_uri: str
    ledger_url: str
    experiment_found: bool
    runs: tuple[MeteredRun, ...] = ()
    superseded: tuple[str, ...] = ()  # MLflow ids of older finished runs of the same episodes
    attributed: tuple[Line, ...] = ()  # every cost line of the drama-year with its category (attribution.py)
    mlflow_runs: dict[str, str] = field(default_factory=dict)  # job -> MLflow episode run id, every logged run
    stage_runs: dict[str, dict[str, str]] = field(default_factory=dict)  # MLflow episode run -> stage -> child

    def fields(self) -> dict[str, Decimal]:
        """The metered scenario cost fields (costs.compute, costs.rework_compute, ...), exact."""
        return field_totals(self.attributed)

    @property
    def compute(self) -> Decimal:
        return self.fields()["costs.compute"]

    @property
    def ai_tools(self) -> Decimal:
        return self.fields()["costs.ai_tools"]

    @property
    def production(self) -> Decimal:
        """Everything metered on the drama in the year: final cut, rework and idle lines."""
        return total(self.attributed)

    @property
    def rework(self) -> Decimal:
        return total(self.attributed, REWORK)

    @property
    def list_value(self) -> Decimal:
        return exact_sum(D(l.body.get("list_value") or "0") for l in self.attributed if l.category == "final")

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

    def run_ids(self, line: Line) -> tuple[str | None, str | None]:
        """(MLflow episode run, MLflow stage run) of the run that spent the line; None where MLflow has none."""
        episode_run = self.mlflow_runs.get(line.job)
        stage_run = self.stage_runs.get(episode_run or "", {}).get(line.body.get("stage", ""))
        return episode_run, stage_run or episode_run

    def lines(self) -> list[Line]:
        """Every attributed cost line, in ledger order."""
        return sorted(self.attributed, key=lambda line: line.entry.index)


def _decimal(value: Fraction, places: Decimal, rounding: str) -> Decimal:
    exact = _WIDE.divide(Decimal(value.numerator), Decimal(value.denominator))
    return exact.quantize(places, rounding=rounding).normalize()


def default_tracking_uri(uri: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (relative paths made absolute)."""
    from pipeline import state

    return _absolute(uri or os.environ.get("MLFLOW_TRACKING_URI") or state.default_tracking_uri())


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


def _within(at: dt.datetime, year: int | None) -> bool:
    if year is None:  # every year (reports)
        return True
    first, end = _year_bounds(year)
    return first <= at < end


def latest_runs(client: Any, experiment_id: str, year: int | None) -> tuple[list[Any], list[str], dict[str, Any]]:
    """The latest finished episode run of each episode in the year, the ids of the runs they supersede, and
    every episode run MLflow knows for the drama (any year or status) by its job id (microdrama.run_id)."""
    every = _search_all(client, experiment_id, "tags.`microdrama.kind` = 'episode'")
    known = {r.data.tags.get("microdrama.run_id", ""): r for r in every}
    runs = [r for r in every if r.info.status == "FINISHED" and _within(_run_time(r), year)]
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


def ledger_entries(ledger: Any, public_key: Any = None) -> tuple[list[Any], list[Any]]:
    """The ledger's usage and cost entries that a checkpoint signed by the pinned key covers, verified byte
    for byte (`verified_entries`); read once, shared by every drama metered from it."""
    entries = verified_entries(ledger, public_key)
    return [e for e in entries if e.kind == "usage"], [e for e in entries if e.kind == "cost"]


def _in_year(lines: list[Line], year: int | None, finals: set[str], run_times: dict[str, dt.datetime]) -> list[Line]:
    """Lines of the final cut (of this year's final runs) plus the other lines spent in the year: a run's time
    is its MLflow time, else (a run MLflow never logged, an idle bill) when the ledger got its first line."""
    first_seen: dict[str, dt.datetime] = {}
    for line in lines:
        at = dt.datetime.fromisoformat(line.entry.appended_at.replace("Z", "+00:00")).astimezone(CST)
        first_seen.setdefault(line.job or line.body.get("usage_key", ""), at)
    out = []
    for line in lines:
        if line.category == "final":
            if (line.attributed_to or line.job) in finals:
                out.append(line)
            continue
        at = run_times.get(line.job) or first_seen[line.job or line.body.get("usage_key", "")]
        if _within(at, year):
            out.append(line)
    return out


def meter_drama(drama: str, year: int | None, tracking_uri: str, ledger: Any,
                entries: tuple[list[Any], list[Any]] | None = None) -> MeteredDrama:
    """The drama's metered figures for `year` (every year when None): each episode's final run (latest finished) and every ledger
    cost line of the drama attributed (pipeline/finance/attribution.py)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(drama)
    if exp is None:
        return MeteredDrama(drama, year, tracking_uri, ledger.url, experiment_found=False)
    parents, older, known = latest_runs(client, exp.experiment_id, year)
    usages, costs = entries if entries is not None else ledger_entries(ledger)
    finals = {p.data.tags.get("episode", ""): p.data.tags.get("microdrama.run_id", "") for p in parents}
    finished = {job for job, r in known.items() if r.info.status == "FINISHED"}
    bases = {job: base for job, r in known.items() if (base := r.data.tags.get("microdrama.base_run"))}
    lines = attribute(drama, usages, costs, finals, finished, bases)
    lines = _in_year(lines, year, set(finals.values()), {job: _run_time(r) for job, r in known.items()})
    children = _stage_runs(client, exp.experiment_id, {r.info.run_id for r in known.values()})
    size = ledger.size()
    runs = []
    with tempfile.TemporaryDirectory(prefix="microdrama-build-") as tmp:
        for parent in parents:
            runs.append(_metered_run(tracking_uri, ledger, parent, children, lines, size, tmp))
    return MeteredDrama(drama, year, tracking_uri, ledger.url, True, tuple(runs), tuple(older), tuple(lines),
                        {job: r.info.run_id for job, r in known.items()}, children)


def _metered_run(tracking_uri: str, ledger: Any, parent: Any, children: dict[str, dict[str, str]],
                 lines: list[Line], size: int, tmp: str) -> MeteredRun:
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
                      by_district=by_district,
                      lines=tuple(l for l in lines if l.category == "final" and (l.attributed_to or l.job) == run_id),
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


def verified_entries(ledger: Any, public_key: Any = None) -> list[Any]:
    """Every ledger entry a signed checkpoint covers, rebuilt from its bytes.

    Nothing stored is trusted: the latest checkpoint must verify against the pinned key (`public_key`, else
    $MICRODRAMA_LEDGER_PUBKEY, else the trust file), and the bytes of every entry it covers must hash, in
    order, to its signed root. Entries after that checkpoint are not evidence yet and are left out."""
    from pipeline.metering.ledger import Entry
    from pipeline.metering.merkle import MerkleTree, leaf_hash

    cp = ledger.latest_checkpoint()
    if cp is None:
        return []
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
    return rebuilt


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
