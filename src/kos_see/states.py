"""The task state machine of DESIGN.md, and nothing else."""

from __future__ import annotations

from enum import StrEnum

from kos_see.errors import IllegalTransition


class TaskState(StrEnum):
    RECEIVED = "received"  # accepted by the dispatcher, not yet visible to workers
    QUEUED = "queued"  # waiting for a worker (possibly until a not-before time)
    LEASED = "leased"  # claimed by a worker under a lease; not started yet
    RUNNING = "running"  # an attempt's process is running
    SUCCEEDED = "succeeded"  # the last attempt returned a result
    FAILED = "failed"  # the last attempt failed and no retry is left or allowed
    TIMED_OUT = "timed_out"  # the last attempt ran past its timeout, no retry left
    CANCELLED = "cancelled"  # cancelled by a request, queued or running
    DEAD = "dead"  # retries exhausted; waits in the dead letters for an operator


TERMINAL = frozenset(
    {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.TIMED_OUT,
        TaskState.CANCELLED,
        TaskState.DEAD,
    }
)

# Running and leased tasks may go back to queued: after a retryable failure
# (with a backoff), when their worker shuts down gracefully, or when the
# rescuer finds their lease expired.
_ALLOWED: dict[TaskState, frozenset[TaskState]] = {
    TaskState.RECEIVED: frozenset({TaskState.QUEUED, TaskState.CANCELLED}),
    TaskState.QUEUED: frozenset({TaskState.LEASED, TaskState.CANCELLED}),
    # Failed straight from leased: the attempt's process could not be launched.
    TaskState.LEASED: frozenset(
        {
            TaskState.RUNNING,
            TaskState.QUEUED,
            TaskState.FAILED,
            TaskState.CANCELLED,
            TaskState.DEAD,
        }
    ),
    TaskState.RUNNING: frozenset(
        {
            TaskState.SUCCEEDED,
            TaskState.FAILED,
            TaskState.TIMED_OUT,
            TaskState.CANCELLED,
            TaskState.QUEUED,
            TaskState.DEAD,
        }
    ),
    TaskState.SUCCEEDED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.TIMED_OUT: frozenset(),
    TaskState.CANCELLED: frozenset(),
    TaskState.DEAD: frozenset({TaskState.QUEUED}),  # an operator's retry
}


def allowed(source: TaskState, target: TaskState) -> bool:
    return target in _ALLOWED[source]


def check_transition(source: TaskState, target: TaskState) -> None:
    if not allowed(source, target):
        raise IllegalTransition(
            f"a task cannot go from {source.value!r} to {target.value!r}",
            source=source.value,
            target=target.value,
        )
