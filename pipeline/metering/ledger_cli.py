"""`microdrama ledger ...`: verify, prove, checkpoint and show the ledger, for operators and auditors."""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from pipeline.metering.ledger import Checkpoint, Entry, Ledger, LedgerError, default_ledger_url, verify_entry_inclusion
from pipeline.errors import UserError
from pipeline.metering.ledger_sign import vkey

app = typer.Typer(help="Tamper-evident ledger: verify it, prove an entry, sign a checkpoint.", no_args_is_help=True)

LedgerOpt = typer.Option(None, "--ledger", "-l",
                         help="Ledger URL (default: $MICRODRAMA_LEDGER or sqlite:///ledger.db)")
KeyOpt = typer.Option(None, "--key-file",
                      help="Signing key (default: $MICRODRAMA_LEDGER_KEY_FILE or <ledger dir>/ledger.key)")


MAX_INDEX = 2**62  # entry indexes and tree sizes (SQLite/PostgreSQL integers are 64-bit)
PubkeyOpt = typer.Option(None, "--pubkey", help="Pinned public key: a signed-note vkey (name+id+key) or a PEM "
                         "file; default: $MICRODRAMA_LEDGER_PUBKEY, else the trust file's key for this ledger "
                         "(`ledger pin`); a ledger.pub beside the database is never used")


def _open(url: str | None, key_file: Path | None = None, read_only: bool = False) -> Ledger:
    from pipeline.metering.ledger_store import StoreUnreachable
    from pipeline.services import UNREACHABLE_EXIT, check_sqlite_file

    url = url or default_ledger_url()
    try:
        if url.startswith("sqlite:///"):
            check_sqlite_file(Path(url[len("sqlite:///"):]).expanduser(), url, must_exist=True)
        return Ledger.open(url, key_file, create=False, read_only=read_only)
    except StoreUnreachable as e:  # the database server does not answer: exit 4, one line
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(UNREACHABLE_EXIT) from None
    except UserError as e:
        raise typer.BadParameter(str(e), param_hint="--ledger") from None
    except (ValueError, ImportError, OSError) as e:
        raise typer.BadParameter(str(e), param_hint="--ledger") from e


@contextmanager
def _session(url: str | None, key_file: Path | None = None, read_only: bool = False) -> Iterator[Ledger]:
    """An open ledger; a LedgerError or unreadable input ends the command with its message and exit 1."""
    led = _open(url, key_file, read_only)
    try:
        yield led
    except (LedgerError, ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    finally:
        led.close()


def _emit(data: dict, as_json: bool, lines: list[str]) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False) if as_json else "\n".join(lines))


@app.command()
def verify(ledger: str | None = LedgerOpt,
           pubkey: str | None = PubkeyOpt,
           trusted: list[Path] = typer.Option([], "--trusted", help="A checkpoint held elsewhere (an auditor's "
                                              "copy, a witness's state, a claim packet's); the log must extend it. "
                                              "Repeatable"),
           as_json: bool = typer.Option(False, "--json", help="Print the report as JSON"),
           key_file: Path | None = KeyOpt) -> None:
    """Recompute every leaf, link, root and checkpoint signature (read-only: the store is never changed); exit 1
    naming the first bad entry. Entries after the last checkpoint are reported as unsigned."""
    from pipeline.metering.ledger_trust import load_trust

    if pubkey and "+" not in pubkey and "BEGIN" not in pubkey and not Path(pubkey).expanduser().is_file():
        raise typer.BadParameter(f"{pubkey}: no such file (a PEM public key file, or a vkey name+id+key)",
                                 param_hint="--pubkey")
    held = [_read_checkpoint(p, "--trusted") for p in trusted]
    with _session(ledger, key_file, read_only=True) as led:
        report = led.verify(pubkey, held, load_trust() if held else None)
    data = {"ok": report.ok, "first_bad_index": report.first_bad_index, "size": report.size,
            "root": report.root, "checkpoints_checked": report.checkpoints_checked, "key_id": report.key_id,
            "signed_size": report.signed_size, "unsigned": list(report.unsigned) if report.unsigned else None,
            "first_bad_range": list(report.first_bad_range) if report.first_bad_range else None,
            "held_checked": report.held_checked, "problems": report.problems, "warnings": report.warnings,
            "ledger": led.url}
    _emit(data, as_json, [report.summary(), *(f"  - {p}" for p in report.problems),
                          *(f"  warning: {w}" for w in report.warnings)])
    raise typer.Exit(0 if report.ok else 1)


def _read_checkpoint(path: Path, option: str) -> Checkpoint:
    """A signed checkpoint note from a file (a bare note, or a JSON document with a `checkpoint` note)."""
    try:
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("{"):
            doc = json.loads(text)
            text = doc.get("checkpoint") or doc.get("note") or ""
        return Checkpoint.parse(text)
    except (OSError, ValueError, AttributeError) as e:
        raise typer.BadParameter(f"{path}: not a signed checkpoint note ({e})", param_hint=option) from None


