"""The tamper-evident ledger: append-only canonical-JSON entries in an RFC 6962 tree with signed checkpoints."""
from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pipeline.metering import merkle
from pipeline.metering.ledger_sign import (
    Checkpoint,
    LedgerKey,
    default_key_path,
    load_or_create_key,
    sign_checkpoint,
    vkey,
)
from pipeline.metering.ledger_trust import LogVerifier, Trust, load_trust, log_verifier, pin_log_key
from pipeline.metering.ledger_store import Heartbeat, Row, Store, Tx, open_store
from pipeline.metering.ledger_verify import GENESIS_PREV, VerifyReport, verify_ledger
from pipeline.metering.merkle import MerkleTree

__all__ = ["Checkpoint", "Entry", "Ledger", "LedgerError", "ProofResult", "VerifyReport", "canonical_entry",
           "default_ledger_url", "verify_checkpoint_consistency", "verify_entry_inclusion"]

LEDGER_ENV = "MICRODRAMA_LEDGER"
DEFAULT_URL = "sqlite:///ledger.db"
ENTRY_VERSION = 1
PublicKeyLike = Ed25519PublicKey | LogVerifier | bytes | str | Path
log = logging.getLogger(__name__)


class LedgerError(RuntimeError):
    """A ledger operation that cannot go ahead; the message says what to do."""


def default_ledger_url() -> str:
    """$MICRODRAMA_LEDGER, else sqlite:///ledger.db (in $MICRODRAMA_STATE_DIR when set: pipeline/state.py)."""
    from pipeline import state

    return os.environ.get(LEDGER_ENV) or state.default_ledger_url()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Entry:
    """One appended record, immutable: `canonical` is exactly the hashed leaf data."""

    index: int
    kind: str
    idempotency_key: str
    canonical: bytes  # RFC 8785 bytes of {v, index, kind, key, appended_at, prev, body}
    leaf_hash: str  # hex SHA-256(0x00 || canonical)
    appended_at: str  # ISO-8601 UTC
    prev_hash: str  # hex leaf hash of entry index-1 (zeros for entry 0)

    @property
    def body(self) -> dict[str, Any]:
        """A fresh copy of the body as stored (JSON types)."""
        return json.loads(self.canonical)["body"]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "kind": self.kind, "idempotency_key": self.idempotency_key,
                "appended_at": self.appended_at, "leaf_hash": self.leaf_hash, "prev_hash": self.prev_hash,
                "body": self.body}

    @classmethod
    def from_canonical(cls, canonical: bytes) -> Entry:
        """Rebuild an entry from its canonical bytes alone (what an auditor is handed)."""
        doc = json.loads(canonical)
        return cls(doc["index"], doc["kind"], doc["key"], canonical, merkle.leaf_hash(canonical).hex(),
                   doc["appended_at"], doc["prev"])


def canonical_entry(index: int, kind: str, key: str, body: Mapping[str, Any], appended_at: str, prev: str) -> bytes:
    """RFC 8785 bytes of one entry; the leaf hashes these, so every field is covered."""
    doc = {"v": ENTRY_VERSION, "index": index, "kind": kind, "key": key, "appended_at": appended_at,
           "prev": prev, "body": body}
    try:
        return rfc8785.dumps(doc)
    except rfc8785.CanonicalizationError as e:
        raise LedgerError(f"entry {key!r}: body is not canonical JSON ({e}); pass plain JSON types — money "
                          "as str(Decimal), models via .model_dump(mode='json'), no NaN, ints within ±2**53") from e


def _entry(row: Row) -> Entry:
    return Entry(row.idx, row.kind, row.idempotency_key, row.canonical, row.leaf_hash, row.appended_at,
                 json.loads(row.canonical)["prev"])


