"""Secrets reach an attempt as files, and only those declared and granted.

Real principals sign real requests; the policy grants or refuses; the local
runner copies the granted values from the home's secret folder into the
attempt's working directory.
"""

from __future__ import annotations

import stat

import pytest

from kos_see.dispatcher import SubmitRequest, submit_fields
from kos_see.engine import Engine
from kos_see.security.envelope import sign_request

READER = """
import json, os, stat
from kos_see import service

folder = os.environ.get("KOS_SEE_SECRETS_DIR")
found = {}
if folder:
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        found[name] = {
            "value": open(path).read(),
            "mode": oct(stat.S_IMODE(os.stat(path).st_mode)),
        }
service.result({
    "secrets": found,
    "in_env": any("s3cret" in v for v in os.environ.values()),
    "inside_workdir": bool(folder) and folder.startswith(os.getcwd()),
})
"""

POLICY = """
p, developer, acme, submit, service:*, allow
p, developer, acme, submit, class:*, allow
p, developer, acme, submit, secret:db-*, allow
p2, *, sandboxed, runner, sandbox
p, developer, sandboxed, submit, service:*, allow
p, developer, sandboxed, submit, class:*, allow
"""


@pytest.fixture
def values(home) -> None:
    home.secrets_dir.mkdir(mode=0o700)
    for name, value in (("db-password", "s3cret"), ("api-token", "other")):
        (home.secrets_dir / name).write_text(value)


def signed(engine: Engine, key, principal: str, service: str):
    request = SubmitRequest(service=service, input={})
    envelope = sign_request(key, principal, "submit", submit_fields(request))
    caller = engine.dispatcher.authenticate(envelope)
    return engine.dispatcher.submit(request, caller=caller).task


def test_granted_secrets_arrive_as_read_only_files_and_nothing_else(
    engine: Engine, make_service, make_principal, values, home
):
    make_principal.policy(POLICY)
    alice = make_principal("alice")
    make_service("needs-db", READER, secrets=["db-password"], retry_limit=0)
    make_service("plain", READER, retry_limit=0)

    task = engine.wait(signed(engine, alice, "alice", "needs-db").id, 60)
    assert task.state.value == "succeeded", task.error
    seen = task.result_value()
    assert seen["secrets"] == {"db-password": {"value": "s3cret", "mode": "0o400"}}
    assert seen["in_env"] is False and seen["inside_workdir"] is True
    assert stat.S_IMODE(home.secrets_dir.stat().st_mode) == 0o700

    plain = engine.wait(signed(engine, alice, "alice", "plain").id, 60)
    assert plain.result_value()["secrets"] == {}


def test_a_granted_secret_without_a_value_fails_the_attempt_clearly(
    engine: Engine, make_service, make_principal, home
):
    make_principal.policy(POLICY)
    alice = make_principal("alice")
    make_service("needs-db", READER, secrets=["db-missing"], retry_limit=2)
    task = engine.wait(signed(engine, alice, "alice", "needs-db").id, 60)
    assert task.state.value == "failed" and task.attempts == 1
    assert task.error_kind == "secret_missing"
    assert "kos-see secrets set db-missing" in task.error


def test_a_policy_forces_every_task_of_a_tenant_into_the_sandbox(
    idle_engine: Engine, make_service, make_principal
):
    make_principal.policy(POLICY)
    bob = make_principal("bob", tenant="sandboxed")
    alice = make_principal("alice")
    make_service("plain", READER)
    assert signed(idle_engine, bob, "bob", "plain").runner == "sandbox"
    assert signed(idle_engine, alice, "alice", "plain").runner is None
