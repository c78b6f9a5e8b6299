"""Price tables as validated data (configs/prices/*.yaml); the price in force for an item at a time."""
from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field,
                      ValidationError, field_validator, model_validator)

UNITS = ("gpu-hour", "vcpu-hour", "gib-hour",
         "token", "second", "image", "char", "call", "step", "frame")
COMPUTE_UNITS = ("gpu-hour", "vcpu-hour", "gib-hour")


from pipeline import safe_io  # noqa: E402
from pipeline.money import money  # noqa: E402  (the one money constructor)


class PriceError(ValueError):
    """A price table is invalid, or no price is in force for an item at a time."""


class YamlFloat(str):
    """The source text of a YAML float scalar, kept so the loader can check it is exact."""


def _parse_price(v: Any) -> Decimal:
    """Prices are strings or ints; a YAML float passes only if binary floating point holds it exactly."""
    if isinstance(v, YamlFloat):
        text = str(v).replace("_", "")
        try:
            exact, as_float = Decimal(text), Decimal(float(text))
        except (InvalidOperation, ValueError):
            raise ValueError(f"unreadable number {v!r}; write prices as strings, e.g. '2.50'") from None
        if exact != as_float:
            raise ValueError(f"{v} is a YAML float that binary floating point cannot hold exactly; "
                             f"write it as a string: '{v}'")
        return exact
    if isinstance(v, float):
        if money(v) != Decimal(v):
            raise ValueError(f"float {v!r} is not exact in binary; give the price as a string")
        return Decimal(v)
    if isinstance(v, (str, int, Decimal)) and not isinstance(v, bool):
        return money(v)
    raise ValueError(f"a price must be a string like '2.50', got {type(v).__name__} {v!r}")


def _non_negative(d: Decimal) -> Decimal:
    if d < 0:
        raise ValueError(f"must be >= 0, got {d}")
    return d


PriceDecimal = Annotated[Decimal, BeforeValidator(_parse_price), AfterValidator(_non_negative)]


class Source(BaseModel):
    """Where a price came from: a URL or a document, and when it was read."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    title: str = Field(min_length=1)
    url: str | None = None
    document: str | None = None
    retrieved: dt.date
    note: str = ""

    @model_validator(mode="after")
    def _url_or_document(self) -> Source:
        if not (self.url or self.document):
            raise ValueError("give a url or a document")
        return self

    def cite(self) -> str:
        """One line naming the source, e.g. for a cost line or a claim packet."""
        where = self.url or self.document
        return f"{self.title} ({where}, retrieved {self.retrieved.isoformat()})"


class Item(BaseModel):
    """One priced item: `price` CNY per `per` units; a free item carries its `list_value` (same basis)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    unit: str
    price: PriceDecimal
    per: int = Field(default=1, gt=0)
    list_value: PriceDecimal | None = None  # None: the list value is the price
    gpu_model: str | None = None  # for gpu-hour items: the token matched in NVML names, e.g. "H100"
    description: str = ""
    source: Source | None = None  # overrides the table's source for this item

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, v: str) -> str:
        if v not in UNITS:
            raise ValueError(f"unknown unit {v!r}; one of {', '.join(UNITS)}")
        return v

    @model_validator(mode="after")
    def _gpu_items_name_a_model(self) -> Item:
        if (self.unit == "gpu-hour") != (self.gpu_model is not None):
            raise ValueError("gpu_model is required for gpu-hour items and only for them")
        return self


