"""Prometheus metrics, computed from the store at each scrape.

Every figure comes from the store's tasks, attempts and callback deliveries
tables, not from counters in memory. So the numbers are the same whichever
process (API server, serving engine, several workers) is scraped, survive
restarts, and need no multiprocess directory. Labels are bounded: a service
name (the registry's), a task state or an attempt outcome; never a task id.

Known shortcomings: each scrape aggregates the whole history in SQL, which
costs time in proportion to the tasks kept (fine for thousands, to be
replaced by rollups once the store prunes old tasks); queue time is measured
from submission to the first attempt's start, so a deferred task's wait
includes its deferral; and dependency fetch times live in each attempt's
``dependencies`` JSON list, so ``kos_see_dependency_fetch_seconds`` reads
the lists of every attempt that fetched something and buckets them here,
not in SQL (JSON functions differ between SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from kos_see.states import TERMINAL, TaskState
from kos_see.store import Store
from kos_see.store.schema import attempts, callback_deliveries, tasks

QUEUE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
MEMORY_BUCKETS = tuple(2**n * 1024 * 1024 for n in range(2, 14))  # 4 MiB .. 8 GiB
FETCH_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        with self.store._read(snapshot=True) as conn:  # type: ignore[attr-defined]
            yield from self._tasks(conn)
            yield from self._attempts(conn)
            yield self._histogram(
                conn,
                "kos_see_task_queue_seconds",
                "Time from submission to the start of a task's first attempt.",
                attempts.c.started_at - tasks.c.created_at,
                QUEUE_BUCKETS,
                attempts.c.number == 1,
            )
            yield self._histogram(
                conn,
                "kos_see_attempt_run_seconds",
                "Wall time of each ended attempt.",
                attempts.c.ended_at - attempts.c.started_at,
                RUN_BUCKETS,
                attempts.c.ended_at.is_not(None),
            )
            yield self._histogram(
                conn,
                "kos_see_attempt_peak_memory_bytes",
                "Peak resident memory of each ended attempt.",
                attempts.c.peak_rss_kb * 1024,
                MEMORY_BUCKETS,
                attempts.c.peak_rss_kb.is_not(None),
            )
            yield from self._callbacks(conn)
            yield self._fetches(conn)

    def _tasks(self, conn: Any) -> Iterator[Metric]:
        by_state = GaugeMetricFamily(
            "kos_see_tasks", "Tasks in the store by state.", labels=["state"]
        )
        counts = dict.fromkeys((s.value for s in TaskState), 0)
        for state, count in conn.execute(
            sa.select(tasks.c.state, sa.func.count()).group_by(tasks.c.state)
        ):
            counts[state] = count
        for state, count in counts.items():
            by_state.add_metric([state], count)
        yield by_state

        submitted = CounterMetricFamily(
            "kos_see_tasks_submitted",
            "Tasks submitted, by service.",
            labels=["service"],
        )
        finished = CounterMetricFamily(
            "kos_see_tasks_finished",
            "Tasks that ended, by service and final state (success and failure "
            "counts).",
            labels=["service", "state"],
        )
        query = sa.select(tasks.c.service, tasks.c.state, sa.func.count()).group_by(
            tasks.c.service, tasks.c.state
        )
        totals: dict[str, int] = {}
        for service, state, count in conn.execute(query):
            totals[service] = totals.get(service, 0) + count
            if TaskState(state) in TERMINAL:
                finished.add_metric([service, state], count)
        for service, count in totals.items():
            submitted.add_metric([service], count)
        yield submitted
        yield finished

    def _attempts(self, conn: Any) -> Iterator[Metric]:
        started = CounterMetricFamily(
            "kos_see_attempts_started", "Attempts started.", labels=["service"]
        )
        ended = CounterMetricFamily(
            "kos_see_attempts_finished",
            "Attempts that ended, by outcome (timed_out gives the timeout rate).",
            labels=["service", "outcome"],
        )
        retries = CounterMetricFamily(
            "kos_see_attempts_retried",
            "Attempts after a task's first (the retry rate).",
            labels=["service"],
        )
        cpu = CounterMetricFamily(
            "kos_see_attempt_cpu_seconds",
            "CPU seconds used by ended attempts.",
            labels=["service"],
        )
        last_start = GaugeMetricFamily(
            "kos_see_attempt_last_start_timestamp_seconds",
            "When the newest attempt of a service started.",
            labels=["service"],
        )
        last_end = GaugeMetricFamily(
            "kos_see_attempt_last_end_timestamp_seconds",
            "When the newest ended attempt of a service ended.",
            labels=["service"],
        )
        joined = attempts.join(tasks, tasks.c.id == attempts.c.task_id)
        query = (
            sa.select(
                tasks.c.service,
                attempts.c.outcome,
                sa.func.count(),
                sa.func.sum(sa.case((attempts.c.number > 1, 1), else_=0)),
                sa.func.coalesce(sa.func.sum(attempts.c.cpu_seconds), 0.0),
                sa.func.max(attempts.c.started_at),
                sa.func.max(attempts.c.ended_at),
            )
            .select_from(joined)
            .group_by(tasks.c.service, attempts.c.outcome)
        )
        per_service: dict[str, list[float]] = {}
        for service, outcome, count, retried, cpu_s, start, end in conn.execute(query):
            acc = per_service.setdefault(service, [0, 0, 0.0, 0.0, 0.0])
            acc[0] += count
            acc[1] += retried or 0
            acc[2] += cpu_s or 0.0
            acc[3] = max(acc[3], start or 0.0)
            acc[4] = max(acc[4], end or 0.0)
            if outcome is not None:
                ended.add_metric([service, outcome], count)
        for service, (count, retried, cpu_s, start, end) in per_service.items():
            started.add_metric([service], count)
            retries.add_metric([service], retried)
            cpu.add_metric([service], cpu_s)
            last_start.add_metric([service], start)
            if end:
                last_end.add_metric([service], end)
        yield from (started, ended, retries, cpu, last_start, last_end)

    def _histogram(
        self,
        conn: Any,
        name: str,
        documentation: str,
        value: Any,
        buckets: tuple[float, ...],
        condition: Any,
    ) -> Metric:
        family = HistogramMetricFamily(name, documentation, labels=["service"])
        columns = [
            sa.func.sum(sa.case((value <= bound, 1), else_=0)) for bound in buckets
        ]
        query = (
            sa.select(tasks.c.service, sa.func.count(), sa.func.sum(value), *columns)
            .select_from(attempts.join(tasks, tasks.c.id == attempts.c.task_id))
            .where(condition)
            .group_by(tasks.c.service)
        )
        for service, count, total, *cumulative in conn.execute(query):
            pairs = [
                (_le(bound), float(c or 0))
                for bound, c in zip(buckets, cumulative, strict=True)
            ]
            pairs.append(("+Inf", float(count)))
            family.add_metric([service], pairs, float(total or 0.0))
        return family

    def _callbacks(self, conn: Any) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "kos_see_callback_deliveries",
            "Webhook delivery attempts, by outcome.",
            labels=["outcome"],
        )
        answered = sa.and_(
            callback_deliveries.c.status >= 200, callback_deliveries.c.status < 300
        )
        query = sa.select(
            sa.func.count(), sa.func.sum(sa.case((answered, 1), else_=0))
        ).select_from(callback_deliveries)
        count, delivered = conn.execute(query).one()
        family.add_metric(["delivered"], delivered or 0)
        family.add_metric(["failed"], (count or 0) - (delivered or 0))
        yield family

    def _fetches(self, conn: Any) -> Metric:
        """Each dependency fetch of every attempt, by service and kind."""
        query = (
            sa.select(tasks.c.service, attempts.c.dependencies)
            .select_from(attempts.join(tasks, tasks.c.id == attempts.c.task_id))
            .where(attempts.c.dependencies.is_not(None))
        )
        seconds: dict[tuple[str, str], list[float]] = {}
        for service, text in conn.execute(query):
            for fetched in _fetched(text):
                key = (service, str(fetched.get("kind")))
                seconds.setdefault(key, []).append(float(fetched["fetch_seconds"]))
        family = HistogramMetricFamily(
            "kos_see_dependency_fetch_seconds",
            "Time to fetch each of an attempt's dependencies, by kind.",
            labels=["service", "kind"],
        )
        for labels, values in sorted(seconds.items()):
            pairs = [
                (_le(bound), float(sum(v <= bound for v in values)))
                for bound in FETCH_BUCKETS
            ]
            pairs.append(("+Inf", float(len(values))))
            family.add_metric(list(labels), pairs, sum(values))
        return family


def _fetched(text: str) -> list[dict[str, Any]]:
    """An attempt's fetched dependencies; a row that is not the expected JSON
    list counts nothing rather than failing the scrape."""
    try:
        found = json.loads(text)
    except ValueError:
        return []
    if not isinstance(found, list):
        return []
    return [
        f
        for f in found
        if isinstance(f, dict) and isinstance(f.get("fetch_seconds"), int | float)
    ]


def _le(bound: float) -> str:
    return repr(float(bound))


def metrics_registry(store: Store) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
