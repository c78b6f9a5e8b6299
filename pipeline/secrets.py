"""API keys from the environment or a 0600 secrets file, and redaction so they never leave a process in clear.

Job and profile options never hold a key; they name where it is (docs/ledger.md, "Key custody"):

```yaml
options: {api_key_env: DEEPSEEK_API_KEY}                        # the environment of the worker
options: {secrets_file: /etc/microdrama/secrets.env,             # NAME=value lines, mode 0600,
          api_key_name: DEEPSEEK_API_KEY}                         # owned by the user running the worker
```

Every value resolved here (or found through such options by `register_from_options`) is remembered in
the process, and `redact` replaces it by `***` wherever it shows up: log records (once
`install_log_redaction` ran), stage error texts, usage records and stage outputs (the orchestrator
redacts those before they reach the ledger, the cache, manifests or MLflow). Text printed straight to
stdout by third-party code is not covered: backends must not print keys.
"""
from __future__ import annotations

import logging
import os
import re
import stat
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline import safe_io
from pipeline.errors import UserError

MASK = "***"
MIN_SECRET_LEN = 8  # shorter values are not treated as secrets (redacting "abc" would mangle ordinary text)
# option names that would carry a key itself (refused in jobs) — `*_env`, `*_file`, `*_name` only point at one
LITERAL_SECRET = re.compile(r"(^|[_-])(api[_-]?key|apikey|key|secret|token|password|passwd|credentials?|auth)$",
                            re.I)
_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")

_known: set[str] = set()
_lock = threading.Lock()
_installed = False


class SecretError(UserError):
    """A key that cannot be found, or a secrets file others can read."""


def register(value: str | None) -> None:
    """Remember a secret value so that `redact` masks it from now on in this process."""
    if isinstance(value, str) and len(value) >= MIN_SECRET_LEN:
        with _lock:
            _known.add(value)


def known() -> int:
    """How many secret values this process masks (for tests and diagnostics; never the values)."""
    return len(_known)


def from_env(name: str, *, field: str = "api_key_env") -> str:
    value = os.environ.get(name or "")
    if not value:
        raise SecretError(f"{field}: environment variable {name or '(unset)'} holding the key is not set on this "
                          "machine; export it where the workers run (never put keys in job or profile files)")
    register(value)
    return value


def read_secrets_file(path: str | Path, *, field: str = "secrets_file") -> dict[str, str]:
    """NAME=value lines (# comments, optional quotes, optional `export`); refuses files others can read."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as exc:
        raise SecretError(f"{field}: cannot read {p}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecretError(f"{field}: {p} is not a regular file")
    if st.st_mode & 0o077:
        raise SecretError(f"{field}: {p} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise SecretError(f"{field}: {p} belongs to another user (uid {st.st_uid}); it must be yours, mode 600")
    values: dict[str, str] = {}
    try:
        text = safe_io.read_text(p, field, max_bytes=1 << 20)
    except safe_io.InputError as exc:
        raise SecretError(f"{field}: {exc.detail}") from None
    for no, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        m = _LINE.match(raw)
        if not m:  # never echo the line: it may hold a key
            raise SecretError(f"{field}: {p}:{no}: expected NAME=value")
        value = m.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[m.group(1)] = value
        register(value)
    return values


def from_file(path: str | Path, name: str, *, field: str = "secrets_file") -> str:
    value = read_secrets_file(path, field=field).get(name)
    if not value:
        raise SecretError(f"{field}: {Path(path).expanduser()} has no {name}=… line")
    return value


def resolve(options: Mapping[str, Any], *, field: str = "options", env_key: str = "api_key_env",
            file_key: str = "secrets_file", name_key: str = "api_key_name") -> str:
    """The key named by backend options: `secrets_file` (+ `api_key_name`, default the env name), else
    `api_key_env`. Raises SecretError naming the option to fix; the value is registered for redaction."""
    env_name = options.get(env_key)
    if options.get(file_key):
        name = options.get(name_key) or env_name
        if not name:
            raise SecretError(f"{field}.{name_key}: name the entry of {options[file_key]} that holds the key")
        return from_file(options[file_key], str(name), field=f"{field}.{file_key}")
    return from_env(str(env_name or ""), field=f"{field}.{env_key}")


def register_from_options(options: Mapping[str, Any]) -> None:
    """Mask whatever keys these options point at (env vars named by `*_env`, every value of a readable
    `secrets_file`) without requiring them to exist — for processes that only handle texts around them."""
    for key, value in options.items():
        if isinstance(value, Mapping):
            register_from_options(value)
        elif isinstance(value, str) and key.endswith("_env"):
            register(os.environ.get(value))
        elif isinstance(value, str) and key == "secrets_file":
            try:
                read_secrets_file(value)
            except (SecretError, OSError, UnicodeDecodeError):
                pass  # the backend reports it when it needs the key


def literal_secret_problems(options: Mapping[str, Any], field: str) -> list[str]:
    """Option names that would hold a key itself; the message never repeats the value."""
    problems = []
    for key, value in options.items():
        where = f"{field}.{key}"
        if isinstance(value, Mapping):
            problems += literal_secret_problems(value, where)
        elif LITERAL_SECRET.search(str(key)) and value not in (None, ""):
            problems.append(f"{where}: never write keys into job or profile files; name where the key is "
                            f"instead: api_key_env: SOME_ENV_VAR, or secrets_file: /path/secrets.env (mode 600)")
    return problems


def redact(text: Any) -> Any:
    """`text` with every registered secret replaced by ***; non-strings come back unchanged."""
    if not isinstance(text, str) or not _known:
        return text
    for secret in sorted(_known, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_obj(obj: Any) -> Any:
    """A copy of a JSON-like structure (dicts, lists, tuples, strings) with secrets redacted."""
    if not _known:
        return obj
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, Mapping):
        return {redact(k): redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_obj(v) for v in obj)
    return obj


class RedactingFilter(logging.Filter):
    """A handler filter masking registered secrets in the formatted message and exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        _scrub(record)
        return True


def _scrub(record: logging.LogRecord) -> None:
    if not _known:
        return
    try:
        message = record.getMessage()
    except Exception:  # a malformed logging call: the handler reports it, with masked arguments
        record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) for a in record.args)
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)


def install_log_redaction() -> None:
    """Mask secrets in every log record created in this process from now on (any logger, any handler)."""
    global _installed
    with _lock:
        if _installed:
            return
        base = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = base(*args, **kwargs)
            _scrub(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
