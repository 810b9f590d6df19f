"""Applying a batch of attempt writes: fence checks first, then grouped SQL.

Each write is checked against its task's current state and lease epoch in
order, as if applied one by one; the accepted ones are then executed grouped
by kind (all starts, all events, all ends), each group as one executemany.
The grouping keeps each task's own order: within one batch a task can only
start, report and end, in that order, since a new lease of it happens only
after the batch that ended its previous attempt.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy.engine import Connection

from kos_see.models import AttemptEvents, AttemptFinished, AttemptStarted, AttemptWrite
from kos_see.states import TERMINAL, TaskState, check_transition
from kos_see.store import statements as q
from kos_see.store.base import RefusedWrite

log = logging.getLogger(__name__)

_HELD = frozenset({TaskState.LEASED, TaskState.RUNNING})


class WriteBatch:
    def __init__(self) -> None:
        self.running: list[dict[str, Any]] = []
        self.new_attempts: list[dict[str, Any]] = []
        self.progress: list[dict[str, Any]] = []
        self.finished: list[dict[str, Any]] = []
        self.ended: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.dependencies: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = []
        self.provenance: list[dict[str, Any]] = []

    def add(
        self,
        write: AttemptWrite,
        current: dict[str, tuple[TaskState, int]],
    ) -> RefusedWrite | None:
        """Check ``write`` against ``current`` (task id -> state, epoch), which
        it updates; returns the refusal when the write is fenced off."""
        state, epoch = current.get(write.task_id, (None, None))
        if state is None or epoch != write.epoch or state not in _HELD:
            log.warning(
                "stale attempt write refused",
                extra={
                    "action": "write_refused",
                    "task_id": write.task_id,
                    "write_epoch": write.epoch,
                    "current_epoch": epoch,
                    "state": state.value if state else None,
                },
            )
            return RefusedWrite(write, epoch, state)
        if isinstance(write, AttemptStarted):
            current[write.task_id] = (self._started(write, state), epoch)
        elif isinstance(write, AttemptEvents):
            self._reported(write)
        else:
            current[write.task_id] = (self._finished(write, state), epoch)
        return None

    def execute(self, conn: Connection) -> None:
        groups = (
            (q.mark_running, self.running),
            (q.insert_attempt, self.new_attempts),
            (q.set_progress, self.progress),
            (q.finish_task, self.finished),
        )
        for statement, rows in groups:
            if rows:
                conn.execute(statement, rows)
        for row in self.ended:
            updated = conn.execute(q.end_attempt, row)
            if updated.rowcount == 0:
                # The attempt never started (its process could not be launched).
                conn.execute(q.insert_attempt, _attempt_row(row))
        if self.events:
            conn.execute(q.insert_events, self.events)
        self._execute_provenance(conn)

    def _execute_provenance(self, conn: Connection) -> None:
        # After the attempts' rows exist, including one inserted just above.
        groups = (
            (q.record_dependencies, self.dependencies),
            (q.record_outputs, self.outputs),
            (q.insert_provenance, self.provenance),
        )
        for statement, rows in groups:
            if rows:
                conn.execute(statement, rows)

    def _started(self, write: AttemptStarted, state: TaskState) -> TaskState:
        check_transition(state, TaskState.RUNNING)
        self.running.append({"b_id": write.task_id, "b_at": write.at})
        self.new_attempts.append(
            {
                "task_id": write.task_id,
                "number": write.attempt,
                "epoch": write.epoch,
                "worker": write.worker,
                "started_at": write.at,
                "pid": write.pid,
            }
        )
        self.events.append(
            state_event(
                write.task_id,
                write.attempt,
                write.at,
                "running",
                state.value,
                f"pid {write.pid}",
            )
        )
        return TaskState.RUNNING

    def _reported(self, write: AttemptEvents) -> None:
        if write.progress is not None:
            done, total, message = write.progress
            self.progress.append(
                {
                    "b_id": write.task_id,
                    "b_done": done,
                    "b_total": total,
                    "b_message": message,
                }
            )
        self.events.extend(
            {
                "task_id": write.task_id,
                "attempt": write.attempt,
                "at": at,
                "kind": kind,
                "data": json.dumps(data),
            }
            for at, kind, data in write.events
        )

    def _finished(self, write: AttemptFinished, state: TaskState) -> TaskState:
        target = write.next_state
        check_transition(state, target)
        lane = not_before = None
        if target == TaskState.QUEUED:
            # Back to its own lane, or to the deferred lane until its backoff ends.
            delayed = write.not_before is not None and write.not_before > write.at
            lane = "deferred" if delayed else None
            not_before = write.not_before if delayed else write.at
        self.finished.append(
            {
                "b_id": write.task_id,
                "b_state": target.value,
                "b_at": write.at,
                "b_error": write.error,
                "b_error_kind": write.error_kind,
                "b_result": write.result,
                "b_finished_at": write.at if target in TERMINAL else None,
                "b_not_before": not_before,
                "b_lane": lane,
                # A released attempt (the engine shut down) was not the task's
                # fault: it does not count against the task's budget.
                "b_extra_attempts": 1 if write.outcome == "released" else 0,
            }
        )
        self.ended.append(
            {
                "b_id": write.task_id,
                "b_number": write.attempt,
                "b_epoch": write.epoch,
                "b_at": write.at,
                "b_ended_at": write.at,
                "b_outcome": write.outcome,
                "b_exit_code": write.exit_code,
                "b_signal": write.signal,
                "b_cpu_seconds": write.cpu_seconds,
                "b_peak_rss_kb": write.peak_rss_kb,
                "b_stdout": write.stdout,
                "b_stderr": write.stderr,
                "b_stdout_bytes": write.stdout_bytes,
                "b_stderr_bytes": write.stderr_bytes,
                "b_events_dropped": write.events_dropped,
                "b_error": write.error,
            }
        )
        self.events.append(
            state_event(
                write.task_id,
                write.attempt,
                write.at,
                target.value,
                state.value,
                write.error,
                outcome=write.outcome,
                not_before=write.not_before,
            )
        )
        if write.provenance is not None:
            self._provenance(write)
        return target

    def _provenance(self, write: AttemptFinished) -> None:
        record = write.provenance
        assert record is not None
        key = {"b_id": write.task_id, "b_number": write.attempt}
        self.dependencies.append({**key, "b_dependencies": record.dependencies})
        self.outputs.append({"b_id": write.task_id, "b_outputs": record.outputs})
        if record.envelope:
            self.provenance.append(
                {
                    "task_id": write.task_id,
                    "attempt": write.attempt,
                    "created_at": write.at,
                    "statement_digest": record.statement_digest,
                    "envelope": record.envelope,
                }
            )


def _attempt_row(ended: dict[str, Any]) -> dict[str, Any]:
    row = {key[2:]: value for key, value in ended.items() if key.startswith("b_")}
    row["task_id"] = row.pop("id")
    row["worker"] = ""
    row["started_at"] = row.pop("at")
    return row


def state_event(
    task_id: str,
    attempt: int,
    at: float,
    state: str,
    source: str | None,
    reason: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An event row recording a state change."""
    data: dict[str, Any] = {"state": state}
    if source is not None:
        data["from"] = source
    if reason:
        data["reason"] = reason
    data.update({k: v for k, v in extra.items() if v is not None})
    return {
        "task_id": task_id,
        "attempt": attempt,
        "at": at,
        "kind": "state",
        "data": json.dumps(data),
    }
