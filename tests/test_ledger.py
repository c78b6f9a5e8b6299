"""Ledger: exactly-once appends, atomicity, proofs, signed checkpoints, tamper detection, CLI and Ray writer."""
from __future__ import annotations

import json
import os
import pickle
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from pipeline.metering import merkle
from pipeline.metering.ledger import (
    Ledger,
    LedgerError,
    canonical_entry,
    verify_checkpoint_consistency,
    verify_entry_inclusion,
)
from pipeline.metering.ledger_cli import app
from pipeline.metering.ledger_sign import LedgerKey, load_public_key, sign_checkpoint, vkey
from pipeline.metering.ledger_store import redact_url
from pipeline.metering.ledger_verify import parse_canonical, verify_ledger

REPO = Path(__file__).resolve().parents[1]
PG_ENV = "MICRODRAMA_TEST_POSTGRES_URL"  # e.g. postgresql://user@127.0.0.1:5432/postgres


@pytest.fixture(autouse=True)
def _no_key_env(monkeypatch):
    monkeypatch.delenv("MICRODRAMA_LEDGER_KEY_FILE", raising=False)
    monkeypatch.delenv("MICRODRAMA_LEDGER", raising=False)


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/ledger.db"


@pytest.fixture
def led(url):
    with Ledger.open(url) as ledger:
        yield ledger


def usage(i: int, job: str = "job-1") -> dict:
    return {"job": job, "drama": "d1", "episode": "e01", "stage": "video", "shot": f"s{i:02d}",
            "attempt": 1, "wall_s": 1.25 * i, "gpu_s": 0.5, "ai_usage": [{"tool": "wan", "unit": "second",
                                                                        "quantity": 4}]}


def fill(led: Ledger, n: int, checkpoints_at: tuple[int, ...] = ()) -> None:
    for i in range(led.size(), n):
        led.append("usage", usage(i), f"job-1/video/s{i:02d}/1")
        if i + 1 in checkpoints_at:
            led.checkpoint()


# -- appending ------------------------------------------------------------------------------------------------

def test_append_stores_canonical_chained_entries(led):
    a = led.append("usage", {"z": 1, "a": [1.0, "é"], "job": "j"}, "k-a")
    b = led.append("cost", {"job": "j", "amount_cny": "12.50"}, "k-b")
    assert a.canonical.startswith(b'{"appended_at":') and b'"body":{"a":[1,"\xc3\xa9"],"job":"j","z":1}' in a.canonical
    assert a.leaf_hash == merkle.leaf_hash(a.canonical).hex() and a.prev_hash == "0" * 64
    assert (b.index, b.prev_hash) == (1, a.leaf_hash)
    assert led.get(1) == b and led.find("k-a") == a and led.get(7) is None and led.find("nope") is None
    assert [e.index for e in led.entries(kind="cost")] == [1]
    assert [e.index for e in led.entries(where={"job": "j"})] == [0, 1]
    assert led.entries(where={"amount_cny": "12.50"}) == [b]
    with pytest.raises(AttributeError):
        a.index = 3  # immutable value
    a.body["job"] = "changed"
    assert a.body["job"] == "j"


def test_idempotency_key_appends_exactly_once(led):
    first = led.append("usage", usage(1), "job-1/video/s01/1")
    again = led.append("usage", usage(1) | {"wall_s": 99.0}, "job-1/video/s01/1")  # a retry of the same attempt
    assert again == first and led.size() == 1
    out = led.append_many([("usage", usage(2), "k2"), ("usage", usage(1), "job-1/video/s01/1"),
                           ("usage", usage(2), "k2"), ("usage", usage(3), "k3")])
    assert [e.index for e in out] == [1, 0, 1, 2] and led.size() == 3
    assert led.verify().ok


@pytest.mark.parametrize("body", [{"x": float("nan")}, {"x": 2**60}, {"x": object()}, ["not", "a", "dict"]])
def test_bad_body_fails_loudly_and_appends_nothing(led, body):
    with pytest.raises(LedgerError, match="body"):
        led.append_many([("usage", usage(0), "ok-0"), ("usage", body, "bad")])
    assert led.size() == 0


