"""Which failures retry, and when.

A non-zero exit, a signal, a timeout and a lost worker retry by default; a
service may say its failure is final (``service.fail(..., retryable=False)``).
Once every attempt is used, a task that was allowed retries goes to ``dead``
(the dead letters, for an operator); one that was allowed none keeps the
state of its only failure.

Backoff is exponential with full jitter: the n-th retry waits a uniformly
random time in [0, min(cap, base * 2**(n-1))], so tasks that failed together
do not come back together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kos_see.states import TaskState

_FINAL = {
    "succeeded": TaskState.SUCCEEDED,
    "cancelled": TaskState.CANCELLED,
    "failed": TaskState.FAILED,
    "timed_out": TaskState.TIMED_OUT,
    "lost": TaskState.FAILED,
}


@dataclass(frozen=True)
class RetryPolicy:
    backoff: str = "exponential"  # exponential, fixed or none
    base: float = 1.0
    cap: float = 300.0

    def delay(self, retry_number: int, rng: random.Random) -> float:
        if self.backoff == "none":
            return 0.0
        if self.backoff == "fixed":
            return self.base
        ceiling = min(self.cap, self.base * 2 ** max(0, retry_number - 1))
        return rng.uniform(0.0, ceiling)


def next_state(
    status: str,
    retryable: bool,
    attempt: int,
    max_attempts: int,
    policy: RetryPolicy,
    now: float,
    rng: random.Random,
) -> tuple[TaskState, float | None]:
    """The task's state after an attempt ended with ``status``, and its
    not-before time when it goes back to the queue."""
    if status == "released":
        return TaskState.QUEUED, None
    if status in ("succeeded", "cancelled") or not retryable:
        return _FINAL[status], None
    if attempt < max_attempts:
        return TaskState.QUEUED, now + policy.delay(attempt, rng)
    if max_attempts > 1:
        return TaskState.DEAD, None
    return _FINAL[status], None
