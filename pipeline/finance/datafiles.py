"""Finance data files: YAML loading that keeps numbers exact, and validation errors as field-path lines."""
from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import yaml


class _ExactLoader(yaml.SafeLoader):
    """SafeLoader whose float scalars are parsed from their text as Decimal."""


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal:
    text = str(loader.construct_scalar(node)).replace("_", "")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise yaml.constructor.ConstructorError(
            None, None, f"unreadable number {text!r}", node.start_mark) from None
    if not value.is_finite():
        raise yaml.constructor.ConstructorError(
            None, None, f"{text!r} is not a finite number", node.start_mark)
    return value


def _construct_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    return str(loader.construct_scalar(node))


_ExactLoader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)
# dates stay text: the schema parses them, so a bad date is an error naming its field
_ExactLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_text)


class YamlError(ValueError):
    """A file that is not readable YAML (syntax error, or a number that is not finite)."""


def load_exact(text: str, source: str = "<string>") -> Any:
    """Parse YAML text; floats come back as Decimal, ints as int, dates as their text."""
    try:
        return yaml.load(text, Loader=_ExactLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise YamlError(f"{source}: not valid YAML: {err}") from None


def load_exact_file(path: Path) -> Any:
    """Read and parse one YAML file with exact numbers."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise YamlError(f"{path}: cannot read: {err.strerror}") from None
    return load_exact(text, str(path))


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
