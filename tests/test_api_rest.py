"""The REST API over a real uvicorn on loopback, driven with httpx and the client."""

from __future__ import annotations

import time

import httpx
import pytest
import sqlalchemy as sa

from kos_see.api.auth import encode_header
from kos_see.audit.verify import entries
from kos_see.errors import (
    AuthenticationRequired,
    BadSignature,
    InputInvalid,
    PermissionDenied,
    ReplayedRequest,
    ServiceNotFound,
    TaskNotFound,
    TokenInvalid,
)
from kos_see.security.envelope import sign_request
from kos_see.security.keys import generate
from kos_see.store.schema import audit_entries

ECHO = """
    def run(inputs):
        return {"echo": inputs.get("n")}
"""
SLOW = """
    import time
    from kos_see import service
    for i in range(3):
        service.progress(i + 1, 3, message=f"step {i}")
        time.sleep(0.2)
    service.result({"done": True})
"""


def test_submit_get_and_result_through_the_client(api, make_service):
    make_service("echo", ECHO, entrypoint="main.py:run", retry_limit=0)
    client = api.client()

    reply = client.submit("echo", {"n": 7})
    assert reply["created"] is True
    task = reply["task"]
    assert task["tenant"] == "acme" and task["principal"] == "alice"

    done = client.wait(task["id"])
    assert done["state"] == "succeeded"
    assert client.result(task["id"]) == {
        "task_id": task["id"],
        "state": "succeeded",
        "finished": True,
        "result": {"echo": 7},
        "error": None,
        "error_kind": None,
    }


def test_idempotent_submit_answers_200_with_the_same_task(api, make_service):
    make_service("echo", ECHO, entrypoint="main.py:run")
    client = api.client()
    first = client.submit("echo", {"n": 1}, idempotency_key="k-1")
    again = client.submit("echo", {"n": 1}, idempotency_key="k-1")
    assert again["created"] is False
    assert again["task"]["id"] == first["task"]["id"]


def test_engine_errors_arrive_typed_with_status_and_body(api, make_service):
    make_service(
        "typed",
        ECHO,
        entrypoint="main.py:run",
        input_schema={"type": "object", "required": ["n"]},
    )
    client = api.client()
    with pytest.raises(ServiceNotFound):
        client.submit("nope", {})
    with pytest.raises(InputInvalid) as caught:
        client.submit("typed", {})
    assert caught.value.violations[0]["path"] == "$"
    with pytest.raises(TaskNotFound):
        client.get("0" * 24)

    # The raw answer: a status and a JSON body that names what was wrong.
    envelope = sign_request(
        api.keys["alice"], "alice", "submit", {"service": "typed", "input": {}}
    ).to_dict()
    response = httpx.post(f"{api.url}/v1/tasks", json=envelope)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_input"
    assert "required" in response.json()["message"]


def test_a_signed_submit_records_its_request_digest_as_the_cli_does(api, make_service):
    make_service("echo", ECHO, entrypoint="main.py:run", retry_limit=0)
    signed = sign_request(
        api.keys["alice"], "alice", "submit", {"service": "echo", "input": {"n": 2}}
    )
    response = httpx.post(f"{api.url}/v1/tasks", json=signed.to_dict())
    assert response.status_code == 201
    task = response.json()["task"]
    assert task["signed"] is True and task["request_digest"] == signed.digest()
    assert api.engine.store.get_task(task["id"]).request_digest == signed.digest()

    # The audit log's submit entry names the same request.
    api.engine.audit.flush()
    found = [
        e.body_value()
        for e in entries(api.engine.store, task["id"])
        if e.kind == "request"
    ]
    submits = [b for b in found if b["action"] == "submit"]
    assert submits and submits[0]["request_digest"] == signed.digest()
    assert submits[0]["signed"] is True


