"""Service addresses checked before any work: a bad URL is bad input (exit 2), a service that does not
answer within a short connect timeout is `Unreachable` (exit 4), each said in one line naming the option."""
from __future__ import annotations

import copy
import os
import stat
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pipeline.errors import UserError

UNREACHABLE_EXIT = 4
SQLITE_HEADER = b"SQLite format 3\x00"


def connect_timeout_s() -> float:
    """Seconds a connect may take before the service counts as unreachable ($MICRODRAMA_CONNECT_TIMEOUT_S)."""
    try:
        return min(max(float(os.environ.get("MICRODRAMA_CONNECT_TIMEOUT_S", "3")), 0.1), 60.0)
    except ValueError:
        return 3.0


class Unreachable(UserError):
    """A service (ledger database, MLflow server, Ray cluster) that does not accept connections: exit 4."""

    exit_code = UNREACHABLE_EXIT


def _host_port(url: str, flag: str, default_port: int) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port or default_port
    except ValueError as exc:  # a port that is not a number or out of range
        raise UserError(f"{flag} {_safe(url)}: {exc}; write host:port, e.g. localhost:{default_port}") from None
    if not parts.hostname:
        raise UserError(f"{flag} {_safe(url)}: no host; write it like {parts.scheme}://HOST:{default_port}")
    return parts.hostname, port


def check_tcp(host: str, port: int, what: str) -> None:
    """Unreachable unless host:port accepts a TCP connection within the connect timeout."""
    timeout = connect_timeout_s()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except socket.gaierror as exc:
        raise Unreachable(f"{what}: cannot resolve host {host!r} ({exc.strerror}); check the address") from None
    except OSError as exc:
        reason = (f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError)
                  else (exc.strerror or type(exc).__name__))
        raise Unreachable(f"{what}: {host}:{port} does not accept connections ({reason}); "
                          "start the service or check the address") from None


def check_sqlite_file(path: Path, what: str, *, must_exist: bool = False) -> None:
    """A SQLite URL's file: an existing file must be a SQLite database (not a corrupt or foreign file), and a
    new one must have a folder to be created in."""
    try:
        try:
            st = os.stat(path)  # one look: another episode of a batch may be creating the file right now
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            with open(path, "rb") as fh:
                head = fh.read(len(SQLITE_HEADER))
            if head and not SQLITE_HEADER.startswith(head):  # (a header being written counts as one)
                raise UserError(f"{what}: {path} is not a SQLite database (corrupt or another kind of file); "
                                "restore it from a backup or point at another file")
            return
        if st is not None:
            raise UserError(f"{what}: {path} is not a regular file; point at a database file")
        if must_exist:
            raise UserError(f"{what}: no database at {path}; check the path")
        probe = path.parent  # a new database: its folder is created, so the nearest existing one must be writable
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            raise UserError(f"{what}: cannot create {path}: {probe} is not a writable folder; use another path")
    except OSError as exc:
        raise UserError(f"{what}: {path}: {exc.strerror or exc}") from None


def check_ledger_url(url: str, flag: str = "--ledger", *, must_exist: bool = False) -> None:
    """sqlite:///path or postgresql://…: the shape (exit 2), the file or the server (exit 4)."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if not path or path == ":memory:" or "\x00" in path:
            raise UserError(f"{flag} {url!r}: the ledger needs a file, e.g. sqlite:///ledger.db")
        check_sqlite_file(Path(path).expanduser(), f"{flag} {url}", must_exist=must_exist)
        return
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        _check_postgres(url, flag)
        return
    raise UserError(f"{flag} {_safe(url)!r}: unsupported ledger URL; use sqlite:///path/ledger.db or "
                    "postgresql://user:pass@host/db")


def _check_postgres(url: str, flag: str) -> None:
    url = url.replace("postgresql+psycopg://", "postgresql://", 1)
    try:  # the port is checked before the socket shortcut: `postgresql://:abc/db` is bad input, not a socket
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        raise UserError(f"{flag} {_safe(url)}: {exc}; write host:port, e.g. localhost:5432") from None
    if parse_qs(parts.query).get("host") or not parts.hostname:
        return  # a Unix socket (or hosts given as parameters): psycopg's own connect_timeout bounds it
    hostname, port = _host_port(url, flag, 5432)
    check_tcp(hostname, port, f"{flag} {_safe(url)}")


TRACKING_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "postgres", "mysql", "databricks", "")


def check_tracking_uri(uri: str, flag: str = "--tracking-uri", *, answer: bool = True) -> None:
    """An MLflow tracking URI: a known scheme, a SQLite file that is a database, and (with `answer`) a
    server that accepts connections — without it MLflow retries HTTP for minutes."""
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else ""
    base = scheme.split("+")[0]
    if base not in TRACKING_SCHEMES:
        raise UserError(f"{flag} {_safe(uri)!r}: unsupported tracking URI; use http://HOST:5000, "
                        "sqlite:///mlflow.db or a folder path")
    if base == "sqlite":
        path = uri.split("://", 1)[1][1:]
        if path and path != ":memory:":
            check_sqlite_file(Path(path).expanduser(), f"{flag} {uri}")
        return
    if base in ("http", "https") and answer:
        host, port = _host_port(uri, flag, 443 if base == "https" else 80)
        check_tcp(host, port, f"{flag} {_safe(uri)}")
    elif base in ("postgresql", "postgres", "mysql") and answer:
        host, port = _host_port(uri, flag, 5432 if base != "mysql" else 3306)
        check_tcp(host, port, f"{flag} {_safe(uri)}")


def check_ray_address(address: str, flag: str = "--address", *, schemes: tuple[str, ...] = ("ray", "http",
                                                                                              "https", "")) -> None:
    """`auto`/`local`, ray://HEAD:10001, http://HEAD:8265 or HOST:6379 (GCS): the shape, then a TCP connect."""
    if address in ("auto", "local") and "" in schemes:
        return
    scheme = address.split("://", 1)[0].lower() if "://" in address else ""
    if scheme not in schemes:
        raise UserError(f"{flag} {address!r}: use ray://HEAD:10001 (Ray Client), http://HEAD:8265 (Ray job "
                        "submission) or HOST:6379 (the head's GCS)")
    default = {"ray": 10001, "http": 8265, "https": 443, "": 6379}[scheme]
    host, port = _host_port(address if scheme else f"gcs://{address}", flag, default)
    check_tcp(host, port, f"{flag} {address}")


