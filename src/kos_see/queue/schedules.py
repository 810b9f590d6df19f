"""When a cron schedule fires: its nominal fire times, as UTC instants.

A schedule is a five-field cron expression (``minute hour day-of-month month
day-of-week``, or one of ``@yearly @annually @monthly @weekly @daily
@midnight @hourly``) read in the wall clock of an IANA time zone. croniter
walks the *wall-clock* times that the expression names, on naive datetimes,
so it never applies a time zone itself; each wall-clock time is then turned
into UTC here, with zoneinfo, by these rules:

1. A wall-clock time that exists once fires at that instant.
2. A wall-clock time in a skipped interval (the clock springs forward, e.g.
   02:00-02:59 in America/New_York on the second Sunday of March) fires once,
   at the first instant after the gap: the transition itself (02:30 fires at
   03:00 EDT, 07:00 UTC). In Australia/Lord_Howe the gap is 02:00-02:29, so
   02:15 fires at 02:30 LHDT.
3. A wall-clock time in a repeated interval (the clock falls back, e.g.
   01:00-01:59 in America/New_York on the first Sunday of November) fires
   once, at its first occurrence (``fold=0``, 01:30 EDT), unless rule 4.
4. An expression whose hour field names every hour (``*``, ``0-23``,
   ``@hourly``) fires at both occurrences of a repeated wall-clock time, so
   that ``0 * * * *`` or ``*/15 * * * *`` fire at every real instant whose
   wall clock they name: hourly schedules keep firing once an hour of
   elapsed time through the repeated hour.
5. Fire times are UTC instants; wall-clock times that land on the same
   instant (several skipped times, or a skipped time and the end of its gap)
   are one fire.

So in New York ``0 * * * *`` fires every hour of elapsed time across both
transitions (23 fires on the spring-forward day, 25 on the fall-back day),
and in Lord Howe, whose clock moves by 30 minutes, it fires at the instants
whose wall clock reads hh:00: at the October change 01:00 (+10:30), then
02:30 (+11:00) for the skipped 02:00, then 03:00 (+11:00) only 30 minutes
later; at the April change 01:00 (+11:00), then 02:00 (+10:30) 90 minutes
later, since no hh:00 falls in the repeated 01:30-01:59.

Fire times are whole seconds; all times here are float seconds since the
epoch, as in the store.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from kos_see.errors import RequestRefused

MISFIRE_POLICIES = ("catch_up_once", "skip")
CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
SCHEDULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# Where the offset of a zone is sampled ahead of an instant (seconds).
_AHEAD = (900.0, 1800.0, 3600.0, 7200.0, 10800.0, 86400.0, 172800.0)


class ScheduleInvalid(RequestRefused):
    """The schedule is not valid."""

    code = "invalid_schedule"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not SCHEDULE_NAME.fullmatch(name):
        raise ScheduleInvalid(
            f"schedule name {name!r} is not valid: use 1 to 64 letters, digits, "
            "'_', '.' or '-', starting with a letter or digit",
            name=name,
        )
    return name


def check_misfire(policy: str) -> str:
    if policy not in MISFIRE_POLICIES:
        raise ScheduleInvalid(
            f"misfire policy {policy!r} is not known; use "
            + " or ".join(MISFIRE_POLICIES),
            misfire=policy,
        )
    return policy


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (``Europe/Berlin``, ``UTC``)."""
    try:
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ScheduleInvalid(
            f"time zone {name!r} is not known; use an IANA name such as "
            "'Europe/Berlin', 'America/New_York' or 'UTC'",
            timezone=name,
        ) from exc


def normalize_cron(expr: str) -> str:
    """``expr`` with whitespace collapsed and an @alias expanded; refuses
    anything but five valid fields."""
    if not isinstance(expr, str):
        raise ScheduleInvalid(f"cron expression {expr!r} is not text", cron=expr)
    text = " ".join(expr.split())
    text = CRON_ALIASES.get(text.lower(), text)
    fields = text.split(" ")
    if len(fields) != 5:
        raise ScheduleInvalid(
            f"cron expression {expr!r} has {len(fields) if text else 0} fields; "
            "write five: minute hour day-of-month month day-of-week "
            "(e.g. '30 2 * * *'), or @hourly, @daily, @weekly, @monthly, @yearly",
            cron=expr,
        )
    _refuse_reversed_ranges(expr, fields)
    try:
        croniter(text, datetime(2000, 1, 1))
    except (CroniterError, ValueError, KeyError, TypeError) as exc:
        raise ScheduleInvalid(
            f"cron expression {expr!r} is not valid: {exc}", cron=expr
        ) from exc
    return text


CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_CRON_NAMES = {
    name: number
    for names in (
        ("jan feb mar apr may jun jul aug sep oct nov dec", 1),
        ("sun mon tue wed thu fri sat", 0),
    )
    for number, name in enumerate(names[0].split(), start=names[1])
}


def _refuse_reversed_ranges(expr: str, fields: list[str]) -> None:
    # croniter reads a range such as 5-1 as wrapping around, which is not
    # what cron means by it and is almost always a typo.
    for field_name, field in zip(CRON_FIELDS, fields, strict=True):
        for part in field.split(","):
            low, dash, high = part.partition("/")[0].partition("-")
            if not dash:
                continue
            start, end = _cron_number(low), _cron_number(high)
            if start is not None and end is not None and start > end:
                raise ScheduleInvalid(
                    f"cron expression {expr!r}: the {field_name} range {part!r} "
                    "runs backwards; write it low to high, or one that wraps "
                    "around as a list of two ranges (22-23,0-2 for the hours "
                    "22 to 2)",
                    cron=expr,
                )


