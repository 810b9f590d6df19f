"""Cron schedules: fire times across daylight-saving transitions, the
scheduler on a real SQLite store with a fake clock, misfires, several
schedulers, and the ``kos-see schedules`` command.

The year is 2026. Transitions used (UTC):

- America/New_York: 2026-03-08 07:00 (02:00 EST -> 03:00 EDT) and
  2026-11-01 06:00 (02:00 EDT -> 01:00 EST)
- Europe/Berlin: 2026-03-29 01:00 (02:00 CET -> 03:00 CEST) and
  2026-10-25 01:00 (03:00 CEST -> 02:00 CET)
- Australia/Lord_Howe: 2026-04-04 15:00 (02:00 +11 -> 01:30 +10:30) and
  2026-10-03 15:30 (02:00 +10:30 -> 02:30 +11)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest

from kos_see.config import SchedulesConfig
from kos_see.engine import Engine
from kos_see.errors import (
    InputInvalid,
    RequestRefused,
    ServiceNotFound,
    StoreUnavailable,
)
from kos_see.home import Home
from kos_see.models import TaskRecord
from kos_see.queue.scheduler import Scheduler, fire_key
from kos_see.queue.schedules import CronTimes, ScheduleInvalid, local_iso, utc_iso
from kos_see.store import Store, TaskFilter
from kos_see.store.schedule_store import (
    ScheduleExists,
    ScheduleNotFound,
    ScheduleStore,
)

if TYPE_CHECKING:
    from conftest import EngineFactory, ServiceFactory

HOUR = 3600.0


def at(text: str) -> float:
    """``'2026-03-08T07:00Z'`` (or with an offset) as epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def every(start: str, end: str, step: float = HOUR) -> list[float]:
    """``start``, ``start + step``, ... up to and including ``end``."""
    first, last = at(start), at(end)
    out = []
    while first <= last:
        out.append(first)
        first += step
    return out


# ---------------------------------------------------------------------------
# fire times: the documented rules, exactly


DAILY_CASES = [
    # (cron, zone, window start, window end, expected fire times in UTC)
    (  # skipped: 02:30 on the spring-forward day fires at 03:00 EDT
        "30 2 * * *",
        "America/New_York",
        "2026-03-06T12:00Z",
        "2026-03-10T00:00Z",
        ["2026-03-07T07:30Z", "2026-03-08T07:00Z", "2026-03-09T06:30Z"],
    ),
    (  # 02:30 is not in New York's repeated hour (01:00-01:59)
        "30 2 * * *",
        "America/New_York",
        "2026-10-30T12:00Z",
        "2026-11-03T00:00Z",
        ["2026-10-31T06:30Z", "2026-11-01T07:30Z", "2026-11-02T07:30Z"],
    ),
    (  # repeated: 01:30 fires once, at 01:30 EDT, not again at 01:30 EST
        "30 1 * * *",
        "America/New_York",
        "2026-10-30T12:00Z",
        "2026-11-03T00:00Z",
        ["2026-10-31T05:30Z", "2026-11-01T05:30Z", "2026-11-02T06:30Z"],
    ),
    (
        "30 2 * * *",
        "Europe/Berlin",
        "2026-03-27T12:00Z",
        "2026-03-31T00:00Z",
        ["2026-03-28T01:30Z", "2026-03-29T01:00Z", "2026-03-30T00:30Z"],
    ),
    (
        "30 2 * * *",
        "Europe/Berlin",
        "2026-10-23T12:00Z",
        "2026-10-27T00:00Z",
        ["2026-10-24T00:30Z", "2026-10-25T00:30Z", "2026-10-26T01:30Z"],
    ),
    (  # Lord Howe skips 02:00-02:29: 02:15 fires at 02:30 +11:00
        "15 2 * * *",
        "Australia/Lord_Howe",
        "2026-10-02T00:00Z",
        "2026-10-05T00:00Z",
        ["2026-10-02T15:45Z", "2026-10-03T15:30Z", "2026-10-04T15:15Z"],
    ),
    (  # Lord Howe repeats 01:30-01:59: 01:45 fires once, at 01:45 +11:00
        "45 1 * * *",
        "Australia/Lord_Howe",
        "2026-04-03T00:00Z",
        "2026-04-06T00:00Z",
        ["2026-04-03T14:45Z", "2026-04-04T14:45Z", "2026-04-05T15:15Z"],
    ),
]


@pytest.mark.parametrize(("cron", "zone", "start", "end", "expected"), DAILY_CASES)
def test_daily_fire_times_in_skipped_and_repeated_intervals(
    cron: str, zone: str, start: str, end: str, expected: list[str]
) -> None:
    times = CronTimes(cron, zone)
    assert times.between(at(start), at(end)) == [at(e) for e in expected]


