"""SQLite statements run on the driver connection, without SQLAlchemy's
execution machinery.

The store's queries stay SQLAlchemy Core statements (``statements.py``), but
running one through a SQLAlchemy ``Connection`` costs several times what
SQLite needs for it: measured under load, 0.68 ms of CPU against 0.10 ms for
the same read on the ``sqlite3`` connection. Every task runs a dozen of them.
So for SQLite each statement is compiled once to SQL text with named
parameters, and run on a plain ``sqlite3`` connection that this module wraps
in the small part of the ``Connection`` API the store uses.

Known shortcoming: expanding ``IN`` parameters are rendered with SQLAlchemy's
``_process_parameters_for_postcompile``, an internal of SQLAlchemy 2; a change
there shows up as failing store tests, not silently.
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy.dialects import sqlite
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import Compiled

from kos_see.store import statements

_DIALECT = sqlite.dialect(paramstyle="named")

# The statements built once at import: their compiled form can be kept, as
# they live (and keep their ids) as long as the process.
_PREBUILT = frozenset(
    id(value) for value in vars(statements).values() if isinstance(value, ClauseElement)
)


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=30, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.row_factory = _row_factory
    return conn


class DriverConnection:
    """A ``sqlite3`` connection that executes SQLAlchemy statements."""

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw
        self._compiled: dict[tuple[int, tuple[str, ...]], Compiled] = {}

    def execute(
        self,
        statement: ClauseElement,
        params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ) -> DriverResult:
        if isinstance(params, Sequence) and not isinstance(params, Mapping):
            return self._execute_many(statement, params)
        compiled = self._compile(statement, params)
        sql, values = _render(compiled, params or {})
        return DriverResult(self.raw.execute(sql, values))

    def _execute_many(
        self, statement: ClauseElement, rows: Sequence[Mapping[str, Any]]
    ) -> DriverResult:
        if not rows:
            return DriverResult(None)
        compiled = self._compile(statement, rows[0])
        values = [compiled.construct_params(row) for row in rows]
        return DriverResult(self.raw.executemany(compiled.string, values))

    def _compile(
        self, statement: ClauseElement, params: Mapping[str, Any] | None
    ) -> Compiled:
        # An INSERT names only the columns given; keep one compiled form per set.
        keys = tuple(sorted(params)) if params else ()
        cacheable = id(statement) in _PREBUILT
        key = (id(statement), keys)
        if cacheable and key in self._compiled:
            return self._compiled[key]
        compiled = statement.compile(dialect=_DIALECT, column_keys=list(keys) or None)
        if cacheable:
            self._compiled[key] = compiled
        return compiled

    def exec_driver_sql(self, sql: str, params: Any = ()) -> DriverResult:
        """Plain SQL text, as SQLAlchemy's ``Connection.exec_driver_sql``."""
        return DriverResult(self.raw.execute(sql, params))

    def begin_immediate(self) -> None:
        self.raw.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.raw.execute("COMMIT")

    def rollback(self) -> None:
        if self.raw.in_transaction:
            self.raw.execute("ROLLBACK")

    def close(self) -> None:
        self.raw.close()


def _render(
    compiled: Compiled, params: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    values = compiled.construct_params(params)
    if compiled.post_compile_params:
        expanded = compiled._process_parameters_for_postcompile(values)
        return expanded.statement, dict(expanded.parameters)
    return compiled.string, values


class DriverResult:
    """The part of SQLAlchemy's result API the store uses."""

    def __init__(self, cursor: sqlite3.Cursor | None) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return -1 if self._cursor is None else self._cursor.rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self.all())

    def all(self) -> list[Any]:
        return [] if self._cursor is None else self._cursor.fetchall()

    def first(self) -> Any:
        rows = self.all()
        return rows[0] if rows else None

    def one(self) -> Any:
        rows = self.all()
        if len(rows) != 1:
            raise LookupError(f"expected one row, got {len(rows)}")
        return rows[0]

    def scalar(self) -> Any:
        row = self.first()
        return None if row is None else row[0]


_ROW_TYPES: dict[tuple[str, ...], type] = {}


def _row_factory(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Any:
    names = tuple(column[0] for column in cursor.description)
    row_type = _ROW_TYPES.get(names)
    if row_type is None:
        row_type = _ROW_TYPES[names] = _make_row_type(names)
    return row_type(*values)


def _make_row_type(names: tuple[str, ...]) -> type:
    # Unnamed columns (count(*), min(x)) get positional names.
    fields = [
        n if n.isidentifier() and not n.startswith("_") else f"c{i}"
        for i, n in enumerate(names)
    ]
    base = namedtuple("Row", fields, rename=True)  # type: ignore[misc]

    class Row(base):  # type: ignore[valid-type,misc]
        __slots__ = ()

        @property
        def _mapping(self) -> dict[str, Any]:
            return dict(zip(names, self, strict=True))

    return Row