def test_append_many_is_one_transaction(led, monkeypatch):
    from pipeline.metering import ledger_store
    original, calls = ledger_store.Tx.insert, []

    def failing_insert(self, row):
        calls.append(row.idx)
        if len(calls) == 3:
            raise OSError("disk full")
        original(self, row)

    monkeypatch.setattr(ledger_store.Tx, "insert", failing_insert)
    with pytest.raises(OSError):
        led.append_many([("usage", usage(i), f"k{i}") for i in range(5)])
    monkeypatch.setattr(ledger_store.Tx, "insert", original)
    assert led.size() == 0 and led.find("k0") is None
    assert led.append("usage", usage(0), "k0").index == 0


CRASH = """
import os, signal, sys
from pipeline.metering import ledger_store
from pipeline.metering.ledger import Ledger
led = Ledger.open(sys.argv[1])
original, n = ledger_store.Tx.insert, []
def insert(self, row):
    original(self, row)
    n.append(1)
    if len(n) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # killed with two rows written, before COMMIT
ledger_store.Tx.insert = insert
led.append_many([("usage", {"i": i}, f"crash-{i}") for i in range(3)])
"""


def test_process_killed_mid_append_leaves_nothing(led, url):
    fill(led, 3, checkpoints_at=(3,))
    proc = subprocess.run([sys.executable, "-c", CRASH, url], cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    with Ledger.open(url) as fresh:
        assert fresh.size() == 3 and fresh.find("crash-0") is None
        assert fresh.verify().ok
        assert fresh.append("usage", {"i": 0}, "crash-0").index == 3


WRITER = """
import os, sys
from pipeline.metering.ledger import Ledger
led = Ledger.open(sys.argv[1])
for i in range(30):
    led.append("usage", {"i": i, "pid": os.getpid()}, f"shared-{i}")
    if i % 3 == 0:
        led.append("usage", {"i": i}, f"own-{os.getpid()}-{i}")
"""


def test_two_processes_append_concurrently(led, url):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url], cwd=REPO) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    report = led.verify()
    assert report.ok and report.size == 30 + 2 * 10
    keys = [e.idempotency_key for e in led.entries()]
    assert len(keys) == len(set(keys))


