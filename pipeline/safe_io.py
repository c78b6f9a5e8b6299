"""The one bounded reader for every file the CLI reads: regular files only, a size limit, UTF-8 checked, and
YAML with duplicate keys refused, dates kept as text, numbers bounded and nesting limited (and the checks on
a file or folder it will write)."""
from __future__ import annotations

import errno
import os
import stat
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError

MAX_TEXT_BYTES = 1 << 20  # default for a text file the CLI reads (screenplays, policies, scenarios)
MAX_YAML_BYTES = 16 << 20  # a YAML data file (a scenario of 10,000 dramas is about 3 MB)
MAX_DEPTH = 32  # nesting of a YAML document (real files nest 4 or 5 levels)
MAX_VALUES = 1_000_000  # values of a YAML document once its aliases are expanded (an alias bomb stops here)
MAX_INT_DIGITS = 30  # an integer in a data file (counts, years, seeds, fen) is far shorter
MAX_EXPONENT = 30  # |adjusted exponent| of a decimal in a data file: 1e30 is already far beyond any amount


class InputError(UserError):
    """A file that cannot be read as what it should be: exit 2, naming the file and the fix."""

    def __init__(self, where: str, detail: str, kind: str = "read"):
        self.where, self.detail, self.kind = where, detail, kind  # kind: read | size | text | yaml
        super().__init__(f"{where}: {detail}")


