"""The dead letters: list the tasks that used all their attempts, and retry one.

``kos-see dead-letters`` lists dead tasks, newest first, with their last
error; ``kos-see retry TASK`` puts a dead task back in the queue with a fresh
attempt budget. Retrying a task that is not dead, or an unknown one, is a
refused request (exit 3).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from kos_see.cli import remote
from kos_see.cli.context import CliContext
from kos_see.cli.output import console, emit_json, errors, id_column, plain, when
from kos_see.cli.signing import authenticate
from kos_see.states import TaskState
from kos_see.store import TaskFilter

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


def register(app: typer.Typer) -> None:
    app.command("dead-letters")(dead_letters)
    app.command("retry")(retry)


def dead_letters(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Option("--service")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000)] = 50,
    as_json: JsonFlag = False,
    server: remote.ServerOption = None,
) -> None:
    """List dead tasks (all attempts used), newest first, with their last error."""
    if server:
        return remote.dead_letters(
            server, as_json, service=service, tenant=tenant, limit=limit
        )
    context: CliContext = ctx.obj
    engine = context.engine()
    try:
        found = engine.store.list_tasks(
            TaskFilter(
                state=TaskState.DEAD, service=service, tenant=tenant, limit=limit
            )
        )
    finally:
        engine.close()
    if as_json:
        emit_json([t.to_dict() for t in found])
        return
    if not found:
        console.print("no dead tasks")
        return
    table = Table(
        id_column("task", (t.id for t in found)),
        "service",
        "tenant",
        "attempts",
        "finished",
        "last error",
    )
    for t in found:
        table.add_row(
            plain(t.id),
            plain(f"{t.service}@{t.version}"),
            plain(t.tenant),
            str(t.attempts),
            when(t.finished_at),
            plain(t.error or "-"),
        )
    console.print(table)


def retry(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(metavar="TASK", help="A dead task's id.")],
    as_json: JsonFlag = False,
    server: remote.ServerOption = None,
) -> None:
    """Put a dead task back in the queue with 1 + its retry limit attempts."""
    if server:
        return remote.retry(server, task_id, as_json)
    context: CliContext = ctx.obj
    engine = context.engine()
    try:
        caller = authenticate(engine, context.key, "retry", {"task_id": task_id})
        task = engine.dispatcher.retry(task_id, caller=caller)
        served = engine.last_notify_delivered
    finally:
        engine.close()
    if not served:
        errors.print(
            f"queued; no engine is serving {context.home.root} now: start one with "
            "'kos-see serve' to run it",
            highlight=False,
            markup=False,
        )
    if as_json:
        emit_json({**task.to_dict(), "served": served})
        return
    console.print(
        f"{task.id} requeued: {task.max_attempts - task.attempts} more attempts",
        highlight=False,
        markup=False,
    )
