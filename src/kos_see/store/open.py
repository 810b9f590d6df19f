"""Open a store by URL, bringing its schema up to date.

The embedded SQLite database is migrated on open, since its owner is the
engine itself. Alembic is imported only when the recorded revision differs
from the newest one, which keeps the CLI's start fast.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from kos_see.errors import StoreError
from kos_see.store.base import Store
from kos_see.store.schema import SCHEMA_REVISION
from kos_see.store.sql import SqlStore

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


def open_store(url: str, migrate: bool = True) -> Store:
    if url.startswith("postgres"):
        return _open_postgres(url)
    if url.startswith("sqlite"):
        engine = _sqlite_engine(url)
    else:
        raise StoreError(
            f"store url {url!r} is not supported; this engine stores in SQLite "
            "(sqlite:///PATH)"
        )
    if migrate:
        upgrade(engine)
    return SqlStore(engine)


def _sqlite_engine(url: str) -> Engine:
    engine = sa.create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        pool_size=8,
        max_overflow=8,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # The driver must not open transactions by itself: the "begin"
        # listener below opens them, IMMEDIATE for writers, so that two
        # writers queue on the busy timeout instead of failing mid-way.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # Readers open no transaction: each of their statements reads a
        # committed state on its own, which is all they need, and saves a
        # BEGIN and a ROLLBACK per read.
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        if mode != "NONE":
            conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        conn.execution_options(sqlite_begin="NONE")
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine) -> None:
    if current_revision(engine) == SCHEMA_REVISION:
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    log.info(
        "store migrated",
        extra={"action": "store_migrated", "revision": SCHEMA_REVISION},
    )


# PostgreSQL: the schema is shared by every engine process on every host, so
# it changes only when an operator says so (``kos-see db upgrade``), never as
# a side effect of a worker starting.


def _open_postgres(url: str) -> Store:
    from kos_see.store.postgres import PostgresStore, postgres_engine

    engine = postgres_engine(url)
    try:
        found = current_revision(engine)
    except sa.exc.OperationalError as exc:
        engine.dispose()
        raise StoreError(
            f"cannot reach the store at {safe_url(url)}: {getattr(exc, 'orig', exc)}"
        ) from exc
    if found != SCHEMA_REVISION:
        engine.dispose()
        raise StoreError(
            f"the store at {safe_url(url)} has schema revision {found or 'none'}, "
            f"this engine needs {SCHEMA_REVISION}; run 'kos-see db upgrade'"
        )
    return PostgresStore(engine)


def upgrade_url(url: str) -> tuple[str | None, str]:
    """Bring the database at ``url`` to the newest schema; returns the
    revisions before and after. Safe to run from two hosts at once."""
    if url.startswith("postgres"):
        from kos_see.store.postgres import LEASE_LOCK_KEY, postgres_engine

        engine = postgres_engine(url)
    else:
        engine = _sqlite_engine(url)
    try:
        before = current_revision(engine)
        if engine.dialect.name == "postgresql":
            with engine.begin() as conn:
                # Concurrent upgrades wait for each other; the second finds
                # the schema current and does nothing.
                conn.execute(
                    sa.select(sa.func.pg_advisory_xact_lock(LEASE_LOCK_KEY + 1))
                )
                _upgrade_on(conn)
        else:
            upgrade(engine)
        return before, SCHEMA_REVISION
    except sa.exc.OperationalError as exc:
        raise StoreError(
            f"cannot upgrade the store at {safe_url(url)}: {getattr(exc, 'orig', exc)}"
        ) from exc
    finally:
        engine.dispose()


def _upgrade_on(conn: sa.Connection) -> None:
    found = conn.execute(
        sa.text("SELECT to_regclass('alembic_version') IS NOT NULL")
    ).scalar()
    if found:
        revision = conn.execute(sa.text("SELECT version_num FROM alembic_version"))
        if revision.scalar() == SCHEMA_REVISION:
            return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    command.upgrade(config, "head")
    log.info(
        "store migrated",
        extra={"action": "store_migrated", "revision": SCHEMA_REVISION},
    )


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(unparsable URL)"
