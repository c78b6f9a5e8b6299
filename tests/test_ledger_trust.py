"""Holding the ledger to account from outside: pinned keys kept apart, held checkpoints, witnesses, read-only
verify naming every tampered entry, claims that use only signed entries, and PostgreSQL owner/writer roles."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from pipeline.metering import merkle
from pipeline.metering.ledger import Checkpoint, Ledger, LedgerError, canonical_entry
from pipeline.metering.ledger_cli import app
from pipeline.metering.ledger_sign import LedgerKey, Signature, sign_checkpoint, vkey
from pipeline.metering.ledger_trust import (Trust, cosign, cosignature_time, cosignature_vkey, load_trust,
                                            log_verifier, witness_problems)

cli = CliRunner()


@pytest.fixture(autouse=True)
def _own_config(monkeypatch, tmp_path):
    """Every test its own config dir (key + trust file), apart from the ledger's folder."""
    monkeypatch.setenv("MICRODRAMA_CONFIG_DIR", str(tmp_path / "config"))
    for name in ("MICRODRAMA_LEDGER_KEY_FILE", "MICRODRAMA_LEDGER", "MICRODRAMA_LEDGER_PUBKEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def url(tmp_path) -> str:
    (tmp_path / "data").mkdir()
    return f"sqlite:///{tmp_path}/data/ledger.db"


def fill(led: Ledger, n: int, checkpoints_at: tuple[int, ...] = ()) -> None:
    for i in range(led.size(), n):
        led.append("cost", {"job": "job-1", "kind": "compute", "item": "gpu", "amount": f"{i}.50", "i": i}, f"k{i}")
        if i + 1 in checkpoints_at:
            led.checkpoint()


def raw(url: str) -> sqlite3.Connection:
    conn = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    return conn


def verify(url: str, *args: str) -> tuple[int, dict]:
    res = cli.invoke(app, ["verify", "--ledger", url, "--json", *args])
    return res.exit_code, json.loads(res.output)


def _snapshot(url: str) -> dict[str, bytes]:
    """The store's bytes: the database and its write-ahead log (SQLite's -shm index is shared memory, not data)."""
    folder = Path(url[len("sqlite:///"):]).parent
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.endswith("-shm")
            and not (p.name.endswith("-wal") and p.stat().st_size == 0)}


# -- keys apart ------------------------------------------------------------------------------------------------

def test_key_lives_outside_the_ledger_folder_and_a_planted_pub_is_never_trusted(url, tmp_path):
    with Ledger.open(url) as led:
        fill(led, 4, checkpoints_at=(4,))
        origin, genuine = led.origin, vkey(led.public_key(), led.origin)
        assert led.key_path.parent == tmp_path / "config" and not (tmp_path / "data" / "ledger.key").exists()
    assert load_trust().log_keys == (genuine,)  # the signing machine pinned its own key on first checkpoint
    # an attacker with write access to the ledger's folder rewrites it, re-signs with their key, plants ledger.pub
    forger = LedgerKey(Ed25519PrivateKey.generate())
    conn = raw(url)
    conn.execute("DELETE FROM ledger_checkpoints")
    conn.execute("UPDATE ledger_entries SET canonical = CAST(replace(canonical, '\"3.50\"', '\"9.50\"') AS BLOB) "
                 "WHERE idx = 3")
    rows = conn.execute("SELECT canonical FROM ledger_entries ORDER BY idx").fetchall()
    leaves = [merkle.leaf_hash(bytes(r[0])) for r in rows]
    conn.execute("UPDATE ledger_entries SET leaf_hash = ? WHERE idx = 3", (leaves[3].hex(),))
    forged = sign_checkpoint(forger, origin, 4, merkle.root(leaves).hex(), "2026-01-01T00:00:00Z")
    conn.execute("INSERT INTO ledger_checkpoints (tree_size, root_hash, created_at, key_id, note) VALUES (4, ?, ?, ?, ?)",
                 (forged.root_hash, forged.timestamp, forged.key_id, forged.note))
    conn.close()
    (tmp_path / "data" / "ledger.pub").write_text(vkey(forger.public_key, origin))
    code, report = verify(url)
    assert code == 1 and any("not by the trusted key" in p for p in report["problems"])
    assert report["key_id"] == genuine.split("+")[1]