class PriceTable(BaseModel):
    """A dated price list: in force from `effective_from` (inclusive) to `effective_to` (exclusive)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    currency: str
    utc_offset: str = "+08:00"  # dates are midnight at this offset (China Standard Time, no DST)
    effective_from: dt.date
    effective_to: dt.date | None = None
    source: Source
    items: dict[str, Item] = Field(min_length=1)

    @field_validator("currency")
    @classmethod
    def _cny(cls, v: str) -> str:
        if v != "CNY":
            raise ValueError(f"currency must be CNY (all accounting is in CNY), got {v!r}")
        return v

    @field_validator("utc_offset")
    @classmethod
    def _offset(cls, v: str) -> str:
        if not re.fullmatch(r"[+-]\d\d:\d\d", v):
            raise ValueError(f"utc_offset must look like +08:00, got {v!r}")
        return v

    @model_validator(mode="after")
    def _dates_in_order(self) -> PriceTable:
        if self.effective_to is not None and self.effective_to <= self.effective_from:
            raise ValueError(f"effective_to {self.effective_to} must be after "
                             f"effective_from {self.effective_from}")
        return self

    def _at(self, d: dt.date) -> dt.datetime:
        sign = 1 if self.utc_offset[0] == "+" else -1
        hours, minutes = int(self.utc_offset[1:3]), int(self.utc_offset[4:6])
        tz = dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))
        return dt.datetime.combine(d, dt.time(), tzinfo=tz)

    @property
    def starts(self) -> dt.datetime:
        return self._at(self.effective_from)

    @property
    def ends(self) -> dt.datetime | None:
        return None if self.effective_to is None else self._at(self.effective_to)

    def in_force(self, at: dt.datetime) -> bool:
        """True when `at` (timezone-aware) falls in [starts, ends)."""
        return self.starts <= at and (self.ends is None or at < self.ends)


class Price(BaseModel):
    """The price of one item as selected for a time of use, with where it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    item: str
    unit: str
    price: Decimal
    per: int
    list_value: Decimal
    currency: str
    table_id: str
    source: str
    effective_from: dt.date
    effective_to: dt.date | None


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps float text (for the exactness check) and rejects duplicate keys."""


def _construct_float(loader: _Loader, node: yaml.ScalarNode) -> YamlFloat:
    return YamlFloat(loader.construct_scalar(node))


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise PriceError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _field_path(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def load_table(path: Path | str) -> PriceTable:
    """Load and validate one price table; errors name the file and every bad field."""
    path = Path(path)
    try:
        data = yaml.load(safe_io.read_text(path, "price table"), Loader=_Loader)  # noqa: S506 - SafeLoader
    except safe_io.InputError as e:
        raise PriceError(str(e)) from None
    except RecursionError:
        raise PriceError(f"{path}: nested too deeply") from None
    except PriceError as e:
        raise PriceError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise PriceError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise PriceError(f"{path}: a price table is a mapping, got {type(data).__name__}")
    try:
        return PriceTable.model_validate(data)
    except ValidationError as e:
        problems = [f"{path}: {_field_path(err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
                    for err in e.errors()]
        raise PriceError("invalid price table\n  " + "\n  ".join(problems)) from None


def _overlaps(a: PriceTable, b: PriceTable) -> bool:
    a_end, b_end = a.ends, b.ends
    return (b_end is None or a.starts < b_end) and (a_end is None or b.starts < a_end)


class PriceBook:
    """Every price table, queried by item and time of use."""

    def __init__(self, tables: list[PriceTable]):
        ids = [t.id for t in tables]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise PriceError(f"duplicate price table id(s): {', '.join(dupes)}")
        self.tables = sorted(tables, key=lambda t: (t.starts, t.id))
        problems = self._overlap_problems()
        if problems:
            raise PriceError("ambiguous prices\n  " + "\n  ".join(problems))

    def _overlap_problems(self) -> list[str]:
        problems = []
        for i, a in enumerate(self.tables):
            for b in self.tables[i + 1:]:
                shared = sorted(set(a.items) & set(b.items))
                if shared and _overlaps(a, b):
                    problems.append(f"tables {a.id} and {b.id} are both in force for a while and "
                                    f"both price {', '.join(shared)}; close one with effective_to")
        return problems

    @classmethod
    def load(cls, directory: Path | str) -> PriceBook:
        """Load every *.yaml under `directory` (one table per file)."""
        directory = Path(directory)
        files = sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))
        if not files:
            raise PriceError(f"{directory}: no price tables (*.yaml) found")
        return cls([load_table(f) for f in files])

    def price_for(self, item: str, at: dt.datetime) -> Price:
        """The price of `item` in the table in force at `at` (timezone-aware)."""
        if at.tzinfo is None:
            raise PriceError(f"price_for({item!r}): time of use {at} has no timezone; pass UTC")
        for table in self.tables:
            if item in table.items and table.in_force(at):
                return _price(item, table)
        known = [t.id for t in self.tables if item in t.items]
        hint = (f"tables pricing it: {', '.join(known)}" if known
                else "no table prices it; add it to a table under configs/prices/")
        raise PriceError(f"no price for item {item!r} at {at.isoformat()} ({hint})")

    def gpu_item(self, gpu_model: str | None) -> str:
        """The gpu-hour item for a GPU model name (NVML name such as 'NVIDIA H100 80GB HBM3')."""
        if not gpu_model:
            raise PriceError("GPU time without a gpu_model cannot be priced; declare the model "
                             "(Meter(gpu_model=...)) when NVML cannot name it")
        matches = {name: item.gpu_model for t in self.tables for name, item in t.items.items()
                   if item.gpu_model and re.search(rf"(?<![A-Za-z0-9]){re.escape(item.gpu_model)}"
                                                   rf"(?![A-Za-z0-9])", gpu_model, re.IGNORECASE)}
        if not matches:
            raise PriceError(f"no gpu-hour item matches GPU model {gpu_model!r}; add one with "
                             f"gpu_model: <token> to a compute table")
        longest = max(len(m) for m in matches.values())
        best = sorted({n for n, m in matches.items() if len(m) == longest})
        if len(best) > 1:
            raise PriceError(f"GPU model {gpu_model!r} matches several items: {', '.join(best)}")
        return best[0]


def _price(item: str, table: PriceTable) -> Price:
    it = table.items[item]
    source = (it.source or table.source).cite()
    return Price(item=item, unit=it.unit, price=it.price, per=it.per,
                 list_value=it.price if it.list_value is None else it.list_value,
                 currency=table.currency, table_id=table.id, source=source,
                 effective_from=table.effective_from, effective_to=table.effective_to)
