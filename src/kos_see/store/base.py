"""The store interface: the engine's source of truth for services, tasks,
attempts and events. Every backend implements all of it with the same
meaning; the SQL backend in ``sql.py`` serves SQLite and is written so that a
PostgreSQL backend changes only how rows are claimed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kos_see.models import (
    AttemptRecord,
    AttemptWrite,
    Event,
    Lease,
    NewTask,
    ServiceRecord,
    TaskRecord,
)
from kos_see.queue.fair import Rules
from kos_see.queue.stats import QueueStats
from kos_see.states import TaskState


@dataclass(frozen=True)
class RefusedWrite:
    """A write the store refused because its lease epoch is no longer current."""

    write: AttemptWrite
    current_epoch: int | None
    current_state: TaskState | None


@dataclass(frozen=True)
class Renewal:
    lost: frozenset[str]  # task ids whose lease this owner no longer holds
    cancel_requested: frozenset[str]  # held tasks that someone asked to cancel


@dataclass(frozen=True)
class TaskFilter:
    state: TaskState | None = None
    service: str | None = None
    tenant: str | None = None
    limit: int = 50
    offset: int = 0


class Store(ABC):
    @abstractmethod
    def close(self) -> None: ...

    # services

    @abstractmethod
    def add_service(self, record: ServiceRecord) -> None:
        """Register a version; the caller has checked it is not yet registered."""

    @abstractmethod
    def get_service(self, name: str, version: str | None) -> ServiceRecord | None:
        """One version, or with ``version=None`` the latest registered."""

    @abstractmethod
    def latest_version(self, name: str) -> str | None:
        """The most recently registered version of ``name``."""

    @abstractmethod
    def list_services(self) -> list[ServiceRecord]: ...

    # tasks

    @abstractmethod
    def create_task(self, task: NewTask) -> tuple[TaskRecord, bool]:
        """Insert as queued with its events; with an idempotency key already
        used by the tenant, return that task and False instead."""

    @abstractmethod
    def get_task(self, task_id: str) -> TaskRecord | None: ...

    @abstractmethod
    def list_tasks(self, where: TaskFilter) -> list[TaskRecord]: ...

    @abstractmethod
    def cancel_task(self, task_id: str, now: float) -> TaskRecord:
        """Cancel a waiting task at once; mark a leased or running one so
        that its worker stops it. Raises TaskNotFound."""

    @abstractmethod
    def state_counts(self) -> dict[str, int]: ...

    @abstractmethod
    def retry_task(self, task_id: str, now: float, attempts: int) -> TaskRecord:
        """Requeue a dead task (an operator's retry) with ``attempts`` more
        attempts. Raises TaskNotFound, or RequestRefused if it is not dead."""

    @abstractmethod
    def cpu_used(self, since: float) -> dict[str, float]:
        """CPU seconds of attempts that ended since ``since``, per tenant."""

    # leases and attempts

    @abstractmethod
    def lease(
        self,
        owner: str,
        limit: int,
        now: float,
        lease_seconds: float,
        rules: Rules | None = None,
    ) -> list[Lease]:
        """Claim up to ``limit`` ready tasks in the queue manager's order
        (``queue.fair``) under ``rules``, each with a new epoch."""

    @abstractmethod
    def renew(
        self,
        owner: str,
        held: Sequence[tuple[str, int]],
        now: float,
        lease_seconds: float,
    ) -> Renewal:
        """Extend the leases in ``held`` (task id, epoch) that are still current."""

    @abstractmethod
    def apply(self, writes: Sequence[AttemptWrite]) -> list[RefusedWrite]:
        """Apply attempt writes in order in one transaction; writes whose epoch
        is superseded are refused and returned, the rest still apply."""

    @abstractmethod
    def next_ready_at(self) -> float | None:
        """The earliest not-before time of any queued task."""

    @abstractmethod
    def rescue(
        self, now: float, foreign_owners_too: bool = False, owner: str = ""
    ) -> list[str]:
        """Return expired leases (or, with ``foreign_owners_too``, every lease
        not held by ``owner``) to the queue as a new attempt, or to ``dead``
        when the task has used all its attempts."""

    @abstractmethod
    def attempts(self, task_id: str) -> list[AttemptRecord]: ...

    def provenance_records(self, task_id: str) -> list[dict[str, Any]]:
        """The task's provenance records (task_id, attempt, created_at,
        statement_digest, envelope), in attempt order."""
        raise NotImplementedError

    # events

    @abstractmethod
    def events(
        self, task_id: str, after: int = 0, limit: int = 1000
    ) -> list[Event]: ...

    @abstractmethod
    def events_since(self, after: int, limit: int = 1000) -> list[Event]:
        """Events of every task with an id above ``after``, in id order: what
        the relay copies to Redis Streams."""

    @abstractmethod
    def last_event_id(self) -> int:
        """The highest event id stored (0 when none)."""

    # queue statistics

    @abstractmethod
    def queue_stats(
        self, now: float, rules: Rules, heads: int | None = None
    ) -> QueueStats:
        """What is queued per lane and tenant (depth, oldest age), what runs
        per tenant and service, CPU used per tenant in ``rules.cpu_window``,
        and why a lease under ``rules`` passes over each tenant with ready
        work. ``heads``: how many of a tenant's best tasks per lane a lease
        considers (``None``: all of them)."""
