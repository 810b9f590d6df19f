"""Crash recovery over PostgreSQL: a short seeded fault-injection run.

The harness (``tests/fault_harness.py``) runs real worker and scheduler
processes on one PostgreSQL store, SIGKILLs and SIGSTOPs workers, restarts
PostgreSQL and Redis while tasks run, drains, and checks the history: every
accepted task ends exactly once, no superseded epoch commits a result, and an
idempotency key names one task. A longer run, or a failing seed replayed:
``.venv/bin/python tests/fault_harness.py --seed N``.
"""

from __future__ import annotations

import fault_harness
import pytest


@pytest.mark.timeout(400)
def test_faults_lose_nothing_and_commit_nothing_twice(
    postgres_database: str, redis_url: str
) -> None:
    plan = fault_harness.RunPlan(
        seed=20261204, tasks=36, kills=5, stops=1, submit_seconds=7.0
    )
    history = fault_harness.run(plan)
    assert not history.violations, f"seed {plan.seed}: " + "; ".join(history.violations)
    # Submitted tasks and those the two schedulers made (one per fire time).
    made = plan.tasks + history.counts["scheduled"]
    assert history.counts["succeeded"] == made, history.counts
    # The faults did happen: workers were lost and their tasks run again.
    assert len(history.faults_done) == len(plan.faults())
    assert history.counts["attempts"] > plan.tasks, history.counts
