"""``kos-see secrets``: the values of secrets that attempts may be granted.

Values live in ``<home>/secrets/NAME`` (folder 0700, files 0600) on the
engine's host; the store holds only which task was granted which name. An
attempt gets a copy of the ones its manifest declares and the policy grants
its principal (``submit secret:NAME``), as files in its working directory.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Annotated

import typer

from kos_see.cli.context import CliContext
from kos_see.cli.output import console, emit_json
from kos_see.errors import UsageError
from kos_see.registry.manifest import SECRET_PATTERN
from kos_see.security.keys import temporary_beside

app = typer.Typer(
    help="Secret values that attempts may be given.", no_args_is_help=True
)
MAX_SECRET_BYTES = 1024 * 1024


@app.command("set")
def set_secret(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The secret's name.")],
    source: Annotated[
        str, typer.Option("--from", help="A file holding the value, or - for stdin.")
    ] = "-",
) -> None:
    """Set a secret's value (read from --from FILE, or stdin)."""
    if not re.fullmatch(SECRET_PATTERN, name):
        raise UsageError(
            f"secret name {name!r} is not valid: 1 to 64 letters, digits and _ . -"
        )
    try:
        if source == "-":
            value = sys.stdin.buffer.read()
        else:
            with open(source, "rb") as handle:
                value = handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read {source!r}: {exc.strerror}") from exc
    if len(value) > MAX_SECRET_BYTES:
        raise UsageError(f"a secret holds at most {MAX_SECRET_BYTES} bytes")
    context: CliContext = ctx.obj
    folder = context.home.require().secrets_dir
    folder.mkdir(mode=0o700, exist_ok=True)
    temporary = temporary_beside(folder / name)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(value)
    os.replace(temporary, folder / name)
    console.print(f"secret {name} set ({len(value)} bytes)", markup=False)


@app.command("list")
def list_secrets(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the names of the secrets set on this home (never their values)."""
    context: CliContext = ctx.obj
    folder = context.home.require().secrets_dir
    names = (
        sorted(
            p.name
            for p in folder.glob("*")
            if p.is_file() and not p.name.startswith(".")
        )
        if folder.is_dir()
        else []
    )
    if as_json:
        emit_json(names)
        return
    for name in names:
        console.print(name, markup=False, highlight=False)
