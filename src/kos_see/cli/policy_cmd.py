"""``kos-see policy check``: how the policy gate decides, and why."""

from __future__ import annotations

from typing import Annotated

import typer

from kos_see.cli.context import CliContext
from kos_see.cli.output import console, emit_json
from kos_see.errors import UsageError
from kos_see.policy.gate import ACTIONS
from kos_see.security.principals import ANY_TENANT, PrincipalStore
from kos_see.security.verify import Caller

app = typer.Typer(help="Explain the policy gate's decisions.", no_args_is_help=True)
EXIT_DENIED = 3


@app.command("check")
def check(
    ctx: typer.Context,
    principal: Annotated[str, typer.Argument(help="A principal's name.")],
    action: Annotated[str, typer.Argument(help="submit, cancel, read or admin.")],
    target: Annotated[
        str,
        typer.Argument(
            metavar="SERVICE",
            help="A service name, or an object such as class:batch or secret:db.",
        ),
    ],
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Default: the principal's.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Say whether PRINCIPAL may ACTION SERVICE, and which rule decides; exit 3
    if denied."""
    if action not in ACTIONS:
        raise UsageError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    context: CliContext = ctx.obj
    engine = context.engine()
    try:
        record = PrincipalStore(engine.store).require(principal)
        caller = Caller(record.name, record.tenant, record.role, True, None)
        asked = tenant or ("default" if record.tenant == ANY_TENANT else record.tenant)
        obj = target if ":" in target else f"service:{target}"
        decision = engine.gate.decide(caller, asked, action, obj)
        ceilings = engine.gate.ceilings(caller, asked)
    finally:
        engine.close()
    if record.revoked:
        decision = type(decision)(
            **{
                **decision.to_dict(),
                "allowed": False,
                "rule": "the principal is revoked",
            }
        )
    if as_json:
        emit_json({**decision.to_dict(), "ceilings": ceilings.rules})
    else:
        console.print(decision.explain(), markup=False, highlight=False)
        for rule in ceilings.rules:
            console.print(f"  ceiling: {rule}", markup=False, highlight=False)
    if not decision.allowed:
        raise typer.Exit(EXIT_DENIED)
