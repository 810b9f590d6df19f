"""The artifact vault: ``kos-see artifacts put FILE``, ``get DIGEST``, ``list``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from kos_see.cli.context import CliContext
from kos_see.cli.output import console, emit_json, plain
from kos_see.dependencies.paths import vault_url
from kos_see.errors import UsageError

if TYPE_CHECKING:
    from kos_see.dependencies.vault import Vault

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]

app = typer.Typer(help="Store and read artifacts in the vault.", no_args_is_help=True)


def _vault(ctx: typer.Context) -> Vault:
    from kos_see.dependencies.vault import Vault  # fsspec: only when used

    context: CliContext = ctx.obj
    home = context.home.require()
    return Vault(vault_url(home, home.load_config()))


@app.command("put")
def put(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(metavar="FILE...")],
    as_json: JsonFlag = False,
) -> None:
    """Store files in the vault; prints each one's digest."""
    vault = _vault(ctx)
    stored = [(path, vault.put_file(path)) for path in files]
    if as_json:
        emit_json(
            [{"file": str(p), "digest": s.digest, "size": s.size} for p, s in stored]
        )
        return
    for path, artifact in stored:
        console.print(f"{artifact.digest}  {path}", highlight=False, markup=False)


@app.command("get")
def get(
    ctx: typer.Context,
    digest: Annotated[str, typer.Argument(metavar="DIGEST")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here, not stdout.")
    ] = None,
) -> None:
    """Write an artifact (checked against its digest) to stdout or a file."""
    data = _vault(ctx).get_bytes(digest)
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        output.write_bytes(data)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from exc


@app.command("list")
def list_artifacts(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the vault's artifacts: digest and size."""
    found = list(_vault(ctx).list())
    if as_json:
        emit_json([{"digest": a.digest, "size": a.size} for a in found])
        return
    if not found:
        console.print("the vault is empty")
        return
    table = Table("digest", "bytes")
    for artifact in found:
        table.add_row(plain(artifact.digest), str(artifact.size))
    console.print(table)
