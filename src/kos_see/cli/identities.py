"""Key and principal commands: keys new; principals add, list, revoke.

These work on the home directly, as its owner: whoever can open the home's
store can change its principals, so these commands are not signed requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kos_see.cli.context import CliContext
from kos_see.cli.output import console, emit_json, plain, when
from kos_see.dispatcher import check_identity
from kos_see.errors import UsageError
from kos_see.security.keys import PRIVATE_SUFFIX, generate, load_public, write_pair
from kos_see.security.principals import ANY_TENANT, PrincipalStore

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
keys_app = typer.Typer(
    help="Ed25519 key pairs that sign requests.", no_args_is_help=True
)
principals_app = typer.Typer(
    help="Who may sign requests: principals, their tenant, role and key.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.add_typer(principals_app, name="principals")


@keys_app.command("new")
def keys_new(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A name in <home>/keys, or a path.")],
    as_json: JsonFlag = False,
) -> None:
    """Make a key pair: NAME.key (mode 0600) and NAME.pub."""
    context: CliContext = ctx.obj
    path = Path(name).expanduser()
    if path.parent == Path("."):
        check_identity(name, "key")
        path = context.home.keys_dir / name
    if path.suffix != PRIVATE_SUFFIX:
        path = path.with_name(path.name + PRIVATE_SUFFIX)
    key = generate()
    public = write_pair(key, path)
    if as_json:
        emit_json({"private": str(path), "public": str(public), "key_id": key.key_id})
        return
    console.print(f"private key {path} (0600)", markup=False, highlight=False)
    console.print(f"public key  {public}", markup=False, highlight=False)
    console.print(f"key id      {key.key_id}", markup=False, highlight=False)


@principals_app.command("add")
def principals_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The principal's name.")],
    tenant: Annotated[str, typer.Option("--tenant", help="Its tenant, or *.")],
    role: Annotated[str, typer.Option("--role", help="Its role in the policy.")],
    public_key: Annotated[
        Path, typer.Option("--public-key", help="Its Ed25519 public key (PEM).")
    ],
    as_json: JsonFlag = False,
) -> None:
    """Register a principal and the public key its requests are signed with."""
    check_identity(tenant if tenant != ANY_TENANT else "any", name)
    check_identity(role, name)
    context: CliContext = ctx.obj
    public = load_public(public_key)
    engine = context.engine()
    try:
        record = PrincipalStore(engine.store).add(name, tenant, role, public)
    finally:
        engine.close()
    if as_json:
        emit_json(record.to_dict())
        return
    console.print(
        f"principal {record.name} (tenant {record.tenant}, role {record.role}, key "
        f"{record.key_id})",
        markup=False,
        highlight=False,
    )


@principals_app.command("list")
def principals_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List principals, revoked ones included."""
    context: CliContext = ctx.obj
    engine = context.engine()
    try:
        found = PrincipalStore(engine.store).list()
    finally:
        engine.close()
    if as_json:
        emit_json(
            [{k: v for k, v in r.to_dict().items() if k != "public_key"} for r in found]
        )
        return
    table = Table("principal", "tenant", "role", "key", "added", "revoked")
    for r in found:
        table.add_row(
            plain(r.name),
            plain(r.tenant),
            plain(r.role),
            plain(r.key_id),
            when(r.created_at),
            when(r.revoked_at) if r.revoked_at else "-",
        )
    console.print(table)


@principals_app.command("revoke")
def principals_revoke(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The principal's name.")],
    as_json: JsonFlag = False,
) -> None:
    """Revoke a principal: every later request signed by its key is refused."""
    context: CliContext = ctx.obj
    engine = context.engine()
    try:
        record = PrincipalStore(engine.store).revoke(name)
    finally:
        engine.close()
    if as_json:
        emit_json(record.to_dict())
        return
    console.print(f"principal {record.name} revoked", markup=False, highlight=False)


__all__ = ["UsageError", "register"]
