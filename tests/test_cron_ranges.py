"""A cron range that runs backwards is refused, naming the field."""

from __future__ import annotations

import pytest

from kos_see.queue.schedules import ScheduleInvalid, normalize_cron


@pytest.mark.parametrize(
    ("expr", "field"),
    [
        ("5-1 * * * *", "minute"),
        ("0 22-2 * * *", "hour"),
        ("0 0 20-3 * *", "day-of-month"),
        ("0 0 * dec-jan *", "month"),
        ("0 0 * * fri-mon", "day-of-week"),
        ("0 0 * * 1,6-2/2", "day-of-week"),
    ],
)
def test_a_reversed_range_is_refused(expr: str, field: str):
    with pytest.raises(ScheduleInvalid, match=f"the {field} range .* runs backwards"):
        normalize_cron(expr)


@pytest.mark.parametrize(
    "expr", ["1-5 * * * *", "0 22-23,0-2 * * *", "0 0 * * mon-fri", "0 0 * * 5-7"]
)
def test_ranges_low_to_high_are_accepted(expr: str):
    assert normalize_cron(expr) == expr
