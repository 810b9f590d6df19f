"""The scheduler: makes one task per nominal fire time of each cron schedule.

Every ``schedules.tick`` it looks for schedules whose next fire time has come
and, for each fire time to serve, submits a task through the dispatcher like
any other interface, with ``schedule=NAME`` (so its queue class is
``scheduled``) and the idempotency key ``schedule:NAME:FIRE_TIME`` (the fire
time in UTC, ``2026-03-08T07:00:00Z``). The store's unique (tenant,
idempotency key) index makes that exactly one task per (schedule, fire time),
whoever submits it and however often: two schedulers on one store, or a
scheduler that restarts between submitting and moving the schedule on. Only
then is the schedule's next fire time moved, by a compare-and-set, so a crash
in between repeats a submission (which finds the task made) and never loses
a fire.

A fire time ``f`` is *missed* when a scheduler first finds it due more than
``tick + grace`` after it, that is at a time ``now > f + tick + grace``
(``grace``: 60 s by default), which means no scheduler ran then: the engine
was down. Fire times found due within that bound are on time and each makes a
task. Missed ones follow the schedule's misfire policy: ``catch_up_once``
makes one task, for the latest missed fire time; ``skip`` makes none. Either
way the next fire time becomes the first one after now.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kos_see.config import SchedulesConfig
from kos_see.dispatcher import Dispatcher, SubmitRequest, Submitted, check_identity
from kos_see.errors import IdempotencyConflict, KosSeeError, RequestRefused
from kos_see.queue.schedules import (
    CronTimes,
    ScheduleInvalid,
    check_misfire,
    check_name,
    utc_iso,
)
from kos_see.store.schedule_store import ScheduleRecord, ScheduleStore

if TYPE_CHECKING:
    from kos_see.engine import Engine

log = logging.getLogger(__name__)

Clock = Callable[[], float]
DEFAULT_GRACE = 60.0
BATCH = 100


def fire_key(name: str, fire_time: float) -> str:
    """The idempotency key of the task for one fire time of a schedule."""
    return f"schedule:{name}:{utc_iso(fire_time)}"


class Scheduler:
    def __init__(
        self,
        dispatcher: Dispatcher,
        schedules: ScheduleStore,
        config: SchedulesConfig,
        clock: Clock = time.time,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self.dispatcher = dispatcher
        self.schedules = schedules
        self.config = config
        self.clock = clock
        self.grace = grace
        self._times: dict[tuple[str, str], CronTimes] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_engine(cls, engine: Engine, clock: Clock = time.time) -> Scheduler:
        return cls(
            engine.dispatcher,
            ScheduleStore(engine.store),
            engine.config.schedules,
            clock=clock,
        )

    @property
    def late_after(self) -> float:
        """A fire time found due more than this long after it was missed."""
        return self.config.tick + self.grace

    def times(self, record: ScheduleRecord) -> CronTimes:
        key = (record.cron, record.timezone)
        times = self._times.get(key)
        if times is None:
            times = self._times[key] = CronTimes(record.cron, record.timezone)
        return times

    # managing schedules

    def add(
        self,
        name: str,
        cron: str,
        timezone: str,
        service: str,
        input: Any = None,
        *,
        tenant: str = "default",
        principal: str = "local",
        priority: int | None = None,
        misfire: str | None = None,
        now: float | None = None,
    ) -> ScheduleRecord:
        """Validate and store a schedule; its first fire time is the first
        one after ``now``. The service must be registered and the input must
        match its schema now (both are checked again at every fire)."""
        now = self.clock() if now is None else now
        check_name(name)
        check_identity(tenant, principal)
        times = CronTimes(cron, timezone)
        policy = check_misfire(misfire or self.config.misfire)
        record, input_text = self.dispatcher.check(
            service, {} if input is None else input, priority
        )
        next_fire = times.next_after(now)
        if next_fire is None:
            raise ScheduleInvalid(
                f"cron expression {cron!r} never fires", cron=cron, schedule=name
            )
        added = self.schedules.add(
            ScheduleRecord(
                name=name,
                cron=times.cron,
                timezone=timezone,
                service=service,
                input=input_text,
                tenant=tenant,
                principal=principal,
                priority=priority,
                queue_class=None,
                misfire=policy,
                paused=False,
                next_fire_at=next_fire,
                last_fire_at=None,
                created_at=now,
            )
        )
        log.info(
            "schedule added",
            extra={"action": "schedule_added", "schedule": name, "cron": times.cron},
        )
        return added

    def get(self, name: str) -> ScheduleRecord:
        return self.schedules.require(name)

    def list(self) -> list[ScheduleRecord]:
        return self.schedules.list()

    def pause(self, name: str) -> ScheduleRecord:
        return self.schedules.pause(name)

    def resume(self, name: str, now: float | None = None) -> ScheduleRecord:
        """Unpause; the next fire time is the first one after now."""
        record = self.schedules.require(name)
        now = self.clock() if now is None else now
        return self.schedules.resume(name, self.times(record).next_after(now))

    def remove(self, name: str) -> ScheduleRecord:
        return self.schedules.remove(name)

    # firing

    def run_due(self, now: float | None = None) -> list[Submitted]:
        """One pass: serve every schedule that is due at ``now``."""
        now = self.clock() if now is None else now
        made: list[Submitted] = []
        while True:
            batch = self.schedules.due(now, limit=BATCH)
            moved = 0
            for record in batch:
                try:
                    submitted, advanced = self._serve(record, now)
                except KosSeeError as exc:
                    log.warning(
                        "schedule not served",
                        extra={
                            "action": "schedule_error",
                            "schedule": record.name,
                            "reason": exc.message,
                        },
                    )
                    continue
                made.extend(submitted)
                moved += advanced
            if len(batch) < BATCH or not moved:
                return made

    def run_schedule(self, record: ScheduleRecord, now: float) -> list[Submitted]:
        """Serve one schedule as read in ``record`` (possibly stale): submit
        the tasks of its due fire times and move it on if nobody did."""
        return self._serve(record, now)[0]

    def due_fires(self, record: ScheduleRecord, now: float) -> list[float]:
        """The fire times of ``record`` that a pass at ``now`` makes tasks for,
        after the misfire policy: those on time, and with ``catch_up_once``
        the latest missed one."""
        first = record.next_fire_at
        if first is None or first > now:
            return []
        times = self.times(record)
        cutoff = now - self.late_after
        if first >= cutoff:
            return [first, *times.between(first, now)]
        on_time = times.between(cutoff, now, include_start=True)
        if record.misfire == "skip":
            return on_time
        latest = times.latest(first, cutoff)
        return [first if latest is None else latest, *on_time]

    def _serve(self, record: ScheduleRecord, now: float) -> tuple[list[Submitted], int]:
        if record.next_fire_at is None or record.next_fire_at > now:
            return [], 0  # not due at this clock (a stale read): leave it be
        fires = self.due_fires(record, now)
        made: list[Submitted] = []
        last = record.last_fire_at
        for fire_time in fires:
            submitted = self._submit(record, fire_time, now)
            if submitted is not None:
                made.append(submitted)
                last = fire_time if last is None else max(last, fire_time)
        next_fire = self.times(record).next_after(now)
        advanced = self.schedules.claim_fire(
            record.name, record.next_fire_at, next_fire, last
        )
        log.info(
            "schedule served" if advanced else "schedule served by another scheduler",
            extra={
                "action": "schedule_fired",
                "schedule": record.name,
                "fires": [utc_iso(f) for f in fires],
                "new_tasks": sum(s.created for s in made),
                "next_fire": None if next_fire is None else utc_iso(next_fire),
            },
        )
        return made, int(advanced)

    def _submit(
        self, record: ScheduleRecord, fire_time: float, now: float
    ) -> Submitted | None:
        request = SubmitRequest(
            service=record.service,
            input=record.input_value(),
            tenant=record.tenant,
            principal=record.principal,
            priority=record.priority,
            queue_class=None,
            idempotency_key=fire_key(record.name, fire_time),
            schedule=record.name,
        )
        try:
            return self.dispatcher.submit(request, now=now)
        except IdempotencyConflict as exc:
            # A task for this fire time exists, made from other input: a
            # schedule removed and added again under the same name.
            log.info(
                "fire already has a task",
                extra={
                    "action": "schedule_fire_exists",
                    "schedule": record.name,
                    "reason": exc.message,
                },
            )
        except RequestRefused as exc:
            # The service is gone or its schema no longer takes the input:
            # this fire makes no task, the schedule goes on.
            log.warning(
                "schedule fire refused",
                extra={
                    "action": "schedule_fire_refused",
                    "schedule": record.name,
                    "fire_time": utc_iso(fire_time),
                    "reason": exc.message,
                },
            )
        return None

    # the thread of a serving engine

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name="kos-see-scheduler", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_due()
            except Exception:  # keep scheduling; the next tick tries again
                log.exception(
                    "scheduler pass failed", extra={"action": "scheduler_error"}
                )
            self._stop.wait(self.config.tick)
