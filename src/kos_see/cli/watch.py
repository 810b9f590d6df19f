"""Live view of tasks: a Rich progress bar per task, or JSON lines of events.

The CLI reads the store, which another process (``serve``) writes; it reads
again every 0.1 s while tasks are live. Streaming over Redis or the API
replaces this read loop in scale-out deployments.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
)

from kos_see.cli.output import console, shown, state_markup
from kos_see.engine import Engine
from kos_see.models import TaskRecord

INTERVAL = 0.1


def watch_tasks(engine: Engine, task_ids: list[str], as_json: bool) -> list[TaskRecord]:
    tasks = {tid: engine.dispatcher.get(tid) for tid in task_ids}
    if as_json:
        return _stream_json(engine, tasks)
    return _show_progress(engine, tasks)


def _stream_json(engine: Engine, tasks: dict[str, TaskRecord]) -> list[TaskRecord]:
    if engine.config.events.url:
        return _follow_streams(engine, tasks)
    seen = dict.fromkeys(tasks, 0)
    while True:
        for tid in tasks:
            for event in engine.store.events(tid, after=seen[tid]):
                seen[tid] = event.id
                sys.stdout.write(json.dumps(event.to_dict()) + "\n")
            tasks[tid] = engine.dispatcher.get(tid)
        sys.stdout.flush()
        if all(t.terminal for t in tasks.values()):
            return list(tasks.values())
        time.sleep(INTERVAL)


def _follow_streams(engine: Engine, tasks: dict[str, TaskRecord]) -> list[TaskRecord]:
    """Events from Redis Streams as they are relayed, the store when Redis
    is down (``events.streams``)."""
    from kos_see.events.streams import EventFollower

    follower = EventFollower(engine.store, engine.config.events)
    seen = dict.fromkeys(tasks, 0)
    try:
        while True:
            live = [tid for tid, t in tasks.items() if not t.terminal]
            for event in follower.follow(list(tasks), seen):
                sys.stdout.write(json.dumps(event.to_dict()) + "\n")
            sys.stdout.flush()
            for tid in live:
                tasks[tid] = engine.dispatcher.get(tid)
            if all(t.terminal for t in tasks.values()):
                # The events of the end may be stored but not yet relayed.
                for event in follower.from_store(list(tasks), seen):
                    sys.stdout.write(json.dumps(event.to_dict()) + "\n")
                sys.stdout.flush()
                return list(tasks.values())
    finally:
        follower.close()


def _show_progress(engine: Engine, tasks: dict[str, TaskRecord]) -> list[TaskRecord]:
    # Service names and progress messages are data, never markup; the state
    # column's markup is made by state_markup. The elapsed time is the task's
    # own, from the store, not the time since this watch began.
    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]}"),
        TextColumn("{task.fields[message]}", style="dim", markup=False),
        TextColumn("{task.fields[elapsed]}", style="yellow", markup=False),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bars: dict[str, TaskID] = {
            tid: progress.add_task(
                f"{shown(t.service)} {tid[-8:]}",
                total=None,
                state="",
                message="",
                elapsed=elapsed_text(t),
            )
            for tid, t in tasks.items()
        }
        while True:
            for tid in tasks:
                task = tasks[tid] = engine.dispatcher.get(tid)
                _update(progress, bars[tid], task)
            if all(t.terminal for t in tasks.values()):
                return list(tasks.values())
            time.sleep(INTERVAL)


def elapsed_text(task: TaskRecord, now: float | None = None) -> str:
    """How long the task has taken, as H:MM:SS: from its submission to its end,
    or to ``now`` while it has not ended."""
    end = task.finished_at if task.terminal else None
    if end is None:
        end = time.time() if now is None else now
    seconds = max(0, int(end - task.created_at))
    return str(timedelta(seconds=seconds))


def _update(progress: Progress, bar: TaskID, task: TaskRecord) -> None:
    total = task.progress_total
    done = task.progress_done or 0
    if task.terminal and task.state.value == "succeeded":
        total = total or 1
        done = total
    message = shown(task.progress_message or "")[:40]
    progress.update(
        bar,
        total=total,
        completed=done,
        state=state_markup(task.state.value),
        message=message,
        elapsed=elapsed_text(task),
    )
    if task.terminal:
        progress.stop_task(bar)
