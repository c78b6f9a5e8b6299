"""Subsidy policies as clause-cited data (configs/policies/*.yaml): the rule vocabulary, loading, validation."""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictInt,
                      ValidationError)

from pipeline import safe_io
from pipeline.errors import UserError
from pipeline.finance.datafiles import YamlError, error_lines, load_exact_file
from pipeline.finance.scenario import (COMPANY_FLAGS, COMPANY_NUMBERS, DISTRICTS, DRAMA_FLAGS,
                                       DRAMA_NUMBERS, DRAMA_TEXTS, District, _non_negative, _number)


class PolicyError(UserError):
    """One or more policy files do not validate; `problems` names each file and field path."""


def _fraction(value: Decimal) -> Decimal:
    if not 0 <= value <= 1:
        raise ValueError(f"a rate is a fraction between 0 and 1 (30% is 0.30), got {value}")
    return value


def _positive(value: Decimal) -> Decimal:
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


Amount = Annotated[Decimal, BeforeValidator(_number), AfterValidator(_non_negative)]
Fraction = Annotated[Decimal, BeforeValidator(_number), AfterValidator(_fraction)]
Factor = Annotated[Decimal, BeforeValidator(_number), AfterValidator(_positive)]
Text = Annotated[str, Field(min_length=1)]


class _Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Cite(_Rule):
    """Where a rule comes from: the seed file (default: the policy's) and clause, with the quoted text."""

    clause: Text
    quote: str = ""  # verbatim from the seed (whitespace aside); checked when the seed text is at hand
    seed: str | None = None
    note: str = ""  # how the clause is read, where the reading is a choice


class Rate(_Rule):
    value: Fraction
    cite: Cite


class Money(_Rule):
    amount: Amount
    cite: Cite


class Band(_Rule):
    """[from, to) of the basis, paid at `rate` on the whole amount."""

    lower: Amount = Field(alias="from")
    upper: Amount | None = Field(alias="to")
    rate: Fraction


class Brackets(_Rule):
    mode: Literal["whole"]  # the bracket's rate applies to the whole basis
    bands: list[Band] = Field(min_length=1)
    cite: Cite


class SumBasis(_Rule):
    kind: Literal["sum"]
    fields: list[Text] = Field(min_length=1)
    cite: Cite


class IncreaseBasis(_Rule):
    kind: Literal["increase"]  # current - previous, 0 when it did not grow
    current: Text
    previous: Text
    cite: Cite


class Launched(_Rule):
    test: Literal["launched"]  # launched on a platform by the end of the scenario year
    cite: Cite


class Licensed(_Rule):
    test: Literal["licensed"]  # a 网络剧片发行许可证 number is recorded
    cite: Cite


class IsTrue(_Rule):
    test: Literal["is_true"]
    field: Text
    cite: Cite


class ProducedIn(_Rule):
    test: Literal["produced_in"]
    district: District
    cite: Cite


class Equals(_Rule):
    test: Literal["equals"]
    field: Text
    value: Text
    cite: Cite


class Compare(_Rule):
    """field >= / > / <= / < value; `missing` says what an undeclared (null) field does."""

    test: Literal["at_least", "more_than", "at_most", "less_than"]
    field: Text
    value: Amount
    missing: Literal["fail", "pass"] = "fail"
    cite: Cite


class Share(_Rule):
    """part / whole compared with value (e.g. shooting days in a district over all shooting days)."""

    test: Literal["share_more_than", "share_at_least"]
    part: Text
    whole: Text
    value: Fraction
    cite: Cite


Condition = Annotated[Union[Launched, Licensed, IsTrue, ProducedIn, Equals, Compare, Share],
                      Field(discriminator="test")]


class Assumption(_Rule):
    """A condition the scenario cannot show (expert review, first producer...): stated in every trace."""

    text: Text
    cite: Cite


class Variant(_Rule):
    """Alternative terms for works/companies matching `when`; the first matching variant applies."""

    id: Text
    when: list[Condition] = Field(min_length=1)
    requires: list[Condition] = Field(default_factory=list)
    rate: Rate | None = None
    cap_per_work: Money | None = None
    cap_per_company_year: Money | None = None
    cite: Cite


class Uplift(_Rule):
    """Multiplies the amount by `factor` when `when` holds, and may raise the caps."""

    id: Text
    when: list[Condition] = Field(min_length=1)
    factor: Factor
    cap_per_work: Money | None = None
    cap_per_company_year: Money | None = None
    cite: Cite


