"""Period derivation from occurred_at: ISO weeks, months, days, bounds."""

from __future__ import annotations

from datetime import datetime

import pytest

from shared.boards import Board, Operator, Reset, WeekStart
from shared.periods import PeriodLookup, PeriodStatus, closes_at, period_bounds, period_of, period_status, previous_period, resets_at, resolve_period


def board(reset: Reset, timezone_name: str = "UTC") -> Board:
    return Board(id="b", metric="m", operator=Operator.SUM, reset=reset, timezone=timezone_name)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        ("2024-12-29T12:00:00Z", "2024-W52"),
        ("2024-12-30T00:00:00Z", "2025-W01"),
        ("2025-01-05T23:59:59Z", "2025-W01"),
        ("2025-01-06T00:00:00Z", "2025-W02"),
        ("2020-12-31T10:00:00Z", "2020-W53"),
        ("2021-01-03T10:00:00Z", "2020-W53"),
        ("2026-12-31T10:00:00Z", "2026-W53"),
        ("2027-01-03T23:59:59Z", "2026-W53"),
        ("2027-01-04T00:00:00Z", "2027-W01"),
    ],
)
def test_weekly_period_is_iso_week(instant: str, expected: str) -> None:
    """Weekly periods follow ISO 8601 weeks across year boundaries."""
    assert period_of(board(Reset.WEEKLY), utc(instant)) == expected


def test_period_uses_offset_of_occurred_at() -> None:
    """An instant given with an offset is placed by its UTC time on a UTC board."""
    assert period_of(board(Reset.WEEKLY), datetime.fromisoformat("2025-01-06T00:30:00+01:00")) == "2025-W01"
    assert period_of(board(Reset.MONTHLY), datetime.fromisoformat("2026-01-01T00:30:00+02:00")) == "2025-12"


def test_daily_period_in_board_time_zone() -> None:
    """A New York daily board cuts days at local midnight, including the 25-hour day."""
    new_york = board(Reset.DAILY, "America/New_York")
    assert period_of(new_york, utc("2024-11-03T04:30:00Z")) == "2024-11-03"
    assert period_of(new_york, utc("2024-11-04T04:30:00Z")) == "2024-11-03"
    assert period_of(new_york, utc("2024-11-04T05:10:00Z")) == "2024-11-04"
    start, end = period_bounds(new_york, "2024-11-03")
    assert start == utc("2024-11-03T04:00:00Z")
    assert end == utc("2024-11-04T05:00:00Z")


def test_monthly_bounds_and_previous() -> None:
    """Monthly bounds span the calendar month; previous of January is December."""
    monthly = board(Reset.MONTHLY)
    assert period_bounds(monthly, "2024-02") == (utc("2024-02-01T00:00:00Z"), utc("2024-03-01T00:00:00Z"))
    assert previous_period(monthly, utc("2026-01-15T00:00:00Z")) == "2025-12"


def test_all_time_board_has_one_period() -> None:
    """A board that never resets has the single period 'all'."""
    forever = board(Reset.NEVER)
    assert period_of(forever, utc("2015-08-15T14:45:08Z")) == "all"
    assert resolve_period(forever, "current", utc("2026-12-04T00:00:00Z")) == "all"
    with pytest.raises(ValueError, match="never resets"):
        resolve_period(forever, "2026-W49", utc("2026-12-04T00:00:00Z"))


@pytest.mark.parametrize("bad", ["2026-W54", "2026-13", "2026-W1x", "last"])
def test_invalid_period_ids_rejected(bad: str) -> None:
    """Malformed or impossible period ids raise ValueError."""
    with pytest.raises(ValueError):
        resolve_period(board(Reset.WEEKLY) if "W" in bad else board(Reset.MONTHLY), bad, utc("2026-12-04T00:00:00Z"))


def test_sunday_start_week_bounds() -> None:
    """A Sunday-start week runs Sunday to Saturday and is named by the ISO week of the following Monday."""
    sunday = Board(id="b", metric="m", operator=Operator.SUM, reset=Reset.WEEKLY, week_start=WeekStart.SUNDAY)
    assert period_of(sunday, utc("2026-12-05T23:59:59Z")) == "2026-W49"
    assert period_of(sunday, utc("2026-12-06T00:00:00Z")) == "2026-W50"
    assert period_bounds(sunday, "2026-W50") == (utc("2026-12-06T00:00:00Z"), utc("2026-12-13T00:00:00Z"))
    assert period_of(sunday, utc("2026-12-27T10:00:00Z")) == "2026-W53"