def _resolve(led: Ledger, ref: str) -> Entry:
    entry = led.find(ref)
    if entry is None and ref.isdigit():
        if int(ref[:20]) >= MAX_INDEX or len(ref) > 19:
            raise typer.BadParameter(f"{ref[:30]!r} is beyond any ledger index (at most {MAX_INDEX:,})",
                                     param_hint="ENTRY")
        entry = led.get(int(ref))
    if entry is None:
        raise typer.BadParameter(f"no entry with index or idempotency key {ref!r}", param_hint="ENTRY")
    return entry


def _checkpoint_for(led: Ledger, index: int, size: int | None) -> Checkpoint | None:
    """The latest signed checkpoint covering `index` (of exactly `size` entries when given)."""
    fits = [c for c in led.checkpoints() if c.tree_size > index and (size is None or c.tree_size == size)]
    return fits[-1] if fits else None


@app.command()
def prove(entry: str = typer.Argument(..., help="Entry index or idempotency key"),
          ledger: str | None = LedgerOpt,
          size: int | None = typer.Option(None, "--size", min=1, max=MAX_INDEX,
                                          help="Tree size to prove against (default: the "
                                               "latest checkpoint that covers the entry)"),
          as_json: bool = typer.Option(False, "--json", help="Print the proof bundle as JSON"),
          pubkey: str | None = PubkeyOpt,
          key_file: Path | None = KeyOpt) -> None:
    """Print an entry, its leaf hash, its inclusion proof and the signed checkpoint it verifies against (checked
    with the pinned key)."""
    with _session(ledger, key_file, read_only=True) as led:
        e = _resolve(led, entry)
        if size is not None and not e.index < size <= led.size():
            raise typer.BadParameter(f"{size} must cover entry {e.index} and be at most the ledger's size "
                                     f"({led.size()})", param_hint="--size")
        cp = _checkpoint_for(led, e.index, size)
        tree_size = cp.tree_size if cp else (size or led.size())
        proof = led.inclusion_proof(e.index, tree_size)
        public = led.trusted_public_key(pubkey)
        result = verify_entry_inclusion(e, proof, cp, public) if cp else None
        root = cp.root_hash if cp else led.root_hash(tree_size)
    data = {"entry": json.loads(e.canonical), "canonical": e.canonical.decode(), "index": e.index,
            "leaf_hash": e.leaf_hash, "tree_size": tree_size, "root_hash": root, "inclusion_proof": proof,
            "checkpoint": cp.note if cp else None, "verified": bool(result),
            "problems": result.problems if result is not None else ["no signed checkpoint covers this entry"]}
    status = (f"inclusion proof verifies against signed checkpoint #{cp.id}" if result
              else "NOT VERIFIED: " + "; ".join(data["problems"]))
    if cp is None:
        status += " — run `microdrama ledger checkpoint` and prove again"
    lines = [f"entry {e.index} ({e.kind}, key {e.idempotency_key})", e.canonical.decode(),
             f"leaf hash: {e.leaf_hash}", f"tree size: {tree_size}", f"root hash: {root}", "inclusion proof:",
             *(f"  {p}" for p in proof), "checkpoint:", *(cp.note.rstrip("\n").split("\n") if cp else ["  (none)"]),
             status]
    _emit(data, as_json, lines)
    raise typer.Exit(0 if result else 1)


@app.command()
def checkpoint(ledger: str | None = LedgerOpt, as_json: bool = typer.Option(False, "--json"),
               key_file: Path | None = KeyOpt) -> None:
    """Sign the current tree head (size, root, time) and print the signed note."""
    with _session(ledger, key_file) as led:
        cp = led.checkpoint()
        verifier = vkey(led.public_key(), led.origin)
    data = {"id": cp.id, "origin": cp.origin, "tree_size": cp.tree_size, "root_hash": cp.root_hash,
            "timestamp": cp.timestamp, "key_id": cp.key_id, "vkey": verifier, "note": cp.note}
    _emit(data, as_json, [cp.note.rstrip("\n"), f"# checkpoint #{cp.id}; verifier key: {verifier}"])


