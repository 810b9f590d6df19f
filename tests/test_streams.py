"""Events through Redis Streams, with the store as the source of truth.

Real Redis and real engines: a relay copies stored events to a per-task and
an all-events stream, readers follow them, fall back to the store while Redis
is down (stopped for real) and switch back when it returns.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from fault_harness import redis_up, start_redis, stop_redis

from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.events import keys
from kos_see.events.streams import CallbackFeed, EventFollower, EventRelay, event_of

pytestmark = pytest.mark.both_stores

SOURCE = """
from kos_see import service
for i in range(5):
    service.log("step", n=i)
service.result({"ok": True})
"""


@pytest.fixture
def events(redis_url: str) -> Iterator[dict[str, str]]:
    """An ``[events]`` section with a key prefix of this test's own; its keys
    are deleted at the end. Name it first in a test's arguments, so that it
    is torn down after the engines (whose relay copies once more on close)."""
    prefix = f"kos-see-test-{uuid.uuid4().hex[:10]}"
    yield {"url": redis_url, "prefix": prefix}
    try:
        client = redis.Redis.from_url(redis_url)
        names = list(client.scan_iter(f"{prefix}:*"))
        if names:
            client.delete(*names)
        client.close()
    except redis.RedisError:
        pass


def run(engine: Engine, service: str, key: str | None = None) -> str:
    task = engine.dispatcher.submit(
        SubmitRequest(service=service, input={}, idempotency_key=key)
    ).task
    done = engine.wait(task.id, timeout=60)
    assert done.state == "succeeded", (done.state, done.error)
    return task.id


def stream_events(url: str, name: str) -> list[int] | None:
    """The event ids in a stream; None while Redis does not answer."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return [event_of(f).id for _id, f in client.xrange(name)]
    except redis.ConnectionError:
        return None
    finally:
        client.close()


def wait_for(predicate, within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_every_stored_event_reaches_both_streams_once_in_order(
    events, make_engine, make_service
) -> None:
    make_service("steps", SOURCE)
    engine = make_engine(events=events)
    task_id = run(engine, "steps")
    stored = [e.id for e in engine.store.events(task_id)]
    assert len(stored) >= 10  # received, queued, leased, running, 5 logs, end
    per_task = keys.task_events(events["prefix"], task_id)
    assert wait_for(lambda: stream_events(events["url"], per_task) == stored)
    everything = stream_events(events["url"], keys.all_events(events["prefix"]))
    assert [i for i in everything if i in set(stored)] == stored

    follower = EventFollower(engine.store, engine.config.events)
    seen: dict[str, int] = {}
    got = [e.id for e in follower.follow([task_id], seen, wait=0.5)]
    follower.close()
    assert got == stored and follower.source == "redis"
    assert seen == {task_id: stored[-1]}


def test_two_relays_copy_each_event_once(events, make_engine, make_service) -> None:
    make_service("steps", SOURCE)
    engine = make_engine(events=events)
    other = EventRelay(engine.store, engine.config.events)
    other.start()
    try:
        ids = [run(engine, "steps") for _ in range(3)]
        stored = sorted(e.id for t in ids for e in engine.store.events(t))
        name = keys.all_events(events["prefix"])
        assert wait_for(
            lambda: len(stream_events(events["url"], name) or []) >= len(stored)
        )
        time.sleep(IDLE_SETTLE)
        assert stream_events(events["url"], name) == stored
    finally:
        other.close()


IDLE_SETTLE = 1.0  # two of the relay's idle looks: a second copy would show


def test_with_redis_down_tasks_run_events_are_stored_and_readers_fall_back(
    events, make_engine, make_service
) -> None:
    make_service("steps", SOURCE)
    engine = make_engine(events=events)
    run(engine, "steps")
    follower = EventFollower(engine.store, engine.config.events)
    try:
        stop_redis()
        assert wait_for(lambda: not redis_up(), 10)
        task_id = run(engine, "steps")  # runs with Redis gone
        stored = [e.id for e in engine.store.events(task_id)]
        seen: dict[str, int] = {}
        got: list[int] = []
        assert wait_for(
            lambda: (
                got.extend(e.id for e in follower.follow([task_id], seen))
                or got == stored
            )
        )
        assert follower.source == "store"
    finally:
        if not redis_up():
            start_redis()
    try:
        # Redis is back, empty: the relay copies again, the reader switches back.
        per_task = keys.task_events(events["prefix"], task_id)
        assert wait_for(lambda: stream_events(events["url"], per_task) == stored)
        later = run(engine, "steps")
        more: list[int] = []
        want = [e.id for e in engine.store.events(later)]
        # Within its retry interval the reader tries Redis again and stays.
        assert wait_for(
            lambda: (
                more.extend(e.id for e in follower.follow([later], seen, 0.2))
                or (more == want and follower.source == "redis")
            )
        ), (more, want, follower.source)
    finally:
        follower.close()


def test_callback_consumers_share_every_event_once(
    events, make_engine, make_service
) -> None:
    make_service("steps", SOURCE)
    engine = make_engine(events=events)
    feeds = [CallbackFeed(engine.config.events, f"c{n}") for n in range(2)]
    try:
        ids = [run(engine, "steps") for _ in range(2)]
        stored = sorted(e.id for t in ids for e in engine.store.events(t))
        got: dict[str, list[int]] = {"c0": [], "c1": []}
        lock = threading.Lock()

        def consume(feed: CallbackFeed) -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                entries = feed.read(count=7, block=0.2)
                with lock:
                    got[feed.consumer] += [e.id for _, e in entries]
                    if sum(map(len, got.values())) >= len(stored):
                        feed.ack([i for i, _ in entries])
                        return
                feed.ack([i for i, _ in entries])

        threads = [threading.Thread(target=consume, args=(f,)) for f in feeds]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=40)
        together = sorted(got["c0"] + got["c1"])
        assert together == stored  # each event once, to one consumer
    finally:
        for feed in feeds:
            feed.close()