def test_a_key_left_beside_the_ledger_is_not_silently_replaced(url, tmp_path):
    with Ledger.open(url, key_file=tmp_path / "data" / "ledger.key") as led:  # the old default place
        fill(led, 2, checkpoints_at=(2,))
    with Ledger.open(url) as led, pytest.raises(LedgerError, match="sits beside the ledger"):
        led.checkpoint()  # not a fresh key in the config dir that the pinned key would then reject


# -- read-only verify, every tamper case named --------------------------------------------------------------------

def test_verify_never_changes_the_store(url):
    with Ledger.open(url) as led:
        fill(led, 5, checkpoints_at=(5,))
    conn = raw(url)  # triggers dropped
    conn.execute("DELETE FROM ledger_meta")
    conn.close()
    before = _snapshot(url)
    code, report = verify(url)
    assert code == 1 and any("ledger_meta holds no ledger_id" in p for p in report["problems"])
    assert any("trigger" in w for w in report["warnings"])
    assert _snapshot(url) == before  # no trigger re-created, no ledger id inserted, nothing written
    conn = sqlite3.connect(url[len("sqlite:///"):])
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM ledger_meta").fetchone()[0] == 0


def test_read_only_media_is_read_as_immutable(url, monkeypatch):
    """Where SQLite cannot open the file even with mode=ro (no -shm can be made on read-only media), verify
    reads it as immutable instead of failing with a traceback."""
    from pipeline.metering import ledger_store

    with Ledger.open(url) as led:
        fill(led, 3, checkpoints_at=(3,))
    real, tried = sqlite3.connect, []

    def connect(target, *args, **kwargs):
        tried.append(str(target))
        if "mode=ro" in str(target):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return real(target, *args, **kwargs)

    monkeypatch.setattr(ledger_store.sqlite3, "connect", connect)
    code, report = verify(url)
    assert code == 0 and report["size"] == 3 and any("immutable=1" in t for t in tried)


def test_replace_edit_names_the_entry_instead_of_crashing(url):
    with Ledger.open(url) as led:
        fill(led, 5, checkpoints_at=(5,))
    conn = raw(url)
    conn.execute("UPDATE ledger_entries SET canonical = replace(canonical, '2.50', '7.50') WHERE idx = 2")
    assert conn.execute("SELECT typeof(canonical) FROM ledger_entries WHERE idx = 2").fetchone()[0] == "text"
    conn.close()
    code, report = verify(url)
    assert code == 1 and report["first_bad_index"] == 2
    assert report["problems"][0].startswith("entry 2: stored leaf hash is not the hash of its stored bytes")


def test_a_row_at_index_minus_one_is_reported_and_blocks_nothing_silently(url):
    with Ledger.open(url) as led:
        fill(led, 3, checkpoints_at=(3,))
        doc = canonical_entry(-1, "cost", "k3", {"job": "job-1", "amount": "999"}, "2026-01-01T00:00:00Z", "0" * 64)
        conn = raw(url)
        conn.execute("INSERT INTO ledger_entries VALUES (-1, 'cost', 'k3', ?, ?, '2026-01-01T00:00:00Z')",
                     (doc, merkle.leaf_hash(doc).hex()))
        conn.close()
        code, report = verify(url)
        assert code == 1 and report["first_bad_index"] == -1 and report["problems"][0].startswith("entry -1:")
        with pytest.raises(LedgerError, match="index -1, outside the log"):
            led.append("cost", {"job": "job-1", "amount": "3.50"}, "k3")  # not silently the forged row
        assert led.size() == 3


