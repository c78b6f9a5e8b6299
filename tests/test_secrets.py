"""Nothing forged, nothing leaked: tampering with a real episode's ledger is caught by `microdrama ledger
verify`; API keys and the ledger's signing key appear in no log, MLflow store, manifest, cache or error."""
from __future__ import annotations

import base64
import logging
import os
import shutil
import sqlite3
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pipeline import secrets
from pipeline.job import load_job
from pipeline.metering import merkle
from pipeline.metering.ledger import canonical_entry
from pipeline.metering.ledger_sign import LedgerKey, sign_checkpoint
from tests import fault_backends  # noqa: F401  (registers test-leaky)
from tests.tiny_jobs import check_exactly_once, cli, ledger_entries, places, write_job

KEY_NAME = "MICRODRAMA_TEST_IMAGE_KEY"


@pytest.fixture(scope="module")
def leaky_run(tmp_path_factory, ray_session):
    """A real episode whose storyboard backend logs its API key, fails once with it in the error text and
    returns it in its params; run through `microdrama run` with the key in a 0600 secrets file."""
    work = tmp_path_factory.mktemp("leaky")
    key = f"sk-test-{uuid.uuid4().hex}"
    secrets_file = work / "secrets.env"
    secrets_file.write_text(f"# test key\n{KEY_NAME}={key}\n")
    secrets_file.chmod(0o600)
    options = {"secrets_file": str(secrets_file), "api_key_name": KEY_NAME, "marker": str(work / "failed-once")}
    path = write_job(work / "job", drama="leak-drama", stages={"storyboard": {"backend": "test-leaky",
                                                                               "options": options}})
    ledger = f"sqlite:///{work / 'ledger.db'}"
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    cwd = os.getcwd()
    os.chdir(work)  # MLflow's default artifact root (./mlruns) lands in the work folder
    try:
        res = cli("run", str(path), *places(work), "--ledger", ledger, "--tracking-uri", tracking)
        (work / "marker2").unlink(missing_ok=True)
        failing = cli("run", str(path), *places(work), "stages.storyboard.max_retries=0", "seed=8",
                      f"stages.storyboard.options.marker={work / 'marker2'}", "output_dir=" + str(work / "out2"),
                      "--ledger", ledger, "--tracking-uri", tracking)
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output
    return {"work": work, "key": key, "ledger": ledger, "output": res.output, "failing": failing,
            "job": load_job(path, places(work))}


def _files(root: Path, skip: set[Path]) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p not in skip]


def _ray_logs() -> list[Path]:
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    return [p for p in (session / "logs").rglob("*") if p.is_file()]


def _holding(needles: list[bytes], files: list[Path]) -> list[str]:
    found = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found += [f"{path} holds {n[:12]!r}…" for n in needles if n in data]
    return found


# ---------------------------------------------------------------- API keys

def test_api_key_never_leaves_in_clear(leaky_run) -> None:
    key, work = leaky_run["key"], leaky_run["work"]
    usage = check_exactly_once(leaky_run["ledger"])
    boards = sorted((u for u in usage.values() if u["stage"] == "storyboard"), key=lambda u: (u["job"], u["attempt"]))
    assert [u["status"] for u in boards] == ["failed", "ok", "failed"]  # failed once, retried; then a failing run
    assert "Bearer ***" in boards[0]["error"] and key not in boards[0]["error"]
    assert leaky_run["failing"].exit_code == 1 and "Bearer ***" in leaky_run["failing"].output
    needles = [key.encode(), base64.b64encode(key.encode())]
    files = _files(work, skip={work / "secrets.env"}) + _ray_logs()
    assert any(p.name == "manifest.json" for p in files) and any(p.name == "entry.json" for p in files)
    assert any("mlruns" in p.parts for p in files)  # MLflow artifacts were written and searched
    assert _holding(needles, files) == []
    assert key not in leaky_run["output"] and key not in leaky_run["failing"].output


def test_ray_worker_logs_were_redacted_not_silent(leaky_run) -> None:
    """The backend's log lines are still there — with *** where the key was."""
    logs = b"".join(p.read_bytes() for p in _ray_logs() if p.suffix in (".err", ".out", ".log"))
    assert b"calling the image API with key ***" in logs


def test_driver_logs_and_mlflow_params_are_redacted(leaky_run, caplog) -> None:
    from pipeline.metering.mlflow_sink import redact_params

    caplog.set_level(logging.INFO)
    logging.getLogger("microdrama.tests").info("retrying with %s", leaky_run["key"])
    assert "retrying with ***" in caplog.text and leaky_run["key"] not in caplog.text
    params = redact_params({"secrets_file": "/x", "api_key_name": "K", "api_key_env": "K", "api_key": "sk-1",
                            "nested": {"token": "t", "auth": "a", "password": "p"}, "steps": 4})
    assert params == {"steps": "4"}