def read_bytes(path: str | Path, what: str, *, max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """The file's bytes, at most `max_bytes`; refuses FIFOs, devices, folders and symlink loops without
    blocking or reading more than the limit."""
    where = _where(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO opens without waiting
    except OSError as exc:
        raise InputError(where, _open_problem(exc)) from None
    except (ValueError, TypeError):  # an embedded NUL
        raise InputError(where, "not a usable file name (it holds a NUL character)") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(where, "is a folder; name a file")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(where, "not a regular file (a FIFO, socket or device); give a plain file")
        if st.st_size > max_bytes:
            raise InputError(where, f"{st.st_size:,} bytes is more than a {what} file can be (larger than "
                                    f"the {max_bytes:,}-byte limit)", "size")
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise InputError(where, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew while being read
        raise InputError(where, f"larger than the {max_bytes:,}-byte limit", "size")
    return data


def _where(path: str | Path, what: str) -> str:
    return f"{what}: {path}" if what else str(path)


def _open_problem(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "file not found"
    if exc.errno == errno.ELOOP:
        return "a symlink loop; point it at a real file"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENAMETOOLONG:
        return "the file name is too long"
    return f"cannot open: {exc.strerror or exc}"


def decode(data: bytes, where: str) -> str:
    """UTF-8 text (a leading BOM dropped); an error names the line of the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(where, f"line {line}: not UTF-8 text; save the file as UTF-8", "text") from None


def read_text(path: str | Path, what: str, *, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """A UTF-8 text file, bounded (see read_bytes)."""
    return decode(read_bytes(path, what, max_bytes=max_bytes), _where(path, what))


# ---------------------------------------------------------------- YAML


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, over-deep nesting and over-long numbers, and keeps dates
    (`2026-02-30`, `2026-13-45`) as text for the schema to parse and name."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:
                    continue  # unhashable: the base class names it
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"duplicate key {key!r}: each key may appear once", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if sum(c.isalnum() for c in text) > MAX_INT_DIGITS:
        raise yaml.constructor.ConstructorError(None, None, f"the number {text[:20]}… has more than "
                                                f"{MAX_INT_DIGITS} digits", node.start_mark)
    return yaml.SafeLoader.construct_yaml_int(loader, node)


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    _bounded_decimal(loader, node)
    return yaml.SafeLoader.construct_yaml_float(loader, node)


def _bounded_decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal | None:
    """The scalar as a Decimal when it is a finite number within bounds; None for .inf/.nan (left to the
    schema, which refuses them); an error for an exponent or length no domain value has."""
    text = str(loader.construct_scalar(node)).replace("_", "")
    if len(text) > 100:
        raise yaml.constructor.ConstructorError(None, None, f"the number {text[:20]}… is too long",
                                                node.start_mark)
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if value.is_finite() and value and abs(value.adjusted()) > MAX_EXPONENT:
        raise yaml.constructor.ConstructorError(None, None, f"the number {text!r} is out of range "
                                                f"(beyond 1e±{MAX_EXPONENT})", node.start_mark)
    return value if value.is_finite() else None


def _construct_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    return str(loader.construct_scalar(node))


BoundedLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
BoundedLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)
BoundedLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_text)


class ExactLoader(BoundedLoader):
    """BoundedLoader whose floats are exact Decimals from their text (money, shares); .inf/.nan refused."""


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal:
    value = _bounded_decimal(loader, node)
    if value is None:
        text = str(loader.construct_scalar(node))
        raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not a finite number", node.start_mark)
    return value


ExactLoader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)


def parse_yaml(text: str, source: str, *, exact: bool = False, max_values: int = MAX_VALUES,
               bad: str = "malformed YAML", where_first: bool = True) -> Any:
    """Parse YAML text with the bounded loader; InputError naming the line and the problem."""
    try:
        data = yaml.load(text, Loader=ExactLoader if exact else BoundedLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        detail = f"{where}{bad}: {problem}" if where_first else f"{bad}: {where}{problem}"
        raise InputError(source, detail, "yaml") from None
    except RecursionError:  # belt and braces: compose_node stops at MAX_DEPTH first
        raise InputError(source, "nested too deeply") from None
    check_bounded(data, source, max_values=max_values)
    return data


def check_bounded(data: Any, source: str, *, max_values: int = MAX_VALUES, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a document that is huge once YAML aliases are expanded, or nested too deeply."""
    count, stack = 0, [(data, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > max_values or depth > max_depth:
            raise InputError(source, f"more than {max_values:,} values or {max_depth} levels once YAML "
                             "aliases are expanded")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def load_yaml(path: str | Path, what: str, *, max_bytes: int = MAX_YAML_BYTES, exact: bool = False,
              max_values: int = MAX_VALUES, bad: str = "malformed YAML", where_first: bool = True) -> Any:
    """Read (bounded, UTF-8) and parse one YAML file."""
    text = read_text(path, what, max_bytes=max_bytes)
    return parse_yaml(text, _where(path, what), exact=exact, max_values=max_values, bad=bad,
                      where_first=where_first)


# ---------------------------------------------------------------- files the CLI writes


def check_out_file(path: Path, flag: str) -> None:
    """Before any work: `path` can be written as a file (its folder exists and is writable, it is not a
    folder itself); else UserError naming `flag` and the fix."""
    try:
        if path.is_dir():
            raise UserError(f"{flag} {path}: is a folder; give a file name, e.g. {path / 'report.csv'}")
        parent = path.parent
        if not parent.is_dir():
            raise UserError(f"{flag} {path}: folder {parent} does not exist; create it first")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {path}: cannot write to folder {parent} (permission denied or read-only)")
        if path.exists() and not path.is_file() and str(path) not in ("/dev/stdout", "/dev/stderr"):
            raise UserError(f"{flag} {path}: not a regular file (a device or FIFO); give a file name")
    except OSError as exc:
        raise UserError(f"{flag} {path}: {exc.strerror or exc}") from None


def check_out_dir(path: Path, flag: str) -> None:
    """Before any work: `path` is a writable folder or can be made one (its nearest existing parent is)."""
    try:
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise UserError(f"{flag} {path}: {probe} is a file, not a folder; point {flag} at a folder")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {path}: cannot write to {probe} (permission denied or read-only)")
    except OSError as exc:
        raise UserError(f"{flag} {path}: {exc.strerror or exc}") from None


def write_failed(exc: OSError, path: Path, flag: str) -> UserError:
    """A write that failed part-way (disk full, /dev/full, permissions) as one line naming the option."""
    return UserError(f"{flag} {path}: cannot write: {exc.strerror or exc}; free space or choose another path")
