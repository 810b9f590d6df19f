"""``kos-see api``: the REST and gRPC API on this home, in the foreground;
and the API that ``kos-see serve`` starts when ``[api] enabled = true``.

``kos-see api`` does not run tasks itself: a ``kos-see serve`` on the same
home (or the same store) runs what it submits.
"""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Annotated

import typer

from kos_see.cli.context import CliContext
from kos_see.cli.output import errors
from kos_see.config import validate_config
from kos_see.engine import Engine
from kos_see.logs import configure

if TYPE_CHECKING:
    from kos_see.api.server import ApiServer


def register(app: typer.Typer) -> None:
    app.command("api")(api)


def start_api(engine: Engine, force: bool = False) -> ApiServer | None:
    """The API server for a serving engine, if the config enables it (or
    ``force``: a process whose role is the API)."""
    if not (force or engine.config.api.enabled):
        return None
    from kos_see.api.server import ApiServer

    server = ApiServer(engine)
    addresses = server.start()
    errors.print(
        f"api: REST {addresses.rest}"
        + (f", gRPC {addresses.grpc}" if addresses.grpc else ""),
        highlight=False,
        markup=False,
    )
    return server


def api(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option("--host", help="Override api.host.")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=0, max=65535, help="Override api.port.")
    ] = None,
    grpc_port: Annotated[
        int | None,
        typer.Option("--grpc-port", min=0, max=65535, help="Override api.grpc_port."),
    ] = None,
) -> None:
    """Serve the REST and gRPC API on this home until SIGINT or SIGTERM."""
    context: CliContext = ctx.obj
    home = context.home.require()
    data = home.load_config().model_dump()
    overrides = {"host": host, "port": port, "grpc_port": grpc_port}
    data["api"].update({k: v for k, v in overrides.items() if v is not None})
    data["api"]["enabled"] = True
    config = validate_config(data)
    configure(config.logging.level, config.logging.format)
    engine = Engine.open(home, config)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = None
    try:
        server = start_api(engine)
        while not stop.wait(1.0):
            pass
    finally:
        if server is not None:
            server.stop()
        engine.close()
    errors.print("api stopped", highlight=False)
