"""`microdrama ledger consistency | pin | witness | publish | pg-setup`: hold the log to account from outside it."""
from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from pipeline.metering import merkle
from pipeline.metering.ledger import verify_checkpoint_consistency
from pipeline.metering.ledger_cli import LedgerOpt, PubkeyOpt, _emit, _read_checkpoint, _session, app


@app.command()
def consistency(old: Path = typer.Argument(..., help="A checkpoint held elsewhere (note file, or JSON with "
                                          "`checkpoint`)"),
                new: Path | None = typer.Argument(None, help="A newer checkpoint (default: the ledger's latest)"),
                ledger: str | None = LedgerOpt, pubkey: str | None = PubkeyOpt,
                as_json: bool = typer.Option(False, "--json", help="Print the proof as JSON")) -> None:
    """Print and check the consistency proof that the log of NEW extends the log of OLD (append-only); exit 1
    when it does not (rollback, fork, rewrite) or a signature fails against the pinned key."""
    a = _read_checkpoint(old, "OLD")
    with _session(ledger, read_only=True) as led:
        b = _read_checkpoint(new, "NEW") if new else led.latest_checkpoint()
        if b is None:
            raise typer.BadParameter("the ledger has no checkpoint yet; give NEW", param_hint="NEW")
        verifier = led.trusted_public_key(pubkey)
        size = led.size()
        if a.tree_size <= b.tree_size <= size:
            proof = led.consistency_proof(a.tree_size, b.tree_size)
        else:
            proof = []
    result = verify_checkpoint_consistency(a, b, proof, verifier)
    problems = list(result.problems)
    if verifier is None:
        problems.append("no key is pinned for this ledger: pass --pubkey VKEY or `microdrama ledger pin VKEY`")
    if b.tree_size > size:
        problems.append(f"NEW signs {b.tree_size} entries but the ledger holds {size}")
    ok = result.ok and not problems
    data = {"ok": ok, "old_size": a.tree_size, "new_size": b.tree_size, "old_root": a.root_hash,
            "new_root": b.root_hash, "consistency_proof": proof, "problems": problems}
    status = (f"the log of size {b.tree_size} extends the held checkpoint of size {a.tree_size}" if ok
              else "NOT CONSISTENT: " + "; ".join(problems))
    _emit(data, as_json, [f"old: size {a.tree_size}, root {a.root_hash}", f"new: size {b.tree_size}, root "
                          f"{b.root_hash}", "consistency proof:", *(f"  {p}" for p in proof), status])
    raise typer.Exit(0 if ok else 1)


@app.command()
def pin(vkey: str = typer.Argument(..., help="A log vkey (printed by `ledger checkpoint`), or with --witness a "
                                   "witness's cosignature vkey (printed by `ledger witness --show-key`)"),
        witness: bool = typer.Option(False, "--witness", help="Pin a witness key instead of a log key"),
        quorum: int | None = typer.Option(None, "--quorum", min=0, max=100,
                                          help="With --witness: cosignatures a held checkpoint needs")) -> None:
    """Pin a key in the trust file (<config dir>/ledger-trust.toml), which verification uses by default."""
    from pipeline.metering.ledger_trust import load_trust, pin_log_key, pin_witness_key, trust_path

    try:
        if witness:
            trust = pin_witness_key(vkey, quorum)
            typer.echo(f"pinned witness {vkey.split('+')[0]} in {trust_path()} "
                       f"(quorum {trust.witness_quorum} of {len(trust.witness_keys)})")
        else:
            new = pin_log_key(vkey)
            typer.echo(f"{'pinned' if new else 'already pinned'}: {vkey.split('+')[0]} in {trust_path()} "
                       f"({len(load_trust().log_keys)} log key(s))")
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="VKEY") from None