def test_signatures_replays_and_tokens_are_checked(api, make_service):
    make_service("echo", ECHO, entrypoint="main.py:run")
    envelope = sign_request(
        api.keys["alice"], "alice", "submit", {"service": "echo", "input": {}}
    ).to_dict()
    assert httpx.post(f"{api.url}/v1/tasks", json=envelope).status_code == 201
    replayed = httpx.post(f"{api.url}/v1/tasks", json=envelope)
    assert replayed.status_code == 401
    assert replayed.json()["error"] == ReplayedRequest.code

    forged = sign_request(generate(), "alice", "submit", {"service": "echo"}).to_dict()
    answer = httpx.post(f"{api.url}/v1/tasks", json=forged)
    assert (answer.status_code, answer.json()["error"]) == (401, BadSignature.code)

    # Reads need a token or a signed read; a changed token is refused.
    bare = httpx.get(f"{api.url}/v1/tasks")
    assert (bare.status_code, bare.json()["error"]) == (
        401,
        AuthenticationRequired.code,
    )
    token = api.client().token()
    good = httpx.get(
        f"{api.url}/v1/tasks", headers={"Authorization": f"Bearer {token}"}
    )
    assert good.status_code == 200
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    bad = httpx.get(
        f"{api.url}/v1/tasks", headers={"Authorization": f"Bearer {tampered}"}
    )
    assert (bad.status_code, bad.json()["error"]) == (401, TokenInvalid.code)

    # A signed read is bound to its method and path.
    read = sign_request(
        api.keys["alice"], "alice", "read", {"method": "GET", "path": "/v1/services"}
    ).to_dict()
    header = {"X-Kos-See-Request": encode_header(read)}
    assert httpx.get(f"{api.url}/v1/services", headers=header).status_code == 200
    other = sign_request(
        api.keys["alice"], "alice", "read", {"method": "GET", "path": "/v1/services"}
    ).to_dict()
    header = {"X-Kos-See-Request": encode_header(other)}
    assert httpx.get(f"{api.url}/v1/schedules", headers=header).status_code == 400


def test_list_filters_and_pages_within_the_callers_tenant(api, make_service):
    make_service("echo", ECHO, entrypoint="main.py:run")
    make_service("other", ECHO, entrypoint="main.py:run")
    alice, ops = api.client(), api.client("ops")
    ids = [alice.submit("echo", {"n": n})["task"]["id"] for n in range(5)]
    ops.submit("other", {"n": 0}, tenant="beta")
    for task_id in ids:
        alice.wait(task_id)

    first = alice.list(service="echo", limit=2)
    second = alice.list(service="echo", limit=2, offset=first["next_offset"])
    third = alice.list(service="echo", limit=2, offset=second["next_offset"])
    seen = [t["id"] for page in (first, second, third) for t in page["items"]]
    assert sorted(seen) == sorted(ids) and len(set(seen)) == 5
    assert third["next_offset"] is None
    assert alice.list(state="succeeded", limit=50)["items"]
    assert alice.list(state="queued")["items"] == []

    # alice sees her tenant only; ops sees every tenant.
    assert {t["tenant"] for t in alice.list()["items"]} == {"acme"}
    with pytest.raises(PermissionDenied):
        alice.list(tenant="beta")
    assert [t["service"] for t in ops.list(tenant="beta")["items"]] == ["other"]


