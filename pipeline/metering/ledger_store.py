"""Storage backends of the ledger: embedded SQLite (WAL, BEGIN IMMEDIATE) and shared PostgreSQL (table lock)."""
from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

ENTRY_COLUMNS = "idx, kind, idempotency_key, canonical, leaf_hash, appended_at"
CHECKPOINT_COLUMNS = "id, tree_size, root_hash, created_at, key_id, note"
HEARTBEAT_COLUMNS = "usage_key, started, beat, interval_s, beats"


@dataclass(frozen=True)
class Row:
    """One stored entry as it sits in the table (verification trusts none of it)."""

    idx: int
    kind: str
    idempotency_key: str
    canonical: bytes
    leaf_hash: str
    appended_at: str


@dataclass(frozen=True)
class Heartbeat:
    """The liveness row of one stage attempt (outside the Merkle log, updated in place): when it started on
    its worker, its worker's latest heartbeat, the interval it beats at and how many beats arrived."""

    usage_key: str
    started: str  # ISO-8601 UTC, the worker's clock (as in the attempt's start entry)
    beat: str  # ISO-8601 UTC, the worker's clock at its latest heartbeat (= started before the first)
    interval_s: float
    beats: int


@dataclass(frozen=True)
class CheckpointRow:
    id: int
    tree_size: int
    root_hash: str
    created_at: str
    key_id: str
    note: str