class CountLimit(_Rule):
    count: StrictInt = Field(ge=1)
    select: Literal["highest_amount"]  # ties: earlier launch first
    cite: Cite


class Programme(_Rule):
    """One subsidy programme: basis x rate (or a fixed amount, or brackets), conditions, caps, limits."""

    id: str = Field(pattern=r"^[a-z]+\.[a-z_]+$")
    title: Text
    level: Literal["per_work", "company"]
    cite: Cite
    basis: Annotated[Union[SumBasis, IncreaseBasis], Field(discriminator="kind")] | None = None
    rate: Rate | None = None
    fixed: Money | None = None
    brackets: Brackets | None = None
    cap_per_work: Money | None = None
    cap_per_company_year: Money | None = None
    conditions: list[Condition] = Field(default_factory=list)
    assumptions: list[Assumption] = Field(default_factory=list)
    variants: list[Variant] = Field(default_factory=list)
    uplifts: list[Uplift] = Field(default_factory=list)
    limit: CountLimit | None = None


class StackingGroup(_Rule):
    """Per work, only one bundle's programmes are paid (从优/择优/就高不重复); the best choice is kept."""

    id: Text
    label: Text
    rule: Literal["one_bundle_per_work"]
    bundles: list[list[Text]] = Field(min_length=2)
    cite: Cite


class Deadline(_Rule):
    """A time limit in Chinese working days (调休 observed), e.g. Huairou's dispute window."""

    id: Text
    working_days: StrictInt = Field(ge=1)
    event: Literal["notified", "accepted"]  # the dated event it counts from (a packet's evidence dates)
    counted_from: Text
    not_counted: str = ""  # periods that do not count, e.g. time spent supplying extra material
    cite: Cite


class Validity(_Rule):
    valid_from: dt.date | None = None
    valid_until: dt.date | None = None
    cite: Cite


class Policy(_Rule):
    """One seed policy: its district, source text, validity and programmes."""

    district: District
    title: Text
    seed: Text
    status: Literal["in_force", "draft"]
    published: dt.date | None = None
    validity: Validity
    assumptions: list[Assumption] = Field(default_factory=list)
    programmes: list[Programme] = Field(min_length=1)
    stacking: list[StackingGroup] = Field(default_factory=list)
    deadlines: list[Deadline] = Field(default_factory=list)

    def in_force(self, year: int) -> bool:
        """True when the validity period overlaps the calendar year."""
        start, end = dt.date(year, 1, 1), dt.date(year, 12, 31)
        v = self.validity
        return (v.valid_from is None or v.valid_from <= end) and (v.valid_until is None or v.valid_until >= start)


@dataclass(frozen=True)
class PolicySet:
    """The loaded policies, in file-name order, with where they came from."""

    policies: tuple[Policy, ...]
    source: str = ""

    def by_district(self) -> dict[str, Policy]:
        return {p.district: p for p in self.policies}

    def programme_ids(self) -> list[str]:
        return [prog.id for p in self.policies for prog in p.programmes]


def selects(selector: str, programme_id: str) -> bool:
    """'policy:yizhuang' selects every yizhuang programme; any other selector is a programme id."""
    if selector.startswith("policy:"):
        return programme_id.startswith(selector.removeprefix("policy:") + ".")
    return selector == programme_id


DEFAULT_POLICY_DIR = Path(__file__).resolve().parents[2] / "configs" / "policies"
ORIENTATIONS = ("vertical", "horizontal")


def _walk(node: Any, path: str) -> Any:
    """Yield (field path, value) for every model, list item and leaf below `node`."""
    yield path, node
    if isinstance(node, BaseModel):
        for name, info in type(node).model_fields.items():
            key = info.alias or name
            yield from _walk(getattr(node, name), f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, f"{path}[{i}]")


def check_policy(policy: Policy, stem: str, seeds_dir: Path | None) -> list[str]:
    """Cross-field checks on one parsed policy file; every problem as 'field.path: why'."""
    problems = []
    if stem != policy.district:
        problems.append(f"district: {policy.district!r} must match the file name {stem!r}.yaml")
    v = policy.validity
    if v.valid_from and v.valid_until and v.valid_from > v.valid_until:
        problems.append(f"validity: valid_from {v.valid_from} is after valid_until {v.valid_until}")
    problems += _check_ids(policy)
    for i, programme in enumerate(policy.programmes):
        problems += _check_programme(programme, f"programmes[{i}]")
    problems += _check_cites(policy, seeds_dir)
    return problems