def _check_item(kind: str, body: Any, key: str) -> None:
    if not isinstance(kind, str) or not kind:
        raise LedgerError(f"entry kind must be a non-empty string, got {kind!r}")
    if not isinstance(key, str) or not key:
        raise LedgerError(f"idempotency_key must be a non-empty string (e.g. job/stage/shot/attempt), got {key!r}")
    if not isinstance(body, Mapping):
        raise LedgerError(f"entry {key!r}: body must be a dict, got {type(body).__name__}")


@dataclass(frozen=True)
class ProofResult:
    """Outcome of an auditor-side proof check; truthy when it verifies."""

    ok: bool
    problems: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok


class Ledger:
    """Append-only ledger over a pluggable store; open with `Ledger.open(url)`."""

    def __init__(self, store: Store, key_file: str | Path | None = None) -> None:
        self._store = store
        self._key_path = Path(key_file).expanduser() if key_file else default_key_path(store.ledger_dir)
        self._key: LedgerKey | None = None
        self._tree = MerkleTree()
        self._lock = threading.RLock()
        with store.reading() as tx:
            try:
                self._ledger_id = tx.meta("ledger_id")
            except Exception as e:  # noqa: BLE001 - a file that is not a ledger (read-only open creates nothing)
                if not getattr(store, "read_only", False):
                    raise
                log.debug("no ledger_meta: %s", e)
                self._ledger_id = None
        self.origin = f"microdrama.ledger/{self._ledger_id}"

    @classmethod
    def open(cls, url: str | None = None, key_file: str | Path | None = None, *, create: bool = True,
             read_only: bool = False) -> Ledger:
        """`sqlite:///path/ledger.db` (default $MICRODRAMA_LEDGER or sqlite:///ledger.db) or `postgresql://...`.
        The signing key is `key_file`, else $MICRODRAMA_LEDGER_KEY_FILE, else <config dir>/ledger.key (never the
        ledger's folder). With create=False a missing SQLite ledger raises FileNotFoundError (auditing a typo'd
        path); read_only opens it for auditing: nothing is created, written or repaired."""
        return cls(open_store(url or default_ledger_url(), create, read_only), key_file)

    @property
    def url(self) -> str:
        return self._store.url

    @property
    def key_path(self) -> Path:
        return self._key_path

    def __repr__(self) -> str:
        return f"Ledger({self.url!r})"

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _reading(self) -> Iterator[Tx]:
        """One consistent read; the lock keeps threads sharing this connection out of each other's way."""
        with self._lock, self._store.reading() as tx:
            yield tx

    # -- appending ---------------------------------------------------------------------------------------
    def append(self, kind: str, body: Mapping[str, Any], idempotency_key: str) -> Entry:
        """Append one entry, or return the entry already stored under `idempotency_key` (exactly once)."""
        return self.append_many([(kind, body, idempotency_key)])[0]

    def append_many(self, items: Sequence[tuple[str, Mapping[str, Any], str]], *,
                    heartbeats: Sequence[tuple[str, str, float]] = (),
                    unless_present: str | None = None) -> list[Entry]:
        """Append several entries in one transaction: all of them are stored, or none. `heartbeats`
        ((usage key, started, interval s) of attempts these entries start) get their liveness rows in the same
        transaction. With `unless_present`, nothing is appended when an entry with that key is already stored
        (returns []): two hosts closing the same dead attempt at once bill it once, with one closer's lines."""
        for kind, body, key in items:
            _check_item(kind, body, key)
        with self._lock, self._store.writing() as tx:
            if unless_present is not None and tx.by_key(unless_present) is not None:
                return []
            for usage_key, started, interval_s in heartbeats:
                tx.insert_heartbeat(usage_key, started, interval_s)
            last = tx.last()
            next_idx, prev = (last[0] + 1, last[1]) if last else (0, GENESIS_PREV)
            done: dict[str, Entry] = {}
            for kind, body, key in items:
                if key not in done:
                    done[key] = self._existing_or_new(tx, kind, body, key, next_idx, prev)
                    if done[key].index == next_idx:
                        next_idx, prev = next_idx + 1, done[key].leaf_hash
            return [done[key] for _, _, key in items]

    def _existing_or_new(self, tx: Tx, kind: str, body: Mapping[str, Any], key: str, idx: int, prev: str) -> Entry:
        existing = tx.by_key(key)
        if existing is not None and existing.idx < 0:
            raise LedgerError(f"entry {key!r}: a row with this key is stored at index {existing.idx}, outside the "
                              "log (forged); run `microdrama ledger verify`")
        if existing is not None:
            return _entry(existing)
        at = _now()
        canonical = canonical_entry(idx, kind, key, body, at, prev)
        row = Row(idx, kind, key, canonical, merkle.leaf_hash(canonical).hex(), at)
        tx.insert(row)
        return Entry(idx, kind, key, canonical, row.leaf_hash, at, prev)

    # -- attempt heartbeats (outside the Merkle log: liveness, updated in place) ---------------------------
    def heartbeat(self, usage_key: str, at: str) -> bool:
        """Record that the attempt under `usage_key` was alive at `at` (its worker's clock, ISO-8601 UTC);
        only ever moves its last heartbeat forward. False when no attempt of that key was started."""
        with self._lock, self._store.touching() as tx:
            return tx.beat(usage_key, at)

    def heartbeat_of(self, usage_key: str) -> Heartbeat | None:
        with self._reading() as tx:
            return tx.heartbeat(usage_key)

    def open_heartbeats(self) -> list[Heartbeat]:
        """Liveness rows of attempts that have no usage record yet: running, or dead and not yet closed."""
        with self._reading() as tx:
            return tx.open_heartbeats()

    # -- reading -----------------------------------------------------------------------------------------
    def size(self) -> int:
        with self._reading() as tx:
            last = tx.last()
        return last[0] + 1 if last else 0

    def get(self, index: int) -> Entry | None:
        with self._reading() as tx:
            row = tx.by_index(index)
        return _entry(row) if row else None

    def find(self, idempotency_key: str) -> Entry | None:
        with self._reading() as tx:
            row = tx.by_key(idempotency_key)
        return _entry(row) if row else None

    def entries(self, kind: str | None = None, where: Mapping[str, Any] | None = None) -> list[Entry]:
        """Entries in index order, optionally of one kind and whose body has every `where` field equal
        (top-level body fields such as job, drama, episode, stage)."""
        with self._reading() as tx:
            rows = list(tx.rows(0, kind))
        found = []
        for row in rows:
            doc = json.loads(row.canonical)
            if not where or all(doc["body"].get(k, _MISSING) == v for k, v in where.items()):
                found.append(Entry(row.idx, row.kind, row.idempotency_key, row.canonical, row.leaf_hash,
                                   row.appended_at, doc["prev"]))
        return found

    def tail(self, n: int, kind: str | None = None) -> list[Entry]:
        """The last `n` entries (of one kind), oldest first."""
        with self._reading() as tx:
            rows = tx.tail(n, kind)
        return [_entry(r) for r in rows]

    def _synced(self, tx: Tx) -> MerkleTree:
        """The cached tree of stored leaf hashes, extended with whatever was appended since."""
        for idx, h in tx.leaf_hashes(self._tree.size):
            if idx != self._tree.size:
                raise LedgerError(f"ledger has no entry {self._tree.size}: run `microdrama ledger verify`")
            self._tree.append(bytes.fromhex(h))
        return self._tree

    def root_hash(self, size: int | None = None) -> str:
        with self._reading() as tx:
            return self._synced(tx).root(size).hex()

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[str]:
        """Audit path (hex, leaf to root) of entry `index` in the tree of `tree_size` entries (default: all)."""
        with self._reading() as tx:
            return [h.hex() for h in self._synced(tx).inclusion_proof(index, tree_size)]

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[str]:
        """Proof (hex) that the first `old_size` entries are a prefix of the first `new_size` entries."""
        with self._reading() as tx:
            return [h.hex() for h in self._synced(tx).consistency_proof(old_size, new_size)]

    # -- checkpoints -------------------------------------------------------------------------------------
    def _signing_key(self) -> LedgerKey:
        if self._key is None:
            legacy = self._store.ledger_dir / "ledger.key" if self._store.ledger_dir else None
            if legacy and legacy.exists() and not self._key_path.exists() and legacy != self._key_path:
                raise LedgerError(f"{legacy} sits beside the ledger (the old default): move it to {self._key_path} "
                                  "(and ledger.pub with it), or set $MICRODRAMA_LEDGER_KEY_FILE, so that whoever can "
                                  "write the database cannot also re-sign it")
            self._key = load_or_create_key(self._key_path)
        return self._key

    def public_key(self) -> Ed25519PublicKey:
        """The ledger's verification key (creates the key pair on first use)."""
        return self._signing_key().public_key

    def checkpoint(self) -> Checkpoint:
        """Sign and store (origin, size, root, time); refuses when the stored hashes no longer extend the
        latest checkpoint."""
        with self._lock, self._store.writing() as tx:
            tree = self._synced(tx)
            latest = tx.checkpoints(latest_only=True)
            if latest:
                self._check_extends(tree, _parsed(latest[0].note, latest[0].id))
            key = self._signing_key()
            cp = sign_checkpoint(key, self.origin, tree.size, tree.root().hex(), _now())
            cp_id = tx.insert_checkpoint(cp.tree_size, cp.root_hash, cp.timestamp, cp.key_id, cp.note)
        self._pin_own_key(key)
        return replace(cp, id=cp_id)

    def _pin_own_key(self, key: LedgerKey) -> None:
        """Trust on first use, on the signing machine only: pin this ledger's vkey in the config's trust file
        when nothing is pinned for its origin yet (an auditor pins the vkey they were given instead)."""
        try:
            if log_verifier(self.origin, trust=load_trust()) is None and not _env_pinned():
                pin_log_key(vkey(key.public_key, self.origin))
        except (OSError, ValueError) as e:
            log.warning("could not pin the ledger key for %s in the trust file: %s", self.origin, e)

    @staticmethod
    def _check_extends(tree: MerkleTree, latest: Checkpoint) -> None:
        if latest.tree_size > tree.size or tree.root(latest.tree_size).hex() != latest.root_hash:
            raise LedgerError(f"refusing to sign: the ledger no longer extends checkpoint #{latest.id} "
                              f"(size {latest.tree_size}); run `microdrama ledger verify`")

    def checkpoints(self) -> list[Checkpoint]:
        with self._reading() as tx:
            rows = tx.checkpoints()
        return [_parsed(r.note, r.id) for r in rows]

    def latest_checkpoint(self) -> Checkpoint | None:
        with self._reading() as tx:
            rows = tx.checkpoints(latest_only=True)
        return _parsed(rows[0].note, rows[0].id) if rows else None

    # -- audit -------------------------------------------------------------------------------------------
    def trusted_public_key(self, public_key: PublicKeyLike | None = None) -> LogVerifier | None:
        """The pinned key for this ledger: `public_key` if given, else $MICRODRAMA_LEDGER_PUBKEY, else the
        trust file's vkey for this origin, else None. Never a ledger.pub found beside the database or key."""
        if isinstance(public_key, LogVerifier):
            return public_key
        return log_verifier(self.origin, public_key)

    def verify(self, public_key: PublicKeyLike | None = None, held: Sequence[Checkpoint | str] = (),
               trust: Trust | None = None) -> VerifyReport:
        """Recompute every leaf, link and root from the stored bytes (every stored row, negative indexes too),
        check every checkpoint's root and signature against the pinned key, and that the log extends every
        checkpoint in `held` (kept elsewhere). Reads only; problems come back as values."""
        trusted = self.trusted_public_key(public_key)
        held_cps = [_as_checkpoint(c) for c in held]
        missing = self._store.missing() if hasattr(self._store, "missing") else []
        if any(t in missing for t in ("ledger_entries", "ledger_checkpoints")):
            raise LedgerError(f"{self.url} is not a ledger: it lacks {', '.join(missing)}")
        warnings = [f"append-only trigger/table {t} is missing (dropped?): verification does not rely on it, but "
                    "ask who can write the database" for t in missing]
        with self._reading() as tx:
            report = verify_ledger(tx.rows(None), tx.checkpoints(), trusted, self.origin, held_cps, trust, warnings)
        if self._ledger_id is None:
            report.problems.append("ledger_meta holds no ledger_id: the log's identity was deleted (altered)")
            report.ok = False
        return report


