"""The Python client: async flavour, typed errors, and an unreachable server."""

from __future__ import annotations

import asyncio
import socket
import threading
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


class CuttingProxy:
    """A TCP proxy on loopback that cuts its first connection after
    ``cut_after`` bytes from the server, as a dropped network would."""

    def __init__(self, upstream_port: int, cut_after: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            limit = self.cut_after if self.connections == 1 else None
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(
                target=self._pipe, args=(downstream, upstream, None), daemon=True
            ).start()
            threading.Thread(
                target=self._pipe, args=(upstream, downstream, limit), daemon=True
            ).start()

    def _pipe(self, source, sink, limit) -> None:
        sent = 0
        try:
            while limit is None or sent < limit:
                data = source.recv(min(4096, limit - sent) if limit else 4096)
                if not data:
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()


STEPS = """
    import time
    from kos_see import service
    for i in range(10):
        service.progress(i + 1, 10)
        time.sleep(0.1)
    service.result({"done": True})
"""


def test_a_dropped_event_stream_resumes_where_it_stopped(api, make_service):
    make_service("steps", STEPS, retry_limit=0)
    port = int(api.url.rsplit(":", 1)[1])
    with Client(api.url, "alice", api.keys["alice"]) as direct:
        task_id = direct.submit("steps", {})["task"]["id"]
        token = direct.token()
    proxy = CuttingProxy(port, cut_after=1500)
    try:
        with Client(f"http://127.0.0.1:{proxy.port}", "alice", api.keys["alice"]) as c:
            c._r.keep_token({"token": token, "expires_at": time.time() + 600})
            events = list(c.events(task_id))
    finally:
        proxy.close()
    assert proxy.connections >= 2  # the stream was cut and opened again
    ids = [e["id"] for e in events if e["kind"] != "end"]
    assert ids == sorted(set(ids))  # nothing twice, in order
    with Client(api.url, "alice", api.keys["alice"]) as direct:
        every = [e["id"] for e in direct.events(task_id) if e["kind"] != "end"]
    assert ids == every  # and nothing lost
    assert events[-1]["state"] == "succeeded"


def test_every_engine_error_survives_the_wire_as_its_own_class():
    from kos_see.api.status import _classes, error_from_dict, http_status
    from kos_see.errors import InputInvalid, KosSeeError, RequestRefused

    classes = _classes()
    assert {"unknown_schedule", "principal_exists", "bad_token"} <= set(classes)
    for code, cls in classes.items():
        if cls is InputInvalid:
            exc = cls("bad input", [{"path": "$.n", "message": "required"}])
        else:
            exc = cls(f"{code} happened", field="x")
        back = error_from_dict(exc.to_dict(), http_status(exc))
        assert type(back) is cls, code
        assert back.message == exc.message and back.details == exc.details
    # An unknown code still arrives typed, by its status.
    unknown = error_from_dict({"error": "new_code", "message": "m"}, 404)
    assert type(unknown) is RequestRefused and unknown.code == "new_code"
    assert type(error_from_dict({"error": "new", "message": "m"}, 500)) is KosSeeError
    assert type(error_from_dict("<html>", 502)) is ServerUnreachable
