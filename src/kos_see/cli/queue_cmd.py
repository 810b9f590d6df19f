"""``kos-see queue``: what the queue holds and why a tenant's work waits."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from kos_see.cli.context import CliContext
from kos_see.cli.output import console, duration, emit_json
from kos_see.queue.stats import QUEUE_LANES, QueueStats
from kos_see.worker.pool import rules_from_config

app = typer.Typer(
    help="The queue manager: depth, running work, quotas.", no_args_is_help=True
)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]

READY_NOTE = "ready: waits for its fair-share turn or a free slot"


@app.command("stats")
def stats(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Depth and oldest age per class and tenant, running work against its
    limits, CPU quota use, and why each waiting tenant waits."""
    context: CliContext = ctx.obj
    engine = context.engine()
    try:
        rules = rules_from_config(engine.config, engine.registry)
        # A lease with every slot free looks this deep into a tenant's queue.
        heads = engine.config.execution.max_concurrent_tasks
        found = engine.store.queue_stats(time.time(), rules, heads=heads)
    finally:
        engine.close()
    if as_json:
        emit_json(found.to_dict())
        return
    print_stats(found)


def print_stats(found: QueueStats) -> None:
    queued = Table("class", "tenant", "depth", "oldest", title="Queued")
    for lane in QUEUE_LANES:
        rows = [d for d in found.depths if d.lane == lane]
        if not rows:
            continue
        queued.add_row(
            f"[bold]{lane}[/bold]",
            "[bold]all[/bold]",
            f"[bold]{found.depth(lane):,}[/bold]",
            f"[bold]{duration(found.oldest_age(lane))}[/bold]",
        )
        for d in rows:
            queued.add_row("", Text(d.tenant), f"{d.depth:,}", duration(d.oldest_age))
    if queued.row_count:
        console.print(queued)
    else:
        console.print("nothing queued")

    if found.tenants:
        running = Table("tenant", "queued", "running", "limit", title="Tenants")
        for t in found.tenants:
            running.add_row(
                Text(t.tenant),
                f"{t.queued:,}",
                str(t.running),
                "-" if t.max_running is None else str(t.max_running),
            )
        console.print(running)

    services = found.to_dict()["services"]
    if services:
        table = Table("service", "running", "limit", title="Services")
        for name, row in services.items():
            limit = row["limit"]
            table.add_row(
                Text(name), str(row["running"]), "-" if limit is None else str(limit)
            )
        console.print(table)

    quota_rows = [t for t in found.tenants if t.cpu_quota is not None or t.cpu_used]
    if quota_rows:
        window = duration(found.cpu_window)
        quotas = Table("tenant", "CPU used", "quota", title=f"CPU per {window}")
        for t in quota_rows:
            quotas.add_row(
                Text(t.tenant),
                f"{t.cpu_used:.2f} s",
                "-" if t.cpu_quota is None else f"{t.cpu_quota:g} s",
            )
        console.print(quotas)

    reasons = {w.tenant: w.message for w in found.waiting}
    waiting = [t for t in found.ready_tenants if t in reasons] + [
        t for t in found.ready_tenants if t not in reasons
    ]
    if waiting:
        why = Table("tenant", "why", title="Waiting and why")
        for tenant in waiting:
            if tenant in reasons:
                why.add_row(Text(tenant), Text(reasons[tenant], style="yellow"))
            else:
                why.add_row(Text(tenant), READY_NOTE)
        console.print(why)
