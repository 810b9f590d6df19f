"""The security commands through the real CLI, as subprocesses.

A fresh home accepts only signed requests; the operator made by ``init``
signs the CLI's own; another principal gets only what the policy grants; the
audit log of it all verifies until someone edits the database.
"""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
from test_cli_acceptance import Cli, cli, write_service  # noqa: F401

pytestmark = pytest.mark.acceptance

DEVELOPER_POLICY = """
p, admin, *, *, *, allow
p, developer, acme, submit, service:hello, allow
p, developer, acme, submit, class:batch, allow
p, developer, acme, read, service:*, allow
"""


def test_identities_policy_and_audit_end_to_end(cli: Cli, tmp_path: Path):  # noqa: F811
    home = cli.home
    init = cli.json("init")
    assert init["operator"] == "operator"
    keys = home / "keys"
    for name in ("engine.key", "operator.key"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
    assert (home / "policy.csv").read_text().startswith("# Who may do what")
    (home / "policy.csv").write_text(DEVELOPER_POLICY)
    write_service(tmp_path / "hello", "hello", "print('hello')\n")
    write_service(tmp_path / "other", "other", "print('other')\n")
    for name in ("hello", "other"):
        assert cli.run("services", "add", str(tmp_path / name)).returncode == 0

    made = cli.json("keys", "new", "alice")
    assert stat.S_IMODE(Path(made["private"]).stat().st_mode) == 0o600
    again = cli.run("keys", "new", "alice")
    assert again.returncode == 2 and "already exists" in again.stderr
    added = cli.json(
        "principals",
        "add",
        "alice",
        "--tenant",
        "acme",
        "--role",
        "developer",
        "--public-key",
        made["public"],
    )
    assert added["key_id"] == made["key_id"]

    # Alice may submit hello in her tenant, nothing else.
    task = cli.json("--key", "alice", "submit", "hello")
    assert task["tenant"] == "acme" and task["principal"] == "alice"
    assert task["signed"] is True
    denied = cli.run("--key", "alice", "submit", "other")
    assert denied.returncode == 3
    assert "the missing permission is 'submit service:other'" in denied.stderr
    elsewhere = cli.run("--key", "alice", "submit", "hello", "--tenant", "globex")
    assert elsewhere.returncode == 3 and "acts for tenant 'acme'" in elsewhere.stderr
    check = cli.run("policy", "check", "alice", "submit", "other")
    assert check.returncode == 3
    assert "denied: no rule allows it (deny by default)" in check.stdout
    check = cli.json("policy", "check", "alice", "submit", "hello")
    assert check["allowed"] is True
    assert check["rule"] == "p, developer, acme, submit, service:hello, allow"

    # The operator (the default key) may do anything, in any tenant.
    theirs = cli.json("submit", "other", "--tenant", "globex")
    assert theirs["principal"] == "operator" and theirs["tenant"] == "globex"
    hidden = cli.run("--key", "alice", "status", theirs["id"])
    assert hidden.returncode == 3 and "belongs to tenant 'globex'" in hidden.stderr
    listed = cli.json("--key", "alice", "list")
    assert [t["id"] for t in listed] == [task["id"]]

    shown = cli.json("audit", "show", task["id"])
    assert [e["body"]["action"] for e in shown] == ["submit"]
    assert shown[0]["body"]["request_digest"] == task["request_digest"]
    assert cli.run("audit", "verify").stdout.startswith("OK: entries 1 to ")

    # Revoked: refused with its own error.
    assert cli.run("principals", "revoke", "alice").returncode == 0
    revoked = cli.run("--key", "alice", "submit", "hello", "--json")
    assert revoked.returncode == 3 and '"principal_revoked"' in revoked.stdout
    principals = cli.json("principals", "list")
    assert [p["name"] for p in principals] == ["alice", "operator"]
    assert principals[0]["revoked_at"] is not None

    # Someone edits the log behind the engine's back: verify names the entry.
    with sqlite3.connect(home / "see.db") as conn:
        conn.execute("UPDATE audit_entries SET tenant = 'x' WHERE seq = 2")
    broken = cli.run("audit", "verify")
    assert broken.returncode == 1
    assert broken.stdout.startswith("BROKEN at entry 2: entry 2 was altered")


def test_a_fresh_home_refuses_unsigned_and_unknown_keys(cli: Cli, tmp_path: Path):  # noqa: F811
    write_service(tmp_path / "hello", "hello", "print('hello')\n")
    assert cli.run("services", "add", str(tmp_path / "hello")).returncode == 0
    stranger = cli.json("keys", "new", str(tmp_path / "stranger"))
    unknown = cli.run("--key", stranger["private"], "submit", "hello")
    assert unknown.returncode == 3 and "no principal holds the key" in unknown.stderr
    missing = cli.run("--key", "nobody", "submit", "hello")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    Path(stranger["private"]).chmod(0o644)
    loose = cli.run("--key", stranger["private"], "submit", "hello")
    assert loose.returncode == 2 and "readable by others" in loose.stderr


def test_a_served_task_ends_in_the_audit_log_with_its_result_digest(cli: Cli, tmp_path):  # noqa: F811
    write_service(
        tmp_path / "hello",
        "hello",
        "from kos_see import service\nservice.result({'ok': True})\n",
    )
    assert cli.run("services", "add", str(tmp_path / "hello")).returncode == 0
    server = cli.serve()
    done = cli.json("submit", "hello", "--wait", "--timeout", "60")
    assert done["state"] == "succeeded"
    cli.stop(server)
    shown = cli.json("audit", "show", done["id"])
    kinds = [(e["kind"], e["body"].get("state")) for e in shown]
    assert kinds == [("request", "queued"), ("attempt_end", "succeeded")]
    assert shown[1]["body"]["result_digest"].startswith("sha256:")
    assert cli.json("audit", "verify")["ok"] is True