def test_rebuilt_chain_is_named_as_a_range_not_entry_zero(url):
    with Ledger.open(url) as led:
        fill(led, 8, checkpoints_at=(3, 8))
    conn = raw(url)
    rows = conn.execute("SELECT idx, kind, idempotency_key, canonical, appended_at FROM ledger_entries "
                        "ORDER BY idx").fetchall()
    prev = merkle.leaf_hash(bytes(rows[3][3])).hex()
    for idx, kind, key, canonical, at in rows[4:]:  # edit entry 5 and rebuild every hash and link after it
        body = json.loads(canonical)["body"] | ({"amount": "999"} if idx == 5 else {})
        new = canonical_entry(idx, kind, key, body, at, prev)
        prev = merkle.leaf_hash(new).hex()
        conn.execute("UPDATE ledger_entries SET canonical = ?, leaf_hash = ? WHERE idx = ?", (new, prev, idx))
    conn.close()
    code, report = verify(url)
    assert code == 1 and report["first_bad_index"] == 3 and report["first_bad_range"] == [3, 8]
    res = cli.invoke(app, ["verify", "--ledger", url])
    assert "first bad entry: one of entries 3..7" in res.output


def test_entries_after_the_last_checkpoint_are_reported_unsigned(url):
    with Ledger.open(url) as led:
        fill(led, 4, checkpoints_at=(4,))
        led.append("cost", {"job": "job-1", "kind": "compute", "amount": "1000000"}, "forged")
    code, report = verify(url)
    assert code == 0 and report["signed_size"] == 4 and report["unsigned"] == [4, 4]
    assert "UNSIGNED: entries 4..4" in cli.invoke(app, ["verify", "--ledger", url]).output


# -- held checkpoints: rollback, fork, re-signed rewrite ---------------------------------------------------------

def _held(tmp_path: Path, url: str, name: str = "held.checkpoint") -> Path:
    with Ledger.open(url) as led:
        path = tmp_path / name
        path.write_text(led.latest_checkpoint().note)
    return path


def test_rollback_with_its_checkpoints_is_caught_by_a_held_checkpoint(url, tmp_path):
    with Ledger.open(url) as led:
        fill(led, 4, checkpoints_at=(4,))
        fill(led, 7, checkpoints_at=(7,))
    held = _held(tmp_path, url)
    conn = raw(url)
    conn.execute("DELETE FROM ledger_entries WHERE idx >= 4")
    conn.execute("DELETE FROM ledger_checkpoints WHERE tree_size > 4")
    conn.close()
    assert verify(url)[0] == 0  # the store alone cannot show it
    code, report = verify(url, "--trusted", str(held))
    assert code == 1 and report["first_bad_index"] == 4 and "rolled back" in report["problems"][0]
    res = cli.invoke(app, ["consistency", str(held), "--ledger", url])
    assert res.exit_code == 1 and "NOT CONSISTENT" in res.output


def test_resigned_rewrite_is_caught_by_a_held_checkpoint_and_consistency_proves_honest_growth(url, tmp_path):
    with Ledger.open(url) as led:
        fill(led, 5, checkpoints_at=(5,))
    held = _held(tmp_path, url)
    with Ledger.open(url) as led:
        fill(led, 9, checkpoints_at=(9,))
    res = cli.invoke(app, ["consistency", str(held), "--ledger", url, "--json"])
    data = json.loads(res.output)
    assert res.exit_code == 0 and data["ok"] and (data["old_size"], data["new_size"]) == (5, 9)
    assert data["consistency_proof"]
    assert verify(url, "--trusted", str(held))[1]["held_checked"] == 1
    # whoever holds the key rewrites entry 1, rebuilds the chain and re-signs everything
    conn = raw(url)
    rows = conn.execute("SELECT idx, kind, idempotency_key, canonical, appended_at FROM ledger_entries "
                        "ORDER BY idx").fetchall()
    prev, leaves = "0" * 64, []
    for idx, kind, key, canonical, at in rows:
        body = json.loads(canonical)["body"] | ({"amount": "999"} if idx == 1 else {})
        new = canonical_entry(idx, kind, key, body, at, prev)
        prev = merkle.leaf_hash(new).hex()
        leaves.append(merkle.leaf_hash(new))
        conn.execute("UPDATE ledger_entries SET canonical = ?, leaf_hash = ? WHERE idx = ?", (new, prev, idx))
    conn.execute("DELETE FROM ledger_checkpoints")
    conn.close()
    with Ledger.open(url) as led:
        led.checkpoint()  # signed with the genuine key: the store is self-consistent again
    assert verify(url)[0] == 0
    code, report = verify(url, "--trusted", str(held))
    assert code == 1 and report["first_bad_range"] == [0, 5]
    assert any("this log does not extend it" in p for p in report["problems"])
    assert cli.invoke(app, ["consistency", str(held), "--ledger", url]).exit_code == 1


