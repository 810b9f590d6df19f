"""A task's events for streams: read from the store, woken on each flush.

Streams (SSE and gRPC Watch) read a task's events after the last one they
sent. In a process that also serves the worker pool, ``EventFeed.poke`` is
called on each flush so that streams read at once; otherwise they read every
``interval``. The integrator may point ``read`` at another event bus; the
streams depend on nothing else.
"""

from __future__ import annotations

import asyncio
import threading

from kos_see.models import Event, TaskRecord
from kos_see.store import Store

INTERVAL = 0.2


class EventFeed:
    def __init__(self, store: Store, interval: float = INTERVAL) -> None:
        self.store = store
        self.interval = interval
        self._changed = threading.Condition()
        self._generation = 0
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = (
            set()
        )

    def read(self, task_id: str, after: int) -> list[Event]:
        return self.store.events(task_id, after=after)

    def task(self, task_id: str) -> TaskRecord | None:
        return self.store.get_task(task_id)

    def generation(self) -> int:
        with self._changed:
            return self._generation

    def poke(self) -> None:
        """Something was written: wake every waiting stream."""
        with self._changed:
            self._generation += 1
            self._changed.notify_all()
            waiters = list(self._waiters)
        for loop, future in waiters:
            loop.call_soon_threadsafe(_settle, future)

    def wait(self, seen: int, timeout: float | None = None) -> int:
        """Block until a poke after generation ``seen`` or ``timeout``
        (default: the read interval); returns the current generation."""
        with self._changed:
            if self._generation == seen:
                self._changed.wait(self.interval if timeout is None else timeout)
            return self._generation

    async def wait_async(self, seen: int, timeout: float | None = None) -> int:
        """``wait`` for coroutines: the event loop's thread is never blocked."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (loop, future)
        with self._changed:
            if self._generation != seen:
                return self._generation
            self._waiters.add(entry)
        try:
            await asyncio.wait_for(
                future, self.interval if timeout is None else timeout
            )
        except TimeoutError:
            pass
        finally:
            with self._changed:
                self._waiters.discard(entry)
        return self.generation()


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