def test_literal_keys_in_a_job_are_refused_without_echoing_them(tmp_path) -> None:
    key = f"sk-live-{uuid.uuid4().hex}"
    path = write_job(tmp_path / "job", stages={"script": {"options": {}}})
    res = cli("validate", str(path), f"stages.translate.options.api_key={key}",
              f"stages.video.options.auth_token={key}")
    assert res.exit_code == 2 and "stages.translate.options.api_key: never write keys" in res.output
    assert "stages.video.options.auth_token" in res.output and key not in res.output
    res = cli("validate", str(path), "stages.translate.options.max_tokens=4096")
    assert "max_tokens: never write keys" not in res.output  # a token *budget* is not a key


def test_secrets_file_must_be_private(tmp_path, monkeypatch) -> None:
    f = tmp_path / "s.env"
    f.write_text("A_KEY=abcdefgh12345\nexport B_KEY='quoted-value-1'\n")
    f.chmod(0o644)
    with pytest.raises(secrets.SecretError, match="readable by others"):
        secrets.resolve({"secrets_file": str(f), "api_key_name": "A_KEY"})
    f.chmod(0o600)
    assert secrets.resolve({"secrets_file": str(f), "api_key_name": "B_KEY"}) == "quoted-value-1"
    with pytest.raises(secrets.SecretError, match="has no C_KEY"):
        secrets.resolve({"secrets_file": str(f), "api_key_name": "C_KEY"})
    monkeypatch.setenv("SOME_TEST_KEY", "env-secret-value-9")
    assert secrets.resolve({"api_key_env": "SOME_TEST_KEY"}) == "env-secret-value-9"
    assert secrets.redact("x env-secret-value-9 y") == "x *** y"
    with pytest.raises(secrets.SecretError, match="MISSING_TEST_KEY holding the key is not set"):
        secrets.resolve({"api_key_env": "MISSING_TEST_KEY"})


# ---------------------------------------------------------------- the ledger's signing key

def test_signing_key_appears_nowhere(leaky_run) -> None:
    work = leaky_run["work"]
    key_file = _key_dir() / "ledger.key"  # kept apart from the ledger's folder (the session's config dir)
    private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    needles = [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw).rstrip(b"="),
               base64.b64encode(der), der]
    files = _files(work, skip={key_file}) + _ray_logs()
    assert _holding(needles, files) == []
    assert repr(LedgerKey(private)).endswith("private=<redacted>)")


# ---------------------------------------------------------------- tamper evidence, through the CLI

def _copy(leaky_run, tmp_path: Path) -> tuple[str, sqlite3.Connection]:
    """A copy of the episode's ledger (its own key beside it) and a connection with the triggers dropped —
    what an attacker with write access to the database can do."""
    src = sqlite3.connect(Path(leaky_run["ledger"][len("sqlite:///"):]))
    dst_path = tmp_path / "ledger.db"
    dst = sqlite3.connect(dst_path, isolation_level=None)
    src.backup(dst)
    src.close()
    for name in ("ledger.key", "ledger.pub"):
        shutil.copy(_key_dir() / name, tmp_path / name)
    for (trigger,) in dst.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        dst.execute(f"DROP TRIGGER {trigger}")
    return f"sqlite:///{dst_path}", dst


def _key_dir() -> Path:
    """Where the episode's writer kept its key: the config dir tests/conftest.py sets for the session."""
    return Path(os.environ["MICRODRAMA_CONFIG_DIR"])


def _verify(url: str, pub: Path):
    return cli("ledger", "verify", "--ledger", url, "--pubkey", str(pub))


def _row(conn, idx: int) -> tuple:
    return conn.execute("SELECT idx, kind, idempotency_key, canonical, leaf_hash, appended_at FROM "
                        "ledger_entries WHERE idx = ?", (idx,)).fetchone()


def _edit(conn, rehash: bool) -> None:
    """Bill more than was measured: put a 9 in front of the first usage record's wall time."""
    idx = conn.execute("SELECT MIN(idx) FROM ledger_entries WHERE kind = 'usage'").fetchone()[0]
    canonical = _row(conn, idx)[3].replace(b'"wall_s":', b'"wall_s":9', 1)
    assert canonical != _row(conn, idx)[3]
    leaf = merkle.leaf_hash(canonical).hex() if rehash else _row(conn, idx)[4]
    conn.execute("UPDATE ledger_entries SET canonical = ?, leaf_hash = ? WHERE idx = ?", (canonical, leaf, idx))


def _insert(conn, at: int) -> None:
    prev = _row(conn, at - 1)[4]
    body = {"job": "forged", "stage": "video", "status": "ok", "wall_s": 3600.0}
    canonical = canonical_entry(at, "usage", "forged/video", body, "2026-01-01T00:00:00.000000Z", prev)
    conn.execute("UPDATE ledger_entries SET idx = idx + 100000 WHERE idx >= ?", (at,))
    conn.execute("UPDATE ledger_entries SET idx = idx - 99999 WHERE idx >= 100000")
    conn.execute("INSERT INTO ledger_entries VALUES (?, 'usage', 'forged/video', ?, ?, ?)",
                 (at, canonical, merkle.leaf_hash(canonical).hex(), "2026-01-01T00:00:00.000000Z"))


