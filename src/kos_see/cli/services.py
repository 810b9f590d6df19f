"""``kos-see services``: register, list and show service versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from kos_see.cli.context import CliContext
from kos_see.cli.output import console, emit_json, plain, when
from kos_see.errors import ServiceNotFound
from kos_see.registry.registry import parse_ref

app = typer.Typer(help="Register and inspect services.", no_args_is_help=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.command("add")
def add(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Service folders to register.")],
    as_json: JsonFlag = False,
) -> None:
    """Register each service folder (its service.toml and code) as a version."""
    context: CliContext = ctx.obj
    engine = context.engine()
    try:
        added = [engine.registry.add(path) for path in paths]
    finally:
        engine.close()
    if as_json:
        emit_json(
            [{"service": r.ref, "digest": r.digest, "new": new} for r, new in added]
        )
        return
    for record, new in added:
        verb = "registered" if new else "already registered"
        console.print(
            f"{verb} {record.ref} ({record.digest[:19]}) from {record.path}",
            markup=False,
        )


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List every registered service version."""
    context: CliContext = ctx.obj
    engine = context.engine()
    try:
        records = engine.registry.list()
    finally:
        engine.close()
    if as_json:
        emit_json(
            [
                {
                    "name": r.name,
                    "version": r.version,
                    "digest": r.digest,
                    "path": r.path,
                    "description": r.manifest.get("description", ""),
                    "registered_at": r.registered_at,
                }
                for r in records
            ]
        )
        return
    table = Table("service", "version", "digest", "description", "registered")
    for r in records:
        table.add_row(
            plain(r.name),
            plain(r.version),
            plain(r.digest[7:19]),
            plain(r.manifest.get("description", "")),
            when(r.registered_at),
        )
    console.print(table)


@app.command("show")
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="NAME[@VERSION]")],
    as_json: JsonFlag = False,
) -> None:
    """Show one service version's manifest (the latest version without @VERSION)."""
    context: CliContext = ctx.obj
    engine = context.engine()
    try:
        name, version = parse_ref(ref)
        record = engine.store.get_service(name, version)
        if record is None:
            engine.registry.resolve(ref)  # raises with the helpful message
            raise ServiceNotFound(f"no service {ref!r}")
    finally:
        engine.close()
    document = {
        "name": record.name,
        "version": record.version,
        "digest": record.digest,
        "path": record.path,
        "registered_at": record.registered_at,
        "manifest": record.manifest,
    }
    if as_json:
        emit_json(document)
        return
    console.print(
        Text.assemble(
            (record.ref, "bold"), "  ", str(record.manifest.get("description", ""))
        )
    )
    console.print(f"digest   {record.digest}", markup=False)
    console.print(f"folder   {record.path}", markup=False)
    console.print(f"added    {when(record.registered_at)}", markup=False)
    console.print_json(json.dumps(record.manifest))
