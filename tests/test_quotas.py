"""Quotas at lease time, and ``kos-see queue stats``.

Real engines on real homes (``conftest``): a tenant's running limit, a
service's concurrency limit (from its manifest and from ``quotas.services``)
and a tenant's CPU quota per window hold while other work proceeds, as the
attempts' recorded start and end times show; ``queue stats`` (the store
method and the CLI as a subprocess) says what waits and why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.models import AttemptRecord, TaskRecord
from kos_see.queue.stats import CPU_QUOTA, MAX_RUNNING, SERVICE_LIMITS
from kos_see.states import TaskState
from kos_see.worker.pool import rules_from_config

# Each test runs on the embedded SQLite store and on PostgreSQL.
pytestmark = pytest.mark.both_stores

KOS_SEE = [sys.executable, "-m", "kos_see.cli"]

SLEEP = """
    import time

    def run(inputs):
        time.sleep(inputs.get("s", 0.0))
        return {"slept": inputs.get("s", 0.0)}
"""

# Burns CPU (not wall time) until the process has used ``cpu`` seconds.
BURN = """
    import time

    def run(inputs):
        while time.process_time() < inputs.get("cpu", 0.0):
            pass
        return {"cpu": time.process_time()}
"""


def submit(engine: Engine, service: str, tenant: str, **fields: Any) -> str:
    fields.setdefault("input", {})
    request = SubmitRequest(service=service, tenant=tenant, **fields)
    return engine.dispatcher.submit(request).task.id


def finish_all(engine: Engine, ids: list[str], timeout: float = 20) -> list[TaskRecord]:
    done = [engine.wait(task_id, timeout) for task_id in ids]
    for task in done:
        assert task.state == TaskState.SUCCEEDED, (task.id, task.state, task.error)
    return done


def only_attempt(engine: Engine, task_id: str) -> AttemptRecord:
    attempts = engine.store.attempts(task_id)
    assert len(attempts) == 1, attempts
    assert attempts[0].ended_at is not None
    return attempts[0]


def overlap(a: AttemptRecord, b: AttemptRecord) -> bool:
    assert a.ended_at is not None and b.ended_at is not None
    return a.started_at < b.ended_at and b.started_at < a.ended_at


def assert_one_at_a_time(attempts: list[AttemptRecord]) -> None:
    ordered = sorted(attempts, key=lambda a: a.started_at)
    for before, after in zip(ordered, ordered[1:], strict=False):
        assert before.ended_at is not None
        assert after.started_at >= before.ended_at, (
            f"attempts of {before.task_id} and {after.task_id} overlap: "
            f"{before.started_at:.3f}-{before.ended_at:.3f} and "
            f"{after.started_at:.3f}-{after.ended_at}"
        )


def cli_stats(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*KOS_SEE, "queue", "stats", *args],
        env={**os.environ, "KOS_SEE_HOME": str(home), "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done


def test_a_tenant_at_its_running_limit_runs_one_at_a_time_while_others_proceed(
    make_service, make_engine
):
    make_service("nap", SLEEP, entrypoint="main.py:run")
    engine = make_engine(quotas={"tenants": {"solo": {"max_running": 1}}})
    rules = rules_from_config(engine.config, engine.registry)
    # The limited tenant submits first, so that without its limit the first
    # lease would start several of its tasks at once.
    limited = [submit(engine, "nap", "solo", input={"s": 0.4}) for _ in range(3)]
    others = [submit(engine, "nap", "crowd", input={"s": 0.4}) for _ in range(3)]
    held_seen: list[int] = []
    reasons_seen: set[str] = set()
    while not all(engine.store.get_task(t).terminal for t in limited + others):
        stats = engine.store.queue_stats(time.time(), rules)
        use = {t.tenant: t for t in stats.tenants}
        if "solo" in use:
            held_seen.append(use["solo"].running)
        if (why := stats.why("solo")) is not None:
            reasons_seen.add(why.reason)
        time.sleep(0.02)
    finish_all(engine, limited + others)

    mine = [only_attempt(engine, t) for t in limited]
    theirs = [only_attempt(engine, t) for t in others]
    assert_one_at_a_time(mine)
    # The other tenant was not held back: its tasks ran at once with each
    # other and with the limited tenant's.
    assert any(overlap(a, b) for a in theirs for b in theirs if a is not b)
    assert any(overlap(a, b) for a in theirs for b in mine)
    assert max(held_seen) == 1
    assert MAX_RUNNING in reasons_seen


@pytest.mark.parametrize("declared_in", ["manifest", "config"])
def test_a_service_at_its_concurrency_limit_never_overlaps_its_attempts(
    make_service, make_engine, declared_in
):
    manifest = {"max_concurrent": 1} if declared_in == "manifest" else {}
    make_service("single", SLEEP, entrypoint="main.py:run", **manifest)
    make_service("nap", SLEEP, entrypoint="main.py:run")
    quotas = {"services": {"single": 1}} if declared_in == "config" else {}
    engine = make_engine(quotas=quotas)
    assert rules_from_config(engine.config, engine.registry).service_limits == {
        "single": 1
    }
    # Two tenants, so that fair share alone would start both of their
    # ``single`` tasks at once; four slots.
    limited = [
        submit(engine, "single", tenant, input={"s": 0.3})
        for tenant in ("a", "b", "a", "b")
    ]
    others = [submit(engine, "nap", "c", input={"s": 0.3}) for _ in range(2)]
    finish_all(engine, limited + others)

    singles = [only_attempt(engine, t) for t in limited]
    naps = [only_attempt(engine, t) for t in others]
    assert_one_at_a_time(singles)
    assert any(overlap(a, b) for a in naps for b in singles)


def test_a_tenant_over_its_cpu_quota_waits_and_queue_stats_says_why(
    make_service, make_engine, home
):
    make_service("burn", BURN, entrypoint="main.py:run")
    make_service("nap", SLEEP, entrypoint="main.py:run")
    quotas = {"tenants": {"hog": {"cpu_seconds": 0.2}}}
    engine = make_engine(quotas=quotas)

    first = submit(engine, "burn", "hog", input={"cpu": 0.3})
    finish_all(engine, [first])
    assert (only_attempt(engine, first).cpu_seconds or 0) >= 0.2

    held = submit(engine, "nap", "hog")
    other = submit(engine, "nap", "neighbour")
    finish_all(engine, [other])
    time.sleep(0.3)  # a few more lease rounds
    assert engine.store.get_task(held).state == TaskState.QUEUED
    assert engine.store.attempts(held) == []

    stats = engine.store.queue_stats(
        time.time(), rules_from_config(engine.config, engine.registry)
    )
    why = stats.why("hog")
    assert why is not None and why.reason == CPU_QUOTA, stats.waiting
    assert stats.depth(tenant="hog") == 1
    assert stats.depth(tenant="neighbour") == 0
    hog = next(t for t in stats.tenants if t.tenant == "hog")
    assert hog.cpu_quota == 0.2 and hog.cpu_used >= 0.2

    env = {"KOS_SEE_QUOTAS__TENANTS": "{ hog = { cpu_seconds = 0.2 } }"}
    document = json.loads(cli_stats(home.root, "--json", **env).stdout)
    assert document["lanes"]["batch"]["tenants"]["hog"]["depth"] == 1
    assert "neighbour" not in document["lanes"]["batch"]["tenants"]
    assert document["waiting"]["hog"]["reason"] == "cpu_quota"
    assert document["tenants"]["hog"]["cpu_used"] >= 0.2
    text = cli_stats(home.root, **env).stdout
    assert "CPU quota used up" in text, text
    # Without the quota in its configuration, the CLI sees nothing holding hog.
    plain = json.loads(cli_stats(home.root, "--json").stdout)
    assert plain["waiting"] == {}
    assert plain["ready_tenants"] == ["hog"]


def test_a_tenant_over_its_cpu_quota_runs_again_once_the_window_passed(
    make_service, make_engine
):
    make_service("burn", BURN, entrypoint="main.py:run")
    window = 1.0
    engine = make_engine(
        quotas={"window": window, "tenants": {"hog": {"cpu_seconds": 0.2}}}
    )
    first = submit(engine, "burn", "hog", input={"cpu": 0.3})
    finish_all(engine, [first])
    second = submit(engine, "burn", "hog")
    finish_all(engine, [second])
    used = only_attempt(engine, first)
    assert used.ended_at is not None
    assert only_attempt(engine, second).started_at >= used.ended_at + window


def test_queue_stats_counts_depth_age_running_and_reasons(make_service, make_engine):
    make_service("quick", SLEEP, entrypoint="main.py:run")
    make_service("single", SLEEP, entrypoint="main.py:run")
    engine = make_engine(
        serve=False,
        quotas={"tenants": {"t1": {"max_running": 1}}, "services": {"single": 1}},
    )
    rules = rules_from_config(engine.config, engine.registry)
    start = time.time()
    for _ in range(3):
        submit(engine, "quick", "t1")
    for _ in range(2):
        submit(engine, "single", "t2")
    submit(engine, "quick", "t3", not_before=start + 100)
    submit(engine, "quick", "t4", queue_class="realtime")
    # One lease with room for all: the realtime task, one of t1's (its
    # limit) and one of t2's (the service's limit); t3's is not yet due.
    leased = engine.store.lease("hand", 10, time.time(), 60, rules)
    assert sorted(lease.task.tenant for lease in leased) == ["t1", "t2", "t4"]
    # t5's best task is of the full service, the next one is not.
    submit(engine, "single", "t5")
    submit(engine, "quick", "t5")

    now = start + 10
    stats = engine.store.queue_stats(now, rules)
    assert stats.depth("realtime") == 0
    assert stats.depth("batch") == 5
    assert stats.depth("batch", "t1") == 2
    assert stats.depth("batch", "t2") == 1
    assert stats.depth("deferred", "t3") == 1
    assert 9.5 < stats.oldest_age("batch", "t1") <= 10
    assert stats.oldest_age("deferred") == 0.0  # not due: nobody waits for it
    use = {t.tenant: t for t in stats.tenants}
    assert (use["t1"].running, use["t1"].max_running) == (1, 1)
    assert (use["t2"].running, use["t2"].max_running) == (1, None)
    assert stats.running_by_service == {"quick": 2, "single": 1}
    assert stats.ready_tenants == ["t1", "t2", "t5"]
    reasons = {w.tenant: (w.reason, w.services) for w in stats.waiting}
    assert reasons == {
        "t1": (MAX_RUNNING, ()),
        "t2": (SERVICE_LIMITS, ("single",)),
    }
    # A lease that looks at one head per tenant passes over t5 as well.
    shallow = engine.store.queue_stats(now, rules, heads=1)
    assert shallow.why("t5") is not None
    assert shallow.why("t5").reason == SERVICE_LIMITS

    # Once t3's task is due it is ready work, still counted in its lane.
    later = engine.store.queue_stats(start + 130, rules)
    assert later.ready_tenants == ["t1", "t2", "t3", "t5"]
    assert later.depth("deferred") == 1
    assert 29 < later.oldest_age("deferred") <= 30
    assert later.why("t3") is None

    # The CLI, with the same quotas from the environment, says the same.
    env = {
        "KOS_SEE_QUOTAS__TENANTS": "{ t1 = { max_running = 1 } }",
        "KOS_SEE_QUOTAS__SERVICES": "{ single = 1 }",
    }
    text = cli_stats(engine.home.root, **env).stdout
    assert "running limit of 1 reached" in text, text
    assert "single (1/1)" in text, text