def test_urls_fail_loudly_and_passwords_stay_hidden(tmp_path):
    with pytest.raises(ValueError, match=r"sqlite:///path/ledger\.db"):
        Ledger.open("ledger.db")
    with pytest.raises(ValueError, match="in-memory"):
        Ledger.open("sqlite:///:memory:")
    with pytest.raises(FileNotFoundError):
        Ledger.open(f"sqlite:///{tmp_path}/absent.db", create=False)
    assert redact_url("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"


@pytest.mark.parametrize("text, canonical", [
    (rb'{"a":1,"b":[0.5,"\u00e9"]}', False), ('{"a":1,"b":[0.5,"\u00e9"]}'.encode(), True),
    (b'{"b":1,"a":2}', False), (b'{"a":1.0}', False), (b'{"a":1e-7}', True), (b'{"a":1e-07}', False),
    (b'{"a":100000000000000000000}', True), (b'{"a":9007199254740993}', False), (b'{"a":-0}', False),
    (b'{"a": 1}', False), (rb'{"a":"\n"}', True), (rb'{"a":"\u000a"}', False), (b'{"a":1,"a":1}', False),
    ('{"\U0001f600":2,"\ue000":1}'.encode(), True), ('{"\ue000":1,"\U0001f600":2}'.encode(), False)])
def test_canonical_form_check_agrees_with_rfc8785(text, canonical):
    assert parse_canonical(text)[1] is canonical


# -- roots, proofs, checkpoints ----------------------------------------------------------------------------------

def test_roots_and_proofs_for_an_auditor(led, url):
    fill(led, 7)
    cp7 = led.checkpoint()
    fill(led, 13)
    cp13 = led.checkpoint()
    leaves = [bytes.fromhex(e.leaf_hash) for e in led.entries()]
    assert led.root_hash() == merkle.root(leaves).hex() == cp13.root_hash
    assert led.root_hash(7) == merkle.root(leaves[:7]).hex() == cp7.root_hash
    pub = led.key_path.with_suffix(".pub")  # the public half, written beside the key (not beside the DB)
    entry = led.get(5)
    proof = led.inclusion_proof(5, 13)
    assert verify_entry_inclusion(entry.canonical, proof, cp13.note, pub)
    assert verify_entry_inclusion(entry, led.inclusion_proof(5, 7), cp7, pub)
    assert not verify_entry_inclusion(led.get(6), proof, cp13.note, pub)
    assert not verify_entry_inclusion(entry, proof, cp7.note, pub)
    forged = entry.canonical.replace(b'"attempt":1', b'"attempt":2')
    assert not verify_entry_inclusion(forged, proof, cp13.note, pub)
    assert verify_checkpoint_consistency(cp7.note, cp13.note, led.consistency_proof(7, 13), pub)
    assert not verify_checkpoint_consistency(cp7, cp13, led.consistency_proof(6, 13), pub)
    assert led.latest_checkpoint() == cp13 and [c.id for c in led.checkpoints()] == [cp7.id, cp13.id]


def test_checkpoint_note_is_a_c2sp_signed_note(led):
    fill(led, 3)
    cp = led.checkpoint()
    text, _, sig = cp.note.partition("\n\n")
    lines = text.split("\n")
    assert lines[0] == led.origin and lines[1] == "3" and lines[3].startswith("time ")
    assert sig.startswith(f"\u2014 {led.origin} ") and sig.endswith("\n")  # key name = origin (tlog-checkpoint)
    assert cp.verify(led.public_key()) == []


def test_key_file_is_private_and_never_shown(led, url, caplog, capsys):
    caplog.set_level("DEBUG")
    fill(led, 2)
    cp = led.checkpoint()
    key_path = led.key_path
    assert not key_path.is_relative_to(Path(url[len("sqlite:///"):]).parent)  # the key is kept apart from the DB
    assert key_path.stat().st_mode & 0o777 == 0o600 and key_path.with_suffix(".pub").exists()
    pem = key_path.read_text()
    private = serialization.load_pem_private_key(pem.encode(), None).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    key = led._signing_key()
    shown = [repr(key), str(key), repr(led), caplog.text, capsys.readouterr().out, cp.note]
    shown += [CliRunner().invoke(app, [c, "--ledger", url]).output for c in ("checkpoint", "verify", "show")]
    secrets = [pem.splitlines()[1], private.hex(), __import__("base64").b64encode(private).decode()]
    assert not any(s in text for s in secrets for text in shown)
    assert "redacted" in repr(key)
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(key)


def test_public_key_forms_round_trip(tmp_path):
    for _ in range(20):  # base64 keys often contain "+", the vkey separator
        public = Ed25519PrivateKey.generate().public_key()
        raw_key = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert load_public_key(vkey(public)).public_bytes_raw() == raw_key
        assert load_public_key(raw_key).public_bytes_raw() == raw_key
    pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption())
    (tmp_path / "leaked.key").write_bytes(pem)
    with pytest.raises(ValueError, match="private key"):
        load_public_key(tmp_path / "leaked.key")


def test_key_file_from_env(monkeypatch, tmp_path, url):
    monkeypatch.setenv("MICRODRAMA_LEDGER_KEY_FILE", str(tmp_path / "keys" / "audit.key"))
    with Ledger.open(url) as led:
        fill(led, 1)
        led.checkpoint()
        assert led.key_path == tmp_path / "keys" / "audit.key" and (tmp_path / "keys" / "audit.pub").exists()
        assert led.verify().ok


# -- tamper detection (editing the SQLite file directly) ---------------------------------------------------------