HOURLY_CASES = [
    # New York and Berlin: one fire per hour of elapsed time, no duplicate at
    # the skipped 02:00 (it is 03:00), both 01:00s (NY) / 02:00s (Berlin).
    ("America/New_York", "2026-03-08T02:00Z", "2026-03-08T12:00Z", None),
    ("America/New_York", "2026-11-01T02:00Z", "2026-11-01T12:00Z", None),
    ("Europe/Berlin", "2026-03-28T20:00Z", "2026-03-29T06:00Z", None),
    ("Europe/Berlin", "2026-10-24T20:00Z", "2026-10-25T06:00Z", None),
    # Lord Howe: only the instants whose wall clock reads hh:00.
    (
        "Australia/Lord_Howe",
        "2026-10-03T11:30Z",
        "2026-10-03T19:00Z",
        # 22:00 ... 01:00 +10:30, 02:30 +11 (the skipped 02:00), 03:00 ...
        every("2026-10-03T11:30Z", "2026-10-03T14:30Z")
        + every("2026-10-03T15:30Z", "2026-10-03T15:30Z")
        + every("2026-10-03T16:00Z", "2026-10-03T19:00Z"),
    ),
    (
        "Australia/Lord_Howe",
        "2026-04-04T11:00Z",
        "2026-04-04T19:30Z",
        # 22:00 ... 01:00 +11, then 02:00 +10:30 ninety minutes later
        every("2026-04-04T11:00Z", "2026-04-04T14:00Z")
        + every("2026-04-04T15:30Z", "2026-04-04T19:30Z"),
    ),
]


@pytest.mark.parametrize(("zone", "start", "end", "expected"), HOURLY_CASES)
def test_hourly_fire_times_across_transitions(
    zone: str, start: str, end: str, expected: list[float] | None
) -> None:
    times = CronTimes("0 * * * *", zone)
    got = times.between(at(start) - 1, at(end))
    if expected is None:
        expected = every(start, end)  # every full UTC hour
    assert got == expected


def test_hourly_fire_counts_on_transition_days() -> None:
    ny = CronTimes("@hourly", "America/New_York")
    spring = ny.between(at("2026-03-08T00:00-05:00") - 1, at("2026-03-09T00:00-04:00"))
    fall = ny.between(at("2026-11-01T00:00-04:00") - 1, at("2026-11-02T00:00-05:00"))
    # The windows include the next midnight: one more fire than the day has.
    assert (len(spring) - 1, len(fall) - 1) == (23, 25)
    assert {b - a for a, b in zip(spring, spring[1:], strict=False)} == {HOUR}
    assert {b - a for a, b in zip(fall, fall[1:], strict=False)} == {HOUR}


def test_every_quarter_hour_has_no_duplicate_and_no_hole() -> None:
    for zone, transitions in TRANSITIONS.items():
        times = CronTimes("*/15 * * * *", zone)
        for moment in transitions:
            got = times.between(moment - 4 * HOUR - 1, moment + 4 * HOUR)
            assert len(got) == 33, (zone, utc_iso(moment))
            steps = {b - a for a, b in zip(got, got[1:], strict=False)}
            assert steps == {900.0}, (zone, utc_iso(moment), steps)


TRANSITIONS = {
    "America/New_York": [at("2026-03-08T07:00Z"), at("2026-11-01T06:00Z")],
    "Europe/Berlin": [at("2026-03-29T01:00Z"), at("2026-10-25T01:00Z")],
    "Australia/Lord_Howe": [at("2026-04-04T15:00Z"), at("2026-10-03T15:30Z")],
}

# (cron, minutes it names, hours it names or None for every hour)
ORACLE_CRONS = [
    ("0 * * * *", {0}, None),
    ("*/15 * * * *", {0, 15, 30, 45}, None),
    ("*/30 * * * *", {0, 30}, None),
    ("30 2 * * *", {30}, {2}),
    ("30 1 * * *", {30}, {1}),
    ("45 1 * * *", {45}, {1}),
    ("15 2 * * *", {15}, {2}),
    ("0,20,40 1-3 * * *", {0, 20, 40}, {1, 2, 3}),
]


