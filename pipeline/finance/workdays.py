"""Chinese working-day arithmetic (public holidays and 调休 make-up days) for claim deadlines."""
from __future__ import annotations

import datetime as dt
from typing import Iterable

import chinese_calendar
from chinese_calendar import constants

DISPUTE_WORKING_DAYS = 5  # Huairou seed 003 三(四): 收到数据通知后5个工作日内
SETTLEMENT_WORKING_DAYS = 30  # Huairou seed 003 三(三): 兑现周期不超过30个工作日

Period = tuple[dt.date, dt.date]  # inclusive first and last day


class CalendarRangeError(ValueError):
    """A date outside the years the installed chinese_calendar knows; working days there are unknown."""


def known_years() -> tuple[int, int]:
    """First and last year with published holiday arrangements in the installed chinese_calendar."""
    years = {d.year for d in constants.holidays} | {d.year for d in constants.workdays}
    return min(years), max(years)


def is_working_day(day: dt.date) -> bool:
    """True on a working day: Monday-Friday that is not a public holiday, or a 调休 make-up Saturday/Sunday."""
    first, last = known_years()
    if not first <= day.year <= last:
        raise CalendarRangeError(
            f"{day.isoformat()}: the installed chinese_calendar knows public holidays for {first}-{last} "
            f"only; upgrade it (pip install -U chinese-calendar) once {day.year}'s arrangement is published")
    return chinese_calendar.is_workday(day)


def add_working_days(start: dt.date, n: int, not_counted: Iterable[Period] = ()) -> dt.date:
    """The n-th working day after `start` (`start` itself never counts; n=0 gives `start`).

    Working days inside any `not_counted` period (inclusive dates) are skipped, e.g. time spent
    supplying extra material.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    periods = list(not_counted)
    day, counted = start, 0
    while counted < n:
        day += dt.timedelta(days=1)
        if is_working_day(day) and not any(a <= day <= b for a, b in periods):
            counted += 1
    return day


def working_days_between(start: dt.date, end: dt.date) -> int:
    """Working days after `start` up to and including `end` (0 when end <= start)."""
    count, day = 0, start
    while day < end:
        day += dt.timedelta(days=1)
        count += is_working_day(day)
    return count


def dispute_deadline(notified: dt.date, working_days: int = DISPUTE_WORKING_DAYS) -> dt.date:
    """Last day to object to Huairou monitoring data: 5 working days after the notice is received."""
    return add_working_days(notified, working_days)


def settlement_deadline(accepted: dt.date, supplementing: Iterable[Period] = (),
                        working_days: int = SETTLEMENT_WORKING_DAYS) -> dt.date:
    """Latest Huairou settlement date: 30 working days after acceptance, supplement periods not counted."""
    return add_working_days(accepted, working_days, supplementing)
