"""Retries, backoff and the dead letters.

The backoff is checked on the pure functions (``RetryPolicy.delay`` and
``next_state``) with seeded generators and a fixed ``now``; the rest runs on
real engines: a service that fails and then succeeds, a task whose worker is
lost until it is dead, the manifest's backoff keys, and the ``dead-letters``
and ``retry`` commands as subprocesses.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from kos_see.dispatcher import Dispatcher, SubmitRequest
from kos_see.engine import Engine
from kos_see.errors import InputInvalid, ManifestError, RequestRefused, TaskNotFound
from kos_see.queue.retry import RetryPolicy, next_state
from kos_see.registry import Registry
from kos_see.states import TaskState
from kos_see.store import TaskFilter

NOW = 1_800_000_000.0
OWNER = "ghost-worker"

# Fails with a non-zero exit (retryable) until its attempt number reaches
# "succeed_on"; the engine numbers attempts in KOS_SEE_ATTEMPT.
FLAKY = """
    import os
    import sys
    from kos_see import service

    attempt = int(os.environ["KOS_SEE_ATTEMPT"])
    if attempt < service.inputs()["succeed_on"]:
        sys.exit(f"failing on purpose at attempt {attempt}")
    service.result({"attempt": attempt})
"""

# Fails until a marker file exists.
NEEDS_MARKER = """
    import os
    import sys
    from kos_see import service

    marker = service.inputs()["marker"]
    if not os.path.exists(marker):
        sys.exit(f"no marker file at {marker}")
    service.result({"marker": "found"})