def _check_ids(policy: Policy) -> list[str]:
    problems, seen = [], set()
    for i, programme in enumerate(policy.programmes):
        if not programme.id.startswith(policy.district + "."):
            problems.append(f"programmes[{i}].id: {programme.id!r} must start with '{policy.district}.'")
        if programme.id in seen:
            problems.append(f"programmes[{i}].id: {programme.id!r} appears twice")
        seen.add(programme.id)
    for g, group in enumerate(policy.stacking):
        for b, bundle in enumerate(group.bundles):
            for s, selector in enumerate(bundle):
                where = f"stacking[{g}].bundles[{b}][{s}]"
                if selector.startswith("policy:"):
                    if selector.removeprefix("policy:") not in DISTRICTS:
                        problems.append(f"{where}: unknown district in {selector!r}; one of {DISTRICTS}")
                elif selector.startswith(policy.district + ".") and selector not in seen:
                    problems.append(f"{where}: no programme {selector!r} in this policy")
    return problems


def _check_programme(prog: Programme, at: str) -> list[str]:
    problems = []
    kinds = [k for k in ("rate", "fixed", "brackets") if getattr(prog, k) is not None]
    if len(kinds) != 1:
        problems.append(f"{at}: give exactly one of rate, fixed, brackets (got {kinds or 'none'})")
    if prog.fixed is None and prog.basis is None:
        problems.append(f"{at}.basis: required with a rate or brackets")
    if prog.fixed is not None and prog.basis is not None:
        problems.append(f"{at}.basis: a fixed amount per work takes no basis")
    if prog.brackets is not None:
        problems += _check_bands(prog.brackets, f"{at}.brackets")
    if prog.level == "company":
        problems += [f"{at}.{name}: only per-work programmes have it" for name in ("cap_per_work", "limit")
                     if getattr(prog, name) is not None]
    for group in ("variants", "uplifts"):
        ids = [item.id for item in getattr(prog, group)]
        if len(set(ids)) != len(ids):
            problems.append(f"{at}.{group}: ids repeat: {ids}")
    for v, variant in enumerate(prog.variants):
        if variant.rate is not None and prog.rate is None:
            problems.append(f"{at}.variants[{v}].rate: the programme has no rate to replace")
    problems += _check_fields(prog, at)
    return problems


def _check_bands(brackets: Brackets, at: str) -> list[str]:
    problems, bands = [], brackets.bands
    if bands[0].lower != 0:
        problems.append(f"{at}.bands[0].from: the first band must start at 0, got {bands[0].lower}")
    for i, band in enumerate(bands):
        last = i == len(bands) - 1
        if band.upper is None and not last:
            problems.append(f"{at}.bands[{i}].to: only the last band may be open-ended")
        if band.upper is not None and last:
            problems.append(f"{at}.bands[{i}].to: the last band must be open-ended (to: null)")
        if band.upper is not None and band.upper <= band.lower:
            problems.append(f"{at}.bands[{i}]: to {band.upper} must be above from {band.lower}")
        if not last and band.upper is not None and bands[i + 1].lower != band.upper:
            problems.append(f"{at}.bands[{i + 1}].from: must equal the previous band's to "
                            f"({band.upper}), got {bands[i + 1].lower}")
    return problems