CLIENT_SESSION_TRIES = 3  # tries in all for a Ray Client session whose server died as the head started it
# what Ray Client is told when the session's server died as the head started it: the proxy saw it exit, or its
# own look at the process found it gone (ray/util/client/server/proxier.py, start_specific_server)
CLIENT_SERVER_DIED = ("Starting Ray client server failed", "psutil.ZombieProcess", "psutil.NoSuchProcess")
LOGS = ("the head's ray_client_server*.err logs (in its Ray temp dir, by default /tmp/ray/session_latest/logs) "
        "say why")


def init_ray(address: str | None, flag: str = "--address", **kwargs: Any) -> None:
    """`ray.init(address, **kwargs)`, where a Ray Client session (ray://) that the cluster fails to open is
    asked for again and then said in one line (exit 4) instead of a traceback.

    The head forks a server process for each Ray Client session; gRPC's fork handlers in the proxy can kill
    it as it starts (ray-project/ray#63202: `Check failed: next_worker->state == KICKED`): 3 to 10 sessions
    in 40, 4 at a time, on this project's test head (bench/bench_client_sessions.py), none once the nodes run
    with GRPC_ENABLE_FORK_SUPPORT=false. Nothing has run when that happens (no driver, no task, no ledger
    entry), so a new session is safe to ask for; each failed one costs about 30 s (the proxy's reconnect grace
    period). Ray keeps no state from a failed session (its client disconnects itself), but it rewrites the
    runtime env it was given, so each try gets its own copy of the arguments."""
    import ray

    if not str(address or "").startswith("ray://"):
        ray.init(address=address, **kwargs)
        return
    for attempt in range(1, CLIENT_SESSION_TRIES + 1):
        try:
            ray.init(address=address, **copy.deepcopy(kwargs))
            return
        except ConnectionError as exc:  # ConnectionAbortedError: the head refused or could not start the session
            text = str(exc)
            died = any(marker in text for marker in CLIENT_SERVER_DIED)
            if died and attempt < CLIENT_SESSION_TRIES:
                time.sleep(float(attempt))
                continue
            try:
                ray.shutdown()  # leaves client mode: this process is not half-connected afterwards
            except Exception:  # noqa: BLE001 - the one-line error below is what matters
                pass
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            reason = lines[-1].rstrip(".") if lines else type(exc).__name__  # (then `; hint`, not `.; hint`)
            hint = (f"{LOGS}; when they show `Check failed: next_worker->state == KICKED`, start the head with "
                    "GRPC_ENABLE_FORK_SUPPORT=false" if died
                    else f"{LOGS}, or submit through the dashboard (http://HEAD:8265) instead")
            tries = f" ({attempt} tries)" if attempt > 1 else ""
            raise Unreachable(f"{flag} {address}: Ray Client could not open a session{tries}: {reason}; "
                              f"{hint}") from None


def _safe(url: str) -> str:
    """The URL without credentials."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return url


SERVICE_LIBRARIES = ("mlflow", "sqlalchemy", "requests", "urllib3", "psycopg", "sqlite3", "alembic")


def from_library(exc: BaseException, what: str) -> UserError | None:
    """An exception raised inside a service's client library (MLflow, SQLAlchemy, requests, psycopg) as one
    line naming `what`; None for anything else (a bug, which keeps its traceback)."""
    module = type(exc).__module__.split(".")[0]
    if module not in SERVICE_LIBRARIES:
        return None
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    if isinstance(exc, ConnectionError) or "onnection" in type(exc).__name__:
        return Unreachable(f"{what}: {text}")
    return UserError(f"{what}: {text}")