"""


def ceiling(policy: RetryPolicy, retry_number: int) -> float:
    return min(policy.cap, policy.base * 2 ** (retry_number - 1))


def state_events(engine: Engine, task_id: str) -> list[dict]:
    return [e.data for e in engine.store.events(task_id) if e.kind == "state"]


# the pure functions


@pytest.mark.parametrize("seed", range(20))
def test_exponential_delays_stay_within_full_jitter_bounds(seed: int) -> None:
    policy = RetryPolicy("exponential", base=0.5, cap=30.0)
    rng = random.Random(seed)
    for n in range(1, 40):
        top = ceiling(policy, n)
        for _ in range(5):
            delay = policy.delay(n, rng)
            assert 0.0 <= delay <= top, (n, delay, top)
            state, not_before = next_state("failed", True, n, n + 1, policy, NOW, rng)
            assert state == TaskState.QUEUED
            assert not_before is not None
            assert NOW <= not_before <= NOW + top, (n, not_before - NOW, top)


def test_exponential_delays_use_the_whole_window_and_grow_to_the_cap() -> None:
    policy = RetryPolicy("exponential", base=1.0, cap=20.0)
    rng = random.Random(7)
    for n, top in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 20.0), (30, 20.0)]:
        delays = [policy.delay(n, rng) for _ in range(2000)]
        # Full jitter: uniform over [0, top], so both ends are reached.
        assert min(delays) < 0.02 * top, (n, min(delays))
        assert max(delays) > 0.98 * top, (n, max(delays))
        assert max(delays) <= top
        assert sum(delays) / len(delays) == pytest.approx(top / 2, rel=0.06)


def test_fixed_backoff_waits_the_base_and_none_waits_nothing() -> None:
    rng = random.Random(3)
    fixed = RetryPolicy("fixed", base=2.5, cap=4.0)
    none = RetryPolicy("none", base=2.5, cap=4.0)
    for n in range(1, 30):
        assert fixed.delay(n, rng) == 2.5
        assert none.delay(n, rng) == 0.0
        assert next_state("failed", True, n, 99, fixed, NOW, rng) == (
            TaskState.QUEUED,
            NOW + 2.5,
        )
        assert next_state("timed_out", True, n, 99, none, NOW, rng) == (
            TaskState.QUEUED,
            NOW,
        )


def test_next_state_final_dead_and_released() -> None:
    policy = RetryPolicy("exponential", base=1.0, cap=10.0)
    rng = random.Random(0)
    assert next_state("succeeded", False, 1, 3, policy, NOW, rng) == (
        TaskState.SUCCEEDED,
        None,
    )
    # A failure the service marked final does not retry even with attempts left.
    assert next_state("failed", False, 1, 3, policy, NOW, rng) == (
        TaskState.FAILED,
        None,
    )
    assert next_state("cancelled", True, 1, 3, policy, NOW, rng) == (
        TaskState.CANCELLED,
        None,
    )
    # All attempts used: dead when retries were allowed...
    assert next_state("failed", True, 3, 3, policy, NOW, rng) == (TaskState.DEAD, None)
    assert next_state("timed_out", True, 2, 2, policy, NOW, rng) == (
        TaskState.DEAD,
        None,
    )
    # ...the state of its only failure when none were.
    assert next_state("timed_out", True, 1, 1, policy, NOW, rng) == (
        TaskState.TIMED_OUT,
        None,
    )
    assert next_state("failed", True, 1, 1, policy, NOW, rng) == (
        TaskState.FAILED,
        None,
    )
    # A shutdown's release goes back at once and costs no backoff.
    assert next_state("released", True, 3, 3, policy, NOW, rng) == (
        TaskState.QUEUED,
        None,
    )


@pytest.mark.parametrize("seed", range(5))
def test_tasks_failing_together_come_back_spread_out(seed: int) -> None:
    policy = RetryPolicy("exponential", base=1.0, cap=300.0)
    rng = random.Random(seed)
    retry_number = 7  # window [0, 64 s]
    top = ceiling(policy, retry_number)
    times = []
    for _ in range(100):
        state, not_before = next_state(
            "failed", True, retry_number, 10, policy, NOW, rng
        )
        assert state == TaskState.QUEUED and not_before is not None
        times.append(not_before)
    buckets = Counter(int((t - NOW) * 10) for t in times)  # 100 ms buckets
    assert max(buckets.values()) <= 3, buckets.most_common(3)
    assert len(buckets) >= 90
    assert max(times) - min(times) >= 0.85 * top
    assert all(NOW <= t <= NOW + top for t in times)


# the manifest's backoff keys


def test_manifest_backoff_keys_are_parsed_and_checked(
    make_service, registry: Registry
) -> None:
    make_service(
        "tuned",
        "",
        retry_backoff="fixed",
        retry_base="2s",
        retry_cap="1m",
    )
    _record, manifest = registry.resolve("tuned")
    assert (manifest.retry_backoff, manifest.retry_base, manifest.retry_cap) == (
        "fixed",
        2.0,
        60.0,
    )
    _record, plain = registry.resolve(make_service("plain", ""))
    assert (plain.retry_backoff, plain.retry_base, plain.retry_cap) == (
        None,
        None,
        None,
    )

    with pytest.raises(ManifestError) as caught:
        make_service("inverted", "", retry_base="2m", retry_cap="30s")
    message = caught.value.message
    assert "retry_cap" in message and "retry_base (120 s)" in message
    assert "above retry_cap (30 s)" in message

    with pytest.raises(ManifestError) as caught:
        make_service("linear", "", retry_backoff="linear")
    assert "retry_backoff" in caught.value.message

    with pytest.raises(ManifestError) as caught:
        make_service("negative", "", retry_base=-1)
    assert "retry_base" in caught.value.message


def test_the_manifest_backoff_overrides_the_config(make_engine, make_service) -> None:
    # The config's backoff is minutes long: only the manifests' keys can make
    # these tasks come back within the test's time.
    engine = make_engine(queue={"retry_base": 100, "retry_cap": 200})
    fixed = make_service(
        "fixed-flaky", FLAKY, retry_limit=1, retry_backoff="fixed", retry_base="0.3s"
    )
    at_once = make_service("none-flaky", FLAKY, retry_limit=1, retry_backoff="none")
    submitted = [
        engine.dispatcher.submit(SubmitRequest(name, {"succeed_on": 2})).task
        for name in (fixed, at_once)
    ]
    done = [engine.wait(t.id, timeout=20) for t in submitted]
    assert [t.state for t in done] == [TaskState.SUCCEEDED, TaskState.SUCCEEDED]
    assert [t.result_value() for t in done] == [{"attempt": 2}, {"attempt": 2}]

    for task, delay in zip(done, (0.3, 0.0), strict=True):
        first, second = engine.store.attempts(task.id)
        [requeued] = [
            e
            for e in state_events(engine, task.id)
            if e.get("from") == "running" and e["state"] == "queued"
        ]
        # Exactly the manifest's wait; the config's would be random in [0, 100 s].
        assert requeued["not_before"] == pytest.approx(first.ended_at + delay, abs=1e-3)
        assert second.started_at >= first.ended_at + delay


# on a serving engine


def test_a_service_failing_twice_then_succeeding_ends_succeeded_after_3_attempts(
    engine: Engine, make_service, run_task
) -> None:
    name = make_service("flaky", FLAKY, retry_limit=2)
    task = run_task(name, {"succeed_on": 3}, timeout=30)
    assert task.state == TaskState.SUCCEEDED, task.error
    assert task.attempts == 3
    assert task.result_value() == {"attempt": 3}
    attempts = engine.store.attempts(task.id)
    assert [a.outcome for a in attempts] == ["failed", "failed", "succeeded"]
    assert "failing on purpose at attempt 1" in (attempts[0].error or "")
    requeues = [e for e in state_events(engine, task.id) if e.get("from") == "running"]
    assert [e["state"] for e in requeues] == ["queued", "queued", "succeeded"]
    # Backed off within [0, min(cap, base * 2**(n-1))] of the config (0.01, 0.05).
    for n, (event, attempt) in enumerate(zip(requeues[:2], attempts, strict=False), 1):
        wait = event["not_before"] - attempt.ended_at
        assert 0.0 <= wait <= min(0.05, 0.01 * 2 ** (n - 1)) + 1e-9, (n, wait)


def test_a_task_that_keeps_failing_is_dead_with_its_last_error(
    engine: Engine, make_service, run_task
) -> None:
    name = make_service("flaky", FLAKY, retry_limit=2)
    task = run_task(name, {"succeed_on": 99}, timeout=30)
    assert task.state == TaskState.DEAD
    assert task.attempts == 3
    assert "failing on purpose at attempt 3" in task.error
    assert "(all 3 attempts used)" in task.error
    [listed] = engine.store.list_tasks(TaskFilter(state=TaskState.DEAD))
    assert listed.id == task.id


def test_a_service_failing_without_retries_allowed_is_failed_not_dead(
    engine: Engine, make_service, run_task
) -> None:
    name = make_service("flaky", FLAKY, retry_limit=0)
    task = run_task(name, {"succeed_on": 2}, timeout=30)
    assert task.state == TaskState.FAILED
    assert task.attempts == 1


# lost workers, an operator's retry


def test_a_task_whose_worker_is_lost_repeatedly_ends_dead(
    idle_engine: Engine, make_service
) -> None:
    make_service("lost", FLAKY, retry_limit=2)
    store = idle_engine.store
    notified: list[str] = []
    dispatcher = Dispatcher(
        store, idle_engine.registry, idle_engine.config, notified.append
    )
    task = dispatcher.submit(SubmitRequest("lost", {"succeed_on": 1}), now=NOW).task
    assert task.max_attempts == 3
    assert notified == ["submit"]

    for round_ in range(3):
        now = NOW + 1000 * round_
        [lease] = store.lease(OWNER, 5, now, 30)
        assert lease.task_id == task.id
        assert lease.attempt == round_ + 1
        # The lease has not expired yet: nothing to rescue.
        assert store.rescue(now + 29) == []
        assert store.rescue(now + 31) == [task.id]
        back = store.get_task(task.id)
        assert back.attempts == round_ + 1
        expected = TaskState.DEAD if round_ == 2 else TaskState.QUEUED
        assert back.state == expected, (round_, back.state)

    dead = store.get_task(task.id)
    assert dead.error == "worker lost; all 3 attempts used"
    assert dead.error_kind == "lost"
    assert dead.finished_at == NOW + 2031
    assert store.lease(OWNER, 5, NOW + 10_000, 30) == []
    states = [e["state"] for e in state_events(idle_engine, task.id)]
    assert states == ["received", "queued"] + ["leased", "queued"] * 2 + [
        "leased",
        "dead",
    ]

    # An operator's retry: queued again with as many attempts again.
    with pytest.raises(TaskNotFound):
        dispatcher.retry("nosuchtask", now=NOW + 10_000)
    again = dispatcher.retry(task.id, now=NOW + 10_000)
    assert notified == ["submit", "submit"]
    assert again.state == TaskState.QUEUED
    assert (again.attempts, again.max_attempts) == (3, 6)
    assert again.finished_at is None
    last = state_events(idle_engine, task.id)[-1]
    assert (last["state"], last["from"]) == ("queued", "dead")
    with pytest.raises(RequestRefused, match="only dead tasks are retried"):
        dispatcher.retry(task.id, now=NOW + 10_001)
    assert notified == ["submit", "submit"]
    [lease] = store.lease(OWNER, 5, NOW + 10_001, 30)
    assert lease.attempt == 4


def test_a_lost_worker_of_a_task_allowed_no_retries_ends_failed_not_dead(
    idle_engine: Engine, make_service
) -> None:
    make_service("once", FLAKY, retry_limit=0)
    store = idle_engine.store
    task = idle_engine.dispatcher.submit(
        SubmitRequest("once", {"succeed_on": 1}), now=NOW
    ).task
    assert task.max_attempts == 1
    [_lease] = store.lease(OWNER, 1, NOW, 30)
    assert store.rescue(NOW + 31) == [task.id]
    ended = store.get_task(task.id)
    # What the pool decides for the same outcome ("lost", no attempts left).
    expected, _ = next_state(
        "lost", True, 1, 1, RetryPolicy(), NOW + 31, random.Random(0)
    )
    assert expected == TaskState.FAILED
    assert ended.state == expected, ended.error


def test_invalid_input_never_becomes_a_task(idle_engine: Engine, make_service) -> None:
    name = make_service(
        "typed",
        FLAKY,
        input_schema={
            "type": "object",
            "required": ["succeed_on"],
            "properties": {"succeed_on": {"type": "integer"}},
        },
    )
    for bad in ({"succeed_on": "soon"}, {}, [1, 2]):
        with pytest.raises(InputInvalid):
            idle_engine.dispatcher.submit(SubmitRequest(name, bad))
    assert idle_engine.store.list_tasks(TaskFilter(limit=100)) == []
    assert idle_engine.store.state_counts() == {}
    idle_engine.dispatcher.submit(SubmitRequest(name, {"succeed_on": 1}))
    assert idle_engine.store.state_counts() == {"queued": 1}


# the commands


def kos_see(home: Path, *commands: list[str]) -> list[tuple[int, str, str]]:
    """Run ``kos-see`` commands on ``home`` at the same time (each costs a
    second of interpreter start); their (exit code, stdout, stderr) in order."""
    env = {**os.environ, "KOS_SEE_HOME": str(home), "COLUMNS": "300"}
    running = [
        subprocess.Popen(
            [sys.executable, "-m", "kos_see.cli", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    done = []
    for proc in running:
        out, err = proc.communicate(timeout=60)
        done.append((proc.returncode, out, err))
    return done


@pytest.mark.acceptance
def test_dead_letters_lists_a_dead_task_and_retry_requeues_it(
    home, engine: Engine, make_service, run_task, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    name = make_service("needs-marker", NEEDS_MARKER, retry_limit=1)
    dead = run_task(name, {"marker": str(marker)}, timeout=30)
    ok = run_task(name, {"marker": str(home.root)}, timeout=30)
    assert (dead.state, ok.state) == (TaskState.DEAD, TaskState.SUCCEEDED)

    table, listed, other, refused, unknown = kos_see(
        home.root,
        ["dead-letters"],
        ["dead-letters", "--service", name, "--json"],
        ["dead-letters", "--tenant", "nobody", "--json"],
        ["retry", ok.id, "--json"],
        ["retry", "nosuchtask"],
    )
    assert table[0] == 0, table[2]
    assert dead.id in table[1] and ok.id not in table[1]
    assert f"no marker file at {marker}" in table[1]

    assert listed[0] == 0, listed[2]
    [row] = json.loads(listed[1])
    assert row["id"] == dead.id and row["tenant"] == "default"
    assert row["attempts"] == 2 and row["finished_at"] == dead.finished_at
    assert row["error"] == dead.error
    assert "(all 2 attempts used)" in row["error"]
    assert other[0] == 0 and json.loads(other[1]) == []

    assert refused[0] == 3, refused
    assert "only dead tasks" in json.loads(refused[1])["message"]
    assert unknown[0] == 3 and "nosuchtask" in unknown[2], unknown

    marker.write_text("now it may succeed")
    [retried] = kos_see(home.root, ["retry", dead.id, "--json"])
    assert retried[0] == 0, retried[2]
    document = json.loads(retried[1])
    assert document["state"] == "queued" and document["served"] is True
    assert document["max_attempts"] == 4

    done = engine.wait(dead.id, timeout=20)
    assert done.state == TaskState.SUCCEEDED, done.error
    assert done.attempts == 3
    assert done.result_value() == {"marker": "found"}
    assert engine.store.list_tasks(TaskFilter(state=TaskState.DEAD)) == []


def test_each_operator_retry_grants_the_same_budget(idle_engine, make_service):
    """Retrying a dead task twice gives it 1 + retry_limit attempts each
    time, not a budget that doubles."""
    from kos_see.dispatcher import SubmitRequest as Request

    make_service("poison", "raise SystemExit(3)\n", retry_limit=2)
    store = idle_engine.store
    task = idle_engine.dispatcher.submit(Request("poison", {})).task
    now = 1e12
    budgets = []
    for _round in range(2):
        while store.get_task(task.id).state != TaskState.DEAD:
            now += 100
            assert store.lease("w", 1, now, 1)
            store.rescue(now + 10)
        dead = store.get_task(task.id)
        retried = idle_engine.dispatcher.retry(task.id, now=now + 20)
        budgets.append(retried.max_attempts - dead.attempts)
    assert budgets == [3, 3]