@app.command()
def show(ledger: str | None = LedgerOpt,
         tail: int = typer.Option(10, "--tail", "-n", min=0, max=1_000_000, help="How many of the latest entries"),
         kind: str | None = typer.Option(None, "--kind", help="Only entries of this kind"),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Print the latest entries and the latest checkpoint."""
    with _session(ledger, read_only=True) as led:
        found = led.tail(tail, kind)
        latest = led.latest_checkpoint()
        size = led.size()
    data = {"size": size, "entries": [e.to_dict() for e in found],
            "latest_checkpoint": latest.note if latest else None}
    lines = [f"{led.url}: {size} entries; latest checkpoint: "
             + (f"#{latest.id} at size {latest.tree_size}" if latest else "none")]
    lines += [f"{e.index:>7} {e.kind:<10} {e.leaf_hash[:12]} {e.idempotency_key}  "
              f"{json.dumps(e.body, ensure_ascii=False, separators=(',', ':'))[:160]}" for e in found]
    _emit(data, as_json, lines)



@app.command("close-dead")
def close_dead(ledger: str | None = LedgerOpt,
               after: float | None = typer.Option(None, "--after", min=2, max=1000,
                                                  help="Heartbeat intervals of silence after which an open attempt "
                                                       "is dead (default $MICRODRAMA_HEARTBEAT_DEAD_AFTER or 12)"),
               dry_run: bool = typer.Option(False, "--dry-run", help="List the dead attempts, append nothing"),
               sign: bool = typer.Option(False, "--checkpoint", help="Sign a checkpoint after closing (needs the "
                                         "ledger's signing key on this host)"),
               key_file: Path | None = KeyOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """Close and bill, once, the attempts left open by a killed driver, worker or node (from any host): each
    open attempt whose last heartbeat is older than --after intervals gets a failed usage record billed from
    its start on the worker to its last heartbeat. Safe to run while runs go on and from several hosts."""
    import socket

    from pipeline.metering import attempts

    with _session(ledger, key_file) as led:
        try:
            dead = attempts.dead_attempts(led, after=after)
        except ValueError as e:  # a bad $MICRODRAMA_HEARTBEAT_DEAD_AFTER
            raise typer.BadParameter(str(e), param_hint="--after") from None
        closed = 0
        if not dry_run:
            closed = attempts.close_dead(led, led, closer=f"`microdrama ledger close-dead` on {socket.gethostname()}",
                                         after=after)
        cp = led.checkpoint() if sign and closed else None
        records = [led.find(s["usage_key"]) for s, _ in dead] if not dry_run else []
    data = {"dead": [{"usage_key": s["usage_key"], "job": s["job"], "stage": s["stage"], "shot": s.get("shot"),
                      "why": why} for s, why in dead],
            "closed": closed, "billed_wall_s": {e.idempotency_key: e.body["wall_s"] for e in records if e},
            "checkpoint": cp.note if cp else None}
    lines = [f"{s['usage_key']}: {why}" for s, why in dead]
    lines.append(f"{len(dead)} dead attempt(s); " + ("dry run, nothing appended" if dry_run else
                                                      f"{closed} closed and billed here"))
    _emit(data, as_json, lines)


def _when(text: str, option: str) -> Any:
    import datetime as dt

    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO-8601 time, e.g. 2026-03-02T08:00:00+08:00",
                                 param_hint=option) from None
    if t.tzinfo is None:
        raise typer.BadParameter(f"{text!r} has no timezone; write it like 2026-03-02T08:00:00+08:00",
                                 param_hint=option)
    return t


@app.command("bill-idle")
def bill_idle(node: str = typer.Option(..., "--node", help="The rented node, as usage records name it (its hostname)"),
              gpu_model: str = typer.Option(..., "--gpu-model", help="e.g. 'NVIDIA H100 80GB HBM3' (priced by "
                                            "configs/prices)"),
              gpus: int = typer.Option(..., "--gpus", min=1, max=4096, help="GPUs rented on the node"),
              start: str = typer.Option(..., "--from", help="Rental start, ISO-8601 with timezone"),
              end: str = typer.Option(..., "--to", help="Rental end, ISO-8601 with timezone"),
              drama: str = typer.Option("", "--drama", help="Attribute the idle time to this drama (default: "
                                        "the company, no drama)"),
              ledger: str | None = LedgerOpt, key_file: Path | None = KeyOpt,
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Bill a rented GPU node's idle time as its own cost line (OpenCost: idle = GPUs × rental hours − the
    GPU-hours allocated to stages that started on the node in the rental). Appending it again for the same
    node and rental start changes nothing."""
    from pipeline.metering.costs import _CTX, _parse_time, idle_lines
    from pipeline.metering.prices import PriceError
    from pipeline.metering.sink import price_book
    from pipeline.money import exact_sum, money

    t0, t1 = _when(start, "--from"), _when(end, "--to")
    with _session(ledger, key_file) as led:
        records = [e.body for e in led.entries(kind="usage", where={"node": node})
                   if t0 <= _parse_time(e.body["started"], f"{e.idempotency_key}: started") < t1]
        allocated = _CTX.divide(exact_sum(money(r["gpu_s"]) for r in records), 3600)
        try:
            lines = idle_lines(node, gpu_model, gpus, t0, t1, allocated, price_book(), drama=drama)
        except PriceError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        entries = [led.append("cost", line.model_dump(mode="json"), line.usage_key) for line in lines]
    data = {"node": node, "records": len(records), "allocated_gpu_hours": str(allocated),
            "idle": [{**line.model_dump(mode="json"), "index": e.index} for line, e in zip(lines, entries)]}
    text = [f"{node}: {len(records)} usage record(s), {allocated} GPU-h allocated"]
    text += [f"idle {line.quantity} GPU-h × {line.rate} = {line.amount_fen} CNY (entry {e.index})"
             for line, e in zip(lines, entries)] or ["nothing idle"]
    _emit(data, as_json, text)


from pipeline.metering import ledger_cli_audit as _audit  # noqa: E402,F401  (registers consistency, pin, ...)

if __name__ == "__main__":  # pragma: no cover
    app()
