"""Task commands: submit, watch, status, list, logs, result, cancel."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from kos_see import strict_json
from kos_see.cli import remote
from kos_see.cli.context import CliContext
from kos_see.cli.output import (
    console,
    duration,
    emit_json,
    errors,
    id_column,
    plain,
    shown,
    state_text,
    when,
)
from kos_see.cli.signing import authenticate
from kos_see.cli.watch import watch_tasks
from kos_see.dispatcher import MAX_NOT_BEFORE_AHEAD, SubmitRequest, submit_fields
from kos_see.durations import parse_duration
from kos_see.engine import Engine
from kos_see.errors import KosSeeError, TaskFailed, UsageError
from kos_see.models import TaskRecord
from kos_see.security.verify import Caller
from kos_see.states import TaskState
from kos_see.store import TaskFilter

EXIT_PENDING = 5
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
TaskArg = Annotated[str, typer.Argument(metavar="TASK", help="A task id.")]


def register(app: typer.Typer) -> None:
    for command in (submit, watch, status, list_tasks, logs, result, cancel):
        name = "list" if command is list_tasks else command.__name__
        app.command(name)(command)


def parse_input(text: str | None) -> Any:
    """``--input`` as JSON text, ``@FILE``, or ``@-`` for standard input."""
    if text is None:
        return {}
    source = "--input"
    if text.startswith("@"):
        source = text[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text()
        except OSError as exc:
            raise UsageError(
                f"cannot read input file {source!r}: {exc.strerror}"
            ) from exc
        except UnicodeDecodeError as exc:
            raise UsageError(f"input file {source!r} is not UTF-8 text") from exc
    try:
        return strict_json.loads(text)
    except strict_json.NotJson as exc:
        raise UsageError(f"{source} is not valid JSON: {exc}") from exc


def _not_before(delay: str | None, at: str | None) -> float | None:
    if delay is not None and at is not None:
        raise UsageError("give --delay or --not-before, not both")
    if delay is not None:
        try:
            seconds = parse_duration(delay)
        except ValueError as exc:
            raise UsageError(f"--delay: {exc}") from exc
        if seconds > MAX_NOT_BEFORE_AHEAD:
            raise UsageError(
                f"--delay {delay!r} is more than 10 years; a task may be deferred "
                "10 years at most"
            )
        return time.time() + seconds
    if at:
        try:
            moment = datetime.fromisoformat(at)
        except ValueError as exc:
            raise UsageError(
                f"--not-before {at!r} is not an ISO 8601 time such as "
                "2026-12-24T18:00:00+01:00"
            ) from exc
        # Bad usage like a --delay that long, not a request the engine refused.
        if moment.timestamp() > time.time() + MAX_NOT_BEFORE_AHEAD:
            raise UsageError(
                f"--not-before {at!r} is more than 10 years ahead; a task may be "
                "deferred 10 years at most"
            )
        return moment.timestamp()
    return None


def submit(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(metavar="NAME[@VERSION]")],
    input_: Annotated[
        str | None,
        typer.Option("--input", "-i", help="Input as JSON, @FILE, or @- for stdin."),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the end.")] = False,
    wait_timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0, help="Seconds --wait waits at most."),
    ] = None,
    priority: Annotated[int | None, typer.Option("--priority")] = None,
    queue_class: Annotated[
        str | None, typer.Option("--class", help="realtime, batch or deferred.")
    ] = None,
    delay: Annotated[
        str | None, typer.Option("--delay", help="Run after, e.g. 10m.")
    ] = None,
    not_before: Annotated[
        str | None, typer.Option("--not-before", help="Run at or after an ISO time.")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="Same key, same task.")
    ] = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Default: the key's tenant.")
    ] = None,
    as_json: JsonFlag = False,
    server: remote.ServerOption = None,
) -> None:
    """Submit a task; prints its id, or with --wait its final state and result."""
    if server:
        fields = {
            "service": service,
            "input": parse_input(input_),
            "tenant": None if tenant == "default" else tenant,
            "priority": priority,
            "queue_class": queue_class,
            "not_before": _not_before(delay, not_before),
            "idempotency_key": idempotency_key,
        }
        return remote.submit(server, fields, wait, as_json)
    request = SubmitRequest(
        service=service,
        input=parse_input(input_),
        tenant=tenant,
        priority=priority,
        queue_class=queue_class,
        not_before=_not_before(delay, not_before),
        idempotency_key=idempotency_key,
    )
    engine = _engine(ctx)
    try:
        caller = _caller(ctx, engine, "submit", submit_fields(request))
        submitted = engine.dispatcher.submit(request, caller=caller)
        served = engine.last_notify_delivered or not submitted.created
        task = submitted.task
        if wait:
            task = _wait_interruptibly(engine, task, wait_timeout, as_json, served)
    finally:
        engine.close()
    if not served and not wait:
        errors.print(
            f"queued; no engine is serving {ctx.obj.home.root} now: start one with "
            "'kos-see serve' to run it",
            highlight=False,
            markup=False,
        )
    if as_json:
        emit_json({**task.to_dict(), "created": submitted.created, "served": served})
    elif wait:
        _print_task(task)
    else:
        console.print(task.id, highlight=False, markup=False)
    if wait:
        _exit_for(task)


def _wait_interruptibly(
    engine: Engine,
    task: TaskRecord,
    timeout: float | None,
    as_json: bool,
    served: bool,
) -> TaskRecord:
    """Wait for the end; the task's id is on stdout before the wait begins
    (human output) or when Ctrl-C ends it (JSON), so that an interrupted
    wait never loses the task it made."""
    try:
        if not as_json:
            console.print(task.id, highlight=False, markup=False)
            console.file.flush()
        return engine.wait(task.id, timeout)
    except KeyboardInterrupt:
        if as_json:
            emit_json({**task.to_dict(), "served": served, "interrupted": True})
        errors.print(
            f"interrupted; task {task.id} goes on: 'kos-see watch {task.id}' "
            "follows it",
            highlight=False,
            markup=False,
        )
        raise


def watch(
    ctx: typer.Context,
    task_ids: Annotated[list[str], typer.Argument(metavar="TASK...")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Stream events as JSON lines.")
    ] = False,
    server: remote.ServerOption = None,
) -> None:
    """Show live state and progress of tasks until they end, then a results table."""
    if server:
        return remote.events(server, task_ids, as_json)
    engine = _engine(ctx)
    try:
        # One signed read per task settles the right to watch it; the live
        # updates after it are the engine's own reads.
        for task_id in task_ids:
            signed_get(ctx, engine, task_id)
        final = watch_tasks(engine, task_ids, as_json)
    finally:
        engine.close()
    if not as_json:
        print_table(final)
    if any(t.state != TaskState.SUCCEEDED for t in final):
        raise typer.Exit(TaskFailed.exit_code)


def status(
    ctx: typer.Context,
    task_id: TaskArg,
    as_json: JsonFlag = False,
    server: remote.ServerOption = None,
) -> None:
    """Show a task's state, progress and attempts."""
    if server:
        return remote.status(server, task_id, as_json)
    engine = _engine(ctx)
    try:
        task = signed_get(ctx, engine, task_id)
        attempts = engine.store.attempts(task_id)
    finally:
        engine.close()
    if as_json:
        emit_json(
            {
                **task.to_dict(),
                "attempt_details": [_attempt_summary(a.to_dict()) for a in attempts],
            }
        )
        return
    _print_task(task)
    for a in attempts:
        took = None if a.ended_at is None else a.ended_at - a.started_at
        console.print(
            f"  attempt {a.number}: {a.outcome or 'running'}  pid {a.pid}  "
            f"exit {a.exit_code if a.signal is None else 'signal ' + str(a.signal)}  "
            f"{duration(took)}  cpu {a.cpu_seconds or 0:.2f}s  "
            f"peak {((a.peak_rss_kb or 0) / 1024):.0f} MiB"
            + _dropped_note(a.events_dropped),
            highlight=False,
            markup=False,
        )