def oracle(
    zone: str, minutes: set[int], hours: set[int] | None, start: float, end: float
) -> list[float]:
    """The documented rules, worked out minute by minute of real time,
    without croniter or the code under test: a wall-clock minute read at its
    first (or, for every-hour expressions, any) occurrence fires then; a
    matching wall-clock minute that the clock skipped fires at the first
    instant after the skip."""
    tz = ZoneInfo(zone)

    def matches(wall: datetime) -> bool:
        return wall.minute in minutes and (hours is None or wall.hour in hours)

    fires = set()
    previous = datetime.fromtimestamp(start, tz).replace(tzinfo=None)
    for instant in range(int(start) + 60, int(end) + 1, 60):
        local = datetime.fromtimestamp(instant, tz)
        wall = local.replace(tzinfo=None)
        skipped = previous + timedelta(minutes=1)
        while skipped < wall:  # the clock jumped over these minutes
            if matches(skipped):
                fires.add(float(instant))
            skipped += timedelta(minutes=1)
        if matches(wall) and (local.fold == 0 or hours is None):
            fires.add(float(instant))
        previous = max(previous, wall)
    return sorted(fires)


@pytest.mark.parametrize("zone", sorted(TRANSITIONS))
def test_fire_times_match_a_minute_by_minute_oracle(zone: str) -> None:
    for moment in TRANSITIONS[zone]:
        start, end = moment - 8 * HOUR, moment + 8 * HOUR
        for cron, minutes, hours in ORACLE_CRONS:
            expected = oracle(zone, minutes, hours, start, end)
            assert expected, (cron, zone)
            assert CronTimes(cron, zone).between(start, end) == expected, (
                cron,
                zone,
                utc_iso(moment),
            )


def test_next_after_is_strict_and_latest_is_half_open() -> None:
    times = CronTimes("30 2 * * *", "America/New_York")
    fire = at("2026-03-08T07:00Z")
    assert times.next_after(fire - 1) == fire
    assert times.next_after(fire) == at("2026-03-09T06:30Z")
    assert times.latest(at("2026-03-01T00:00Z"), fire) == at("2026-03-07T07:30Z")
    assert times.latest(at("2026-03-01T00:00Z"), fire + 1) == fire
    assert times.latest(fire + 1, at("2026-03-09T00:00Z")) is None


def test_croniter_is_given_wall_time_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # The process's own zone must not leak into the computation.
    expected = CronTimes("30 2 * * *", "Europe/Berlin").between(
        at("2026-03-27T00:00Z"), at("2026-03-31T00:00Z")
    )
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        again = CronTimes("30 2 * * *", "Europe/Berlin").between(
            at("2026-03-27T00:00Z"), at("2026-03-31T00:00Z")
        )
    finally:
        monkeypatch.undo()
        time.tzset()
    assert (
        again
        == expected
        == [
            at("2026-03-27T01:30Z"),
            at("2026-03-28T01:30Z"),
            at("2026-03-29T01:00Z"),
            at("2026-03-30T00:30Z"),
        ]
    )


@pytest.mark.parametrize(
    ("cron", "named"),
    [
        ("61 * * * *", "61 * * * *"),
        ("* * * *", "* * * *"),
        ("0 0 * * * 5", "0 0 * * * 5"),
        ("", "''"),
        ("every day", "every day"),
        ("0 0 30 2 *", "0 0 30 2 *"),  # valid fields, never fires
    ],
)
def test_bad_cron_expressions_are_refused_by_name(
    scheduler_for: SchedulerFactory, cron: str, named: str
) -> None:
    scheduler = scheduler_for()
    with pytest.raises(ScheduleInvalid) as caught:
        scheduler.add("s", cron, "UTC", "tick", now=at("2026-01-01T00:00Z"))
    assert named in caught.value.message
    assert caught.value.exit_code == 3
    assert scheduler.list() == []


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "../etc/passwd", "UTC "])
def test_bad_time_zones_are_refused_by_name(
    scheduler_for: SchedulerFactory, zone: str
) -> None:
    scheduler = scheduler_for()
    with pytest.raises(ScheduleInvalid) as caught:
        scheduler.add("s", "0 * * * *", zone, "tick")
    assert repr(zone) in caught.value.message
    assert caught.value.code == "invalid_schedule"


def test_other_bad_schedules_are_refused(
    scheduler_for: SchedulerFactory, make_service: ServiceFactory
) -> None:
    scheduler = scheduler_for()
    make_service(
        "typed",
        "",
        input_schema={"type": "object", "required": ["n"]},
    )
    with pytest.raises(ScheduleInvalid, match="'no spaces'"):
        scheduler.add("no spaces", "0 * * * *", "UTC", "tick")
    with pytest.raises(ScheduleInvalid, match="'sometimes'"):
        scheduler.add("s", "0 * * * *", "UTC", "tick", misfire="sometimes")
    with pytest.raises(ServiceNotFound):
        scheduler.add("s", "0 * * * *", "UTC", "no-such-service")
    with pytest.raises(InputInvalid, match="'n' is a required property"):
        scheduler.add("s", "0 * * * *", "UTC", "typed", {"m": 1})
    with pytest.raises(RequestRefused, match="priority 1000"):
        scheduler.add("s", "0 * * * *", "UTC", "tick", priority=1000)
    assert scheduler.list() == []
    scheduler.add("s", "0 * * * *", "UTC", "typed", {"n": 1})
    with pytest.raises(ScheduleExists, match="'s' exists"):
        scheduler.add("s", "@daily", "UTC", "tick")
    assert [r.cron for r in scheduler.list()] == ["0 * * * *"]