# -- C2SP notes and witnesses -------------------------------------------------------------------------------------

def test_cosigned_checkpoint_with_unknown_lines_parses_and_verifies(url):
    with Ledger.open(url) as led:
        fill(led, 3, checkpoints_at=(3,))
        cp = led.latest_checkpoint()
        verifier = log_verifier(led.origin)
    w = Ed25519PrivateKey.generate()
    cosigned = cp.with_signature(cosign(w, "district.example/witness", cp, 1_700_000_000))
    unknown = Signature("rotated.example/key", "0badf00d", os.urandom(64))
    note = cosigned.with_signature(unknown).note
    parsed = Checkpoint.parse(note)
    assert verifier.problems(parsed) == [] and len(parsed.signatures) == 3  # unknown lines ignored, not refused
    wv = cosignature_vkey("district.example/witness", w.public_key())
    assert cosignature_time(parsed, wv) == 1_700_000_000
    assert witness_problems(parsed, Trust(witness_keys=(wv,), witness_quorum=1)) == []
    other = cosignature_vkey("other.example/w", Ed25519PrivateKey.generate().public_key())
    assert witness_problems(parsed, Trust(witness_keys=(wv, other), witness_quorum=2)) == [
        "cosigned by 1 pinned witness(es), the quorum is 2"]
    forged = parsed.note.replace(parsed.signed_text.split("\n")[3], "time 1999-01-01T00:00:00Z")
    assert witness_problems(Checkpoint.parse(forged), Trust(witness_keys=(wv,), witness_quorum=1))


def test_witness_cosigns_growth_and_refuses_rollback_and_fork(url, tmp_path):
    state = tmp_path / "witness"
    args = ["witness", "--state", str(state), "--name", "district.example/witness", "--ledger", url]
    with Ledger.open(url) as led:
        fill(led, 4, checkpoints_at=(4,))
    first = cli.invoke(app, args)
    assert first.exit_code == 0, first.output
    wv = cli.invoke(app, ["witness", "--state", str(state), "--name", "district.example/witness", "--show-key"]).output
    assert cosignature_time(Checkpoint.parse(first.output), wv.strip()) is not None
    with Ledger.open(url) as led:
        fill(led, 6, checkpoints_at=(6,))
    assert cli.invoke(app, [*args, "--out", str(tmp_path / "cosigned")]).exit_code == 0
    assert cli.invoke(app, ["pin", "--witness", wv.strip(), "--quorum", "1"]).exit_code == 0
    code, report = verify(url, "--trusted", str(tmp_path / "cosigned"))
    assert code == 0 and report["held_checked"] == 1
    # fork: rewrite entry 5 and re-sign (the log's key is on this machine)
    conn = raw(url)
    conn.execute("UPDATE ledger_entries SET canonical = replace(canonical, '5.50', '8.50') WHERE idx = 5")
    conn.execute("DELETE FROM ledger_checkpoints")
    conn.close()
    with Ledger.open(url) as led:
        conn = raw(url)
        conn.execute("UPDATE ledger_entries SET leaf_hash = ? WHERE idx = 5",
                     (merkle.leaf_hash(led.get(5).canonical).hex(),))
        conn.close()
        led.checkpoint()
    res = cli.invoke(app, args)
    assert res.exit_code == 1 and "does not extend the checkpoint of size 6" in res.output
    # an uncosigned held checkpoint fails the pinned witness quorum
    bare = tmp_path / "bare"
    bare.write_text(Checkpoint.parse((tmp_path / "cosigned").read_text()).signed_text + "\n" +
                    Checkpoint.parse((tmp_path / "cosigned").read_text()).signatures[0].line())
    code, report = verify(url, "--trusted", str(bare))
    assert code == 1 and any("quorum is 1" in p for p in report["problems"])


