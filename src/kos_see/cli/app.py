"""Entry point of ``kos-see``: the root command, its options, and error handling.

Every failure the engine raises on purpose ends the process with the exit
code its class names (see ``kos_see.errors``): 2 bad usage, 3 refused
request, 4 failed task, 5 task not finished yet; 1 means the engine itself
failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.text import Text

from kos_see.cli import (
    artifacts,
    dead_letters,
    provenance_cmd,
    queue_cmd,
    schedules,
    serve,
    services,
    tasks,
    vectors,
)
from kos_see.cli.api_cmd import register as register_api
from kos_see.cli.context import CliContext
from kos_see.cli.output import console, emit_json, errors
from kos_see.config import load_config
from kos_see.errors import EXIT_ENGINE, EXIT_USAGE, KosSeeError
from kos_see.security.operator import ensure_operator

app = typer.Typer(
    name="kos-see",
    help="kOS Service Execution Engine: run registered services isolated, "
    "queued and recorded.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(services.app, name="services")
app.add_typer(schedules.app, name="schedules")
app.add_typer(queue_cmd.app, name="queue")
serve.register(app)
tasks.register(app)
dead_letters.register(app)
app.add_typer(artifacts.app, name="artifacts")
app.add_typer(vectors.app, name="vectors")
provenance_cmd.register(app)


def _add_security_commands() -> None:
    # Keys, principals, policy, audit and secrets: one group of commands.
    from kos_see.cli import audit_cmd, identities, policy_cmd, secrets_cmd

    identities.register(app)
    app.add_typer(policy_cmd.app, name="policy")
    app.add_typer(audit_cmd.app, name="audit")
    app.add_typer(secrets_cmd.app, name="secrets")


_add_security_commands()
register_api(app)

from kos_see.cli import db as db_cmd  # noqa: E402

app.add_typer(db_cmd.app, name="db")

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="KOS_SEE_HOME",
        help="The engine's home folder (config and embedded store); may be "
        "given before or after the command. Default: $KOS_SEE_HOME, else "
        "~/.kos-see.",
        show_envvar=False,
    ),
]


KeyOption = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar="KOS_SEE_KEY",
        help="The private key that signs requests: a path, or a name made by "
        "'kos-see keys new'. Default: security.signing_key, else the home's "
        "operator key.",
        show_envvar=False,
    ),
]


@app.callback()
def root(ctx: typer.Context, home: HomeOption = None, key: KeyOption = None) -> None:
    ctx.obj = CliContext(home, key)


@app.command()
def init(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create the engine's home: a commented config, an empty store, the engine
    key, an operator key and principal, and the default policy."""
    context: CliContext = ctx.obj
    created = context.home.init()
    engine = context.engine()
    try:
        operator = ensure_operator(
            context.home, engine.store, context.home.policy_path(engine.config)
        )
    finally:
        engine.close()
    if as_json:
        emit_json(
            {
                "home": str(context.home.root),
                "created": created,
                "operator": operator.name,
                "operator_key": str(context.home.operator_key_path),
                "policy": str(context.home.policy_path(engine.config)),
            }
        )
        return
    verb = "created" if created else "already exists:"
    console.print(f"home {verb} {context.home.root}", markup=False, highlight=False)
    console.print(f"config: {context.home.config_path}", markup=False)
    console.print(
        f"operator: principal {operator.name!r} (admin of every tenant), key "
        f"{context.home.operator_key_path}; the CLI signs with it",
        markup=False,
        highlight=False,
    )


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the effective configuration: file, environment and defaults merged."""
    context: CliContext = ctx.obj
    path = context.home.config_path
    config = load_config(path if path.exists() else None)
    document = config.model_dump(mode="json")
    if as_json:
        emit_json(document)
        return
    console.print(
        f"# effective configuration for {context.home.root}",
        markup=False,
        highlight=False,
    )
    for section, values in document.items():
        console.print()
        console.print(Text(f"[{section}]", style="bold"), highlight=False)
        for key, value in values.items():
            console.print(f"{key} = {json.dumps(value)}", highlight=False, markup=False)


def main() -> None:
    args = hoist_home(sys.argv[1:])
    wants_json = "--json" in args
    try:
        # Without standalone mode, an Exit raised by a command comes back as
        # its code instead of ending the process.
        code = app(args=args, prog_name="kos-see", standalone_mode=False)
    except KosSeeError as exc:
        _report(exc.to_dict(), exc.message, wants_json)
        sys.exit(exc.exit_code)
    except typer.Abort:
        errors.print("aborted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:
        # Typer's own usage errors (unknown option, missing argument, ...).
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            errors.print(
                f"[red]error:[/red] {escape(exc.format_message())}", highlight=False
            )
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # the engine's own bug: say so, with the cause
        _report(
            {"error": "engine_error", "message": repr(exc)},
            f"internal error: {exc!r}",
            wants_json,
        )
        sys.exit(EXIT_ENGINE)
    sys.exit(code if isinstance(code, int) else 0)


def _report(document: dict[str, object], message: str, wants_json: bool) -> None:
    if wants_json:
        emit_json(document)
    else:
        errors.print(f"[red]error:[/red] {escape(message)}", highlight=False)


def hoist_home(args: list[str]) -> list[str]:
    """``args`` with every ``--home DIR`` and ``--home=DIR`` moved to the
    front, where the root command reads it, so that it may follow the
    subcommand (``kos-see init --home DIR``). Nothing after ``--`` moves."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg == "--home" and i + 1 < len(args):
            front += args[i : i + 2]
            i += 2
            continue
        if arg.startswith("--home="):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest
