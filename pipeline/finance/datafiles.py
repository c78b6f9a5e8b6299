"""Finance data files: YAML loading that keeps numbers exact, and validation errors as field-path lines."""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline import safe_io


class YamlError(ValueError):
    """A file that is not readable YAML (syntax error, duplicate key, a number that is not finite or out of
    range, not UTF-8, not a regular file, too large or too deep)."""


def load_exact(text: str, source: str = "<string>") -> Any:
    """Parse YAML text; floats come back as Decimal, ints as int, dates as their text; duplicate keys refused."""
    try:
        return safe_io.parse_yaml(text, source, exact=True, bad="not valid YAML", where_first=False)
    except safe_io.InputError as err:
        raise YamlError(str(err)) from None


def load_exact_file(path: Path, what: str = "") -> Any:
    """Read one YAML file through the bounded reader (pipeline/safe_io.py) and parse it with exact numbers."""
    try:
        return safe_io.load_yaml(path, what, exact=True, bad="not valid YAML", where_first=False)
    except safe_io.InputError as err:
        raise YamlError(str(err)) from None


def field_path(loc: tuple[int | str, ...]) -> str:
    """('dramas', 0, 'costs', 'compute') -> 'dramas[0].costs.compute'."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def error_lines(err: ValidationError, prefix: str = "") -> list[str]:
    """One 'field.path: what is wrong (got X)' line per pydantic error, every problem listed."""
    lines = []
    for e in err.errors(include_url=False):
        where = field_path(tuple(e["loc"]))
        where = f"{prefix}{where}" if prefix else where
        lines.append(f"{where}: {_message(e)}")
    return lines


def _message(e: dict[str, Any]) -> str:
    kind, msg = e["type"], e["msg"]
    if kind == "extra_forbidden":
        return "unknown key (remove it or fix its spelling)"
    if kind == "missing":
        return "required, missing"
    msg = msg.removeprefix("Value error, ")
    given = e.get("input")
    if isinstance(given, (str, int, float, Decimal)) and len(repr(given)) <= 60:
        msg = f"{msg} (got {given!r})" if kind != "value_error" else msg
    return msg
