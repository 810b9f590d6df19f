"""The lock that lets only one engine serve a database at a time.

Two engines on one database would rescue each other's leases and kill each
other's running attempts. The lock is taken on a file next to the database
itself, named after its real path with every symlink and ``..`` resolved, so
that a symlinked home, ``--home H/../H`` or a second home whose ``store.url``
names the same file all meet the same lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from sqlalchemy.engine import make_url

from kos_see.errors import EngineAlreadyServing


def database_file(url: str) -> Path | None:
    """The real path of an SQLite store's file; None for a store with no file
    and for a server's database (PostgreSQL), which many engines share."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite"):
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(os.path.realpath(database))


class ServingLock:
    """An exclusive ``flock`` held while this process serves the database."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".serve-lock")
        self._fd: int | None = None

    def acquire(self, home_root: Path) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EngineAlreadyServing(
                f"another engine already serves the store {self.path.parent} "
                f"(home {home_root}); stop it first: only one engine serves a "
                "store at a time",
                lock=str(self.path),
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            # Closing the descriptor drops the flock; the file stays for reuse.
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
