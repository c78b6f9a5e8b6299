"""Evidence for claim packets from the ledger and MLflow: cost lines with inclusion proofs against a signed checkpoint.

`make_packets` is what `microdrama claims packet` runs: evaluate the scenario, re-read the metered figures
of each paid drama (exactly as `claims build` did), refuse a scenario whose metered fields no longer
match, prove every cost line against the ledger's latest signed checkpoint (and check each proof before
writing it), then `write_packet`.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

from pipeline.finance.attribution import FIELDS, LABELS
from pipeline.finance.build_metered import (MeteredDrama, default_ledger, default_tracking_uri, ledger_entries,
                                            meter_drama, open_ledger, plain_text, public_url)
from pipeline.finance.claims import ClaimResult, evaluate
from pipeline.money import ZERO
from pipeline.finance.packet import PacketError, write_packet
from pipeline.finance.policies import PolicySet, load_policies
from pipeline.finance.scenario import Drama, Scenario, load_scenario

LINE_FIELDS = ("episode", "stage", "shot", "quantity", "unit", "rate", "per", "price_table", "usage_key", "basis",
               "node")


class StaleScenarioError(PacketError):
    """The scenario's metered fields no longer equal what MLflow and the ledger say: rebuild it."""


def check_metered(scenario: Scenario, drama: Drama, metered: MeteredDrama) -> list[str]:
    """Each metered field of the scenario's drama must equal the figure re-read from MLflow and the ledger."""
    i = scenario.dramas.index(drama)
    at, problems = f"dramas[{i}]", []
    declared = {f: getattr(drama.costs, f.split(".", 1)[1]) for f in FIELDS}
    if not metered.experiment_found:
        claimed = [f for f, v in declared.items() if v] + [f"local_runtime_share.{d}"
                                                           for d, v in drama.local_runtime_share.items() if v]
        return [f"{at}.{f}: is not backed by metered data: no MLflow experiment {drama.id!r} at "
                f"{public_url(metered.tracking_uri)}" for f in claimed]
    measured = metered.fields()
    shares = metered.runtime_share()
    for district in sorted(set(shares) | set(drama.local_runtime_share)):
        measured[f"local_runtime_share.{district}"] = shares.get(district, ZERO)
        declared[f"local_runtime_share.{district}"] = drama.local_runtime_share.get(district, ZERO)
    for name, value in measured.items():
        if declared[name] != value:
            problems.append(f"{at}.{name}: the scenario says {declared[name]} but {drama.id}'s {scenario.year} runs "
                            f"now meter {value}; rebuild the scenario with `microdrama claims build`")
    return problems


def cost_line_evidence(metered: MeteredDrama, ledger: Any, checkpoint: Any, public_key: Any) -> list[dict[str, Any]]:
    """Every cost line behind the drama's figures: amount, ledger entry, leaf hash, verified inclusion proof."""
    from pipeline.metering.ledger import verify_entry_inclusion

    out = []
    for attributed in metered.lines():
        entry = attributed.entry
        if entry.index >= checkpoint.tree_size:
            raise PacketError(f"ledger entry {entry.index} ({entry.idempotency_key}) is newer than the latest signed "
                              f"checkpoint (size {checkpoint.tree_size}); run `microdrama ledger checkpoint --ledger "
                              f"{metered.ledger_url}` and try again")
        proof = ledger.inclusion_proof(entry.index, checkpoint.tree_size)
        result = verify_entry_inclusion(entry, proof, checkpoint, public_key)
        if not result:
            raise PacketError(f"ledger entry {entry.index}: its inclusion proof does not verify against checkpoint "
                              f"#{checkpoint.id}: {'; '.join(result.problems)}; run `microdrama ledger verify`")
        body = entry.body
        episode_run, stage_run = metered.run_ids(attributed)
        line = {"kind": body["kind"], "item": body["item"], "amount": body["amount"],
                "list_value": body.get("list_value"), "ledger_index": entry.index, "leaf_hash": entry.leaf_hash,
                "inclusion_proof": proof, "category": attributed.category,
                "category_label": LABELS[attributed.category], "mlflow_run_id": stage_run,
                "episode_mlflow_run_id": episode_run, "job": attributed.job,
                "attributed_to": attributed.attributed_to or None,
                **{k: body.get(k) for k in LINE_FIELDS if body.get(k) is not None},
                "entry": entry.canonical.decode("utf-8")}
        out.append(line)
    return out


def run_consistency(metered: MeteredDrama, ledger: Any, checkpoint: Any) -> list[dict[str, Any]]:
    """For each run's own signed checkpoint (its MLflow tags): a consistency proof to the packet's checkpoint, so
    whoever holds the run's checkpoint can check the packet's log extends it; each proof is checked first."""
    from pipeline.metering.merkle import verify_consistency

    out = []
    for run in metered.runs:
        size, root = run.checkpoint_size, run.checkpoint_root
        if size is None:
            continue
        proof = ledger.consistency_proof(size, checkpoint.tree_size)
        if not verify_consistency(size, checkpoint.tree_size, bytes.fromhex(root), bytes.fromhex(checkpoint.root_hash),
                                  [bytes.fromhex(h) for h in proof]):
            raise PacketError(f"MLflow run {run.mlflow_run_id}: the ledger's checkpoint #{checkpoint.id} does not "
                              f"extend the run's own checkpoint (size {size}); run `microdrama ledger verify`")
        out.append({"mlflow_run_id": run.mlflow_run_id, "tree_size": size, "root_hash": root,
                    "to_tree_size": checkpoint.tree_size, "consistency_proof": proof})
    return out