# ---------------------------------------------------------------------------
# the scheduler on a real store, with a fake clock


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


SchedulerFactory = Callable[..., Scheduler]


@pytest.fixture
def scheduler_for(
    idle_engine: Engine, make_service: ServiceFactory
) -> SchedulerFactory:
    """``scheduler_for(engine=idle_engine, tick=60, clock=None, grace=60)``: a
    Scheduler (not started) on an engine's dispatcher and store; the service
    ``tick`` is registered."""
    make_service(
        "tick", "def run(inputs):\n    return inputs\n", entrypoint="main.py:run"
    )

    def factory(
        engine: Engine | None = None,
        tick: float = 60,
        clock: FakeClock | None = None,
        grace: float = 60,
    ) -> Scheduler:
        engine = engine or idle_engine
        return Scheduler(
            engine.dispatcher,
            ScheduleStore(engine.store),
            SchedulesConfig(tick=tick),
            clock=clock or FakeClock(),
            grace=grace,
        )

    return factory


def scheduled_tasks(engine: Engine, name: str) -> list[TaskRecord]:
    tasks = engine.store.list_tasks(TaskFilter(limit=100_000))
    return sorted(
        (t for t in tasks if t.schedule == name), key=lambda t: t.idempotency_key or ""
    )


def fire_times(engine: Engine, name: str) -> list[float]:
    """The fire time of each task of schedule ``name``, from its key, in order;
    asserts that no fire has two tasks."""
    tasks = scheduled_tasks(engine, name)
    keys = [t.idempotency_key for t in tasks]
    assert len(keys) == len(set(keys)), Counter(keys).most_common(3)
    prefix = f"schedule:{name}:"
    times = []
    for key in keys:
        assert key is not None and key.startswith(prefix), key
        times.append(at(key[len(prefix) :]))
    return sorted(times)


@dataclass
class Walk:
    """A window around one transition and what each schedule must make."""

    zone: str
    transition: str
    start: str  # local midnight before, in UTC
    end: str  # local midnight three days later, in UTC (exclusive)
    expected: dict[str, list[float]]


def _daily(*times: str) -> list[float]:
    return [at(t) for t in times]


WALKS = [
    Walk(
        "America/New_York",
        "2026-03-08T07:00Z",
        "2026-03-07T05:00Z",
        "2026-03-10T04:00Z",
        {
            "30 2 * * *": _daily(
                "2026-03-07T07:30Z", "2026-03-08T07:00Z", "2026-03-09T06:30Z"
            ),
            "30 1 * * *": _daily(
                "2026-03-07T06:30Z", "2026-03-08T06:30Z", "2026-03-09T05:30Z"
            ),
            "0 * * * *": every("2026-03-07T05:00Z", "2026-03-10T03:00Z"),
        },
    ),
    Walk(
        "America/New_York",
        "2026-11-01T06:00Z",
        "2026-10-31T04:00Z",
        "2026-11-03T05:00Z",
        {
            "30 2 * * *": _daily(
                "2026-10-31T06:30Z", "2026-11-01T07:30Z", "2026-11-02T07:30Z"
            ),
            "30 1 * * *": _daily(
                "2026-10-31T05:30Z", "2026-11-01T05:30Z", "2026-11-02T06:30Z"
            ),
            "0 * * * *": every("2026-10-31T04:00Z", "2026-11-03T04:00Z"),
        },
    ),
    Walk(
        "Europe/Berlin",
        "2026-03-29T01:00Z",
        "2026-03-27T23:00Z",
        "2026-03-30T22:00Z",
        {
            "30 2 * * *": _daily(
                "2026-03-28T01:30Z", "2026-03-29T01:00Z", "2026-03-30T00:30Z"
            ),
            "0 * * * *": every("2026-03-27T23:00Z", "2026-03-30T21:00Z"),
        },
    ),
    Walk(
        "Europe/Berlin",
        "2026-10-25T01:00Z",
        "2026-10-23T22:00Z",
        "2026-10-26T23:00Z",
        {
            "30 2 * * *": _daily(
                "2026-10-24T00:30Z", "2026-10-25T00:30Z", "2026-10-26T01:30Z"
            ),
            "0 * * * *": every("2026-10-23T22:00Z", "2026-10-26T22:00Z"),
        },
    ),
    Walk(
        "Australia/Lord_Howe",
        "2026-10-03T15:30Z",
        "2026-10-02T13:30Z",
        "2026-10-05T13:00Z",
        {
            "15 2 * * *": _daily(
                "2026-10-02T15:45Z", "2026-10-03T15:30Z", "2026-10-04T15:15Z"
            ),
            "45 1 * * *": _daily(
                "2026-10-02T15:15Z", "2026-10-03T15:15Z", "2026-10-04T14:45Z"
            ),
            "0 * * * *": every("2026-10-02T13:30Z", "2026-10-03T14:30Z")
            + every("2026-10-03T15:30Z", "2026-10-03T15:30Z")
            + every("2026-10-03T16:00Z", "2026-10-05T12:00Z"),
        },
    ),
    Walk(
        "Australia/Lord_Howe",
        "2026-04-04T15:00Z",
        "2026-04-03T13:00Z",
        "2026-04-06T13:30Z",
        {
            "45 1 * * *": _daily(
                "2026-04-03T14:45Z", "2026-04-04T14:45Z", "2026-04-05T15:15Z"
            ),
            "15 2 * * *": _daily(
                "2026-04-03T15:15Z", "2026-04-04T15:45Z", "2026-04-05T15:45Z"
            ),
            "0 * * * *": every("2026-04-03T13:00Z", "2026-04-04T14:00Z")
            + every("2026-04-04T15:30Z", "2026-04-06T12:30Z"),
        },
    ),
]