@app.command()
def witness(state: Path = typer.Option(..., "--state", help="The witness's own folder: its key and the last "
                                       "checkpoint it cosigned of each log (keep it off the pipeline's machine)"),
            name: str = typer.Option(..., "--name", help="The witness's key name, a schema-less URL such as "
                                     "district.example/witness"),
            log_key: str | None = typer.Option(None, "--log-key", help="The log's pinned vkey (default: the trust "
                                               "file's key for the checkpoint's origin)"),
            ledger: str | None = typer.Option(None, "--ledger", "-l", help="Read the log from this ledger "
                                              "(read-only)"),
            tiles: Path | None = typer.Option(None, "--tiles", help="Read the log from its published tiles "
                                              "(`ledger publish`)"),
            out: Path | None = typer.Option(None, "--out", help="Write the cosigned checkpoint here (default: print)"),
            show_key: bool = typer.Option(False, "--show-key", help="Print the witness's vkey and exit")) -> None:
    """Cosign the log's latest checkpoint (C2SP tlog-cosignature/v1) after checking its signature, that the
    entries hash to it, and that it extends the last checkpoint this witness cosigned; exit 1 when it does not."""
    from pipeline.metering.ledger_tiles import TileError, read_log
    from pipeline.metering.ledger_trust import log_verifier
    from pipeline.metering.ledger_witness import Witness, WitnessError

    w = Witness(name, state)
    if show_key:
        typer.echo(w.vkey)
        return
    if (ledger is None) == (tiles is None):
        raise typer.BadParameter("give exactly one of --ledger URL or --tiles DIR", param_hint="--ledger")
    try:
        if tiles is not None:
            cp, leaves, _ = read_log(tiles)
        else:
            with _session(ledger, read_only=True) as led:
                cp = led.latest_checkpoint()
                if cp is None:
                    raise WitnessError(f"{led.url} has no checkpoint to cosign")
                leaves = [merkle.leaf_hash(e.canonical) for e in led.entries()][:cp.tree_size]
        verifier = log_verifier(cp.origin, log_key)
        if verifier is None:
            raise WitnessError(f"no key is pinned for {cp.origin}: pass --log-key VKEY")
        signed = w.cosign(cp, verifier, leaves)
    except (WitnessError, TileError, OSError, ValueError) as e:
        typer.echo(f"error: witness refuses to cosign: {e}", err=True)
        raise typer.Exit(1) from None
    if out:
        out.write_text(signed.note, encoding="utf-8")
        typer.echo(f"cosigned {cp.origin} at size {cp.tree_size} -> {out}")
    else:
        typer.echo(signed.note, nl=False)


@app.command()
def publish(out_dir: Path = typer.Argument(..., help="Static web root for the C2SP tlog-tiles files"),
            ledger: str | None = LedgerOpt, pubkey: str | None = PubkeyOpt,
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Publish the latest checkpoint and its tiles and entry bundles (C2SP tlog-tiles) for monitors and witnesses;
    refuses when an already published full tile differs (the log was rewritten)."""
    from pipeline.metering.ledger_tiles import TileError, publish as write_tiles

    with _session(ledger, read_only=True) as led:
        cp = led.latest_checkpoint()
        if cp is None:
            raise typer.BadParameter("the ledger has no checkpoint: run `microdrama ledger checkpoint`",
                                     param_hint="--ledger")
        verifier = led.trusted_public_key(pubkey)
        bad = ["no key is pinned for this ledger"] if verifier is None else verifier.problems(cp)
        if bad:
            typer.echo(f"error: the latest checkpoint does not verify: {'; '.join(bad)}", err=True)
            raise typer.Exit(1)
        entries = [e.canonical for e in led.entries()]
    try:
        written = write_tiles(out_dir, cp, entries)
    except TileError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    _emit({"tree_size": cp.tree_size, "written": written}, as_json,
          [f"published size {cp.tree_size} to {out_dir}: {len(written)} file(s) written"])


@app.command("pg-setup")
def pg_setup(admin_url: str = typer.Option(..., "--admin-url", help="postgresql://… of a role that may create roles "
                                           "(the database owner or a superuser)"),
             owner: str = typer.Option("ledger_owner", "--owner", help="NOLOGIN role owning tables and triggers"),
             writer: str = typer.Option("ledger_writer", "--writer", help="LOGIN role the pipeline connects as"),
             password_env: str | None = typer.Option(None, "--writer-password-env",
                                                     help="Environment variable holding the writer's password"),
             schema: str = typer.Option("public", "--schema", help="Schema for the ledger tables")) -> None:
    """Create the owner and writer roles and the ledger tables: the writer can only INSERT and SELECT, the
    triggers belong to the owner, out of the writer's reach."""
    from pipeline.metering.ledger_pg import setup_roles

    password = None
    if password_env:
        password = os.environ.get(password_env)
        if not password:
            raise typer.BadParameter(f"${password_env} is empty or unset", param_hint="--writer-password-env")
    try:
        done = setup_roles(admin_url, owner, writer, password, schema)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    except Exception as e:  # psycopg errors: a clear line, not a traceback
        typer.echo(f"error: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({"owner": owner, "writer": writer, "schema": schema, "statements": len(done)}))
