"""Engine core figures on the embedded default (SQLite, one engine process).

Prints: end-to-end no-op tasks per second (2,000 tasks, 2 slots, every task in
its own process with its events and attempt written); submit-to-start latency
p50 and p99 at a paced 50 tasks per second; the engine's peak memory.

    .venv/bin/python bench/engine_core.py [--tasks 2000] [--paced 500]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time

import common

from kos_see.dispatcher import SubmitRequest
from kos_see.logs import configure
from kos_see.states import TaskState


def throughput(tasks: int, slots: int, launcher: str) -> float:
    engine = common.engine(slots, launcher=launcher)
    try:
        engine.serve()
        warm = engine.dispatcher.submit(SubmitRequest("noop", {})).task.id
        engine.wait(warm, 60)
        start = time.perf_counter()
        ids = [
            engine.dispatcher.submit(SubmitRequest("noop", {})).task.id
            for _ in range(tasks)
        ]
        for task_id in ids:
            final = engine.wait(task_id, 600)
            assert final.state == TaskState.SUCCEEDED, (final.state, final.error)
        elapsed = time.perf_counter() - start
    finally:
        engine.close()
        shutil.rmtree(engine.home.root, ignore_errors=True)
    return tasks / elapsed


def paced_latency(count: int, rate: float) -> tuple[float, float]:
    engine = common.engine(2)
    try:
        engine.serve()
        engine.wait(engine.dispatcher.submit(SubmitRequest("noop", {})).task.id, 60)
        ids = []
        next_at = time.perf_counter()
        for _ in range(count):
            next_at += 1.0 / rate
            time.sleep(max(0.0, next_at - time.perf_counter()))
            ids.append(engine.dispatcher.submit(SubmitRequest("noop", {})).task.id)
        latencies = []
        for task_id in ids:
            task = engine.wait(task_id, 60)
            attempt = engine.store.attempts(task_id)[-1]
            latencies.append((attempt.started_at - task.created_at) * 1000)
    finally:
        engine.close()
        shutil.rmtree(engine.home.root, ignore_errors=True)
    return common.percentile(latencies, 50), common.percentile(latencies, 99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--paced", type=int, default=500)
    parser.add_argument(
        "--cold", action="store_true", help="also measure the cold-interpreter launcher"
    )
    args = parser.parse_args()
    configure("warning")
    logging.getLogger("kos_see").setLevel(logging.ERROR)
    print(f"machine: {common.machine()}")
    rate = throughput(args.tasks, 2, "fork_server")
    print(
        f"throughput: {rate:,.0f} tasks/s end to end ({args.tasks} no-op tasks, "
        "2 slots, fork server, one process per task)"
    )
    if args.cold:
        cold = throughput(min(args.tasks, 300), 2, "cold")
        print(f"throughput (cold interpreter per task): {cold:,.0f} tasks/s")
    p50, p99 = paced_latency(args.paced, 50.0)
    print(f"submit-to-start latency at 50 tasks/s: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    print(
        f"engine peak memory: {common.peak_rss_mib():.0f} MiB (RSS of the engine "
        "process; the fork server and attempts are separate processes)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