def test_cron_periods_follow_fire_times() -> None:
    """A cron board's period runs from one local fire time to the next, across a DST change."""
    cron = Board(id="b", metric="m", operator=Operator.SUM, reset=Reset.CRON, cron="0 6 * * 1", timezone="Europe/Berlin")
    assert period_of(cron, utc("2026-10-26T04:59:59Z")) == "2026-10-19T04:00:00Z"
    assert period_of(cron, utc("2026-10-26T05:00:00Z")) == "2026-10-26T05:00:00Z"
    assert period_bounds(cron, "2026-10-19T04:00:00Z") == (utc("2026-10-19T04:00:00Z"), utc("2026-10-26T05:00:00Z"))
    with pytest.raises(ValueError, match="is not a start instant"):
        period_bounds(cron, "2026-10-20T04:00:00Z")


def test_period_status_open_provisional_final() -> None:
    """A period is open until its end, provisional during the late grace, then final."""
    daily = board(Reset.DAILY)
    assert period_status(daily, "2026-12-03", utc("2026-12-03T23:59:59Z")) is PeriodStatus.OPEN
    assert period_status(daily, "2026-12-03", utc("2026-12-04T00:59:59Z")) is PeriodStatus.PROVISIONAL
    assert period_status(daily, "2026-12-03", utc("2026-12-04T01:00:00Z")) is PeriodStatus.FINAL
    assert resets_at(daily, utc("2026-12-03T12:00:00Z")) == utc("2026-12-04T00:00:00Z")
    assert resets_at(board(Reset.NEVER), utc("2026-12-03T12:00:00Z")) is None


def test_period_lookup_follows_redefined_board() -> None:
    """A kept lookup asked with a new definition of a board id finds the new board's period, not the cached one."""
    lookup = PeriodLookup()
    instant = utc("2026-12-03T12:00:00Z")
    daily_period = lookup.find(board(Reset.DAILY), instant)
    weekly_period = lookup.find(board(Reset.WEEKLY), instant)

    assert daily_period == ("2026-12-03", utc("2026-12-04T01:00:00Z"))
    assert weekly_period == ("2026-W49", utc("2026-12-07T01:00:00Z"))


def test_period_lookup_crosses_period_ends() -> None:
    """PeriodLookup returns the period and closing instant period_of and closes_at return, on both sides of each end."""
    daily = board(Reset.DAILY, "America/New_York")
    cron = Board(id="c", metric="m", operator=Operator.SUM, reset=Reset.CRON, cron="0 6 * * 1", timezone="Europe/Berlin")
    never = board(Reset.NEVER)
    lookup = PeriodLookup()
    cases = [
        (daily, "2026-11-01T03:59:59Z", "2026-10-31", "2026-11-01T05:00:00Z"),
        (daily, "2026-11-01T04:00:00Z", "2026-11-01", "2026-11-02T06:00:00Z"),
        (daily, "2026-11-02T04:59:59Z", "2026-11-01", "2026-11-02T06:00:00Z"),
        (daily, "2026-11-01T03:00:00Z", "2026-10-31", "2026-11-01T05:00:00Z"),
        (cron, "2026-10-26T04:59:59.5Z", "2026-10-19T04:00:00Z", "2026-10-26T06:00:00Z"),
        (cron, "2026-10-26T05:00:00Z", "2026-10-26T05:00:00Z", "2026-11-02T06:00:00Z"),
        (never, "1999-01-01T00:00:00Z", "all", None),
        (never, "2099-01-01T00:00:00Z", "all", None),
    ]
    for found_board, instant, period, closing in cases:
        expected_closing = None if closing is None else utc(closing)
        assert lookup.find(found_board, utc(instant)) == (period, expected_closing)
        assert period_of(found_board, utc(instant)) == period
        assert closes_at(found_board, period) == expected_closing