def test_sse_streams_until_the_end_and_resumes_after_last_event_id(api, make_service):
    make_service("slow", SLOW, retry_limit=0)
    client = api.client()
    task_id = client.submit("slow", {})["task"]["id"]

    events = list(client.events(task_id))
    assert events[-1] == {"kind": "end", "task_id": task_id, "state": "succeeded"}
    kinds = [e["kind"] for e in events[:-1]]
    assert "progress" in kinds and "state" in kinds
    ids = [e["id"] for e in events[:-1]]
    assert ids == sorted(ids)

    # Resuming after the third event gives exactly the rest.
    token = client.token()
    with httpx.stream(
        "GET",
        f"{api.url}/v1/tasks/{task_id}/events",
        headers={"Authorization": f"Bearer {token}", "Last-Event-ID": str(ids[2])},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    resumed = [
        int(line[3:].strip()) for line in body.splitlines() if line.startswith("id:")
    ]
    assert resumed == ids[3:]
    assert "event: end" in body


def test_cancel_retry_services_schedules_dead_letters(api, make_service):
    make_service("sleepy", "import time\ntime.sleep(30)\n", retry_limit=0, timeout=60)
    make_service(
        "doomed",
        "from kos_see import service\nservice.fail('no', retryable=True)\n",
        retry_limit=1,
    )
    client, ops = api.client(), api.client("ops")
    task_id = client.submit("sleepy", {})["task"]["id"]
    cancelled = client.cancel(task_id)
    assert cancelled["id"] == task_id
    assert client.wait(task_id)["state"] == "cancelled"

    doomed = client.submit("doomed", {})["task"]["id"]
    assert client.wait(doomed)["state"] == "dead"
    letters = ops.dead_letters()
    assert [t["id"] for t in letters["items"]] == [doomed]
    requeued = ops.retry(doomed)
    assert requeued["state"] == "queued"

    names = {(s["name"], s["version"]) for s in client.services()}
    assert {("sleepy", "1.0.0"), ("doomed", "1.0.0")} <= names
    assert client.schedules() == []


def test_audit_verify_checks_the_chain_and_needs_the_admin_right(api, make_service):
    make_service("echo", ECHO, entrypoint="main.py:run", retry_limit=0)
    ops = api.client("ops")
    ops.wait(ops.submit("echo", {"n": 1})["task"]["id"])

    report = ops.audit_verify()
    assert report["ok"] is True and report["broken_seq"] is None
    assert report["entries"] >= 2  # the submit and the attempt's end at least

    # A submitter may not verify the log of every tenant.
    with pytest.raises(PermissionDenied) as denied:
        api.client().audit_verify()
    assert denied.value.to_dict()["permission"] == "admin audit:log"

    # An entry altered in the database is named as the first broken one.
    store = api.engine.store
    with store._write() as conn:
        first = conn.execute(sa.select(sa.func.min(audit_entries.c.seq))).scalar()
        conn.execute(
            audit_entries.update()
            .where(audit_entries.c.seq == first)
            .values(body='{"tampered":true}')
        )
    report = ops.audit_verify()
    assert report["ok"] is False and report["broken_seq"] == first


def test_health_and_readiness_are_open_and_metrics_closed_by_default(api):
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok", "detail": None}
    assert httpx.get(f"{api.url}/readyz").status_code == 200
    assert httpx.get(f"{api.url}/metrics").status_code == 401
    assert "kos_see_tasks" in api.client().metrics()


def test_openapi_document_lists_every_endpoint(api):
    document = httpx.get(f"{api.url}/openapi.json").json()
    paths = set(document["paths"])
    assert {
        "/v1/tasks",
        "/v1/tasks/{task_id}",
        "/v1/tasks/{task_id}/result",
        "/v1/tasks/{task_id}/cancel",
        "/v1/tasks/{task_id}/retry",
        "/v1/tasks/{task_id}/events",
        "/v1/tasks/{task_id}/callback",
        "/v1/tokens",
        "/v1/services",
        "/v1/schedules",
        "/v1/dead-letters",
        "/v1/audit/verify",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= paths
    submit = document["paths"]["/v1/tasks"]["post"]["responses"]
    assert {"200", "201", "401", "422"} <= set(submit)


def test_token_expiry_is_enforced(api):
    client = api.client()
    token = client.token(ttl=1)
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{api.url}/v1/services", headers=headers).status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = httpx.get(f"{api.url}/v1/services", headers=headers)
        if answer.status_code == 401:
            break
        time.sleep(0.2)
    assert answer.status_code == 401 and answer.json()["error"] == "bad_token"
