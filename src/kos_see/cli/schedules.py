"""``kos-see schedules``: cron schedules that make tasks at their fire times.

A serving engine (``kos-see serve``) makes the tasks; these commands only
keep the schedules. See ``docs/schedules.md`` for the time-zone rules.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.table import Table

from kos_see.cli.context import CliContext
from kos_see.cli.output import console, emit_json, plain
from kos_see.cli.tasks import parse_input
from kos_see.queue.scheduler import Scheduler
from kos_see.queue.schedules import local_iso, utc_iso
from kos_see.store.schedule_store import ScheduleRecord

app = typer.Typer(
    help="Cron schedules: tasks made at each fire time, time-zone and DST correct.",
    no_args_is_help=True,
)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]
NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The schedule's name.")]


class Misfire(StrEnum):
    catch_up_once = "catch_up_once"
    skip = "skip"


def document(record: ScheduleRecord) -> dict[str, Any]:
    """A schedule as JSON, its fire times also in its zone and in UTC."""
    out = record.to_dict()
    for key in ("next_fire", "last_fire"):
        instant = out[f"{key}_at"]
        out[f"{key}_local"] = (
            None if instant is None else local_iso(instant, record.timezone)
        )
        out[f"{key}_utc"] = None if instant is None else utc_iso(instant)
    return out


@app.command("add")
def add(
    ctx: typer.Context,
    name: NameArg,
    cron: Annotated[
        str,
        typer.Option(
            "--cron", help="Five fields 'min hour dom month dow', or @daily etc."
        ),
    ],
    timezone: Annotated[
        str, typer.Option("--tz", help="IANA time zone, e.g. Europe/Berlin.")
    ],
    service: Annotated[
        str, typer.Option("--service", help="NAME or NAME@VERSION to run.")
    ],
    input_: Annotated[
        str | None,
        typer.Option("--input", "-i", help="Input as JSON, @FILE, or @- for stdin."),
    ] = None,
    tenant: Annotated[str, typer.Option("--tenant")] = "default",
    priority: Annotated[int | None, typer.Option("--priority")] = None,
    misfire: Annotated[
        Misfire | None,
        typer.Option(
            "--misfire",
            help="Fires missed while no engine ran: one task for the latest "
            "(catch_up_once) or none (skip). Default: schedules.misfire.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Add a schedule; the service and its input are checked now."""
    value = parse_input(input_)
    with _scheduler(ctx) as scheduler:
        record = scheduler.add(
            name,
            cron,
            timezone,
            service,
            value,
            tenant=tenant,
            principal="local",
            priority=priority,
            misfire=None if misfire is None else misfire.value,
        )
    if as_json:
        emit_json(document(record))
        return
    console.print(
        f"added schedule {record.name}: {record.cron} ({record.timezone}), "
        f"next fire {_next(record)}",
        highlight=False,
        markup=False,
    )


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the schedules with their next fire time."""
    with _scheduler(ctx) as scheduler:
        records = scheduler.list()
    if as_json:
        emit_json([document(r) for r in records])
        return
    table = Table("name", "cron", "zone", "service", "paused", "next fire", "UTC")
    for r in records:
        doc = document(r)
        table.add_row(
            plain(r.name),
            plain(r.cron),
            plain(r.timezone),
            plain(r.service),
            "yes" if r.paused else "no",
            plain(doc["next_fire_local"] or "-"),
            plain(doc["next_fire_utc"] or "-"),
        )
    console.print(table)


@app.command("pause")
def pause(ctx: typer.Context, name: NameArg, as_json: JsonFlag = False) -> None:
    """Stop making tasks until resumed."""
    with _scheduler(ctx) as scheduler:
        record = scheduler.pause(name)
    _done(record, "paused", as_json)


@app.command("resume")
def resume(ctx: typer.Context, name: NameArg, as_json: JsonFlag = False) -> None:
    """Make tasks again, from the next fire time after now (none for the pause)."""
    with _scheduler(ctx) as scheduler:
        record = scheduler.resume(name)
    _done(record, "resumed", as_json)


@app.command("remove")
def remove(ctx: typer.Context, name: NameArg, as_json: JsonFlag = False) -> None:
    """Remove a schedule; tasks it made stay."""
    with _scheduler(ctx) as scheduler:
        record = scheduler.remove(name)
    if as_json:
        emit_json({**document(record), "removed": True})
        return
    console.print(f"removed schedule {record.name}", highlight=False, markup=False)


@contextmanager
def _scheduler(ctx: typer.Context) -> Iterator[Scheduler]:
    """A (not running) scheduler on an engine on the CLI's home."""
    context: CliContext = ctx.obj
    engine = context.engine()
    try:
        yield Scheduler.for_engine(engine)
    finally:
        engine.close()


def _next(record: ScheduleRecord) -> str:
    if record.next_fire_at is None:
        return "never"
    local = local_iso(record.next_fire_at, record.timezone)
    return f"{local} ({utc_iso(record.next_fire_at)})"


def _done(record: ScheduleRecord, verb: str, as_json: bool) -> None:
    if as_json:
        emit_json(document(record))
        return
    state = "paused" if record.paused else f"next fire {_next(record)}"
    console.print(
        f"{verb} schedule {record.name}: {state}", highlight=False, markup=False
    )
