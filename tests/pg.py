"""A real PostgreSQL (Debian's server binaries: initdb + pg_ctl in a temp dir, TCP on 127.0.0.1, a password) and a
real `mlflow server` on it, for tests and benchmarks. Fixtures: `postgres`, `mlflow_server` (module scope).

PostgreSQL refuses to run as root; as root (CI) its commands run as the `postgres` system user via runuser.
Missing server binaries are a failure, not a skip: `make system-deps` installs the Debian package.
"""
from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jobs.local_cluster import free_ports

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
NEEDED = ("initdb", "pg_ctl", "postgres")
MISSING = ("PostgreSQL server binaries not found ({where}): install the Debian package with `make system-deps` "
           "(or `apt-get install postgresql`), or point $MICRODRAMA_PG_BIN at a folder holding initdb, pg_ctl "
           "and postgres")


def pg_bindir() -> Path:
    """$MICRODRAMA_PG_BIN, else the newest /usr/lib/postgresql/*/bin, else pg_ctl's folder on $PATH."""
    candidates = [os.environ["MICRODRAMA_PG_BIN"]] if os.environ.get("MICRODRAMA_PG_BIN") else []
    candidates += sorted(glob.glob(PG_BIN_GLOB), key=lambda p: int(Path(p).parent.name) if
                         Path(p).parent.name.isdigit() else 0, reverse=True)
    if shutil.which("pg_ctl"):
        candidates.append(str(Path(shutil.which("pg_ctl")).parent))
    for c in candidates:
        if all((Path(c) / tool).is_file() for tool in NEEDED):
            return Path(c)
    raise FileNotFoundError(MISSING.format(where=", ".join(candidates) or f"nothing under {PG_BIN_GLOB} or $PATH"))


@dataclass
class PostgresServer:
    """One throwaway cluster: `start()`, `create_database(name)`, `url(name)`, `stop()`."""

    fsync: bool = False  # off for tests; the benchmark turns it on to measure durable appends
    user: str = "microdrama"
    password: str = field(default_factory=lambda: secrets.token_hex(12))
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mdpg-")))
    port: int = 0
    bindir: Path | None = None

    def _as_owner(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root and there is no `postgres` user to run PostgreSQL as: install "
                               "the Debian postgresql package (`make system-deps`), which creates it") from None
        return ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str, timeout: float = 120) -> None:
        proc = subprocess.run([*self._as_owner(), *argv], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            log = self.root / "postgres.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}{tail}")

    def start(self) -> PostgresServer:
        self.bindir = self.bindir or pg_bindir()
        self.port = self.port or free_ports(1)[0]
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            self._as_owner()  # fails clearly when there is no postgres user
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        data = self.root / "data"
        self._run(str(self.bindir / "initdb"), "-D", str(data), "-U", self.user, "--pwfile", str(pwfile),
                  "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=100 "
                   f"-c fsync={'on' if self.fsync else 'off'} "
                   f"-c synchronous_commit={'on' if self.fsync else 'off'} -c full_page_writes={'on' if self.fsync else 'off'}")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(data), "-l", str(self.root / "postgres.log"), "-w",
                  "-t", "90", "-o", options, "start")
        return self

    def url(self, database: str = "postgres", driver: str = "postgresql") -> str:
        """postgresql://user:password@127.0.0.1:port/db (driver postgresql+psycopg for SQLAlchemy/MLflow)."""
        return f"{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        data = self.root / "data"
        if (data / "postmaster.pid").exists():
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class MlflowServer:
    """`mlflow server` on a PostgreSQL backend store, serving artifacts from a local folder."""

    backend_store_uri: str
    artifacts: Path
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> MlflowServer:
        self.port = self.port or free_ports(1)[0]
        self.artifacts.mkdir(parents=True, exist_ok=True)
        log = self.artifacts.parent / f"mlflow-server-{self.port}.log"
        with log.open("wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_store_uri,
                 "--artifacts-destination", str(self.artifacts), "--serve-artifacts", "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "MLFLOW_TRACKING_URI": ""})
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if urllib.request.urlopen(f"{self.url}/health", timeout=5).read().strip() == b"OK":
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server did not come up at {self.url}:\n"
                                   + log.read_text(errors="replace")[-3000:])
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def postgres():
    """A running PostgreSQL; fails (never skips) when the server binaries are missing."""
    try:
        server = PostgresServer().start()
    except (FileNotFoundError, RuntimeError) as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """`mlflow server` with its backend store in a fresh PostgreSQL database (psycopg 3 driver)."""
    postgres.create_database("mlflow")
    server = MlflowServer(postgres.url("mlflow", driver="postgresql+psycopg"),
                          tmp_path_factory.mktemp("mlflow") / "artifacts").start()
    yield server
    server.stop()