def _cron_number(text: str) -> int | None:
    if text.isdigit():
        return int(text)
    return _CRON_NAMES.get(text.lower())


class CronTimes:
    """The nominal fire times of one cron expression in one time zone."""

    def __init__(self, cron: str, timezone: str) -> None:
        self.cron = normalize_cron(cron)
        self.timezone = timezone
        self.zone = zone(timezone)
        hours = croniter(self.cron, datetime(2000, 1, 1)).expanded[1]
        self.every_hour = hours == ["*"] or set(hours) == set(range(24))

    def __repr__(self) -> str:
        return f"CronTimes({self.cron!r}, {self.timezone!r})"

    # one wall-clock time

    def instants(self, wall: datetime) -> tuple[float, ...]:
        """The UTC instants at which the naive wall-clock time ``wall`` fires,
        earliest first (two only for rule 4)."""
        first = wall.replace(tzinfo=self.zone, fold=0).timestamp()
        second = wall.replace(tzinfo=self.zone, fold=1).timestamp()
        if first == second:
            return (first,)
        early, late = min(first, second), max(first, second)
        if self._wall(early) != wall:
            # Neither reading exists: a skipped interval, and the transition
            # lies between its two readings.
            return (self._transition(early, late),)
        return (early, late) if self.every_hour else (early,)

    def _wall(self, instant: float) -> datetime:
        return datetime.fromtimestamp(instant, self.zone).replace(tzinfo=None)

    def _offset(self, instant: float) -> timedelta | None:
        return datetime.fromtimestamp(instant, self.zone).utcoffset()

    def _transition(self, before: float, after: float) -> float:
        """The first whole second at or before ``after`` that has the offset
        of ``after`` (``before`` has the offset before the change)."""
        low, high = int(before), int(after)
        target = self._offset(high)
        while high - low > 1:
            middle = (low + high) // 2
            if self._offset(middle) == target:
                high = middle
            else:
                low = middle
        return float(high)

    # many

    def iter_from(self, start: float, inclusive: bool = False) -> Iterator[float]:
        """Fire times after ``start`` (or at it, with ``inclusive``), in order,
        each once; ends only when the expression fires no more."""
        wall = self._wall(start) - self._margin(start)
        walk = croniter(self.cron, wall)
        pending: list[float] = []
        last: float | None = None
        while True:
            try:
                moment = walk.get_next(datetime)
            except CroniterError:  # no match for many years: it never fires
                break
            found = self.instants(moment)
            for instant in found:
                if instant > start or (inclusive and instant == start):
                    heapq.heappush(pending, instant)
            # Every later wall-clock time fires at or after found[0], so
            # whatever is pending before it is final.
            while pending and pending[0] < found[0]:
                instant = heapq.heappop(pending)
                if instant != last:
                    last = instant
                    yield instant
        while pending:
            instant = heapq.heappop(pending)
            if instant != last:
                last = instant
                yield instant

    def _margin(self, instant: float) -> timedelta:
        """How far before the wall clock of ``instant`` to start walking.

        A wall-clock time whose instant comes after ``instant`` reads earlier
        than the wall clock at ``instant`` only when the clock falls back in
        between, and then by at most the fall; a skipped interval never moves
        a wall-clock time back. So the walk starts the largest fall within
        the next two days earlier (plus a minute), sampled where a change of
        offset could matter: within hours for daylight saving, days for a
        zone that moves its date line.
        """
        here = self._offset(instant)
        assert here is not None
        fall = timedelta(0)
        for ahead in _AHEAD:
            offset = self._offset(instant + ahead)
            if offset is not None and here - offset > fall:
                fall = here - offset
        return fall + timedelta(minutes=1)

    def next_after(self, after: float) -> float | None:
        """The first fire time strictly after ``after``; None if it never fires."""
        return next(self.iter_from(after), None)

    def between(
        self, start: float, end: float, include_start: bool = False
    ) -> list[float]:
        """Fire times ``f`` with ``start < f <= end`` (``start <= f`` with
        ``include_start``), in order."""
        out = []
        for instant in self.iter_from(start, inclusive=include_start):
            if instant > end:
                break
            out.append(instant)
        return out

    def latest(self, start: float, end: float) -> float | None:
        """The last fire time ``f`` with ``start <= f < end``; None if none."""
        span = 3600.0
        while True:
            low = max(start, end - span)
            found = None
            for instant in self.iter_from(low, inclusive=True):
                if instant >= end:
                    break
                found = instant
            if found is not None or low <= start:
                return found
            span *= 8


def utc_iso(instant: float) -> str:
    """``2026-03-08T07:00:00Z``."""
    text = datetime.fromtimestamp(instant, UTC).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


def local_iso(instant: float, timezone: str) -> str:
    """The instant in ``timezone``, with its offset: ``2026-03-08T03:00:00-04:00``."""
    return datetime.fromtimestamp(instant, ZoneInfo(timezone)).isoformat(
        timespec="seconds"
    )
