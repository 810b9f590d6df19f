"""Wake-ups between engine processes on any host, through PostgreSQL's
LISTEN/NOTIFY: a submit or a cancel anywhere wakes every worker at once,
without polling the store.

The listener holds one connection of its own. When the server goes away it
says so once, retries with backoff, and after reconnecting wakes its process
once, since notifications sent while it was away are not replayed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

from kos_see.events.wakeup import MESSAGES
from kos_see.store.postgres import WAKE_CHANNEL

log = logging.getLogger(__name__)

BACKOFF_START = 0.2
BACKOFF_MAX = 5.0


def libpq_url(url: str) -> str:
    """The URL as libpq reads it (without SQLAlchemy's driver suffix)."""
    scheme, _, rest = url.partition("://")
    return f"postgresql://{rest}" if scheme.startswith("postgres") else url


class PgWakeListener:
    """LISTENs on the wake-up channel and passes each message to ``on_message``."""

    def __init__(self, url: str, on_message: Callable[[str], None]) -> None:
        self._url = libpq_url(url)
        self._on_message = on_message
        self._closed = threading.Event()
        self._conn: psycopg.Connection | None = None
        self._thread = threading.Thread(
            target=self._loop, name="pg-wake-listener", daemon=True
        )
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        pause = BACKOFF_START
        lost = False
        while not self._closed.is_set():
            try:
                with psycopg.connect(
                    self._url, autocommit=True, connect_timeout=5
                ) as conn:
                    conn.execute(f"LISTEN {WAKE_CHANNEL}")
                    self.connected.set()
                    if lost:
                        log.warning(
                            "wake-up channel back",
                            extra={"action": "wake_channel_back"},
                        )
                        # What was sent while away is gone: look once now.
                        self._on_message("submit")
                    lost, pause = False, BACKOFF_START
                    self._listen(conn)
            except psycopg.Error as exc:
                self.connected.clear()
                if not lost:
                    log.warning(
                        "wake-up channel lost; reconnecting with backoff",
                        extra={"action": "wake_channel_lost", "error": str(exc)},
                    )
                lost = True
                self._closed.wait(pause)
                pause = min(BACKOFF_MAX, pause * 2)

    def _listen(self, conn: psycopg.Connection) -> None:
        while not self._closed.is_set():
            # A short timeout keeps close() prompt; a notification wakes at once.
            for notify in conn.notifies(timeout=0.5):
                if notify.payload in MESSAGES:
                    self._on_message(notify.payload)