def walk_steps(start: float, end: float, transition: float) -> list[float]:
    """Clock readings from ``start`` to before ``end``: every minute within
    three hours of the transition, every quarter hour elsewhere (all on whole
    UTC minutes, so every fire time is read exactly when it comes)."""
    steps, now = [], start
    while now < end:
        steps.append(now)
        now += 60.0 if abs(now - transition) < 3 * HOUR else 900.0
    return steps


def schedule_name(cron: str) -> str:
    return "s-" + cron.replace("*", "x").replace(" ", "-").replace("/", "_")


@pytest.mark.parametrize("walk", WALKS, ids=lambda w: f"{w.zone}@{w.transition}")
def test_scheduler_walks_across_transitions(
    walk: Walk, scheduler_for: SchedulerFactory, idle_engine: Engine
) -> None:
    clock = FakeClock()
    # A tick of 15 minutes: a fire read up to 15 minutes late is on time.
    scheduler = scheduler_for(tick=900, clock=clock)
    start, end = at(walk.start), at(walk.end)
    for cron in walk.expected:
        scheduler.add(schedule_name(cron), cron, walk.zone, "tick", now=start - 1)
    for now in walk_steps(start, end, at(walk.transition)):
        clock.now = now
        scheduler.run_due()
    for cron, expected in walk.expected.items():
        name = schedule_name(cron)
        assert fire_times(idle_engine, name) == expected, cron
        for task in scheduled_tasks(idle_engine, name):
            # Made exactly at its fire time: never early, never late.
            assert task.created_at == at(task.idempotency_key.split(":", 2)[2])
            assert (task.queue_class, task.schedule) == ("scheduled", name)
        record = scheduler.get(name)
        assert record.next_fire_at is not None and record.next_fire_at >= end
        assert record.last_fire_at == expected[-1]


def test_tasks_carry_the_schedules_request(
    scheduler_for: SchedulerFactory, idle_engine: Engine
) -> None:
    clock = FakeClock(at("2026-06-01T00:00Z"))
    scheduler = scheduler_for(clock=clock)
    scheduler.add(
        "job",
        "0 12 * * *",
        "Europe/Berlin",
        "tick",
        {"x": [1, 2]},
        tenant="acme",
        principal="robot",
        priority=7,
    )
    clock.now = at("2026-06-01T10:00Z")  # 12:00 CEST
    made = scheduler.run_due()
    assert [s.created for s in made] == [True]
    task = made[0].task
    assert (task.tenant, task.principal, task.priority) == ("acme", "robot", 7)
    assert json.loads(task.input) == {"x": [1, 2]}
    assert task.idempotency_key == "schedule:job:2026-06-01T10:00:00Z"
    assert task.idempotency_key == fire_key("job", at("2026-06-01T10:00Z"))
    assert (task.queue_class, task.schedule, task.service) == (
        "scheduled",
        "job",
        "tick",
    )
    assert scheduler.run_due() == []  # the same instant again: nothing