def drama_evidence(scenario: Scenario, drama: Drama, metered: MeteredDrama, ledger: Any,
                   scenario_source: dict[str, str], public_key: Any = None) -> dict[str, Any]:
    """The evidence dict `write_packet` takes, for one drama."""
    from pipeline.metering.ledger_sign import vkey

    problems = check_metered(scenario, drama, metered)
    if problems:
        raise StaleScenarioError(problems)
    evidence: dict[str, Any] = {"declared_facts": {**scenario_source, "metered": _metered_summary(metered)}}
    if not metered.attributed:
        return evidence
    checkpoint = ledger.latest_checkpoint()
    if checkpoint is None:
        raise PacketError(f"{metered.ledger_url} has no signed checkpoint; run `microdrama ledger checkpoint`")
    verifier = ledger.trusted_public_key(public_key)
    if verifier is None:
        raise PacketError(f"{metered.ledger_url}: no key is pinned for {ledger.origin} to check the checkpoint with; "
                          "pass --pubkey VKEY, set $MICRODRAMA_LEDGER_PUBKEY or run `microdrama ledger pin VKEY`")
    evidence.update({"cost_lines": cost_line_evidence(metered, ledger, checkpoint, verifier),
                     "checkpoint": checkpoint.note, "public_key": vkey(verifier.public, verifier.name or ledger.origin),
                     "run_checkpoints": run_consistency(metered, ledger, checkpoint),
                     "mlflow_run_ids": sorted({r.mlflow_run_id for r in metered.runs}
                                              | {c for r in metered.runs for c in r.stage_runs.values()}
                                              | {i for l in metered.attributed for i in metered.run_ids(l) if i})})
    return evidence


def _metered_summary(metered: MeteredDrama) -> dict[str, Any]:
    shares = metered.runtime_share()
    return {"year": metered.year, "mlflow": public_url(metered.tracking_uri), "ledger": public_url(metered.ledger_url),
            **{f: plain_text(v) for f, v in metered.fields().items()},
            "production_cost": plain_text(metered.production),
            "list_value": plain_text(metered.list_value), "runtime_s": str(float(metered.runtime)),
            "local_runtime_share": {d: str(s) for d, s in shares.items()},
            "episodes": {r.episode: f"MLflow run {r.mlflow_run_id}, job {r.run_id}, {r.started:%Y-%m-%d %H:%M} CST, "
                                    f"{len(r.lines)} cost lines" for r in metered.runs},
            "superseded_runs": ", ".join(metered.superseded)}


def _dramas_to_pack(result: ClaimResult, programme: str, drama: str | None) -> list[str | None]:
    if programme not in result.programmes:
        raise PacketError(f"--programme: {programme!r} is not evaluated for this company; one of "
                          f"{', '.join(sorted(result.programmes))}")
    prog = result.programmes[programme]
    if prog.level == "company" and drama is not None:
        raise PacketError(f"--drama: {programme} is a company-level programme; leave --drama out")
    if prog.level == "company" or drama is not None:
        return [drama]
    if not prog.by_drama:
        why = "; ".join(f"{d}: {r}" for d, r in prog.excluded.items()) or "no dramas in the scenario"
        raise PacketError(f"--programme: no drama is paid under {programme} ({why})")
    return list(prog.by_drama)


def _every_paid(result: ClaimResult, drama: str | None) -> list[tuple[str, str | None]]:
    """Every (programme, drama) with a paid amount; only that drama's per-work claims when one is named."""
    jobs: list[tuple[str, str | None]] = []
    for pid, prog in result.programmes.items():
        if prog.level == "company":
            jobs += [(pid, None)] if drama is None and prog.total > 0 else []
        else:
            jobs += [(pid, d) for d in prog.by_drama if drama in (None, d)]
    return jobs


def make_packets(scenario_path: Path | str, programmes: list[str] | None, out_dir: Path | str, *,
                 drama: str | None = None, tracking_uri: str | None = None, ledger_url: str | None = None,
                 dates: dict[str, dt.date] | None = None, policies: PolicySet | None = None,
                 public_key: str | None = None) -> list[Path]:
    """Evaluate SCENARIO and write a packet per paid (programme, drama); all programmes paid when None."""
    scenario = load_scenario(scenario_path)
    result = evaluate(scenario, policies or load_policies())
    text = Path(scenario_path).read_bytes()
    source = {"scenario_file": str(scenario_path), "scenario_sha256": hashlib.sha256(text).hexdigest()}
    jobs = [(pid, d) for pid in programmes for d in _dramas_to_pack(result, pid, drama)] if programmes \
        else _every_paid(result, drama)
    uri, url = default_tracking_uri(tracking_uri), default_ledger(ledger_url)
    needs_ledger = any(d is not None for _, d in jobs)
    ledger = open_ledger(url) if needs_ledger else None
    try:
        entries = ledger_entries(ledger, public_key) if ledger else ([], [])  # verified against the signed root
        evidence: dict[str | None, dict[str, Any]] = {None: {"declared_facts": source}}
        for _, d in jobs:
            if d not in evidence:
                metered = meter_drama(d, scenario.year, uri, ledger, entries)
                evidence[d] = drama_evidence(scenario, _drama(scenario, d), metered, ledger, source, public_key)
    finally:
        if ledger:
            ledger.close()
    extra = {"dates": {k: v.isoformat() for k, v in (dates or {}).items()}}
    return [write_packet(result, pid, d, {**evidence[d], **extra}, out_dir) for pid, d in jobs]


def _drama(scenario: Scenario, drama_id: str) -> Drama:
    try:
        return scenario.drama(drama_id)
    except KeyError:
        raise PacketError(f"--drama: {drama_id!r} is not in the scenario "
                          f"({', '.join(d.id for d in scenario.dramas)})") from None