def raw(url: str) -> sqlite3.Connection:
    conn = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")  # an attacker with file access can drop them
    return conn


def row_of(conn: sqlite3.Connection, idx: int) -> tuple:
    return conn.execute("SELECT idx, kind, idempotency_key, canonical, leaf_hash, appended_at "
                        "FROM ledger_entries WHERE idx = ?", (idx,)).fetchone()


def flip_byte(conn, url):
    canonical = bytearray(row_of(conn, 5)[3])
    canonical[60] ^= 0x04
    conn.execute("UPDATE ledger_entries SET canonical = ? WHERE idx = 5", (bytes(canonical),))


def rehash_body(conn, url):  # change a body and recompute that row's hash: its successor's link gives it away
    _, kind, key, canonical, _, at = row_of(conn, 5)
    doc = json.loads(canonical)
    new = canonical_entry(5, kind, key, doc["body"] | {"wall_s": 0.0}, at, doc["prev"])
    conn.execute("UPDATE ledger_entries SET canonical = ?, leaf_hash = ? WHERE idx = 5",
                 (new, merkle.leaf_hash(new).hex()))


def delete_row(conn, url):
    conn.execute("DELETE FROM ledger_entries WHERE idx = 5")


def delete_and_renumber(conn, url):
    conn.execute("DELETE FROM ledger_entries WHERE idx = 5")
    conn.execute("UPDATE ledger_entries SET idx = idx + 1000 WHERE idx > 5")
    conn.execute("UPDATE ledger_entries SET idx = idx - 1001 WHERE idx > 1000")


def swap_rows(conn, url):
    conn.execute("UPDATE ledger_entries SET idx = -1 WHERE idx = 5")
    conn.execute("UPDATE ledger_entries SET idx = 5 WHERE idx = 8")
    conn.execute("UPDATE ledger_entries SET idx = 8 WHERE idx = -1")


def insert_row(conn, url):  # a well-formed forged entry at 5, later rows shifted up
    prev = row_of(conn, 4)[4]
    forged = canonical_entry(5, "usage", "forged", usage(5, job="job-x"), "2025-01-01T00:00:00.000000Z", prev)
    conn.execute("UPDATE ledger_entries SET idx = idx + 1000 WHERE idx >= 5")
    conn.execute("UPDATE ledger_entries SET idx = idx - 999 WHERE idx >= 1000")
    conn.execute("INSERT INTO ledger_entries VALUES (5, 'usage', 'forged', ?, ?, ?)",
                 (forged, merkle.leaf_hash(forged).hex(), "2025-01-01T00:00:00.000000Z"))


def alter_column(conn, url):
    conn.execute("UPDATE ledger_entries SET kind = 'refund' WHERE idx = 5")


def truncate_tail(conn, url):
    conn.execute("DELETE FROM ledger_entries WHERE idx >= 10")


@pytest.mark.parametrize("tamper, first_bad", [
    (flip_byte, 5), (rehash_body, 5), (delete_row, 5), (delete_and_renumber, 5), (swap_rows, 5),
    (insert_row, 5), (alter_column, 5), (truncate_tail, 10)])
def test_tampering_with_entries_is_pinpointed(led, url, tamper, first_bad):
    fill(led, 12, checkpoints_at=(4, 12))
    assert led.verify().ok
    conn = raw(url)
    tamper(conn, url)
    conn.close()
    with Ledger.open(url) as fresh:
        report = fresh.verify()
    assert not report.ok and report.first_bad_index == first_bad, report.problems
    assert report.problems[0].startswith((f"entry {first_bad}:", f"entries {first_bad}..")), report.problems