def test_two_schedulers_on_one_store_make_one_task_per_fire(
    scheduler_for: SchedulerFactory,
    make_engine: EngineFactory,
    idle_engine: Engine,
) -> None:
    other = make_engine(serve=False)  # its own SQLite connection pool
    clock_a, clock_b = FakeClock(), FakeClock()
    a = scheduler_for(clock=clock_a)
    b = scheduler_for(engine=other, clock=clock_b)
    start, end = at("2026-11-01T03:00Z"), at("2026-11-01T09:00Z")
    for cron in ("0 * * * *", "30 1 * * *", "*/15 * * * *"):
        a.add(schedule_name(cron), cron, "America/New_York", "tick", now=start - 1)
    stale_found = 0
    now = start
    while now < end:
        clock_a.now, clock_b.now = now, now + 7
        # B reads what is due, A serves it all, then B serves what it read.
        stale = b.schedules.due(now)
        made_a = a.run_due()
        assert all(s.created for s in made_a)
        for record in stale:
            made_b = b.run_schedule(record, now + 7)
            assert not any(s.created for s in made_b)
            stale_found += len(made_b)
        # And plain interleaved passes, each of the two first in turn.
        first, second = (a, b) if int(now) % 120 else (b, a)
        assert first.run_due() + second.run_due() == []
        now += 60
    assert stale_found > 0  # the race above did happen
    assert fire_times(idle_engine, schedule_name("0 * * * *")) == every(
        "2026-11-01T03:00Z", "2026-11-01T08:00Z"
    )
    assert fire_times(idle_engine, schedule_name("30 1 * * *")) == [
        at("2026-11-01T05:30Z")
    ]
    quarter = fire_times(idle_engine, schedule_name("*/15 * * * *"))
    assert quarter == every("2026-11-01T03:00Z", "2026-11-01T08:45Z", 900)


def test_restart_in_the_repeated_hour_does_not_fire_again(
    scheduler_for: SchedulerFactory, make_engine: EngineFactory, idle_engine: Engine
) -> None:
    clock = FakeClock()
    first = scheduler_for(clock=clock)
    for cron in ("30 1 * * *", "0 * * * *"):
        first.add(
            schedule_name(cron),
            cron,
            "America/New_York",
            "tick",
            now=at("2026-11-01T03:59Z"),
        )
    now = at("2026-11-01T04:00Z")
    while now <= at("2026-11-01T05:40Z"):  # to 01:40 EDT
        clock.now = now
        first.run_due()
        now += 60
    idle_engine.close()
    # A new engine and scheduler, from 01:01 EST (the repeated hour) on.
    engine = make_engine(serve=False)
    second = scheduler_for(engine=engine, clock=clock)
    now = at("2026-11-01T06:01Z")
    while now <= at("2026-11-01T08:00Z"):
        clock.now = now
        second.run_due()
        now += 60
    assert fire_times(engine, schedule_name("30 1 * * *")) == [at("2026-11-01T05:30Z")]
    assert fire_times(engine, schedule_name("0 * * * *")) == every(
        "2026-11-01T04:00Z", "2026-11-01T08:00Z"
    )
    assert second.get(schedule_name("30 1 * * *")).next_fire_at == at(
        "2026-11-02T06:30Z"
    )


@pytest.mark.parametrize("misfire", ["catch_up_once", "skip"])
def test_crash_between_submit_and_advance_makes_no_second_task(
    scheduler_for: SchedulerFactory,
    make_engine: EngineFactory,
    idle_engine: Engine,
    misfire: str,
) -> None:
    clock = FakeClock(at("2026-11-01T05:00Z"))
    first = scheduler_for(clock=clock)
    first.add("nightly", "30 1 * * *", "America/New_York", "tick", misfire=misfire)

    def store_gone(*_args: object) -> bool:
        raise StoreUnavailable("the store is unavailable: disk I/O error")

    first.schedules.claim_fire = store_gone  # type: ignore[method-assign]
    clock.now = at("2026-11-01T05:30Z")  # 01:30 EDT
    first.run_due()  # submits, then fails to move the schedule on: "crashes"
    assert fire_times(idle_engine, "nightly") == [at("2026-11-01T05:30Z")]
    assert first.get("nightly").next_fire_at == at("2026-11-01T05:30Z")
    # Restarted at 01:35 EST, in the repeated hour, long after the fire.
    second = scheduler_for(engine=make_engine(serve=False), clock=clock)
    clock.now = at("2026-11-01T06:35Z")
    assert not any(s.created for s in second.run_due())
    assert fire_times(idle_engine, "nightly") == [at("2026-11-01T05:30Z")]
    record = second.get("nightly")
    assert record.next_fire_at == at("2026-11-02T06:30Z")


