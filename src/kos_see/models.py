"""Records that pass between the dispatcher, the store and the worker."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from kos_see.states import TaskState


def new_task_id() -> str:
    """Time-ordered and unguessable: 12 hex digits of milliseconds, 12 random."""
    return f"{int(time.time() * 1000):012x}{os.urandom(6).hex()}"


@dataclass(frozen=True)
class ServiceRecord:
    name: str
    version: str
    digest: str
    path: str
    manifest: dict[str, Any]
    registered_at: float

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class NewTask:
    """A validated request, ready to enqueue."""

    id: str
    service: str
    version: str
    digest: str
    tenant: str
    principal: str
    queue_class: str  # as asked: realtime, batch, deferred or scheduled
    lane: str  # where it waits now: its run class, or deferred until not_before
    run_class: str  # realtime or batch: how it is ordered once due
    priority: int
    rank_at: float
    schedule: str | None
    input: str  # canonical JSON text
    input_digest: str
    idempotency_key: str | None
    not_before: float
    timeout: float
    max_attempts: int
    created_at: float
    secrets: str | None = None  # JSON list of granted secret names
    request_digest: str | None = None  # the signed request's digest; None: unsigned
    runner: str | None = None  # forced at submit (policy); None: the manifest's


@dataclass(frozen=True)
class TaskRecord:
    id: str
    service: str
    version: str
    digest: str
    tenant: str
    principal: str
    queue_class: str
    lane: str
    run_class: str
    priority: int
    rank_at: float
    schedule: str | None
    input: str
    input_digest: str
    idempotency_key: str | None
    state: TaskState
    created_at: float
    updated_at: float
    not_before: float
    timeout: float
    max_attempts: int
    attempts: int
    lease_owner: str | None
    lease_epoch: int
    lease_expires_at: float | None
    cancel_requested: bool
    progress_done: float | None
    progress_total: float | None
    progress_message: str | None
    result: str | None
    error: str | None
    error_kind: str | None
    finished_at: float | None
    secrets: str | None = None
    request_digest: str | None = None
    runner: str | None = None
    outputs: str | None = None  # JSON: path under out/ -> {digest, size}

    def secret_names(self) -> list[str]:
        return [] if not self.secrets else list(json.loads(self.secrets))

    @property
    def terminal(self) -> bool:
        from kos_see.states import TERMINAL

        return self.state in TERMINAL

    def input_value(self) -> Any:
        return json.loads(self.input)

    def result_value(self) -> Any:
        return None if self.result is None else json.loads(self.result)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "version": self.version,
            "digest": self.digest,
            "tenant": self.tenant,
            "principal": self.principal,
            "queue_class": self.queue_class,
            "run_class": self.run_class,
            "schedule": self.schedule,
            "priority": self.priority,
            "state": self.state.value,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "not_before": self.not_before,
            "progress": {
                "done": self.progress_done,
                "total": self.progress_total,
                "message": self.progress_message,
            },
            "input": self.input_value(),
            "result": self.result_value(),
            "error": self.error,
            "error_kind": self.error_kind,
            "secrets": self.secret_names(),
            "signed": self.request_digest is not None,
            "request_digest": self.request_digest,
            "outputs": None if self.outputs is None else json.loads(self.outputs),
        }


@dataclass(frozen=True)
class Lease:
    """A worker's claim on one task for one attempt; ``epoch`` fences its writes."""

    task: TaskRecord
    epoch: int
    attempt: int
    owner: str
    expires_at: float

    @property
    def task_id(self) -> str:
        return self.task.id


@dataclass(frozen=True)
class Event:
    id: int
    task_id: str
    attempt: int
    at: float
    kind: str  # state, progress, log, output
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        # The event's own fields come last, so that data cannot replace them.
        return {
            **self.data,
            "id": self.id,
            "task_id": self.task_id,
            "attempt": self.attempt,
            "at": self.at,
            "kind": self.kind,
        }


@dataclass(frozen=True)
class AttemptRecord:
    task_id: str
    number: int
    epoch: int
    worker: str
    started_at: float
    ended_at: float | None
    outcome: str | None
    pid: int | None
    exit_code: int | None
    signal: int | None
    cpu_seconds: float | None
    peak_rss_kb: int | None
    stdout: str | None
    stderr: str | None
    stdout_bytes: int | None
    stderr_bytes: int | None
    events_dropped: int | None
    error: str | None
    isolation: str | None = None
    killed_by: str | None = None
    # JSON list of the dependencies fetched: kind, name, digest, fetch_seconds.
    dependencies: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# Writes of one attempt, each fenced by the lease epoch. The worker batches
# them; the store applies a batch in one transaction.


@dataclass(frozen=True)
class AttemptStarted:
    task_id: str
    epoch: int
    attempt: int
    worker: str
    pid: int
    at: float


@dataclass(frozen=True)
class AttemptEvents:
    task_id: str
    epoch: int
    attempt: int
    events: list[tuple[float, str, dict[str, Any]]]
    progress: tuple[float | None, float | None, str | None] | None = None


@dataclass(frozen=True)
class AttemptFinished:
    task_id: str
    epoch: int
    attempt: int
    at: float
    outcome: str  # succeeded, failed, timed_out, cancelled, lost, released
    next_state: TaskState
    not_before: float | None = None
    result: str | None = None
    error: str | None = None
    error_kind: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    cpu_seconds: float | None = None
    peak_rss_kb: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    events_dropped: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # The attempt's signed provenance record; None when it has none.
    provenance: ProvenanceWrite | None = None


@dataclass(frozen=True)
class ProvenanceWrite:
    """What an attempt fetched and made, and the signed statement of it; stored
    in the same transaction as the attempt's end."""

    dependencies: str  # JSON list: kind, name, path, digest, fetch_seconds
    outputs: str  # JSON object: path under out/ -> {digest, size}
    statement_digest: str
    envelope: str  # the DSSE envelope, JSON


AttemptWrite = AttemptStarted | AttemptEvents | AttemptFinished