def test_rewriting_the_whole_chain_is_caught_by_the_checkpoints(led, url):
    fill(led, 12, checkpoints_at=(6, 12))
    conn = raw(url)
    prev = row_of(conn, 7)[4]
    for idx in range(8, 12):  # a careful forger recomputes every later hash and link
        _, kind, key, canonical, _, at = row_of(conn, idx)
        body = json.loads(canonical)["body"] | {"gpu_s": 0.0}
        new = canonical_entry(idx, kind, key, body, at, prev)
        prev = merkle.leaf_hash(new).hex()
        conn.execute("UPDATE ledger_entries SET canonical = ?, leaf_hash = ? WHERE idx = ?", (new, prev, idx))
    conn.close()
    report = led.verify()
    assert not report.ok and report.first_bad_index == 6
    assert any("something in entries 6..11 changed" in p for p in report.problems), report.problems
    with pytest.raises(LedgerError, match="refusing to sign"):
        Ledger.open(url).checkpoint()


def test_every_flipped_byte_of_an_entry_is_detected(led):
    fill(led, 8, checkpoints_at=(8,))
    with led._store.reading() as tx:
        rows, cps = list(tx.rows()), tx.checkpoints()
    pub = led.public_key()
    for offset in range(len(rows[3].canonical)):
        bad = bytearray(rows[3].canonical)
        bad[offset] ^= 0x01
        tampered = [*rows[:3], replace(rows[3], canonical=bytes(bad)), *rows[4:]]
        report = verify_ledger(tampered, cps, pub, led.origin)
        assert report.first_bad_index == 3, (offset, report.problems)


def test_reordering_rows_is_detected(led):
    fill(led, 6)
    with led._store.reading() as tx:
        rows = list(tx.rows())
    moved = [replace(r, idx=i) for i, r in enumerate([*rows[:2], rows[3], rows[2], *rows[4:]])]
    assert verify_ledger(moved, [], None, led.origin).first_bad_index == 2


def test_altered_checkpoint_is_rejected(led, url):
    fill(led, 6, checkpoints_at=(3, 6))
    conn = raw(url)
    conn.execute("UPDATE ledger_checkpoints SET root_hash = ? WHERE id = 1", ("00" * 32,))
    conn.execute("UPDATE ledger_checkpoints SET note = replace(note, ?, ?) WHERE id = 2", ("\n6\n", "\n5\n"))
    conn.close()
    report = led.verify()
    assert not report.ok and report.first_bad_index is None  # the entries themselves are intact
    assert any(p.startswith("checkpoint #1: rejected — its size/root") for p in report.problems)
    assert any(p.startswith("checkpoint #2: rejected — signature") for p in report.problems)


def test_checkpoint_signed_with_another_key_is_rejected(led, url):
    fill(led, 5, checkpoints_at=(5,))
    other = LedgerKey(Ed25519PrivateKey.generate())
    forged = sign_checkpoint(other, led.origin, 5, led.root_hash(), "2025-01-01T00:00:00Z")
    conn = raw(url)
    conn.execute("INSERT INTO ledger_checkpoints (tree_size, root_hash, created_at, key_id, note) "
                 "VALUES (5, ?, ?, ?, ?)", (forged.root_hash, forged.timestamp, forged.key_id, forged.note))
    conn.close()
    report = led.verify()
    assert not report.ok and any("not by the trusted key" in p for p in report.problems)
    pub = other.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert not led.verify(pub.decode()).ok  # trusting the other key instead rejects the genuine checkpoint
    assert not verify_entry_inclusion(led.get(0), led.inclusion_proof(0), forged, led.public_key())


# -- CLI ---------------------------------------------------------------------------------------------------------