@pytest.mark.parametrize(
    ("misfire", "expected"),
    [("catch_up_once", ["2026-03-19T08:00Z"]), ("skip", [])],
)
def test_engine_down_three_days(
    scheduler_for: SchedulerFactory,
    idle_engine: Engine,
    misfire: str,
    expected: list[str],
) -> None:
    clock = FakeClock(at("2026-03-16T07:00Z"))  # Monday 08:00 CET
    scheduler = scheduler_for(clock=clock, tick=1)
    scheduler.add("daily", "0 9 * * *", "Europe/Berlin", "tick", misfire=misfire)
    # Down until Thursday 12:00: Monday to Thursday 09:00 were all missed.
    clock.now = at("2026-03-19T11:00Z")
    scheduler.run_due()
    assert fire_times(idle_engine, "daily") == [at(e) for e in expected]
    record = scheduler.get("daily")
    assert record.next_fire_at == at("2026-03-20T08:00Z")  # Friday 09:00
    assert record.next_fire_at > clock.now
    # From then on, on time again.
    clock.now = at("2026-03-20T08:00:30Z")
    scheduler.run_due()
    assert fire_times(idle_engine, "daily") == [
        at(e) for e in [*expected, "2026-03-20T08:00Z"]
    ]


def test_missed_means_later_than_tick_plus_grace(
    scheduler_for: SchedulerFactory, idle_engine: Engine
) -> None:
    clock = FakeClock(at("2026-05-01T00:00Z"))
    scheduler = scheduler_for(clock=clock, tick=30, grace=60)
    assert scheduler.late_after == 90
    scheduler.add("on-time", "0 6 * * *", "UTC", "tick", misfire="skip")
    scheduler.add("too-late", "0 7 * * *", "UTC", "tick", misfire="skip")
    clock.now = at("2026-05-01T06:00Z") + 90  # exactly tick + grace late
    scheduler.run_due()
    clock.now = at("2026-05-01T07:00Z") + 91  # one second more
    scheduler.run_due()
    assert fire_times(idle_engine, "on-time") == [at("2026-05-01T06:00Z")]
    assert fire_times(idle_engine, "too-late") == []
    assert scheduler.get("too-late").next_fire_at == at("2026-05-02T07:00Z")


def test_catch_up_keeps_on_time_fires(
    scheduler_for: SchedulerFactory, idle_engine: Engine
) -> None:
    # Down for two hours of a quarter-hourly schedule, back 30 s after a fire:
    # one task for the latest missed fire, one for the fire that is on time.
    clock = FakeClock(at("2026-05-01T00:00Z"))
    scheduler = scheduler_for(clock=clock, tick=1)
    scheduler.add("q", "*/15 * * * *", "UTC", "tick")
    clock.now = at("2026-05-01T02:00:30Z")
    scheduler.run_due()
    assert fire_times(idle_engine, "q") == [
        at("2026-05-01T01:45Z"),
        at("2026-05-01T02:00Z"),
    ]


def test_pause_resume_remove_and_compare_and_set(
    scheduler_for: SchedulerFactory, idle_engine: Engine
) -> None:
    clock = FakeClock(at("2026-05-01T00:00Z"))
    scheduler = scheduler_for(clock=clock)
    scheduler.add("h", "0 * * * *", "UTC", "tick")
    assert scheduler.pause("h").paused
    clock.now = at("2026-05-01T01:00Z")
    assert scheduler.run_due() == []
    clock.now = at("2026-05-01T03:10Z")
    resumed = scheduler.resume("h")
    assert not resumed.paused
    assert resumed.next_fire_at == at("2026-05-01T04:00Z")  # no make-up fires
    assert scheduler.run_due() == []
    clock.now = at("2026-05-01T04:00Z")
    assert len(scheduler.run_due()) == 1
    store = scheduler.schedules
    # Compare-and-set: only from the fire time that is there.
    current = store.require("h").next_fire_at
    assert current == at("2026-05-01T05:00Z")
    assert not store.claim_fire("h", current - HOUR, current + HOUR, None)
    assert store.require("h").next_fire_at == current
    assert store.claim_fire("h", current, current + HOUR, 123.0)
    assert store.require("h").next_fire_at == current + HOUR
    assert store.require("h").last_fire_at == 123.0
    assert scheduler.remove("h").name == "h"
    assert scheduler.list() == []
    for action in (scheduler.remove, scheduler.pause, scheduler.resume, scheduler.get):
        with pytest.raises(ScheduleNotFound, match="'h'"):
            action("h")
    assert not store.claim_fire("h", current + HOUR, current + 2 * HOUR, None)
    assert fire_times(idle_engine, "h") == [at("2026-05-01T04:00Z")]


