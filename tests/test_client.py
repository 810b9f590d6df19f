"""The Python client: async flavour, typed errors, and an unreachable server."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from kos_see.callbacks import CallbackStore
from kos_see.callbacks.sender import CallbackSender
from kos_see.client import AsyncClient, Client
from kos_see.config import CallbacksConfig
from kos_see.errors import ServerUnreachable, TaskNotFound

ECHO = """
    def run(inputs):
        return {"echo": inputs.get("n")}
"""


def test_async_client_submits_streams_and_raises_typed_errors(api, make_service):
    make_service("echo", ECHO, entrypoint="main.py:run", retry_limit=0)

    async def scenario():
        async with AsyncClient(api.url, "alice", api.keys["alice"]) as client:
            reply = await client.submit("echo", {"n": 4})
            task_id = reply["task"]["id"]
            kinds = [e["kind"] async for e in client.events(task_id)]
            done = await client.get(task_id)
            with pytest.raises(TaskNotFound):
                await client.get("a" * 24)
            return kinds, done

    kinds, done = asyncio.run(scenario())
    assert kinds[-1] == "end" and "state" in kinds
    assert done["state"] == "succeeded" and done["result"] == {"echo": 4}


def test_an_unreachable_server_is_a_typed_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        Client(f"http://127.0.0.1:{port}", "alice") as client,
        pytest.raises(ServerUnreachable, match="cannot reach"),
    ):
        client.health()


def test_a_delivery_that_never_succeeds_is_marked_failed_not_dropped(api, make_service):
    """With nobody listening, each attempt is recorded until max_attempts; the
    subscription then stays in the store as failed."""
    make_service("echo", ECHO, entrypoint="main.py:run", retry_limit=0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = api.client()
    task_id = client.submit("echo", {"n": 1}, callback_url=f"http://127.0.0.1:{port}/")[
        "task"
    ]["id"]
    client.wait(task_id)
    api.server.sender.stop()  # drive a sender of our own, step by step

    config = CallbacksConfig(
        allowed_hosts=["127.0.0.1"], max_attempts=3, retry_base=0.01, retry_cap=0.01
    )
    sender = CallbackSender(api.engine.store, config)
    store = CallbackStore(api.engine.store)
    try:
        deadline = time.monotonic() + 30
        while store.get(task_id).state == "pending" and time.monotonic() < deadline:
            sender.deliver_due(now=time.time() + 1)
    finally:
        sender.stop()
    assert store.get(task_id).state == "failed"
    attempts = [d.attempt for d in store.deliveries(task_id)]
    assert attempts[-1] == 3 and attempts == sorted(set(attempts))