def _env_pinned() -> bool:
    from pipeline.metering.ledger_trust import PUBKEY_ENV

    return bool(os.environ.get(PUBKEY_ENV))


_MISSING = object()


def _parsed(note: str, cp_id: int) -> Checkpoint:
    try:
        return Checkpoint.parse(note, cp_id)
    except ValueError as e:
        raise LedgerError(f"stored checkpoint #{cp_id} is malformed ({e}): run `microdrama ledger verify`") from e


def _as_checkpoint(cp: Checkpoint | str) -> Checkpoint:
    return cp if isinstance(cp, Checkpoint) else Checkpoint.parse(cp)


def _signature_problems(cp: Checkpoint, public_key: PublicKeyLike | None) -> list[str]:
    if public_key is None:
        return ["no public key given: the checkpoint's signature was not checked"]
    verifier = public_key if isinstance(public_key, LogVerifier) else log_verifier(cp.origin, public_key)
    return [f"checkpoint: {p}" for p in verifier.problems(cp)]


def verify_entry_inclusion(entry: Entry | bytes, proof: Sequence[str], checkpoint: Checkpoint | str,
                           public_key: PublicKeyLike | None) -> ProofResult:
    """Auditor check with nothing but the entry (or its canonical bytes), the hex proof, the signed
    checkpoint note and the ledger's public key."""
    try:
        e = entry if isinstance(entry, Entry) else Entry.from_canonical(entry)
        cp = _as_checkpoint(checkpoint)
        path = [bytes.fromhex(p) for p in proof]
    except (ValueError, KeyError, TypeError) as exc:
        return ProofResult(False, [f"unreadable input: {exc}"])
    problems = _signature_problems(cp, public_key)
    leaf = merkle.leaf_hash(e.canonical)
    if not merkle.verify_inclusion(e.index, cp.tree_size, leaf, path, bytes.fromhex(cp.root_hash)):
        problems.append(f"entry {e.index} is not in the tree of {cp.tree_size} entries with root {cp.root_hash}")
    return ProofResult(not problems, problems)


def verify_checkpoint_consistency(old: Checkpoint | str, new: Checkpoint | str, proof: Sequence[str],
                                  public_key: PublicKeyLike | None) -> ProofResult:
    """Auditor check that the log of checkpoint `new` extends the log of checkpoint `old` (append-only)."""
    try:
        a, b = _as_checkpoint(old), _as_checkpoint(new)
        path = [bytes.fromhex(p) for p in proof]
    except ValueError as exc:
        return ProofResult(False, [f"unreadable input: {exc}"])
    problems = _signature_problems(a, public_key) + _signature_problems(b, public_key)
    if a.origin != b.origin:
        problems.append(f"checkpoints are of different logs: {a.origin!r} vs {b.origin!r}")
    if not merkle.verify_consistency(a.tree_size, b.tree_size, bytes.fromhex(a.root_hash),
                                     bytes.fromhex(b.root_hash), path):
        problems.append(f"the tree of size {b.tree_size} does not extend the tree of size {a.tree_size}")
    return ProofResult(not problems, problems)
