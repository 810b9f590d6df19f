"""``kos-see serve``: the dispatcher's wake-ups and a worker pool, in the foreground."""

from __future__ import annotations

import enum
import signal
import threading
from typing import Annotated

import typer

from kos_see.cli.api_cmd import start_api
from kos_see.cli.context import CliContext
from kos_see.cli.output import errors
from kos_see.config import validate_config
from kos_see.engine import Engine
from kos_see.errors import UsageError
from kos_see.logs import configure


class Role(enum.StrEnum):
    api = "api"
    worker = "worker"
    scheduler = "scheduler"
    all = "all"


def _check_role(engine: Engine, role: Role) -> None:
    """Refuse a split role on a store that only one process may serve."""
    if role != Role.all and not engine.shared_store:
        raise UsageError(
            f"--role {role.value} needs a store that processes share "
            '(store.url = "postgresql://..."); the embedded SQLite store is '
            "served by one process: use --role all"
        )


def _serving_line(root: object, role: Role, slots: int) -> str:
    if role == Role.scheduler:
        return f"serving cron schedules of {root} (Ctrl-C stops)"
    return f"serving {root} with {slots} slots (Ctrl-C stops gracefully)"


def register(app: typer.Typer) -> None:
    app.command()(serve)


def serve(
    ctx: typer.Context,
    slots: Annotated[
        int | None,
        typer.Option("--slots", min=1, help="Override execution.max_concurrent_tasks."),
    ] = None,
    role: Annotated[
        Role,
        typer.Option(
            "--role",
            help="What this process runs: worker (a pool), scheduler (cron "
            "schedules), api (the network API), or all (worker and scheduler). "
            "Split roles need a shared store (PostgreSQL).",
        ),
    ] = Role.all,
) -> None:
    """Run the engine on this home until SIGINT or SIGTERM.

    On either signal, leasing stops, running attempts get execution.shutdown_grace
    to finish, and the rest are stopped and go back to the queue; a later
    'serve' runs them.
    """
    context: CliContext = ctx.obj
    home = context.home.require()
    config = home.load_config()
    if slots is not None:
        data = config.model_dump()
        data["execution"]["max_concurrent_tasks"] = slots
        config = validate_config(data)
    configure(config.logging.level, config.logging.format)
    engine = Engine.open(home, config)
    try:
        _check_role(engine, role)
    except BaseException:
        engine.close()
        raise
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        if stop.is_set() and engine.pool is not None:
            # A second signal: no more grace, stop the running attempts now.
            errors.print(
                f"{signal.Signals(signum).name} again: stopping running attempts now",
                highlight=False,
                markup=False,
            )
            engine.pool.hurry()
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    api = None
    try:
        if role == Role.api:
            api = start_api(engine, force=True)
        else:
            engine.serve(
                worker=role in (Role.all, Role.worker),
                scheduler=role in (Role.all, Role.scheduler),
            )
            if role == Role.all:
                api = start_api(engine)  # REST and gRPC, when [api] enabled = true
            errors.print(
                _serving_line(home.root, role, config.execution.max_concurrent_tasks),
                highlight=False,
                markup=False,
            )
        while not stop.wait(1.0):
            pass
        name = signal.Signals(received[0]).name if received else "stop"
        errors.print(
            f"{name}: stopping; running attempts get "
            f"{config.execution.shutdown_grace:g}s (a second signal stops them now)",
            highlight=False,
        )
    finally:
        if api is not None:
            api.stop()
        engine.close()
    errors.print("stopped", highlight=False)