class Tx:
    """SQL shared by both backends inside one transaction; `?` placeholders are rewritten per driver."""

    def __init__(self, cursor: Any, placeholder: str) -> None:
        self._cur = cursor
        self._ph = placeholder

    def _q(self, sql: str, params: tuple = ()) -> Any:
        self._cur.execute(sql.replace("?", self._ph), params)
        return self._cur

    def last(self) -> tuple[int, str] | None:
        row = self._q("SELECT idx, leaf_hash FROM ledger_entries ORDER BY idx DESC LIMIT 1").fetchone()
        return (int(row[0]), row[1]) if row else None

    def by_key(self, key: str) -> Row | None:
        row = self._q(f"SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE idempotency_key = ?", (key,)).fetchone()
        return _row(row) if row else None

    def by_index(self, idx: int) -> Row | None:
        row = self._q(f"SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE idx = ?", (idx,)).fetchone()
        return _row(row) if row else None

    def insert(self, row: Row) -> None:
        self._q(f"INSERT INTO ledger_entries ({ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (row.idx, row.kind, row.idempotency_key, row.canonical, row.leaf_hash, row.appended_at))

    def rows(self, start: int | None = 0, kind: str | None = None) -> Iterator[Row]:
        """Rows from index `start` on (None: every stored row, negative indexes too), in index order."""
        lo = -(2**63) if start is None else start
        sql, params = f"SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE idx >= ?", (lo,)
        if kind is not None:
            sql, params = sql + " AND kind = ?", (lo, kind)
        cur = self._q(sql + " ORDER BY idx", params)
        while batch := cur.fetchmany(2000):
            yield from (_row(r) for r in batch)

    def tail(self, n: int, kind: str | None = None) -> list[Row]:
        sql, params = f"SELECT {ENTRY_COLUMNS} FROM ledger_entries", ()
        if kind is not None:
            sql, params = sql + " WHERE kind = ?", (kind,)
        rows = self._q(sql + " ORDER BY idx DESC LIMIT ?", (*params, max(n, 0))).fetchall()
        return [_row(r) for r in reversed(rows)]

    def leaf_hashes(self, start: int) -> list[tuple[int, str]]:
        cur = self._q("SELECT idx, leaf_hash FROM ledger_entries WHERE idx >= ? ORDER BY idx", (start,))
        return [(int(i), h) for i, h in cur.fetchall()]

    def insert_checkpoint(self, tree_size: int, root_hash: str, created_at: str, key_id: str, note: str) -> int:
        cur = self._q("INSERT INTO ledger_checkpoints (tree_size, root_hash, created_at, key_id, note) "
                      "VALUES (?, ?, ?, ?, ?) RETURNING id", (tree_size, root_hash, created_at, key_id, note))
        return int(cur.fetchone()[0])

    def checkpoints(self, latest_only: bool = False) -> list[CheckpointRow]:
        sql = f"SELECT {CHECKPOINT_COLUMNS} FROM ledger_checkpoints ORDER BY id"
        sql = sql + " DESC LIMIT 1" if latest_only else sql
        return [CheckpointRow(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5]) for r in self._q(sql).fetchall()]

    # -- attempt heartbeats: liveness, not evidence; the closing usage record is the ledger entry
    def insert_heartbeat(self, usage_key: str, started: str, interval_s: float) -> None:
        self._q(f"INSERT INTO attempt_heartbeats ({HEARTBEAT_COLUMNS}) VALUES (?, ?, ?, ?, 0) "
                "ON CONFLICT (usage_key) DO NOTHING", (usage_key, started, started, float(interval_s)))

    def beat(self, usage_key: str, at: str) -> bool:
        """Move the attempt's last heartbeat forward to `at` (never back); False for an unknown attempt."""
        cur = self._q("UPDATE attempt_heartbeats SET beat = ?, beats = beats + 1 WHERE usage_key = ? AND beat < ?",
                      (at, usage_key, at))
        return (cur.rowcount or 0) > 0

    def heartbeat(self, usage_key: str) -> Heartbeat | None:
        row = self._q(f"SELECT {HEARTBEAT_COLUMNS} FROM attempt_heartbeats WHERE usage_key = ?",
                      (usage_key,)).fetchone()
        return _heartbeat(row) if row else None

    def open_heartbeats(self) -> list[Heartbeat]:
        """Attempts with no entry under their usage key yet (running, or dead and not yet closed)."""
        rows = self._q(f"SELECT {HEARTBEAT_COLUMNS} FROM attempt_heartbeats h WHERE NOT EXISTS "
                       "(SELECT 1 FROM ledger_entries e WHERE e.idempotency_key = h.usage_key) "
                       "ORDER BY h.started").fetchall()
        return [_heartbeat(r) for r in rows]

    def meta(self, name: str) -> str | None:
        row = self._q("SELECT value FROM ledger_meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def init_meta(self, name: str, value: str) -> None:
        self._q("INSERT INTO ledger_meta (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING", (name, value))


def _row(r: tuple) -> Row:
    """A stored row as it is; SQLite's replace() turns a BLOB into TEXT, which is read as its UTF-8 bytes."""
    data = r[3].encode("utf-8", "surrogatepass") if isinstance(r[3], str) else bytes(r[3] or b"")
    return Row(int(r[0]), str(r[1]), str(r[2]), data, str(r[4]), str(r[5]))


def _heartbeat(r: tuple) -> Heartbeat:
    return Heartbeat(str(r[0]), str(r[1]), str(r[2]), float(r[3]), int(r[4]))


class Store(Protocol):
    """What the ledger needs from a backend."""

    url: str  # with any password redacted
    ledger_dir: Path | None  # the SQLite file's folder (never where the key lives); None for server stores
    read_only: bool  # opened for auditing: nothing is created or written

    def writing(self) -> Any: ...  # context manager -> Tx, exclusive against other writers
    def touching(self) -> Any: ...  # context manager -> Tx, for heartbeats: no append lock taken
    def reading(self) -> Any: ...  # context manager -> Tx, one consistent snapshot
    def close(self) -> None: ...


SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_entries (
  idx INTEGER PRIMARY KEY, kind TEXT NOT NULL, idempotency_key TEXT NOT NULL UNIQUE,
  canonical BLOB NOT NULL, leaf_hash TEXT NOT NULL, appended_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS ledger_entries_kind ON ledger_entries (kind);
CREATE TABLE IF NOT EXISTS ledger_checkpoints (
  id INTEGER PRIMARY KEY AUTOINCREMENT, tree_size INTEGER NOT NULL, root_hash TEXT NOT NULL,
  created_at TEXT NOT NULL, key_id TEXT NOT NULL, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attempt_heartbeats (
  usage_key TEXT PRIMARY KEY, started TEXT NOT NULL, beat TEXT NOT NULL, interval_s REAL NOT NULL,
  beats INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS ledger_entries_no_update BEFORE UPDATE ON ledger_entries
  BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_entries_no_delete BEFORE DELETE ON ledger_entries
  BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_checkpoints_no_update BEFORE UPDATE ON ledger_checkpoints
  BEGIN SELECT RAISE(ABORT, 'ledger_checkpoints is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_checkpoints_no_delete BEFORE DELETE ON ledger_checkpoints
  BEGIN SELECT RAISE(ABORT, 'ledger_checkpoints is append-only'); END;
"""


class SQLiteStore:
    """One SQLite file in WAL mode; appends take the write lock up front with BEGIN IMMEDIATE. Read-only (for
    verification) it is opened with mode=ro — or immutable=1 on read-only media — and nothing is created."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.url = f"sqlite:///{path}"
        self.ledger_dir = path.parent
        self.read_only = read_only
        if read_only:
            self._conn = _open_read_only(path)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60.0)
        self._conn.execute("PRAGMA busy_timeout = 60000")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")  # a committed entry survives power loss too
        with self.writing() as tx:
            for stmt in _statements(SQLITE_SCHEMA):
                tx._q(stmt)
            tx.init_meta("ledger_id", str(uuid.uuid4()))

    @contextmanager
    def writing(self) -> Iterator[Tx]:
        if self.read_only:
            raise PermissionError(f"{self.url} is open read-only (for verification)")
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield Tx(cur, "?")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    touching = writing  # SQLite has one write lock; a heartbeat holds it for one UPDATE

    @contextmanager
    def reading(self) -> Iterator[Tx]:
        cur = self._conn.cursor()
        cur.execute("BEGIN")
        try:
            yield Tx(cur, "?")
        finally:
            cur.execute("COMMIT")

    def missing(self) -> list[str]:
        """Tables and append-only triggers of the schema that the file lacks (dropped, or not a ledger)."""
        have = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")}
        want = ["ledger_entries", "ledger_checkpoints", "ledger_meta", "ledger_entries_no_update",
                "ledger_entries_no_delete", "ledger_checkpoints_no_update", "ledger_checkpoints_no_delete"]
        return [n for n in want if n not in have]

    def close(self) -> None:
        self._conn.close()


def _open_read_only(path: Path) -> sqlite3.Connection:
    """mode=ro sees the WAL; when even that cannot be opened (read-only media: no -shm can be made) the file is
    read as immutable."""
    if not path.is_file():
        raise FileNotFoundError(f"no ledger at {path}: check --ledger / $MICRODRAMA_LEDGER")
    last: sqlite3.Error | None = None
    for flags in ("mode=ro", "immutable=1"):
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?{flags}", uri=True, isolation_level=None,
                                   check_same_thread=False, timeout=60.0)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.Error as e:
            last = e
    raise OSError(f"cannot read the ledger {path}: {last}")


def _statements(script: str) -> list[str]:
    """Split a schema script on statement ends, keeping trigger bodies (which contain `;`) whole."""
    out, buf = [], []
    for line in script.strip().splitlines():
        buf.append(line)
        text = "\n".join(buf).strip()
        if text.endswith(";") and ("BEGIN" not in text or text.endswith("END;")):
            out.append(text)
            buf = []
    return out


PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_entries (
  idx BIGINT PRIMARY KEY, kind TEXT NOT NULL, idempotency_key TEXT NOT NULL UNIQUE,
  canonical BYTEA NOT NULL, leaf_hash TEXT NOT NULL, appended_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS ledger_entries_kind ON ledger_entries (kind);
CREATE TABLE IF NOT EXISTS ledger_checkpoints (
  id BIGSERIAL PRIMARY KEY, tree_size BIGINT NOT NULL, root_hash TEXT NOT NULL,
  created_at TEXT NOT NULL, key_id TEXT NOT NULL, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attempt_heartbeats (
  usage_key TEXT PRIMARY KEY, started TEXT NOT NULL, beat TEXT NOT NULL, interval_s DOUBLE PRECISION NOT NULL,
  beats BIGINT NOT NULL);
CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END; $$;
CREATE OR REPLACE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_entries
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
CREATE OR REPLACE TRIGGER ledger_checkpoints_append_only BEFORE UPDATE OR DELETE OR TRUNCATE
  ON ledger_checkpoints FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
"""
PG_SCHEMA_LOCK = 7_146_373_201  # pg_advisory_xact_lock key: serialises schema creation across processes
PG_APPEND_LOCK = 7_146_373_202  # pg_advisory_xact_lock key: one append transaction at a time


PG_CONNECT_TIMEOUT_S = 10  # seconds; a server that does not answer is unreachable, not waited for


class StoreUnreachable(ConnectionError):
    """The ledger's database server does not accept the connection (the CLI exits 4)."""


class PostgresStore:
    """Tables in a shared PostgreSQL database; every append transaction takes one advisory lock (no table
    privilege needed, so a writer role with only INSERT and SELECT can append; plain reads go on), so indexes
    and prev-links stay gap-free. The tables are created on first use unless they exist (`ledger pg-setup`
    creates them owned by a role the writer is not)."""

    def __init__(self, url: str, read_only: bool = False) -> None:
        try:
            import psycopg
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("the PostgreSQL ledger needs psycopg: pip install 'microdrama[postgres]'") from e
        self.url = redact_url(url)
        self.ledger_dir = None
        self.read_only = read_only
        timeout = {} if "connect_timeout" in url else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        try:
            self._conn = psycopg.connect(url, autocommit=True, **timeout)
        except psycopg.OperationalError as e:  # closed port, unknown host, refused login: one line, no traceback
            reason = "; ".join(x.strip() for x in str(e).splitlines() if x.strip())[:300] or type(e).__name__
            raise StoreUnreachable(f"ledger {self.url}: cannot connect: {reason}") from None
        if read_only or _pg_ready(self._conn):
            return
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (PG_SCHEMA_LOCK,))
                for stmt in PG_SCHEMA.strip().split(";\n"):
                    cur.execute(stmt.strip().rstrip(";"))
                Tx(cur, "%s").init_meta("ledger_id", str(uuid.uuid4()))
        except psycopg.errors.InsufficientPrivilege as e:
            self._conn.close()
            raise PermissionError(f"{self.url}: the ledger tables are missing and this role cannot create them "
                                  f"({e}); run `microdrama ledger pg-setup` as the database owner") from None

    @contextmanager
    def writing(self) -> Iterator[Tx]:
        if self.read_only:
            raise PermissionError(f"{self.url} is open read-only (for verification)")
        with self._conn.transaction(), self._conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (PG_APPEND_LOCK,))
            yield Tx(cur, "%s")

    @contextmanager
    def touching(self) -> Iterator[Tx]:
        """A heartbeat's UPDATE of attempt_heartbeats: row-locked by PostgreSQL, never waiting on appends."""
        if self.read_only:
            raise PermissionError(f"{self.url} is open read-only (for verification)")
        with self._conn.transaction(), self._conn.cursor() as cur:
            yield Tx(cur, "%s")

    @contextmanager
    def reading(self) -> Iterator[Tx]:
        with self._conn.transaction(), self._conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield Tx(cur, "%s")

    def missing(self) -> list[str]:
        with self._conn.cursor() as cur:
            cur.execute("SELECT to_regclass('ledger_entries'), to_regclass('ledger_checkpoints'), "
                        "to_regclass('ledger_meta')")
            tables = cur.fetchone()
            cur.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgenabled <> 'D' "
                        "AND tgrelid IN (to_regclass('ledger_entries'), to_regclass('ledger_checkpoints'))")
            triggers = {r[0] for r in cur.fetchall()}
        names = ["ledger_entries", "ledger_checkpoints", "ledger_meta"]
        out = [n for n, t in zip(names, tables) if t is None]
        return out + [t for t in ("ledger_entries_append_only", "ledger_checkpoints_append_only") if t not in triggers]

    def close(self) -> None:
        self._conn.close()


def _pg_ready(conn: Any) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('ledger_entries') IS NOT NULL AND to_regclass('ledger_checkpoints') IS NOT "
                    "NULL AND to_regclass('ledger_meta') IS NOT NULL AND to_regclass('attempt_heartbeats') IS NOT NULL")
        return bool(cur.fetchone()[0])


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, safe to log and print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def open_store(url: str, create: bool = True, read_only: bool = False) -> Store:
    """sqlite:///relative.db, sqlite:////absolute.db or postgresql://user:pass@host/db; with create=False a
    missing SQLite file is an error instead of a new empty ledger; read_only opens it for auditing (implies
    create=False; nothing is created or written)."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if not path or path == ":memory:":
            raise ValueError("the ledger needs a file: use sqlite:///ledger.db (in-memory SQLite is not durable)")
        if (read_only or not create) and not Path(path).expanduser().is_file():
            raise FileNotFoundError(f"no ledger at {path}: check --ledger / $MICRODRAMA_LEDGER")
        try:
            return SQLiteStore(Path(path).expanduser(), read_only)
        except sqlite3.DatabaseError as e:  # a corrupt or foreign file: say so instead of a traceback
            raise ValueError(f"ledger {path}: not a readable SQLite ledger ({e}); restore it from a backup "
                             "or point --ledger at another file") from None
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        return PostgresStore(url.replace("postgresql+psycopg://", "postgresql://", 1), read_only)
    raise ValueError(f"unsupported ledger URL {redact_url(url)!r}: use sqlite:///path/ledger.db "
                     "or postgresql://user:pass@host/db")
