"""Events fanned out through Redis Streams, with the store as the truth.

Every event is first written to the store, in the transaction of the change
it records. A relay then copies stored events, in id order, into two capped
streams: one per task and one of all events (``keys.py``). One relay runs at
a time across all processes (a lock in Redis with an expiry); any serving
engine may hold it, and another takes over when it dies.

Readers (``EventFollower``) catch up from the store, then follow the task's
stream, skipping what they have seen by event id. When Redis is down they
read the store instead and switch back when it returns; tasks run and events
are stored the whole time, since nothing on a task's path waits for Redis.

Ordering: ids are assigned at insert, and a transaction that inserted a lower
id may commit after one with a higher id. The relay therefore copies only up
to the first gap in the ids, and steps over a gap once it is older than
``GAP_WAIT`` (a rolled-back insert leaves a gap for good).

Known shortcoming: the relay looks for new events when its own process
flushes or is woken, and otherwise every ``IDLE_LOOK`` seconds (one indexed
range read), so events written by a process that is not serving (a CLI
submit) reach the streams up to that late; with LISTEN/NOTIFY on event
inserts it would be immediate.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator

import redis

from kos_see.config import EventsConfig
from kos_see.events import keys
from kos_see.models import Event
from kos_see.store import Store

log = logging.getLogger(__name__)

BATCH = 500
IDLE_LOOK = 0.5
GAP_WAIT = 2.0
LOCK_SECONDS = 5.0
BACKOFF_MAX = 5.0
# After Redis lost its data (a restart without persistence), how many recent
# events the relay copies again so that live readers miss nothing recent.
REPLAY_ON_EMPTY = 10000


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_connect_timeout=2, socket_timeout=5, decode_responses=True
    )


def entry_fields(event: Event) -> dict[str, str]:
    return {"id": str(event.id), "event": json.dumps(event.to_dict())}


def event_of(fields: dict[str, str]) -> Event:
    document = json.loads(fields["event"])
    meta = {k: document.pop(k) for k in ("id", "task_id", "attempt", "at", "kind")}
    return Event(data=document, **meta)


class EventRelay:
    """Copies stored events to the streams; one holder of the lock at a time."""

    def __init__(self, store: Store, config: EventsConfig) -> None:
        self.store = store
        self.config = config
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._redis = client(config.url)
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="event-relay")
        self._thread.daemon = True
        self._gap_since: dict[int, float] = {}
        self._down_since: float | None = None
        self.copied = 0

    def start(self) -> None:
        self._thread.start()

    def wake(self, *_args: object) -> None:
        self._wake.set()

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=5)
        try:
            # What the last flush before closing stored goes out too.
            while self._holds_lock() and self.relay_once():
                pass
        except Exception:
            log.warning(
                "event relay's last copy failed", extra={"action": "relay_error"}
            )
        self._release()
        self._redis.close()

    def _loop(self) -> None:
        pause = 0.0
        while not self._closed.is_set():
            self._wake.wait(pause or IDLE_LOOK)
            self._wake.clear()
            try:
                while self._holds_lock() and self.relay_once():
                    pass
                self._up()
                pause = 0.0
            except redis.RedisError as exc:
                pause = self._down(exc, pause)
            except Exception:
                # The store may be restarting; the next look retries.
                log.warning("event relay step failed", extra={"action": "relay_error"})
                pause = 1.0

    def _holds_lock(self) -> bool:
        name = keys.relay_lock(self.config.prefix)
        ms = int(LOCK_SECONDS * 1000)
        if self._redis.set(name, self.owner, nx=True, px=ms):
            return True
        if self._redis.get(name) == self.owner:
            self._redis.pexpire(name, ms)
            return True
        return False

    def _release(self) -> None:
        name = keys.relay_lock(self.config.prefix)
        try:
            if self._redis.get(name) == self.owner:
                self._redis.delete(name)
        except redis.RedisError:
            pass

    def relay_once(self) -> bool:
        """Copy the next batch; True if there may be more right away."""
        cursor_key = keys.relay_cursor(self.config.prefix)
        found = self._redis.get(cursor_key)
        if found is None:
            cursor = max(0, self.store.last_event_id() - REPLAY_ON_EMPTY)
        else:
            cursor = int(found)
        batch = self._contiguous(cursor, self.store.events_since(cursor, BATCH))
        if not batch:
            return False
        pipe = self._redis.pipeline(transaction=False)
        everything = keys.all_events(self.config.prefix)
        for event in batch:
            fields = entry_fields(event)
            pipe.xadd(
                keys.task_events(self.config.prefix, event.task_id),
                fields,
                maxlen=self.config.task_stream_cap,
                approximate=True,
            )
            pipe.xadd(
                everything, fields, maxlen=self.config.all_stream_cap, approximate=True
            )
        pipe.set(cursor_key, batch[-1].id)
        pipe.execute()
        self.copied += len(batch)
        return len(batch) == BATCH

    def _contiguous(self, cursor: int, batch: list[Event]) -> list[Event]:
        """The events up to the first gap in the ids that may still fill."""
        expected = cursor + 1
        now = time.monotonic()
        for number, event in enumerate(batch):
            if event.id != expected:
                first_seen = self._gap_since.setdefault(expected, now)
                if now - first_seen < GAP_WAIT:
                    return batch[:number]
            expected = event.id + 1
        self._gap_since = {k: v for k, v in self._gap_since.items() if now - v < 60}
        return batch

    def _down(self, exc: Exception, pause: float) -> float:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "event streams unavailable; events stay in the store, retrying",
                extra={"action": "streams_unavailable", "error": str(exc)},
            )
        return min(BACKOFF_MAX, max(0.2, pause * 2))

    def _up(self) -> None:
        if self._down_since is not None:
            log.warning(
                "event streams available again",
                extra={
                    "action": "streams_available",
                    "down_seconds": round(time.monotonic() - self._down_since, 3),
                },
            )
            self._down_since = None


class EventFollower:
    """A task's events as they happen: from Redis when it is up, else from
    the store; ``source`` says which was last used."""

    POLL = 0.1
    RETRY_REDIS = 2.0

    def __init__(self, store: Store, config: EventsConfig) -> None:
        self.store = store
        self.config = config
        self._redis = client(config.url) if config.url else None
        self.source = "redis" if self._redis is not None else "store"
        self._retry_at = 0.0
        self._positions: dict[str, str] = {}

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()

    def follow(
        self, task_ids: list[str], seen: dict[str, int], wait: float = 1.0
    ) -> Iterator[Event]:
        """New events of ``task_ids`` after ``seen`` (task id -> last event
        id, updated), waiting up to ``wait`` seconds for the first."""
        if self._redis is None or time.monotonic() < self._retry_at:
            yield from self.from_store(task_ids, seen)
            time.sleep(self.POLL)
            return
        try:
            found = self._redis.xread(
                self._stream_positions(task_ids),
                block=int(wait * 1000),
                count=BATCH,
            )
        except redis.RedisError as exc:
            self._fall_back(exc)
            return
        self._switched("redis")
        if not found:
            # Quiet for a whole wait: the relay may be behind or not running
            # (no serving engine has [events] url); the store has the truth.
            yield from self.from_store(task_ids, seen)
            return
        for stream, entries in found:
            for entry_id, fields in entries:
                event = event_of(fields)
                self._positions[stream] = entry_id
                if event.id > seen.get(event.task_id, 0):
                    seen[event.task_id] = event.id
                    yield event

    def _stream_positions(self, task_ids: list[str]) -> dict[str, str]:
        # From the start of each capped stream the first time (what was seen
        # is skipped by event id), then from the last entry read.
        names = [keys.task_events(self.config.prefix, t) for t in task_ids]
        return {name: self._positions.get(name, "0") for name in names}

    def from_store(self, task_ids: list[str], seen: dict[str, int]) -> Iterator[Event]:
        for task_id in task_ids:
            for event in self.store.events(task_id, after=seen.get(task_id, 0)):
                seen[task_id] = event.id
                yield event

    def _fall_back(self, exc: Exception) -> None:
        if self.source == "redis":
            log.warning(
                "event streams unavailable; reading the store",
                extra={"action": "follow_fallback", "error": str(exc)},
            )
        self.source = "store"
        self._positions = {}
        self._retry_at = time.monotonic() + self.RETRY_REDIS

    def _switched(self, source: str) -> None:
        if self.source != source:
            log.warning(
                "event streams back; following them",
                extra={"action": "follow_streams"},
            )
        self.source = source


class CallbackFeed:
    """The stream of all events through the ``callbacks`` consumer group:
    each event goes to one consumer and stays pending until acknowledged."""

    def __init__(self, config: EventsConfig, consumer: str) -> None:
        self.config = config
        self.consumer = consumer
        self._redis = client(config.url)
        self._stream = keys.all_events(config.prefix)
        try:
            self._redis.xgroup_create(
                self._stream, keys.CALLBACK_GROUP, id="0", mkstream=True
            )
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, count: int = 100, block: float = 1.0) -> list[tuple[str, Event]]:
        found = self._redis.xreadgroup(
            keys.CALLBACK_GROUP,
            self.consumer,
            {self._stream: ">"},
            count=count,
            block=int(block * 1000),
        )
        return [
            (entry_id, event_of(fields))
            for _stream, entries in found or []
            for entry_id, fields in entries
        ]

    def ack(self, entry_ids: list[str]) -> int:
        if not entry_ids:
            return 0
        return self._redis.xack(self._stream, keys.CALLBACK_GROUP, *entry_ids)

    def close(self) -> None:
        self._redis.close()
