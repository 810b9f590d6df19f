"""``kos-see db``: the store's schema, applied when an operator says so."""

from __future__ import annotations

from typing import Annotated

import typer

from kos_see.cli.context import CliContext
from kos_see.cli.output import console, emit_json
from kos_see.store.open import safe_url, upgrade_url

app = typer.Typer(help="The store's schema and migrations.", no_args_is_help=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


@app.command("upgrade")
def upgrade(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Apply the migrations the store lacks (safe to run from several hosts).

    The embedded SQLite store is also migrated whenever the engine opens it;
    a PostgreSQL store only by this command, so that the schema every host
    shares changes when its operator decides.
    """
    context: CliContext = ctx.obj
    home = context.home.require()
    config = home.load_config()
    url = home.store_url(config)
    before, after = upgrade_url(url)
    if as_json:
        emit_json({"store": safe_url(url), "from": before, "to": after})
        return
    if before == after:
        console.print(f"{safe_url(url)}: schema {after}, up to date", highlight=False)
    else:
        console.print(
            f"{safe_url(url)}: schema {before or 'none'} -> {after}", highlight=False
        )
