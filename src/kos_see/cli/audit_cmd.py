"""``kos-see audit``: verify the chain, show a task's entries, prune."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from kos_see.audit.verify import entries, prune, verify_log
from kos_see.cli.context import CliContext
from kos_see.cli.output import console, emit_json, plain, when
from kos_see.errors import AuditError
from kos_see.security.keys import load_public

app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


@app.command("verify")
def verify(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Check every entry's hash chain and the signed checkpoints; OK, or the
    first entry that breaks the chain (exit 1)."""
    context: CliContext = ctx.obj
    engine = context.engine()
    try:
        engine.audit.flush()
        public = load_public(context.home.engine_key_path.with_suffix(".pub"))
        report = verify_log(engine.store, public)
    finally:
        engine.close()
    if as_json:
        emit_json(report.to_dict())
    elif report.ok:
        span = (
            "no entries"
            if report.first_seq is None
            else f"entries {report.first_seq} to {report.last_seq}"
        )
        console.print(
            f"OK: {span}, {report.checkpoints} signed checkpoint(s)",
            markup=False,
            highlight=False,
        )
    else:
        console.print(
            f"BROKEN at entry {report.broken_seq}: {report.problem}",
            markup=False,
            highlight=False,
        )
    if not report.ok:
        raise typer.Exit(AuditError.exit_code)


@app.command("show")
def show(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(metavar="TASK")],
    as_json: JsonFlag = False,
) -> None:
    """List a task's audit entries: its requests, decisions and attempts' ends."""
    context: CliContext = ctx.obj
    engine = context.engine()
    try:
        engine.audit.flush()
        found = list(entries(engine.store, task_id))
    finally:
        engine.close()
    if as_json:
        emit_json([e.to_dict() for e in found])
        return
    table = Table("seq", "at", "kind", "principal", "what")
    for e in found:
        body = e.body_value()
        what = " ".join(
            f"{k}={body[k]}"
            for k in ("action", "outcome", "state", "error", "result_digest")
            if body.get(k) is not None
        )
        table.add_row(
            str(e.seq), when(e.at), e.kind, plain(e.principal or "-"), plain(what)
        )
    console.print(table)


@app.command("prune")
def prune_cmd(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Remove entries older than security.max_log_retention now (a serving
    engine does this every hour); the rest verifies from a signed checkpoint."""
    context: CliContext = ctx.obj
    engine = context.engine()
    try:
        engine.audit.flush(checkpoint=True)
        removed = prune(
            engine.store, engine.audit.key, engine.config.security.max_log_retention
        )
    finally:
        engine.close()
    if as_json:
        emit_json({"removed": removed})
    else:
        console.print(f"removed {removed} audit entries", markup=False)
