"""Provenance and replay: ``kos-see provenance TASK`` and ``kos-see replay TASK``.

``provenance`` prints the DSSE envelope of a task's attempt (the last by
default), verified against the engine's key; ``--statement`` prints the
in-toto statement inside it. ``replay`` refuses, saying what changed, when
the service or a dependency differs from the record; otherwise it runs the
task again as a new task and compares the outputs' digests (exit 0 when
identical, 4 when they differ or the replay failed).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from kos_see.cli.context import CliContext
from kos_see.cli.output import console, emit_json, errors
from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.errors import (
    EXIT_TASK_FAILED,
    ProvenanceInvalid,
    ProvenanceNotFound,
    ReplayRefused,
    TaskNotFound,
)
from kos_see.models import TaskRecord
from kos_see.provenance.dsse import statement_of, verify_envelope
from kos_see.provenance.replay import (
    changes_since,
    compare,
    latest_statement,
    recorded_dependencies,
)
from kos_see.security.keys import load_or_create
from kos_see.states import TaskState

EXIT_PENDING = 5
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
TaskArg = Annotated[str, typer.Argument(metavar="TASK", help="A task id.")]


def register(app: typer.Typer) -> None:
    app.command("provenance")(provenance)
    app.command("replay")(replay)


def _task(engine: Engine, task_id: str) -> TaskRecord:
    task = engine.store.get_task(task_id)
    if task is None:
        raise TaskNotFound(f"no task {task_id!r}", task_id=task_id)
    return task


def provenance(
    ctx: typer.Context,
    task_id: TaskArg,
    attempt: Annotated[int | None, typer.Option("--attempt", min=1)] = None,
    statement: Annotated[
        bool, typer.Option("--statement", help="Print the statement, not the envelope.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Print a task's signed provenance record (a DSSE envelope)."""
    context: CliContext = ctx.obj
    engine = context.engine()
    try:
        _task(engine, task_id)
        records = engine.store.provenance_records(task_id)
    finally:
        engine.close()
    chosen = [r for r in records if attempt is None or r["attempt"] == attempt]
    if not chosen:
        which = "" if attempt is None else f" for attempt {attempt}"
        raise ProvenanceNotFound(
            f"task {task_id} has no provenance record{which}", task_id=task_id
        )
    record = chosen[-1]
    envelope = json.loads(record["envelope"])
    key = load_or_create(context.home.engine_key_path)
    try:
        verify_envelope(envelope, key.public)
    except ValueError as exc:
        raise ProvenanceInvalid(
            f"the provenance record of task {task_id} attempt {record['attempt']} "
            f"does not verify against the engine's key {key.key_id}: it was "
            "altered, or signed by another key",
            task_id=task_id,
        ) from exc
    if as_json:
        emit_json(
            {
                "task_id": task_id,
                "attempt": record["attempt"],
                "statement_digest": record["statement_digest"],
                "key_id": key.key_id,
                "envelope": envelope,
                "statement": statement_of(record["envelope"]),
            }
        )
        return
    document: Any = statement_of(record["envelope"]) if statement else envelope
    print(json.dumps(document, indent=2, sort_keys=True))


def replay(
    ctx: typer.Context,
    task_id: TaskArg,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0, help="Seconds to wait at most.")
    ] = 600.0,
    as_json: JsonFlag = False,
) -> None:
    """Run a task again as it ran, and compare its outputs' digests."""
    context: CliContext = ctx.obj
    engine = context.engine()
    try:
        from kos_see.provenance.wiring import make_provisioner

        original = _task(engine, task_id)
        recorded = latest_statement(engine.store, task_id)
        provisioner = make_provisioner(context.home, engine.config)
        changes = changes_since(recorded, original, engine.registry, provisioner)
        if changes:
            raise ReplayRefused(
                f"task {task_id} cannot be replayed as it ran: " + "; ".join(changes),
                task_id=task_id,
                changes=changes,
            )
        submitted = engine.dispatcher.submit(
            SubmitRequest(
                service=f"{original.service}@{original.version}",
                input=json.loads(original.input),
                tenant=original.tenant,
                principal=original.principal,
            )
        )
        if not engine.last_notify_delivered:
            errors.print(
                f"replay {submitted.task.id} queued; no engine is serving "
                f"{context.home.root}: start one with 'kos-see serve'",
                highlight=False,
                markup=False,
            )
            raise typer.Exit(EXIT_PENDING)
        final = engine.wait(submitted.task.id, timeout)
        report = _report(engine, original, recorded, final)
    finally:
        engine.close()
    _print(report, as_json)


def _report(
    engine: Engine,
    original: TaskRecord,
    recorded: dict[str, Any],
    final: TaskRecord,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "task_id": original.id,
        "replay_id": final.id,
        "replay_state": final.state.value,
    }
    if final.state != TaskState.SUCCEEDED and original.state == TaskState.SUCCEEDED:
        report.update(identical=False, differ=[], error=final.error)
        return report
    replayed = latest_statement(engine.store, final.id)
    comparison = compare(recorded, replayed)
    report.update(comparison.to_dict())
    # A dependency that changed between the check and the run shows here.
    before, after = recorded_dependencies(recorded), recorded_dependencies(replayed)
    if before != after:
        report["identical"] = False
        report["dependencies_changed"] = sorted(
            name
            for name in set(before) | set(after)
            if before.get(name) != after.get(name)
        )
    return report


def _print(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(report)
    elif report["identical"]:
        console.print(
            f"replay {report['replay_id']}: identical outputs", highlight=False
        )
    else:
        console.print(f"replay {report['replay_id']}: outputs differ", highlight=False)
        for item in report.get("differ", []):
            console.print(
                f"  {item['name']}: was {item['was']}, now {item['now']}",
                highlight=False,
                markup=False,
            )
        if report.get("error"):
            console.print(f"  the replay failed: {report['error']}", markup=False)
    if not report["identical"]:
        raise typer.Exit(EXIT_TASK_FAILED)