def _dropped_note(dropped: int | None) -> str:
    if not dropped:
        return ""
    return (
        f"  {dropped} events dropped (over execution.event_cap or "
        "execution.event_bytes_cap)"
    )


def list_tasks(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option("--state")] = None,
    service: Annotated[str | None, typer.Option("--service")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000)] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    as_json: JsonFlag = False,
    server: remote.ServerOption = None,
) -> None:
    """List tasks, newest first."""
    if server:
        return remote.list_tasks(
            server,
            as_json,
            state=state,
            service=service,
            tenant=tenant,
            limit=limit,
            offset=offset,
        )
    try:
        wanted = None if state is None else TaskState(state)
    except ValueError as exc:
        states = ", ".join(s.value for s in TaskState)
        raise UsageError(
            f"--state {state!r} is not a state; use one of {states}"
        ) from exc
    engine = _engine(ctx)
    try:
        where = TaskFilter(
            state=wanted, service=service, tenant=tenant, limit=limit, offset=offset
        )
        fields = {"state": state, "service": service, "tenant": tenant}
        caller = _caller(ctx, engine, "list", fields)
        found = engine.dispatcher.list_tasks(where, caller=caller)
    finally:
        engine.close()
    if as_json:
        emit_json([t.to_dict() for t in found])
        return
    print_table(found)


def logs(
    ctx: typer.Context,
    task_id: TaskArg,
    as_json: JsonFlag = False,
    server: remote.ServerOption = None,
) -> None:
    """Print a task's events (log lines, outputs, state changes) and captured output."""
    if server:
        return remote.events(server, [task_id], as_json)
    engine = _engine(ctx)
    try:
        signed_get(ctx, engine, task_id)
        events = _all_events(engine, task_id)
        attempts = engine.store.attempts(task_id)
    finally:
        engine.close()
    if as_json:
        emit_json(
            {
                "events": [e.to_dict() for e in events],
                "attempts": [
                    {"number": a.number, "stdout": a.stdout, "stderr": a.stderr}
                    for a in attempts
                ],
            }
        )
        return
    for e in events:
        data = dict(e.data)
        text = data.pop("message", None) or data.pop("state", None) or json.dumps(data)
        console.print(
            f"{when(e.at)} #{e.attempt} {e.kind:<8} {shown(str(text))}",
            highlight=False,
            markup=False,
        )
    for a in attempts:
        if a.events_dropped:
            console.print(
                f"--- attempt {a.number}:{_dropped_note(a.events_dropped)} ---",
                style="yellow",
                highlight=False,
                markup=False,
            )
        for stream in ("stdout", "stderr"):
            captured = getattr(a, stream)
            if captured:
                console.print(f"--- attempt {a.number} {stream} ---", style="dim")
                console.print(
                    shown(captured.rstrip("\n")), highlight=False, markup=False
                )


