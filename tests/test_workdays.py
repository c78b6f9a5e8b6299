"""Working-day arithmetic with Chinese public holidays and 调休 make-up days (Huairou deadlines)."""
from __future__ import annotations

import datetime as dt

import pytest

from pipeline.finance.workdays import (CalendarRangeError, add_working_days, dispute_deadline,
                                       is_working_day, known_years, settlement_deadline,
                                       working_days_between)

D = dt.date


def test_spring_festival_2026_holidays_and_make_up_saturdays():
    # 2026 春节: 2/15-2/23 off; Saturdays 2/14 and 2/28 are working days (调休)
    assert is_working_day(D(2026, 2, 14))
    assert not is_working_day(D(2026, 2, 16))  # Monday, but a holiday
    assert is_working_day(D(2026, 2, 28))
    assert not is_working_day(D(2026, 3, 7))  # an ordinary Saturday
    assert add_working_days(D(2026, 2, 13), 1) == D(2026, 2, 14)
    assert add_working_days(D(2026, 2, 14), 1) == D(2026, 2, 24)


def test_dispute_window_is_five_working_days_after_the_notice():
    # ordinary week: notified Monday 3/2 -> Tue..Fri, Mon 3/9
    assert dispute_deadline(D(2026, 3, 2)) == D(2026, 3, 9)
    # notified Thu 2/12: Fri 13, Sat 14 (调休), Tue 24, Wed 25, Thu 26
    assert dispute_deadline(D(2026, 2, 12)) == D(2026, 2, 26)
    # notified Wed 9/30: 10/1-7 off; Thu 8, Fri 9, Sat 10 (调休), Mon 12, Tue 13
    assert dispute_deadline(D(2026, 9, 30)) == D(2026, 10, 13)
    # notified on a holiday: counting starts with the next working day
    assert dispute_deadline(D(2026, 10, 3)) == D(2026, 10, 13)


def test_settlement_is_thirty_working_days_with_supplement_time_not_counted():
    # from Mon 3/2: March 3-31 has 21 working days, April 1-3 three more, 4-6 清明 off,
    # April 7-10 four more (28), then Mon 13 (29), Tue 14 (30)
    assert settlement_deadline(D(2026, 3, 2)) == D(2026, 4, 14)
    # 3/9-3/13 spent supplying material: those 5 working days do not count
    assert settlement_deadline(D(2026, 3, 2), [(D(2026, 3, 9), D(2026, 3, 13))]) == D(2026, 4, 21)
    # a supplement period over a weekend only changes nothing
    assert settlement_deadline(D(2026, 3, 2), [(D(2026, 3, 7), D(2026, 3, 8))]) == D(2026, 4, 14)


def test_add_working_days_edges():
    assert add_working_days(D(2026, 3, 7), 0) == D(2026, 3, 7)
    assert add_working_days(D(2026, 4, 30), 1) == D(2026, 5, 6)  # 5/1-5/5 劳动节
    assert working_days_between(D(2026, 2, 12), D(2026, 2, 26)) == 5
    assert working_days_between(D(2026, 2, 26), D(2026, 2, 12)) == 0
    with pytest.raises(ValueError, match="n must be >= 0"):
        add_working_days(D(2026, 3, 2), -1)


def test_outside_the_calendar_years_is_a_clear_error():
    first, last = known_years()
    assert first <= 2026 <= last
    with pytest.raises(CalendarRangeError, match=f"{first}-{last}"):
        is_working_day(D(2099, 1, 5))
    with pytest.raises(CalendarRangeError, match="upgrade it"):
        is_working_day(D(first - 1, 6, 1))
    with pytest.raises(CalendarRangeError, match=str(last + 1)):
        add_working_days(D(last, 12, 28), 10)  # runs into a year with no published arrangement
