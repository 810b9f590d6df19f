"""What security costs: signed submits and the sandbox.

Prints: submits per second through the dispatcher as the engine's own call
and as signed requests (verify, policy gate, audit entry), 2,000 each, not
serving; and end-to-end no-op tasks per second with a new interpreter per
attempt, unsandboxed and sandboxed (bubblewrap), with each one's attempt
wall time p50, the difference being the sandbox's cost per attempt.

    .venv/bin/python bench/security.py [--submits 2000] [--tasks 200]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time

import common

from kos_see.dispatcher import SubmitRequest, submit_fields
from kos_see.security.envelope import sign_request
from kos_see.security.keys import generate
from kos_see.security.operator import ensure_operator
from kos_see.security.principals import PrincipalStore
from kos_see.states import TaskState


def submit_rates(count: int) -> tuple[float, float]:
    engine = common.engine(2)
    try:
        ensure_operator(
            engine.home, engine.store, engine.home.policy_path(engine.config)
        )
        key = generate()
        PrincipalStore(engine.store).add("bench", "*", "admin", key.public)
        engine.audit.start()  # batched, as in a serving engine
        request = SubmitRequest("noop", {})
        start = time.perf_counter()
        for _ in range(count):
            engine.dispatcher.submit(request)
        plain = count / (time.perf_counter() - start)
        fields = submit_fields(request)
        start = time.perf_counter()
        for _ in range(count):
            caller = engine.dispatcher.authenticate(
                sign_request(key, "bench", "submit", fields)
            )
            engine.dispatcher.submit(request, caller=caller)
        signed = count / (time.perf_counter() - start)
    finally:
        engine.close()
        shutil.rmtree(engine.home.root, ignore_errors=True)
    return plain, signed


def run_rate(service: str, tasks: int) -> tuple[float, float]:
    engine = common.engine(2, launcher="cold")
    try:
        engine.serve()
        warm = engine.dispatcher.submit(SubmitRequest(service, {})).task.id
        engine.wait(warm, 60)
        start = time.perf_counter()
        ids = [
            engine.dispatcher.submit(SubmitRequest(service, {})).task.id
            for _ in range(tasks)
        ]
        walls = []
        for task_id in ids:
            final = engine.wait(task_id, 600)
            assert final.state == TaskState.SUCCEEDED, (final.state, final.error)
            attempt = engine.store.attempts(task_id)[-1]
            walls.append(attempt.ended_at - attempt.started_at)
        rate = tasks / (time.perf_counter() - start)
    finally:
        engine.close()
        shutil.rmtree(engine.home.root, ignore_errors=True)
    return rate, common.percentile(walls, 50) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submits", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    print(f"machine: {common.machine()}")
    plain, signed = submit_rates(args.submits)
    print(
        f"submits per second: {plain:.0f} as the engine's own call, {signed:.0f} "
        f"signed (verify, policy gate, audit entry)"
    )
    cold, cold_wall = run_rate("noop", args.tasks)
    boxed, boxed_wall = run_rate("noop-sandbox", args.tasks)
    print(
        f"no-op tasks per second, new interpreter per attempt: {cold:.0f} "
        f"unsandboxed (attempt p50 {cold_wall:.1f} ms), {boxed:.0f} sandboxed "
        f"(attempt p50 {boxed_wall:.1f} ms): the sandbox costs about "
        f"{boxed_wall - cold_wall:.1f} ms per attempt"
    )


if __name__ == "__main__":
    main()
