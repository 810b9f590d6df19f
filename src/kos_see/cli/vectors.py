"""Vector collections: ``kos-see vectors add COLLECTION`` and ``query``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from kos_see.cli.context import CliContext
from kos_see.cli.output import console, emit_json, plain
from kos_see.dependencies.embed import make_embedder
from kos_see.dependencies.paths import vectors_path
from kos_see.errors import UsageError

if TYPE_CHECKING:
    from kos_see.dependencies.vectors import Item, VectorStore

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]

app = typer.Typer(help="Fill and query vector collections.", no_args_is_help=True)


def _store(ctx: typer.Context) -> VectorStore:
    # sqlite-vec loads in a tenth of a second: only for these commands.
    from kos_see.dependencies.vectors import VectorStore

    context: CliContext = ctx.obj
    home = context.home.require()
    config = home.load_config()
    return VectorStore(vectors_path(home, config), make_embedder(config.dependencies))


@app.command("add")
def add(
    ctx: typer.Context,
    collection: Annotated[str, typer.Argument(metavar="COLLECTION")],
    text: Annotated[str | None, typer.Option("--text", help="One item's text.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="That item's key.")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help='JSON lines, each {"key": ..., "text": ..., "metadata": {...}}; '
            "- for stdin.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Embed items and add them to a collection (made on first use)."""
    items = _items(text, key, file)
    count = _store(ctx).add(collection, items)
    if as_json:
        emit_json({"collection": collection, "added": count})
        return
    console.print(f"added {count} items to {collection}", highlight=False)


def _items(text: str | None, key: str | None, file: Path | None) -> list[Item]:
    if (text is None) == (file is None):
        raise UsageError("give either --text (with --key) or --file")
    from kos_see.dependencies.vectors import Item

    if text is not None:
        if not key:
            raise UsageError("--text needs --key, the item's key in the collection")
        return [Item(key, text, {})]
    assert file is not None
    try:
        lines = (sys.stdin if str(file) == "-" else file.open(encoding="utf-8")).read()
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror}") from exc
    return [_item(line, number, file) for number, line in _numbered(lines)]


def _numbered(text: str) -> list[tuple[int, str]]:
    return [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _item(line: str, number: int, file: Path) -> Item:
    try:
        value: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{file} line {number} is not JSON: {exc.msg}") from exc
    ok = (
        isinstance(value, dict)
        and isinstance(value.get("key"), str)
        and isinstance(value.get("text"), str)
        and isinstance(value.get("metadata", {}), dict)
    )
    if not ok:
        raise UsageError(
            f'{file} line {number}: expected {{"key": str, "text": str, '
            '"metadata": {...}}'
        )
    from kos_see.dependencies.vectors import Item

    return Item(value["key"], value["text"], value.get("metadata", {}))


@app.command("query")
def query(
    ctx: typer.Context,
    collection: Annotated[str, typer.Argument(metavar="COLLECTION")],
    text: Annotated[str, typer.Argument(metavar="TEXT")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=10000)] = 5,
    as_json: JsonFlag = False,
) -> None:
    """The items nearest to TEXT, nearest first."""
    found = _store(ctx).query(collection, text, top_k)
    if as_json:
        emit_json([m.to_dict() for m in found])
        return
    table = Table("key", "distance", "text")
    for match in found:
        table.add_row(plain(match.key), f"{match.distance:.4f}", plain(match.text[:80]))
    console.print(table)