def test_cli_verify_prove_checkpoint_show(led, url, tmp_path):
    fill(led, 6)
    cli = CliRunner()
    res = cli.invoke(app, ["prove", "3", "--ledger", url])
    assert res.exit_code == 1 and "ledger checkpoint" in res.output  # nothing signed yet
    res = cli.invoke(app, ["checkpoint", "--ledger", url])
    assert res.exit_code == 0 and led.origin in res.output and f"{led.origin}+" in res.output
    res = cli.invoke(app, ["prove", "job-1/video/s03/1", "--ledger", url, "--json"])
    bundle = json.loads(res.output)
    assert res.exit_code == 0 and bundle["verified"] and bundle["index"] == 3 and bundle["tree_size"] == 6
    assert verify_entry_inclusion(bundle["canonical"].encode(), bundle["inclusion_proof"], bundle["checkpoint"],
                                  led.public_key())
    res = cli.invoke(app, ["prove", "2", "--ledger", url])
    assert res.exit_code == 0 and "verifies against signed checkpoint #1" in res.output
    res = cli.invoke(app, ["verify", "--ledger", url])
    assert res.exit_code == 0 and res.output.startswith("ledger OK: 6 entries")
    res = cli.invoke(app, ["show", "--ledger", url, "--tail", "2"])
    assert res.exit_code == 0 and "job-1/video/s05/1" in res.output and "s03" not in res.output
    other = tmp_path / "other.pub"
    other.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert cli.invoke(app, ["verify", "--ledger", url, "--pubkey", str(other)]).exit_code == 1
    pinned = vkey(led.public_key(), led.origin)  # what an auditor pins: name (= origin)+key id+key
    res = cli.invoke(app, ["verify", "--ledger", url, "--pubkey", pinned])
    assert res.exit_code == 0 and pinned.split("+")[1] in res.output
    conn = raw(url)
    conn.execute("DELETE FROM ledger_entries WHERE idx = 4")
    res = cli.invoke(app, ["verify", "--ledger", url, "--json"])
    assert res.exit_code == 1 and json.loads(res.output)["first_bad_index"] == 4
    res = cli.invoke(app, ["verify", "--ledger", url])
    assert "first bad entry: 4" in res.output
    res = cli.invoke(app, ["verify", "--ledger", f"sqlite:///{tmp_path}/missing.db"])
    assert res.exit_code != 0 and not (tmp_path / "missing.db").exists()
    conn.close()
    conn = raw(url)  # verify opened it read-only: nothing re-armed; raw() drops the triggers anyway
    conn.execute("UPDATE ledger_checkpoints SET note = 'garbage' WHERE id = 1")
    conn.close()
    res = cli.invoke(app, ["prove", "1", "--ledger", url])
    assert res.exit_code == 1 and "checkpoint #1 is malformed" in res.output


