"""Signed requests through the dispatcher: who asks, and may they.

Real keys sign real envelopes; the dispatcher verifies them against the
principals table, and the Casbin policy file decides. Each refusal has its
own error, and every request lands in the audit log.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from kos_see.audit.verify import entries, verify_log
from kos_see.dispatcher import SubmitRequest, request_from_fields, submit_fields
from kos_see.engine import Engine
from kos_see.errors import (
    BadSignature,
    PermissionDenied,
    PrincipalRevoked,
    ReplayedRequest,
    RequestRefused,
    SignatureRequired,
    StaleRequest,
    UnknownPrincipal,
)
from kos_see.security.envelope import sign_request, unsigned_request
from kos_see.security.keys import generate, load_public
from kos_see.security.principals import PrincipalStore
from kos_see.store import TaskFilter

POLICY = """
p, admin, *, *, *, allow
p, developer, acme, submit, service:echo*, allow
p, developer, acme, submit, class:batch, allow
p, developer, acme, submit, secret:api-token, allow
p, developer, acme, read, service:*, allow
p, developer, acme, cancel, service:*, allow
p, developer, acme, submit, service:echo-secret, deny
p2, developer, acme, priority_max, 5
p2, intern, acme, runner, sandbox
p, intern, acme, submit, service:*, allow
p, intern, acme, submit, class:*, allow
"""


@pytest.fixture
def setup(idle_engine: Engine, make_service, make_principal) -> dict[str, Any]:
    make_principal.policy(POLICY)
    make_service("echo", "print('hi')\n")
    make_service("echo-secret", "print('hi')\n", secrets=["api-token"])
    make_service("echo-big", "print('hi')\n", secrets=["db-password"])
    make_service("other", "print('hi')\n")
    return {
        "engine": idle_engine,
        "alice": make_principal("alice"),
        "bob": make_principal("bob", tenant="globex"),
        "root": make_principal("root", tenant="*", role="admin"),
        "ivy": make_principal("ivy", role="intern"),
    }


def signed_submit(engine: Engine, key, principal: str, **fields: Any):
    request = SubmitRequest(service=fields.pop("service", "echo"), input={}, **fields)
    envelope = sign_request(key, principal, "submit", submit_fields(request))
    caller = engine.dispatcher.authenticate(envelope.to_dict())
    return engine.dispatcher.submit(request, caller=caller).task


def audit_of(engine: Engine) -> list[dict[str, Any]]:
    engine.audit.flush()
    return [e.to_dict() for e in entries(engine.store)]


def test_a_signed_submit_acts_for_the_principals_tenant_and_is_audited(setup):
    engine = setup["engine"]
    task = signed_submit(engine, setup["alice"], "alice")

    assert task.tenant == "acme" and task.principal == "alice"
    assert task.request_digest is not None and task.request_digest.startswith("sha256:")
    entry = audit_of(engine)[-1]
    assert entry["task_id"] == task.id and entry["principal"] == "alice"
    body = entry["body"]
    assert body["outcome"] == "accepted" and body["signed"] is True
    assert body["request_digest"] == task.request_digest
    rules = {d["object"]: d["rule"] for d in body["decisions"]}
    assert rules["service:echo"] == "p, developer, acme, submit, service:echo*, allow"
    assert rules["class:batch"] == "p, developer, acme, submit, class:batch, allow"


def test_a_principal_may_not_act_for_another_tenant_unless_it_acts_for_all(setup):
    engine = setup["engine"]
    with pytest.raises(PermissionDenied, match="acts for tenant 'acme'"):
        signed_submit(engine, setup["alice"], "alice", tenant="globex")
    task = signed_submit(engine, setup["root"], "root", tenant="globex")
    assert task.tenant == "globex"
    assert signed_submit(engine, setup["root"], "root").tenant == "default"


def test_deny_by_default_names_the_missing_permission_and_is_audited(setup):
    engine = setup["engine"]
    with pytest.raises(PermissionDenied) as refused:
        signed_submit(engine, setup["alice"], "alice", service="other")
    assert refused.value.details["permission"] == "submit service:other"
    assert "deny by default" in refused.value.message
    with pytest.raises(PermissionDenied, match="submit class:realtime"):
        signed_submit(engine, setup["alice"], "alice", queue_class="realtime")
    with pytest.raises(PermissionDenied, match="p, developer, acme, submit, service"):
        signed_submit(engine, setup["alice"], "alice", service="echo-secret")
    with pytest.raises(PermissionDenied) as other_tenant:
        signed_submit(engine, setup["bob"], "bob")
    assert other_tenant.value.details["tenant"] == "globex"

    refusals = [e for e in audit_of(engine) if e["body"]["outcome"] == "refused"]
    assert len(refusals) == 4
    assert all(e["body"]["error"] == "permission_denied" for e in refusals)
    assert refusals[0]["body"]["decisions"][-1] == {
        "object": "service:other",
        "action": "submit",
        "allowed": False,
        "rule": "no rule allows it (deny by default)",
    }
    assert engine.store.list_tasks(TaskFilter()) == []


def test_ceilings_bound_priority_and_a_policy_forces_the_sandbox(setup):
    engine = setup["engine"]
    assert signed_submit(engine, setup["alice"], "alice", priority=5).priority == 5
    with pytest.raises(PermissionDenied, match="priority_max of 5"):
        signed_submit(engine, setup["alice"], "alice", priority=6)
    task = signed_submit(engine, setup["ivy"], "ivy")
    assert task.runner == "sandbox"
    assert signed_submit(engine, setup["alice"], "alice").runner is None


def test_secrets_are_granted_only_when_declared_and_allowed(setup, make_principal):
    engine = setup["engine"]
    make_principal.policy(
        POLICY.replace("p, developer, acme, submit, service:echo-secret, deny\n", "")
    )
    task = signed_submit(engine, setup["alice"], "alice", service="echo-secret")
    assert task.secret_names() == ["api-token"]
    with pytest.raises(PermissionDenied, match="submit secret:db-password"):
        signed_submit(engine, setup["alice"], "alice", service="echo-big")


def test_each_bad_envelope_has_its_own_error_and_burns_no_nonce(setup):
    engine = setup["engine"]
    alice = setup["alice"]
    good = sign_request(alice, "alice", "submit", {"service": "echo", "input": {}})

    forged = {**good.to_dict(), "fields": {"service": "other", "input": {}}}
    with pytest.raises(BadSignature):
        engine.dispatcher.authenticate(forged)
    with pytest.raises(BadSignature):
        engine.dispatcher.authenticate(
            sign_request(generate(), "alice", "submit", {"service": "echo"}).to_dict()
        )
    with pytest.raises(UnknownPrincipal):
        engine.dispatcher.authenticate(
            sign_request(alice, "mallory", "submit", {"service": "echo"}).to_dict()
        )
    stale = sign_request(alice, "alice", "read", {}, now=time.time() - 3600)
    with pytest.raises(StaleRequest, match="behind the engine's clock"):
        engine.dispatcher.authenticate(stale.to_dict())
    with pytest.raises(SignatureRequired):
        engine.dispatcher.authenticate(unsigned_request("alice", "read", {}).to_dict())
    with pytest.raises(RequestRefused, match="unknown member"):
        engine.dispatcher.authenticate({**good.to_dict(), "extra": 1})

    # None of the refused ones used the good envelope's nonce.
    assert engine.dispatcher.authenticate(good.to_dict()).principal == "alice"
    with pytest.raises(ReplayedRequest):
        engine.dispatcher.authenticate(good.to_dict())

    PrincipalStore(engine.store).revoke("alice")
    with pytest.raises(PrincipalRevoked):
        engine.dispatcher.authenticate(
            sign_request(alice, "alice", "read", {}).to_dict()
        )
    refused = [e["body"]["error"] for e in audit_of(engine)]
    assert refused == [
        "bad_signature",
        "bad_signature",
        "unknown_principal",
        "stale_request",
        "unsigned_request",
        "refused",
        "replayed_request",
        "principal_revoked",
    ]


def test_the_dispatcher_acts_only_on_what_was_signed(setup):
    engine = setup["engine"]
    alice = setup["alice"]
    signed = sign_request(alice, "alice", "submit", {"service": "echo", "input": {}})
    caller = engine.dispatcher.authenticate(signed.to_dict())
    with pytest.raises(BadSignature, match="input differs"):
        engine.dispatcher.submit(
            SubmitRequest(service="echo", input={"x": 1}), caller=caller
        )
    task = signed_submit(engine, alice, "alice")
    read = engine.dispatcher.authenticate(
        sign_request(alice, "alice", "read", {"task_id": task.id}).to_dict()
    )
    with pytest.raises(BadSignature, match="signed for action 'read'"):
        engine.dispatcher.cancel(task.id, caller=read)
    assert engine.dispatcher.get(task.id, caller=read).id == task.id


def test_unsigned_requests_when_allowed_are_gated_and_marked_unsigned(
    make_engine, make_service, make_principal
):
    make_principal.policy(
        "p, anyone, *, submit, service:*, allow\n"
        "p, anyone, *, submit, class:*, allow\n"
        "p, anyone, acme, submit, service:echo, deny\n"
    )
    engine = make_engine(serve=False, security={"allow_unsigned": True})
    make_service("echo", "print('hi')\n")
    make_service("echo2", "print('hi')\n")
    make_principal("carol", tenant="acme", role="anyone")
    caller = engine.dispatcher.authenticate(
        unsigned_request("carol", "submit", {"service": "echo2", "input": {}})
    )
    assert caller.signed is False and caller.tenant == "acme"
    task = engine.dispatcher.submit(
        SubmitRequest(service="echo2", input={}), caller=caller
    ).task
    assert task.request_digest is None and task.tenant == "acme"
    entry = audit_of(engine)[-1]
    assert entry["body"]["signed"] is False and entry["principal"] == "carol"

    # A deny line overrides the allow lines, and says so.
    caller = engine.dispatcher.authenticate(
        unsigned_request("carol", "submit", {"service": "echo", "input": {}})
    )
    with pytest.raises(PermissionDenied, match="service:echo, deny"):
        engine.dispatcher.submit(SubmitRequest(service="echo", input={}), caller=caller)


def test_cancel_and_read_are_gated_by_the_tasks_tenant(setup):
    engine = setup["engine"]
    task = signed_submit(engine, setup["root"], "root", tenant="globex")
    alice = setup["alice"]
    for action, call in (
        ("read", lambda c: engine.dispatcher.get(task.id, caller=c)),
        ("cancel", lambda c: engine.dispatcher.cancel(task.id, caller=c)),
    ):
        caller = engine.dispatcher.authenticate(
            sign_request(alice, "alice", action, {"task_id": task.id}).to_dict()
        )
        with pytest.raises(PermissionDenied, match="belongs to tenant 'globex'"):
            call(caller)
    mine = signed_submit(engine, alice, "alice")
    cancel = engine.dispatcher.authenticate(
        sign_request(alice, "alice", "cancel", {"task_id": mine.id}).to_dict()
    )
    assert engine.dispatcher.cancel(mine.id, caller=cancel).state.value == "cancelled"
    listing = engine.dispatcher.authenticate(
        sign_request(alice, "alice", "list", {}).to_dict()
    )
    seen = engine.dispatcher.list_tasks(TaskFilter(), caller=listing)
    assert [t.id for t in seen] == [mine.id]
    assert verify_log(engine.store, engine.audit.key.public).ok
    assert json.loads(json.dumps(audit_of(engine)))  # entries are plain JSON


def test_the_engines_own_calls_are_not_gated_but_audited(setup):
    engine = setup["engine"]
    task = engine.dispatcher.submit(SubmitRequest(service="other", input={})).task
    assert task.tenant == "default"
    entry = audit_of(engine)[-1]
    assert entry["principal"] == "engine" and entry["body"]["signed"] is None
    assert load_public(engine.home.engine_key_path.with_suffix(".pub"))


def test_submit_fields_round_trip_and_unknown_fields_are_refused():
    request = SubmitRequest(
        service="echo@1.0.0",
        input={"a": [1, 2]},
        tenant="acme",
        priority=3,
        queue_class="batch",
        not_before=1800000000.5,
        idempotency_key="k-1",
    )
    fields = submit_fields(request)
    assert request_from_fields(json.loads(json.dumps(fields))) == request
    assert submit_fields(SubmitRequest(service="echo", input=None)) == {
        "service": "echo",
        "input": None,
    }
    with pytest.raises(RequestRefused, match="unknown field"):
        request_from_fields({"service": "echo", "input": {}, "principal": "root"})
    with pytest.raises(RequestRefused, match="needs a service"):
        request_from_fields({"input": {}})