def _resign_all(conn, tmp_path: Path) -> Path:
    """The attacker's best move: rewrite a body, rebuild every hash and link, re-sign with a key of their own
    and put its public key beside the ledger. Only an auditor who pinned the real key catches it."""
    rows = conn.execute("SELECT idx, canonical FROM ledger_entries ORDER BY idx").fetchall()
    prev = "0" * 64
    leaves = []
    import json

    for idx, canonical in rows:
        doc = json.loads(canonical)
        if idx == 1:
            doc["body"]["wall_s"] = 99999.0
        fixed = canonical_entry(idx, doc["kind"], doc["key"], doc["body"], doc["appended_at"], prev)
        prev = merkle.leaf_hash(fixed).hex()
        leaves.append(bytes.fromhex(prev))
        conn.execute("UPDATE ledger_entries SET canonical = ?, leaf_hash = ? WHERE idx = ?", (fixed, prev, idx))
    attacker = LedgerKey(Ed25519PrivateKey.generate())
    origin = conn.execute("SELECT note FROM ledger_checkpoints ORDER BY id").fetchone()[0].split("\n")[0]
    tree = merkle.MerkleTree(leaves)
    for cp_id, size in conn.execute("SELECT id, tree_size FROM ledger_checkpoints").fetchall():
        cp = sign_checkpoint(attacker, origin, size, tree.root(size).hex(), "2026-01-01T00:00:00Z")
        conn.execute("UPDATE ledger_checkpoints SET root_hash = ?, key_id = ?, note = ? WHERE id = ?",
                     (cp.root_hash, cp.key_id, cp.note, cp_id))
    pem = attacker.public_key.public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "ledger.pub").write_bytes(pem)
    return tmp_path / "ledger.pub"


TAMPER = {
    "edit a body": lambda c, t: _edit(c, rehash=False),
    "edit a body and re-hash it": lambda c, t: _edit(c, rehash=True),
    "delete an entry": lambda c, t: c.execute("DELETE FROM ledger_entries WHERE idx = 4"),
    "delete the tail": lambda c, t: c.execute("DELETE FROM ledger_entries WHERE idx >= (SELECT MAX(idx) - 2 "
                                              "FROM ledger_entries)"),
    "reorder two entries": lambda c, t: [c.execute(q) for q in (
        "UPDATE ledger_entries SET idx = -1 WHERE idx = 2", "UPDATE ledger_entries SET idx = 2 WHERE idx = 5",
        "UPDATE ledger_entries SET idx = 5 WHERE idx = -1")],
    "insert an entry": lambda c, t: _insert(c, 4),
    "change a checkpoint's size": lambda c, t: c.execute(
        "UPDATE ledger_checkpoints SET note = replace(note, char(10) || tree_size || char(10), "
        "char(10) || (tree_size - 1) || char(10)), tree_size = tree_size - 1"),
    "add a checkpoint signed with another key": lambda c, t: _foreign_checkpoint(c),
}


def _foreign_checkpoint(conn) -> None:
    row = conn.execute("SELECT tree_size, root_hash, note FROM ledger_checkpoints ORDER BY id DESC").fetchone()
    other = LedgerKey(Ed25519PrivateKey.generate())
    cp = sign_checkpoint(other, row[2].split("\n")[0], row[0], row[1], "2026-01-01T00:00:00Z")
    conn.execute("INSERT INTO ledger_checkpoints (tree_size, root_hash, created_at, key_id, note) VALUES "
                 "(?, ?, ?, ?, ?)", (cp.tree_size, cp.root_hash, cp.timestamp, cp.key_id, cp.note))


def test_untouched_ledger_verifies(leaky_run, tmp_path) -> None:
    url, conn = _copy(leaky_run, tmp_path)
    conn.close()
    res = _verify(url, _key_dir() / "ledger.pub")
    assert res.exit_code == 0 and "ledger OK" in res.output, res.output
    assert len(ledger_entries(url)) > 20


@pytest.mark.parametrize("how", list(TAMPER))
def test_tampering_is_detected(leaky_run, tmp_path, how) -> None:
    url, conn = _copy(leaky_run, tmp_path)
    TAMPER[how](conn, tmp_path)
    conn.close()
    res = _verify(url, _key_dir() / "ledger.pub")  # the auditor's pinned copy of the public key
    assert res.exit_code == 1 and ("TAMPERED" in res.output or "rejected" in res.output), res.output


def test_resigned_ledger_is_caught_only_with_a_pinned_key(leaky_run, tmp_path) -> None:
    url, conn = _copy(leaky_run, tmp_path)
    planted = _resign_all(conn, tmp_path)
    conn.close()
    res = cli("ledger", "verify", "--ledger", url)  # the planted ledger.pub beside the DB is never trusted:
    assert res.exit_code == 1 and "not by the trusted key" in res.output  # the pinned key from the trust file is
    res = _verify(url, _key_dir() / "ledger.pub")
    assert res.exit_code == 1 and "not by the trusted key" in res.output, res.output
    assert planted.read_bytes() != (_key_dir() / "ledger.pub").read_bytes()