def test_cli_default_ledger_from_env(led, url, monkeypatch):
    fill(led, 2)
    monkeypatch.setenv("MICRODRAMA_LEDGER", url)
    res = CliRunner().invoke(app, ["show", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["size"] == 2


# -- the Ray writer -------------------------------------------------------------------------------------------------

def test_ray_writer_records_each_attempt_exactly_once(ray_session, url):
    import ray

    from pipeline.metering.ledger_actor import get_or_create_writer

    name = f"ledger-{uuid.uuid4().hex[:8]}"
    writer = get_or_create_writer(url, name=name)

    @ray.remote(num_cpus=0)
    def stage_attempts(w, start: int) -> dict[str, int]:
        keys = [f"job/video/s{i}/1" for i in range(start, start + 10)]
        return {k: ray.get(w.append.remote("usage", {"shot": k}, k)).index for k in keys}

    results = ray.get([stage_attempts.remote(writer, s) for s in (0, 5, 10, 15)])  # keys overlap: retries
    same = get_or_create_writer(url, name=name)
    assert ray.get(same.size.remote()) == 25
    by_key: dict[str, set[int]] = {}
    for found in results:
        for key, idx in found.items():
            by_key.setdefault(key, set()).add(idx)
    assert all(len(v) == 1 for v in by_key.values())  # every caller of one key got the same entry
    assert sorted(i for v in by_key.values() for i in v) == list(range(25))
    cp = ray.get(writer.checkpoint.remote())
    with Ledger.open(url) as led:
        assert led.verify().ok and cp.tree_size == 25 and led.root_hash() == ray.get(writer.root_hash.remote())
    with pytest.raises(ValueError, match="another ledger"):
        get_or_create_writer(url + ".other", name=name)
    ray.kill(writer)


# -- PostgreSQL: a real server from the Debian package (tests/pg.py), or the one named by PG_ENV ----------------

from tests.pg import postgres  # noqa: E402,F401  (fixture)


@pytest.fixture
def pg_url(request):
    base = os.environ.get(PG_ENV) or request.getfixturevalue("postgres").url()
    import psycopg
    schema = f"ledger_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield base + ("&" if "?" in base else "?") + f"options=-csearch_path%3D{schema}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_postgres_store_same_semantics(pg_url, tmp_path):
    import psycopg
    with Ledger.open(pg_url, key_file=tmp_path / "pg.key") as led:
        fill(led, 6, checkpoints_at=(6,))
        assert led.append("usage", usage(3), "job-1/video/s03/1").index == 3 and led.size() == 6
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, pg_url], cwd=REPO) for _ in range(2)]
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
        assert led.size() == 6 + 30 + 20 and led.verify().ok
        with psycopg.connect(pg_url, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute("DELETE FROM ledger_entries WHERE idx = 2")
            conn.execute("ALTER TABLE ledger_entries DISABLE TRIGGER USER")
            conn.execute("DELETE FROM ledger_entries WHERE idx = 2")
        report = led.verify()
        assert not report.ok and report.first_bad_index == 2


def test_bill_idle_time_of_a_rented_node(tmp_path):
    """OpenCost's idle line: 1 H100 rented 2 h, stages on it held it 0.5 h -> 1.5 GPU-h idle at 12.00/h,
    appended once however often it is billed; usage on other nodes or outside the rental does not count."""
    from pipeline.metering.sink import ledger_items
    from pipeline.metering.usage import UsageRecord

    url = f"sqlite:///{tmp_path / 'ledger.db'}"

    def record(key: str, node: str, started: str, ended: str) -> UsageRecord:
        return UsageRecord(job="job-1", drama="d", episode="ep01", stage="video", shot="s01", backend="wan",
                           started=started, ended=ended, wall_s=1800.0, cpu_s=10.0, cpus=1.0, gpus=1.0,
                           gpu_s=1800.0, gpu_model="NVIDIA H100 80GB HBM3", node=node, idempotency_key=key)

    with Ledger.open(url) as led:
        for key, node, started, ended in (("a", "gpu-a", "2026-03-02T08:30:00+08:00", "2026-03-02T09:00:00+08:00"),
                                          ("b", "gpu-b", "2026-03-02T08:30:00+08:00", "2026-03-02T09:00:00+08:00"),
                                          ("c", "gpu-a", "2026-03-02T11:00:00+08:00", "2026-03-02T11:30:00+08:00")):
            led.append_many(ledger_items(record(key, node, started, ended)))
        size = led.size()
    args = ["bill-idle", "--node", "gpu-a", "--gpu-model", "NVIDIA H100 80GB HBM3", "--gpus", "1",
            "--from", "2026-03-02T08:00:00+08:00", "--to", "2026-03-02T10:00:00+08:00", "--drama", "d",
            "--ledger", url, "--json"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    data = json.loads(first.output)
    assert data["records"] == 1 and Decimal(data["allocated_gpu_hours"]) == Decimal("0.5")
    (idle,) = data["idle"]
    assert idle["kind"] == "idle" and Decimal(idle["quantity"]) == Decimal("1.5")
    assert Decimal(idle["amount"]) == Decimal("18.00") and idle["drama"] == "d" and idle["node"] == "gpu-a"
    again = json.loads(CliRunner().invoke(app, args).output)
    assert again["idle"][0]["index"] == idle["index"] == size  # billed once
    with Ledger.open(url) as led:
        assert led.size() == size + 1 and led.verify().ok
    over = CliRunner().invoke(app, [*args[:8], "2026-03-02T08:29:00+08:00", "--to", "2026-03-02T08:40:00+08:00",
                                    *args[11:]])  # 11 minutes rented, 30 used: the inputs disagree
    assert over.exit_code == 2 and "allocated" in over.output