def _check_fields(prog: Programme, at: str) -> list[str]:
    """Every field a rule names must exist, hold the right kind of value, and suit the programme level."""
    problems = []
    per_work = prog.level == "per_work"
    numbers = COMPANY_NUMBERS | (DRAMA_NUMBERS if per_work else frozenset())
    flags = COMPANY_FLAGS | (DRAMA_FLAGS if per_work else frozenset())
    texts = DRAMA_TEXTS if per_work else frozenset()
    for path, node in _walk(prog, at):
        named: list[tuple[str, str, frozenset[str]]] = []
        if isinstance(node, SumBasis):
            named = [(f"fields[{i}]", f, numbers) for i, f in enumerate(node.fields)]
        elif isinstance(node, IncreaseBasis):
            named = [("current", node.current, numbers), ("previous", node.previous, numbers)]
        elif isinstance(node, Compare):
            named = [("field", node.field, numbers)]
        elif isinstance(node, Share):
            named = [("part", node.part, numbers), ("whole", node.whole, numbers)]
        elif isinstance(node, IsTrue):
            named = [("field", node.field, flags)]
        elif isinstance(node, Equals):
            named = [("field", node.field, texts)]
            if node.field == "orientation" and node.value not in ORIENTATIONS:
                problems.append(f"{path}.value: {node.value!r} is not one of {ORIENTATIONS}")
        elif isinstance(node, (Launched, Licensed, ProducedIn)) and not per_work:
            problems.append(f"{path}: the {node.test!r} test needs a drama; {prog.level} programmes have none")
        for key, name, allowed in named:
            if name not in allowed:
                problems.append(f"{path}.{key}: {name!r} is not a usable field here; "
                                f"one of {', '.join(sorted(allowed))}")
    return problems


def _normalise(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _check_cites(policy: Policy, seeds_dir: Path | None) -> list[str]:
    """Cited seeds exist and every quote is verbatim in its seed (whitespace aside)."""
    if seeds_dir is None:
        return []
    problems, texts = [], {}
    for name in {policy.seed} | {c.seed for _, c in _walk(policy, "") if isinstance(c, Cite) and c.seed}:
        file = seeds_dir / name
        if file.is_file():
            try:
                texts[name] = _normalise(safe_io.read_text(file, "seed"))
            except safe_io.InputError as err:
                problems.append(str(err))
        else:
            problems.append(f"seed: {name!r} not found in {seeds_dir}")
    for path, cite in _walk(policy, ""):
        if isinstance(cite, Cite) and cite.quote:
            seed = cite.seed or policy.seed
            if seed in texts and _normalise(cite.quote) not in texts[seed]:
                problems.append(f"{path}.quote: not found verbatim in {seed}: {cite.quote[:40]!r}")
    return problems


def load_policy_file(path: Path, seeds_dir: Path | None = None) -> tuple[Policy | None, list[str]]:
    """Parse and check one policy file; problems come back as values, each prefixed with the file."""
    try:
        data = load_exact_file(path, "policy")
    except YamlError as err:
        return None, [str(err)]
    if not isinstance(data, dict):
        return None, [f"{path}: a policy file is a mapping (district, title, seed, ...)"]
    try:
        policy = Policy.model_validate(data)
    except ValidationError as err:
        return None, [f"{path}: {line}" for line in error_lines(err)]
    return policy, [f"{path}: {line}" for line in check_policy(policy, path.stem, seeds_dir)]


def check_policy_set(policies: list[Policy]) -> list[str]:
    """Checks across files: one file per district, stacking selectors name loaded programmes once."""
    problems, districts = [], [p.district for p in policies]
    for d in sorted({d for d in districts if districts.count(d) > 1}):
        problems.append(f"district {d!r}: more than one policy file")
    ids = [prog.id for p in policies for prog in p.programmes]
    loaded = set(districts)
    for policy in policies:
        for g, group in enumerate(policy.stacking):
            at = f"{policy.district}.yaml: stacking[{g}]"
            for selector in (s for bundle in group.bundles for s in bundle):
                owner = selector.removeprefix("policy:").split(".")[0]
                if not selector.startswith("policy:") and owner in loaded and selector not in ids:
                    problems.append(f"{at}: no programme {selector!r} among the loaded policies")
            for pid in ids:
                hits = [b for b, bundle in enumerate(group.bundles) if any(selects(s, pid) for s in bundle)]
                if len(hits) > 1:
                    problems.append(f"{at}.bundles: {pid} falls in bundles {hits}; bundles must not overlap")
    return problems


def load_policies(directory: Path | str = DEFAULT_POLICY_DIR) -> PolicySet:
    """Load every *.yaml policy in `directory` (seed texts in its seeds/ when present); raise with all problems."""
    directory = Path(directory)
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise PolicyError(f"{directory}: no policy files (*.yaml) found")
    seeds = directory / "seeds"
    seeds_dir = seeds if seeds.is_dir() else None
    policies, problems = [], []
    for file in files:
        policy, found = load_policy_file(file, seeds_dir)
        problems += found
        if policy is not None:
            policies.append(policy)
    problems += check_policy_set(policies)
    if problems:
        raise PolicyError(problems)
    return PolicySet(tuple(policies), str(directory))
