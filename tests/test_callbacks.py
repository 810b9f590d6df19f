"""Webhooks: signed deliveries to a real HTTP receiver on loopback that is
down for the first attempts; every attempt is recorded."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from kos_see.audit.verify import entries
from kos_see.callbacks import CallbackStore, verify_payload
from kos_see.callbacks.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER
from kos_see.errors import CallbackRefused, PermissionDenied
from kos_see.security.envelope import sign_request

ECHO = """
    def run(inputs):
        return {"echo": inputs.get("n")}
"""
SECRET = "s3cret-of-this-subscription"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Receiver:
    """A webhook receiver that checks each delivery as the README says."""

    def __init__(self, port: int, secret: str) -> None:
        received: list[dict] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = verify_payload(
                    secret,
                    self.headers[TIMESTAMP_HEADER],
                    body,
                    self.headers[SIGNATURE_HEADER],
                )
                received.append({"valid": ok, "payload": json.loads(body)})
                self.send_response(204 if ok else 401)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _wait(predicate, within=30.0):
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_receiver_that_is_down_gets_the_delivery_later(api, make_service):
    make_service("echo", ECHO, entrypoint="main.py:run", retry_limit=0)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/hook"
    client = api.client()
    task_id = client.submit("echo", {"n": 3}, callback_url=url, callback_secret=SECRET)[
        "task"
    ]["id"]
    assert client.wait(task_id)["state"] == "succeeded"

    store = CallbackStore(api.engine.store)
    # Nobody listens yet: attempts fail, are recorded, and are retried.
    assert _wait(lambda: len(store.deliveries(task_id)) >= 2)
    assert store.get(task_id).state == "pending"

    receiver = Receiver(port, SECRET)
    try:
        assert _wait(lambda: store.get(task_id).state == "delivered")
    finally:
        receiver.close()

    deliveries = store.deliveries(task_id)
    assert all(d.status is None and d.error for d in deliveries[:-1])
    assert deliveries[-1].status == 204
    assert [d.attempt for d in deliveries] == list(range(1, len(deliveries) + 1))
    assert len(receiver.received) == 1
    got = receiver.received[0]
    assert got["valid"] is True
    assert got["payload"]["task_id"] == task_id
    assert got["payload"]["state"] == "succeeded"
    assert got["payload"]["result"] == {"echo": 3}
    assert got["payload"]["delivery_attempt"] == len(deliveries)

    # The API shows the same record, without the secret.
    shown = client.callback(task_id)
    assert shown["state"] == "delivered" and "secret" not in shown
    assert [d["status"] for d in shown["deliveries"]] == [d.status for d in deliveries]


def test_the_engine_makes_a_secret_when_none_is_given(api, make_service):
    make_service("echo", ECHO, entrypoint="main.py:run", retry_limit=0)
    port = _free_port()
    client = api.client()
    reply = client.submit("echo", {"n": 1}, callback_url=f"http://127.0.0.1:{port}/")
    secret = reply["callback_secret"]
    assert secret and len(secret) >= 32
    receiver = Receiver(port, secret)
    try:
        store = CallbackStore(api.engine.store)
        task_id = reply["task"]["id"]
        assert _wait(lambda: store.get(task_id).state == "delivered")
        assert receiver.received[0]["valid"] is True
    finally:
        receiver.close()


def test_callback_hosts_are_checked_before_the_task_is_made(api, make_service):
    make_service("echo", ECHO, entrypoint="main.py:run")
    client = api.client()
    with pytest.raises(CallbackRefused, match="not allowed"):
        client.submit("echo", {}, callback_url="https://evil.example/steal")
    with pytest.raises(CallbackRefused, match="https"):
        client.submit("echo", {}, callback_url="http://localhost/x")
    envelope = sign_request(
        api.keys["alice"],
        "alice",
        "submit",
        {"service": "echo", "callback": {"url": "ftp://127.0.0.1/"}},
    ).to_dict()
    answer = httpx.post(f"{api.url}/v1/tasks", json=envelope)
    assert answer.status_code == 400
    assert answer.json()["error"] == "callback_refused"
    assert client.list()["items"] == []


def test_the_policy_gate_decides_who_may_call_an_allowed_host(
    api, make_service, make_principal
):
    """A host in callbacks.allowed_hosts still needs ``submit callback:HOST``
    for the caller; the refusal is audited and makes no task."""
    from kos_see.client import Client

    make_service("echo", ECHO, entrypoint="main.py:run")
    key = make_principal("carol", tenant="acme", role="reader")
    policy = api.engine.home.policy_path(api.engine.config)
    policy.write_text(
        policy.read_text()
        + "p, reader, acme, submit, service:*, allow\n"
        + "p, reader, acme, submit, class:*, allow\n"
        + "p, reader, acme, read, service:*, allow\n"
    )
    carol = Client(api.url, "carol", key)
    try:
        with pytest.raises(PermissionDenied) as denied:
            carol.submit("echo", {}, callback_url="http://127.0.0.1:9/hook")
        assert denied.value.to_dict()["permission"] == "submit callback:127.0.0.1"
        assert carol.list()["items"] == []
        # Without a webhook the same principal may submit.
        assert carol.submit("echo", {})["created"] is True
    finally:
        carol.close()
    api.engine.audit.flush()
    refused = [
        e.body_value()
        for e in entries(api.engine.store)
        if e.kind == "request" and e.principal == "carol"
    ]
    assert refused[0]["outcome"] == "refused"
    assert refused[0]["error"] == "permission_denied"


def test_signature_checks_refuse_changed_bodies_and_old_timestamps():
    from kos_see.callbacks import sign_payload

    body = b'{"task_id":"t"}'
    stamp = int(time.time())
    signature = sign_payload(SECRET, stamp, body)
    assert verify_payload(SECRET, str(stamp), body, signature)
    assert not verify_payload(SECRET, str(stamp), body + b" ", signature)
    assert not verify_payload("other-secret", str(stamp), body, signature)
    old = stamp - 3600
    assert not verify_payload(SECRET, str(old), body, sign_payload(SECRET, old, body))