def test_a_fire_whose_service_is_gone_is_skipped(
    scheduler_for: SchedulerFactory, idle_engine: Engine
) -> None:
    clock = FakeClock(at("2026-05-01T00:00Z"))
    scheduler = scheduler_for(clock=clock)
    scheduler.add("pinned", "0 * * * *", "UTC", "tick@1.0.0")
    scheduler.add("ok", "0 * * * *", "UTC", "tick")
    # The pinned version disappears (a registry that lost it).
    with idle_engine.store._write() as conn:  # type: ignore[attr-defined]
        conn.exec_driver_sql(
            "UPDATE schedules SET service = 'tick@9.9.9' WHERE name = 'pinned'"
        )
    clock.now = at("2026-05-01T01:00Z")
    made = scheduler.run_due()
    assert [s.task.schedule for s in made] == ["ok"]
    # The refused fire does not block the schedule: it moved on.
    assert scheduler.get("pinned").next_fire_at == at("2026-05-01T02:00Z")
    assert scheduler.get("pinned").last_fire_at is None


# ---------------------------------------------------------------------------
# a serving engine runs the scheduler


def test_serving_engine_makes_and_runs_scheduled_tasks(
    make_engine: EngineFactory,
    make_service: ServiceFactory,
    wait_until: Callable[..., bool],
) -> None:
    make_service(
        "tock",
        "def run(inputs):\n    return {'ok': inputs['v']}\n",
        entrypoint="main.py:run",
    )
    engine = make_engine(serve=True, schedules={"tick": 0.05})
    scheduler = engine.scheduler
    assert scheduler is not None and scheduler.running
    scheduler.add("soon", "* * * * *", "UTC", "tock", {"v": 5})
    record = scheduler.get("soon")
    # Bring the first fire time forward to now instead of waiting a minute.
    fire = float(int(time.time()))
    assert scheduler.schedules.claim_fire("soon", record.next_fire_at, fire, None)
    assert wait_until(lambda: scheduled_tasks(engine, "soon"), within=10)
    task = scheduled_tasks(engine, "soon")[0]
    assert task.idempotency_key == fire_key("soon", fire)
    done = engine.wait(task.id, timeout=20)
    assert done.state == "succeeded", (done.state, done.error)
    assert done.result_value() == {"ok": 5}
    thread_owner = scheduler
    engine.stop()
    assert engine.scheduler is None and not thread_owner.running


# ---------------------------------------------------------------------------
# the command line, as a user runs it


@pytest.mark.acceptance
def test_cli_schedules(
    home: Home, home_store: Store, make_service: ServiceFactory
) -> None:
    # The home and the service are made in-process; every schedules command
    # runs as its own process, as a user runs it.
    make_service(
        "greet",
        "def run(inputs):\n    return inputs\n",
        entrypoint="main.py:run",
        input_schema={"type": "object", "required": ["who"]},
    )
    env = {**os.environ, "KOS_SEE_HOME": str(home.root), "COLUMNS": "200"}

    def run(*args: str, expect: int = 0) -> Any:
        done = subprocess.run(
            [sys.executable, "-m", "kos_see.cli", "schedules", *args, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == expect, (args, done.stdout, done.stderr)
        return json.loads(done.stdout)

    added = run(
        "add", "nightly", "--cron", "30 2 * * *", "--tz", "America/New_York",
        "--service", "greet", "--input", '{"who": "world"}', "--misfire", "skip",
    )  # fmt: skip
    expected_next = CronTimes("30 2 * * *", "America/New_York").next_after(
        added["created_at"]
    )
    assert added["next_fire_at"] == expected_next
    assert added["next_fire_utc"] == utc_iso(expected_next)
    assert added["next_fire_local"] == local_iso(expected_next, "America/New_York")
    assert (added["misfire"], added["paused"], added["input"]) == (
        "skip",
        False,
        {"who": "world"},
    )

    bad_cron = run(
        "add", "b", "--cron", "61 * * * *", "--tz", "UTC", "--service", "greet",
        "--input", '{"who": 1}', expect=3,
    )  # fmt: skip
    assert bad_cron["error"] == "invalid_schedule"
    assert "'61 * * * *'" in bad_cron["message"]
    bad_zone = run(
        "add", "b", "--cron", "0 * * * *", "--tz", "Mars/Olympus",
        "--service", "greet", "--input", '{"who": 1}', expect=3,
    )  # fmt: skip
    assert bad_zone["error"] == "invalid_schedule"
    assert "'Mars/Olympus'" in bad_zone["message"]

    assert run("pause", "nightly")["paused"] is True
    listed = run("list")
    assert [(s["name"], s["paused"]) for s in listed] == [("nightly", True)]
    assert listed[0]["next_fire_local"] == added["next_fire_local"]
    assert run("remove", "nightly")["removed"] is True
    assert ScheduleStore(home_store).list() == []