def result(
    ctx: typer.Context,
    task_id: TaskArg,
    as_json: JsonFlag = False,
    server: remote.ServerOption = None,
) -> None:
    """Print a task's result document; exit 4 if it failed, 5 if not finished."""
    if server:
        return remote.result(server, task_id, as_json)
    engine = _engine(ctx)
    try:
        task = signed_get(ctx, engine, task_id)
    finally:
        engine.close()
    if as_json:
        emit_json(
            {
                "id": task.id,
                "state": task.state.value,
                "result": task.result_value(),
                "error": task.error,
            }
        )
    elif task.state == TaskState.SUCCEEDED:
        console.print_json(task.result or "null")
    else:
        _print_task(task)
    _exit_for(task)


def cancel(
    ctx: typer.Context,
    task_id: TaskArg,
    as_json: JsonFlag = False,
    server: remote.ServerOption = None,
) -> None:
    """Cancel a queued or running task (a running one's processes are stopped)."""
    if server:
        return remote.cancel(server, task_id, as_json)
    engine = _engine(ctx)
    try:
        caller = _caller(ctx, engine, "cancel", {"task_id": task_id})
        task = engine.dispatcher.cancel(task_id, caller=caller)
    finally:
        engine.close()
    if as_json:
        emit_json(task.to_dict())
    elif task.state == TaskState.CANCELLED:
        console.print(f"{task.id} cancelled", markup=False)
    elif task.cancel_requested:
        console.print(
            f"{task.id} is {task.state.value}; its worker is stopping it",
            markup=False,
        )
    else:
        console.print(f"{task.id} already ended: {task.state.value}", markup=False)


def _engine(ctx: typer.Context) -> Engine:
    context: CliContext = ctx.obj
    return context.engine()


def _caller(
    ctx: typer.Context, engine: Engine, action: str, fields: dict[str, Any]
) -> Caller:
    context: CliContext = ctx.obj
    return authenticate(engine, context.key, action, fields)


def signed_get(ctx: typer.Context, engine: Engine, task_id: str) -> TaskRecord:
    caller = _caller(ctx, engine, "read", {"task_id": task_id})
    return engine.dispatcher.get(task_id, caller=caller)


def _all_events(engine: Engine, task_id: str) -> list[Any]:
    out: list[Any] = []
    after = 0
    while True:
        page = engine.store.events(task_id, after=after, limit=1000)
        out.extend(page)
        if len(page) < 1000:
            return out
        after = page[-1].id


def _exit_for(task: TaskRecord) -> None:
    if task.state == TaskState.SUCCEEDED:
        return
    raise typer.Exit(TaskFailed.exit_code if task.terminal else EXIT_PENDING)


def _attempt_summary(attempt: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attempt.items() if k not in ("stdout", "stderr")}


def _print_task(task: TaskRecord, now: float | None = None) -> None:
    now = time.time() if now is None else now
    console.print(
        Text.assemble(
            (task.id, "bold"),
            f"  {shown(task.service)}@{shown(task.version)}  ",
            state_text(task.state.value),
            f"  attempts {task.attempts}/{task.max_attempts}",
        )
    )
    if task.state == TaskState.QUEUED and task.not_before > now:
        console.print(
            f"  not before {when(task.not_before)} "
            f"(in {duration(task.not_before - now)})",
            highlight=False,
            markup=False,
        )
    if task.progress_done is not None:
        total = f"/{task.progress_total:g}" if task.progress_total else ""
        console.print(
            f"  progress {task.progress_done:g}{total} "
            + shown(task.progress_message or ""),
            highlight=False,
            markup=False,
        )
    if task.error:
        console.print(f"  error: {shown(task.error)}", highlight=False, markup=False)
    if task.result is not None:
        console.print(
            f"  result: {shown(_short(task.result, 300))}",
            highlight=False,
            markup=False,
        )


def print_table(found: list[TaskRecord]) -> None:
    table = Table(
        id_column("task", (t.id for t in found)),
        "service",
        "state",
        "tries",
        "took",
        "result or error",
    )
    for t in found:
        took = None if t.finished_at is None else t.finished_at - t.created_at
        detail = t.error if t.error else _short(t.result or "", 70)
        table.add_row(
            plain(t.id),
            plain(f"{t.service}@{t.version}"),
            state_text(t.state.value),
            str(t.attempts),
            duration(took),
            plain(detail),
        )
    console.print(table)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


__all__ = ["KosSeeError", "register"]
