"""Vector collections on SQLite with sqlite-vec (the embedded default).

One database file holds every collection: its items (key, text, metadata)
in a plain table and their embeddings in a ``vec0`` virtual table of its own,
compared by cosine distance. A collection remembers which embedder filled
it, so that a query embedded by another model is refused rather than
answered with nonsense.

Python's own ``sqlite3`` may be built without extension loading, so the
database is opened through pysqlite3, which bundles an SQLite that has it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pysqlite3.dbapi2 as sqlite3
import sqlite_vec

from kos_see.dependencies.embed import Embedder
from kos_see.errors import CollectionError

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DISTANCE_DIGITS = 6  # rounded, so that the same match writes the same bytes

SCHEMA = """
create table if not exists collections (
    name text primary key,
    embedder text not null,
    dimensions integer not null,
    created_at real not null
);
create table if not exists items (
    id integer primary key,
    collection text not null,
    key text not null,
    text text not null,
    metadata text not null,
    unique (collection, key)
);
"""


@dataclass(frozen=True)
class Item:
    key: str
    text: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Match:
    key: str
    text: str
    metadata: dict[str, Any]
    distance: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "text": self.text,
            "metadata": self.metadata,
            "distance": self.distance,
        }


class VectorStore:
    def __init__(self, path: Path, embedder: Embedder) -> None:
        self.path = path
        self.embedder = embedder

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=30)
            conn.enable_load_extension(True)
            sqlite_vec.load(conn)
            conn.enable_load_extension(False)
            conn.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise CollectionError(
                f"the vector database {self.path} cannot be opened: {exc}"
            ) from exc
        return conn

    def add(self, collection: str, items: Iterable[Item]) -> int:
        _check_name(collection)
        batch = list(items)
        if not batch:
            return 0
        vectors = self.embedder.embed([item.text for item in batch])
        conn = self._connect()
        try:
            with conn:
                self._ensure(conn, collection, len(vectors[0]))
                for item, vector in zip(batch, vectors, strict=True):
                    self._upsert(conn, collection, item, vector)
        except sqlite3.Error as exc:
            raise CollectionError(
                f"collection {collection!r} could not be written: {exc}"
            ) from exc
        finally:
            conn.close()
        return len(batch)

    def _ensure(self, conn: sqlite3.Connection, collection: str, dims: int) -> None:
        row = conn.execute(
            "select embedder, dimensions from collections where name = ?",
            (collection,),
        ).fetchone()
        if row is None:
            conn.execute(
                "insert into collections values (?, ?, ?, ?)",
                (collection, self.embedder.name, dims, time.time()),
            )
            conn.execute(
                f"create virtual table vec_{collection} using vec0("
                f"embedding float[{dims}] distance_metric=cosine)"
            )
            return
        self._same_embedder(collection, row[0])
        if row[1] != dims:
            raise CollectionError(
                f"collection {collection!r} holds {row[1]}-dimensional vectors; "
                f"the embedder gave {dims}"
            )

    def _same_embedder(self, collection: str, used: str) -> None:
        if used != self.embedder.name:
            raise CollectionError(
                f"collection {collection!r} was filled by embedder {used!r}, "
                f"not {self.embedder.name!r}; query it with the same embedder"
            )

    def _upsert(
        self,
        conn: sqlite3.Connection,
        collection: str,
        item: Item,
        vector: list[float],
    ) -> None:
        old = conn.execute(
            "select id from items where collection = ? and key = ?",
            (collection, item.key),
        ).fetchone()
        if old is not None:
            conn.execute(f"delete from vec_{collection} where rowid = ?", (old[0],))
            conn.execute("delete from items where id = ?", (old[0],))
        cursor = conn.execute(
            "insert into items (collection, key, text, metadata) values (?, ?, ?, ?)",
            (
                collection,
                item.key,
                item.text,
                json.dumps(item.metadata, sort_keys=True),
            ),
        )
        conn.execute(
            f"insert into vec_{collection} (rowid, embedding) values (?, ?)",
            (cursor.lastrowid, sqlite_vec.serialize_float32(vector)),
        )

    def query(self, collection: str, text: str, top_k: int) -> list[Match]:
        _check_name(collection)
        conn = self._connect()
        try:
            row = conn.execute(
                "select embedder from collections where name = ?", (collection,)
            ).fetchone()
            if row is None:
                raise CollectionError(
                    f"no vector collection {collection!r}; fill it with "
                    "'kos-see vectors add'"
                )
            self._same_embedder(collection, row[0])
            vector = self.embedder.embed([text])[0]
            rows = conn.execute(
                f"select i.key, i.text, i.metadata, v.distance from vec_{collection} v "
                "join items i on i.id = v.rowid "
                "where v.embedding match ? and k = ? order by v.distance, i.key",
                (sqlite_vec.serialize_float32(vector), top_k),
            ).fetchall()
        except sqlite3.Error as exc:
            raise CollectionError(
                f"collection {collection!r} could not be queried: {exc}"
            ) from exc
        finally:
            conn.close()
        return [
            Match(key, body, json.loads(meta), round(distance, DISTANCE_DIGITS))
            for key, body, meta, distance in rows
        ]

    def collections(self) -> list[dict[str, Any]]:
        conn = self._connect()
        try:
            rows = conn.execute(
                "select c.name, c.embedder, c.dimensions, count(i.id) from "
                "collections c left join items i on i.collection = c.name "
                "group by c.name order by c.name"
            ).fetchall()
        finally:
            conn.close()
        return [
            {"name": n, "embedder": e, "dimensions": d, "items": c}
            for n, e, d, c in rows
        ]


def _check_name(collection: str) -> None:
    # The name becomes part of a table name, so it is held to a strict pattern.
    if not NAME_RE.match(collection):
        raise CollectionError(
            f"{collection!r} is not a collection name: lower-case letters, digits "
            "and '_', starting with a letter"
        )