# -- claims use only entries whose bytes hash to the signed root ---------------------------------------------------

def test_claims_read_only_signed_entries_and_check_their_bytes(url):
    from pipeline.finance.build_metered import MeteringError, open_ledger, verified_entries

    def cost_entries_by_job(led, key=None):
        out = {}
        for e in verified_entries(led, key):
            if e.kind == "cost":
                out.setdefault(e.body["job"], []).append(e)
        return out

    with Ledger.open(url) as led:
        fill(led, 4, checkpoints_at=(4,))
        led.append("cost", {"job": "job-1", "kind": "compute", "item": "gpu", "amount": "1000000"}, "forged")
    led = open_ledger(url)
    try:
        assert [e.index for e in cost_entries_by_job(led)["job-1"]] == [0, 1, 2, 3]  # the unsigned one left out
    finally:
        led.close()
    conn = raw(url)  # an edit that leaves the stored hash column alone
    conn.execute("UPDATE ledger_entries SET canonical = CAST(replace(canonical, '2.50', '9.50') AS BLOB) WHERE idx = 2")
    conn.close()
    led = open_ledger(url)
    try:
        with pytest.raises(MeteringError, match=r"entry 2 \(k2\) was altered: .* do not hash to the root signed"):
            cost_entries_by_job(led)
        other = vkey(Ed25519PrivateKey.generate().public_key(), led.origin)
        with pytest.raises(MeteringError, match="does not verify against the pinned key"):
            cost_entries_by_job(led, other)
    finally:
        led.close()


# -- C2SP tlog-tiles, checked by an independent reader written from the spec ---------------------------------------

def _spec_tile_path(level: object, n: int, width: int) -> str:
    parts = []
    while True:
        parts.append(f"{n % 1000:03d}")
        n //= 1000
        if n == 0:
            break
    return f"tile/{level}/" + "/".join(["x" + p for p in reversed(parts[1:])] + [parts[0]]) + \
        ("" if width == 256 else f".p/{width}")


def _spec_root(hashes: list[bytes]) -> bytes:
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _spec_root(hashes[:k]) + _spec_root(hashes[k:])).digest()


def test_published_tiles_follow_the_spec(url, tmp_path):
    from pipeline.metering.ledger_tiles import read_log, tile_path

    assert tile_path(0, 1234067) == "tile/0/x001/x234/067" and tile_path("entries", 5, 17) == "tile/entries/005.p/17"
    with Ledger.open(url) as led:
        for i in range(600):
            led.append("usage", {"i": i}, f"u{i}")
        led.checkpoint()
    out = tmp_path / "www"
    res = cli.invoke(app, ["publish", str(out), "--ledger", url])
    assert res.exit_code == 0, res.output
    note = (out / "checkpoint").read_text()
    lines = note.split("\n")
    size, root = int(lines[1]), base64.b64decode(lines[2])
    assert size == 600
    leaves, entries = [], []
    for n in range(3):  # 600 = 2 full level-0 tiles + a partial of 88; level 1: a partial of width 2
        width = min(256, size - n * 256)
        tile = (out / _spec_tile_path(0, n, width)).read_bytes()
        bundle = (out / _spec_tile_path("entries", n, width)).read_bytes()
        got, i = [], 0
        while i < len(bundle):
            ln = int.from_bytes(bundle[i:i + 2], "big")
            got.append(bundle[i + 2:i + 2 + ln])
            i += 2 + ln
        assert [hashlib.sha256(b"\x00" + e).digest() for e in got] == [tile[j:j + 32] for j in range(0, len(tile), 32)]
        leaves += [tile[j:j + 32] for j in range(0, len(tile), 32)]
        entries += got
    level1 = (out / _spec_tile_path(1, 0, 2)).read_bytes()
    assert level1 == _spec_root(leaves[:256]) + _spec_root(leaves[256:512])
    assert _spec_root(leaves) == root and json.loads(entries[599])["body"] == {"i": 599}
    assert read_log(out)[0].tree_size == 600
    witness = cli.invoke(app, ["witness", "--state", str(tmp_path / "w"), "--name", "w.example/1", "--tiles", str(out)])
    assert witness.exit_code == 0, witness.output
    (out / _spec_tile_path(0, 0, 256)).write_bytes(b"\0" * 8192)  # a full tile published with other bytes
    assert cli.invoke(app, ["publish", str(out), "--ledger", url]).exit_code == 1


