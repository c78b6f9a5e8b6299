"""PostgreSQL roles for the ledger: an owner role that holds the tables and triggers, and a writer role that can
only INSERT and SELECT (so it can neither change rows nor disable, drop or replace the append-only triggers)."""
from __future__ import annotations

import re
import uuid

from pipeline.metering.ledger_store import PG_SCHEMA, PG_SCHEMA_LOCK

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _ident(name: str, option: str) -> str:
    if not _NAME.fullmatch(name):  # match() would let "ledger\n" through ($ matches before a final newline)
        raise ValueError(f"{option}: {name!r} is not a plain PostgreSQL name (lowercase letters, digits, _)")
    return f'"{name}"'


def setup_roles(admin_url: str, owner: str, writer: str, writer_password: str | None = None,
                schema: str = "public") -> list[str]:
    """As a role that may create roles (the database owner or a superuser): create the NOLOGIN `owner` role and
    the LOGIN `writer` role if missing, create the ledger tables in `schema` owned by `owner`, and grant the
    writer USAGE on the schema, SELECT + INSERT on the entry and checkpoint tables, SELECT on ledger_meta and
    the checkpoint id sequence. Idempotent; returns the statements run (password redacted)."""
    import psycopg
    from psycopg import sql

    o, w, s = _ident(owner, "--owner"), _ident(writer, "--writer"), _ident(schema, "--schema")
    if owner == writer:
        raise ValueError("--writer: must differ from --owner (the point is to keep them apart)")
    done: list[str] = []
    with psycopg.connect(admin_url, autocommit=True) as conn, conn.transaction(), conn.cursor() as cur:
        def run(stmt: str, shown: str | None = None, params: tuple = ()) -> None:
            cur.execute(stmt, params or None)
            done.append(shown or stmt)

        cur.execute("SELECT pg_advisory_xact_lock(%s)", (PG_SCHEMA_LOCK,))
        cur.execute("SELECT rolname FROM pg_roles WHERE rolname IN (%s, %s)", (owner, writer))
        have = {r[0] for r in cur.fetchall()}
        if owner not in have:
            run(f"CREATE ROLE {o} NOLOGIN")
        if writer not in have:
            run(f"CREATE ROLE {w} LOGIN NOINHERIT")
        if writer_password is not None:
            cur.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(writer),
                                                                    sql.Literal(writer_password)))
            done.append(f"ALTER ROLE {w} PASSWORD '***'")
        run(f"GRANT {o} TO CURRENT_USER")  # so this session may act as the owner while creating the tables
        run(f"CREATE SCHEMA IF NOT EXISTS {s} AUTHORIZATION {o}")
        run(f"GRANT USAGE, CREATE ON SCHEMA {s} TO {o}")
        run(f"SET LOCAL search_path = {s}")
        run(f"SET LOCAL ROLE {o}")
        for stmt in PG_SCHEMA.strip().split(";\n"):
            run(stmt.strip().rstrip(";"))
        run("INSERT INTO ledger_meta (name, value) VALUES (%s, %s) ON CONFLICT DO NOTHING", None,
            ("ledger_id", str(uuid.uuid4())))
        run("REVOKE ALL ON ledger_entries, ledger_checkpoints, ledger_meta, attempt_heartbeats FROM PUBLIC")
        run("RESET ROLE")
        run(f"REVOKE ALL ON ledger_entries, ledger_checkpoints, ledger_meta, attempt_heartbeats FROM {w}")
        run(f"REVOKE CREATE ON SCHEMA {s} FROM {w}")
        run(f"GRANT USAGE ON SCHEMA {s} TO {w}")
        run(f"GRANT SELECT, INSERT ON ledger_entries, ledger_checkpoints TO {w}")
        run(f"GRANT SELECT ON ledger_meta TO {w}")
        run(f"GRANT SELECT, INSERT, UPDATE ON attempt_heartbeats TO {w}")
        run(f"GRANT USAGE ON SEQUENCE ledger_checkpoints_id_seq TO {w}")
        run(f"REVOKE {o} FROM {w}")
        if schema != "public":
            run(f"ALTER ROLE {w} SET search_path = {s}")
    return done
