"""Money everywhere (cost accounting and claims): one Decimal constructor, half-up rounding to the fen."""
from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal, Inexact, InvalidOperation, localcontext

FEN = Decimal("0.01")
ZERO = Decimal(0)
FLOAT_EXACT_DIGITS = 15  # any decimal with at most 15 significant digits survives a trip through a double
# The range of an amount a person may give (scenarios, facts, policies, budgets): |x| <= 10^15 CNY (a thousand
# trillion yuan) with at most 100 decimal places. Beyond it no input is meaningful, and the default 28-digit
# context could no longer round it to the fen (a traceback instead of a message).
MAX_AMOUNT = Decimal(10) ** 15
MAX_PLACES = 100


def D(value: Decimal | int | str | float, *, measured: bool = False) -> Decimal:
    """Make an exact Decimal from a string, int or Decimal; a float only if its text is provably exact.

    A Python float has lost its source text; its shortest repr is the original decimal whenever that
    had at most 15 significant digits, so such floats are taken at their repr and longer ones refused.
    `measured=True` is for measurements (wall seconds, quantities reported by a meter): there the float
    is the value, and its shortest round-trip text is taken whatever its length.
    """
    if isinstance(value, bool):
        raise TypeError(f"a number is needed, got the bool {value!r}")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        result = _from_float(value, measured)
    elif isinstance(value, str):
        result = _from_text(value)
    else:
        raise TypeError(f"a number is needed (string, int or Decimal), got {type(value).__name__}")
    if not result.is_finite():
        raise ValueError(f"a finite number is needed, got {value!r}")
    return result


def bounded(value: Decimal | int | str | float, what: str = "an amount") -> Decimal:
    """`D(value)` checked against the documented input range (MAX_AMOUNT, MAX_PLACES); ValueError beyond it."""
    if isinstance(value, str) and len(value) > 200:
        raise ValueError(f"{what} of {len(value):,} characters is not a number anyone means")
    result = D(value)
    if result.copy_abs() > MAX_AMOUNT:  # copy_abs: no context, so 1e999999999 cannot overflow here
        raise ValueError(f"{what} must be at most 10^15 (1,000,000,000,000,000) in size, got {_brief(result)}")
    if result and -result.as_tuple().exponent > MAX_PLACES:
        raise ValueError(f"{what} has more than {MAX_PLACES} decimal places, got {_brief(result)}")
    return result


def _brief(value: Decimal) -> str:
    text = str(value)
    return text if len(text) <= 40 else f"{text[:20]}…"


def _from_text(text: str) -> Decimal:
    try:
        return Decimal(text.strip().replace("_", ""))
    except InvalidOperation:
        raise ValueError(f"not a decimal number: {text!r}") from None


def _from_float(value: float, measured: bool = False) -> Decimal:
    if not math.isfinite(value):
        raise ValueError(f"a finite number is needed, got {value!r}")
    result = Decimal(repr(value))
    if not measured and len(result.normalize().as_tuple().digits) > FLOAT_EXACT_DIGITS:
        raise ValueError(f"the float {value!r} has more digits than a float holds exactly; "
                         f"write it as a string, e.g. '{value!r}'")
    return result


def money(x: Decimal | int | str | float) -> Decimal:
    """The constructor for cost accounting, where floats are measurements (see `D(measured=True)`)."""
    return D(x, measured=True)


def to_fen(amount: Decimal) -> Decimal:
    """Round half-up to the fen (0.01 CNY): done once, on a paid amount, never on an intermediate."""
    return amount.quantize(FEN, rounding=ROUND_HALF_UP)


def fmt(amount: Decimal) -> str:
    """Two-decimal text for an amount, e.g. Decimal('12370.368') -> '12370.37'."""
    return f"{to_fen(amount):.2f}"


def plain(number: Decimal) -> str:
    """A number in plain notation without exponent or trailing zeros, for traces: 0.30 -> '0.3'."""
    text = f"{number.normalize():f}"
    return text


def exact_sum(values) -> Decimal:
    """Σ of Decimals with no rounding at all: a wide context that traps Inexact. Ledger amounts carry 50
    significant digits (one division by 3600 s/h), more than the default 28-digit context keeps, so every
    total of ledger amounts — manifests, MLflow tags, reports, claims — is summed here and agrees to the digit."""
    with localcontext() as ctx:
        ctx.prec, ctx.Emax, ctx.Emin = 100_000, 999_999, -999_999
        ctx.traps[Inexact] = True
        return sum((Decimal(v) for v in values), ZERO)