# -- PostgreSQL: owner and writer roles on the real server ---------------------------------------------------------

from tests.pg import postgres  # noqa: E402,F401  (fixture)


def test_postgres_writer_can_only_insert_and_select(postgres, tmp_path):  # noqa: F811
    import psycopg

    admin = postgres.create_database(f"ledger_roles_{uuid.uuid4().hex[:6]}")
    password = "w-" + uuid.uuid4().hex
    os.environ["TEST_WRITER_PW"] = password
    try:
        res = cli.invoke(app, ["pg-setup", "--admin-url", admin, "--owner", "lg_owner", "--writer", "lg_writer",
                               "--writer-password-env", "TEST_WRITER_PW"])
    finally:
        del os.environ["TEST_WRITER_PW"]
    assert res.exit_code == 0, res.output
    parts = urlsplit(admin)
    writer = urlunsplit(parts._replace(netloc=f"lg_writer:{password}@{parts.hostname}:{parts.port}"))
    with Ledger.open(writer) as led:  # the pipeline as the writer: append, checkpoint, verify
        fill(led, 5, checkpoints_at=(5,))
        assert led.verify().ok and led.size() == 5
        from pipeline.metering import attempts  # an attempt's heartbeats: INSERT + UPDATE in place, no entry

        start = attempts.start_body(job="r", drama="d", episode="e", stage="video", shot="s1", backend="b",
                                    attempt=1, gpus=0, cpus=1, driver={}, heartbeat_s=2.0)
        attempts.begin(led, start)
        import datetime as dt

        later = (dt.datetime.fromisoformat(start["started"]) + dt.timedelta(seconds=5)).isoformat(
            timespec="microseconds")
        assert led.heartbeat(start["usage_key"], later) and led.size() == 6
        assert attempts.close_run(led, led, "r", why="test") == 1 and led.open_heartbeats() == []
        assert led.verify().ok
    with psycopg.connect(writer, autocommit=True) as conn:
        for stmt in ("DELETE FROM ledger_entries WHERE idx = 2", "UPDATE ledger_entries SET kind = 'x'",
                     "DELETE FROM attempt_heartbeats", "TRUNCATE attempt_heartbeats",
                     "TRUNCATE ledger_checkpoints", "ALTER TABLE ledger_entries DISABLE TRIGGER USER",
                     "DROP TRIGGER ledger_entries_append_only ON ledger_entries",
                     "CREATE TABLE sneaky (x int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)
    with psycopg.connect(admin, autocommit=True) as conn:  # the owner's triggers still hold
        conn.execute("SET ROLE lg_owner")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("DELETE FROM ledger_entries WHERE idx = 2")
    assert cli.invoke(app, ["pg-setup", "--admin-url", admin, "--owner", "lg_owner", "--writer", "lg_writer"]
                      ).exit_code == 0  # idempotent


def test_prove_takes_the_pinned_key(url):
    with Ledger.open(url) as led:
        fill(led, 3, checkpoints_at=(3,))
        origin = led.origin
    assert cli.invoke(app, ["prove", "1", "--ledger", url]).exit_code == 0  # the trust file's key
    other = vkey(Ed25519PrivateKey.generate().public_key(), origin)
    res = cli.invoke(app, ["prove", "1", "--ledger", url, "--pubkey", other])
    assert res.exit_code == 1 and "NOT VERIFIED" in res.output and "not by the trusted key" in res.output
