"""The audit log is tamper-evident: each kind of tampering is found.

Entries are written through the real AuditLog on the home's SQLite file, then
changed behind the engine's back with plain SQL, as an administrator with the
database but not the engine's key could.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest

from kos_see.audit.chain import entry_hash
from kos_see.audit.log import AuditLog
from kos_see.audit.verify import entries, prune, verify_log
from kos_see.errors import AuditError
from kos_see.home import Home
from kos_see.security.keys import generate
from kos_see.store import Store

Sql = Callable[..., list[tuple]]


@pytest.fixture
def key():
    return generate()


@pytest.fixture
def audit(home_store: Store, key) -> AuditLog:
    log = AuditLog(home_store, lambda: key, checkpoint_every=10**9)
    for i in range(1, 11):
        log.record(
            "request",
            {"n": i, "action": "submit"},
            task_id=f"t{i % 3}",
            principal="alice",
            tenant="acme",
            at=1000.0 + i,
        )
    log.flush()
    return log


@pytest.fixture
def sql(home: Home) -> Sql:
    def run(statement: str, *params: object) -> list[tuple]:
        with sqlite3.connect(home.database_path) as conn:
            return conn.execute(statement, params).fetchall()

    return run


def check(home_store: Store, key) -> tuple[bool, int | None, str | None]:
    report = verify_log(home_store, key.public)
    return report.ok, report.broken_seq, report.problem


def test_an_untouched_log_verifies_and_shows_a_tasks_entries(audit, home_store, key):
    assert check(home_store, key) == (True, None, None)
    mine = [e.seq for e in entries(home_store, "t1")]
    assert mine == [1, 4, 7, 10]
    assert [e.body_value()["n"] for e in entries(home_store, "t1")] == mine


def test_an_edited_entry_is_named(audit, home_store, key, sql: Sql):
    sql("UPDATE audit_entries SET body = ? WHERE seq = 4", '{"n":40}')
    ok, seq, problem = check(home_store, key)
    assert (ok, seq) == (False, 4) and "altered" in problem


def test_an_edited_column_outside_the_body_is_named(audit, home_store, key, sql: Sql):
    sql("UPDATE audit_entries SET principal = 'mallory' WHERE seq = 6")
    assert check(home_store, key)[:2] == (False, 6)


def test_a_deleted_entry_is_named(audit, home_store, key, sql: Sql):
    sql("DELETE FROM audit_entries WHERE seq = 5")
    ok, seq, problem = check(home_store, key)
    assert (ok, seq) == (False, 5) and "missing" in problem


def test_deleting_and_renumbering_is_found_at_the_gap(audit, home_store, key, sql):
    sql("DELETE FROM audit_entries WHERE seq = 5")
    sql("UPDATE audit_entries SET seq = seq - 1 WHERE seq > 5")
    ok, seq, problem = check(home_store, key)
    assert (ok, seq) == (False, 5) and "does not follow" in problem


def test_an_inserted_entry_is_found_even_with_a_correct_own_hash(
    audit, home_store, key, sql: Sql
):
    (prev,) = sql("SELECT hash FROM audit_entries WHERE seq = 3")[0]
    sql("UPDATE audit_entries SET seq = seq + 100 WHERE seq > 3")
    sql("UPDATE audit_entries SET seq = seq - 99 WHERE seq > 100")
    body = '{"n":99}'
    forged = entry_hash(4, 1003.5, "request", "t9", "mallory", "acme", body, prev)
    sql(
        "INSERT INTO audit_entries VALUES (4, 1003.5, 'request', 't9', 'mallory', "
        "'acme', ?, ?, ?)",
        body,
        prev,
        forged,
    )
    ok, seq, problem = check(home_store, key)
    assert (ok, seq) == (False, 5) and "does not follow" in problem


def test_reordered_entries_are_found(audit, home_store, key, sql: Sql):
    sql("UPDATE audit_entries SET seq = -1 WHERE seq = 7")
    sql("UPDATE audit_entries SET seq = 7 WHERE seq = 8")
    sql("UPDATE audit_entries SET seq = 8 WHERE seq = -1")
    ok, seq, _problem = check(home_store, key)
    assert (ok, seq) == (False, 7)


def test_a_rewritten_chain_is_caught_by_the_signed_checkpoint(
    audit, home_store, key, sql: Sql
):
    audit.flush(checkpoint=True)  # the engine signs entry 10
    sql("UPDATE audit_entries SET body = '{\"n\":0}' WHERE seq = 2")
    rows = sql(
        "SELECT seq, at, kind, task_id, principal, tenant, body, prev_hash "
        "FROM audit_entries ORDER BY seq"
    )
    prev = "sha256:" + "0" * 64
    for seq, at, kind, task, who, tenant, body, _old in rows:
        digest = entry_hash(seq, at, kind, task, who, tenant, body, prev)
        sql(
            "UPDATE audit_entries SET prev_hash = ?, hash = ? WHERE seq = ?",
            prev,
            digest,
            seq,
        )
        prev = digest
    ok, seq, problem = check(home_store, key)
    assert (ok, seq) == (False, 10) and "signed checkpoint" in problem


def test_a_cut_tail_is_caught_by_the_checkpoint_past_it(audit, home_store, key, sql):
    audit.flush(checkpoint=True)
    sql("DELETE FROM audit_entries WHERE seq > 8")
    ok, seq, problem = check(home_store, key)
    assert (ok, seq) == (False, 9) and "missing" in problem


def test_a_forged_checkpoint_is_refused(audit, home_store, key, sql: Sql):
    audit.flush(checkpoint=True)
    sql("UPDATE audit_checkpoints SET signature = ?", generate().sign(b"x"))
    ok, seq, problem = check(home_store, key)
    assert (ok, seq) == (False, 10) and "not signed by the engine key" in problem


def test_pruning_keeps_a_log_that_verifies_from_its_checkpoint(
    audit, home_store, key, sql: Sql
):
    removed = prune(home_store, key, retention=100.0, now=1106.5)
    assert removed == 6
    assert [e.seq for e in entries(home_store)] == [7, 8, 9, 10]
    assert check(home_store, key) == (True, None, None)
    # The chain goes on from where it was.
    audit.record("request", {"n": 11}, at=1111.0)
    audit.flush()
    assert verify_log(home_store, key.public).last_seq == 11
    assert check(home_store, key)[0]
    # Removing the checkpoint that vouches for the cut is found.
    sql("DELETE FROM audit_checkpoints WHERE seq = 6")
    ok, seq, problem = check(home_store, key)
    assert (ok, seq) == (False, 1) and "no signed checkpoint" in problem


def test_pruning_everything_leaves_a_verifiable_empty_log(audit, home_store, key):
    assert prune(home_store, key, retention=1.0, now=5000.0) == 10
    assert check(home_store, key) == (True, None, None)
    audit.record("request", {"n": 11}, at=5001.0)
    audit.flush()
    report = verify_log(home_store, key.public)
    assert report.ok and (report.first_seq, report.last_seq) == (11, 11)


def test_a_broken_log_is_not_pruned(audit, home_store, key, sql: Sql):
    sql("UPDATE audit_entries SET body = '{}' WHERE seq = 2")
    with pytest.raises(AuditError, match="nothing was pruned"):
        prune(home_store, key, retention=100.0, now=1106.5)
    assert len(list(entries(home_store))) == 10


def test_two_logs_on_one_store_keep_one_chain(audit, home_store, key):
    other = AuditLog(home_store, lambda: key)
    for i in range(5):
        audit.record("request", {"from": "a", "i": i})
        other.record("request", {"from": "b", "i": i})
        (audit if i % 2 else other).flush()
        (other if i % 2 else audit).flush()
    report = verify_log(home_store, key.public)
    assert report.ok and report.last_seq == 20
