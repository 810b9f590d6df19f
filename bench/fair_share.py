"""Fair share under a flood, on the embedded default (SQLite, 2 slots).

Tenant A floods the queue with no-op tasks; then, while A's flood is still
queued, tenant B submits a few at a steady pace. Prints B's start latency
(its attempt's start less its task's creation) p50 and p99, and A's
throughput over the same time (from B's first submit to the end of the run),
once with ``queue.fair_share = true`` and once with it false.

A run ends as soon as B's tasks have all started (or ``--max-wait`` seconds
after B's last submit): A's tasks still queued then stay queued, and the
engine and its temporary home are discarded.

    .venv/bin/python bench/fair_share.py [--flood 10000] [--b-tasks 10]
        [--pace 0.2] [--max-wait 300]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import common

from kos_see.config import validate_config
from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.home import Home
from kos_see.logs import configure
from kos_see.queue.fair import Rules
from kos_see.worker.pool import rules_from_config

SLOTS = 2


@dataclass
class Run:
    fair_share: bool
    flood_seconds: float  # how long A's submits took
    b_latencies: list[float]  # seconds, of B's tasks that started
    b_missing: int  # B's tasks that had not started when the run ended
    waited: float  # seconds from B's first submit to the end of the run
    a_done: int  # A's tasks that ended from B's first submit to the end


def engine(fair_share: bool) -> Engine:
    root = Path(tempfile.mkdtemp(prefix="kos-see-bench-"))
    home = Home(root)
    home.init()
    config = validate_config(
        {
            "execution": {"max_concurrent_tasks": SLOTS},
            "queue": {"fair_share": fair_share},
            "logging": {"level": "warning"},
        }
    )
    built = Engine.open(home, config)
    for folder in sorted(common.SERVICES.iterdir()):
        built.registry.add(folder)
    return built


def run(
    fair_share: bool, flood: int, b_tasks: int, pace: float, max_wait: float
) -> Run:
    eng = engine(fair_share)
    try:
        eng.serve()
        eng.wait(eng.dispatcher.submit(SubmitRequest("noop", {}, tenant="W")).task.id)
        start = time.perf_counter()
        for _ in range(flood):
            eng.dispatcher.submit(SubmitRequest("noop", {}, tenant="A"))
        flood_seconds = time.perf_counter() - start

        rules = rules_from_config(eng.config, eng.registry)
        a_before = _a_left(eng, rules)
        b_ids = []
        first_b = next_at = time.perf_counter()
        for _ in range(b_tasks):
            time.sleep(max(0.0, next_at - time.perf_counter()))
            b_ids.append(eng.dispatcher.submit(SubmitRequest("noop", {}, tenant="B")))
            next_at += pace
        deadline = time.perf_counter() + max_wait
        started: dict[str, float] = {}
        while time.perf_counter() < deadline:
            for submitted in b_ids:
                task = submitted.task
                if task.id in started:
                    continue
                attempts = eng.store.attempts(task.id)
                if attempts:
                    started[task.id] = attempts[0].started_at - task.created_at
            if len(started) == len(b_ids):
                break
            time.sleep(0.05)
        waited = time.perf_counter() - first_b
        a_after = _a_left(eng, rules)
    finally:
        eng.close()
        shutil.rmtree(eng.home.root, ignore_errors=True)
    return Run(
        fair_share=fair_share,
        flood_seconds=flood_seconds,
        b_latencies=sorted(started.values()),
        b_missing=len(b_ids) - len(started),
        waited=waited,
        a_done=a_before - a_after,
    )


def _a_left(eng: Engine, rules: Rules) -> int:
    """A's tasks not yet ended (queued, leased or running)."""
    stats = eng.store.queue_stats(time.time(), rules)
    use = {t.tenant: t for t in stats.tenants}
    return use["A"].queued + use["A"].running if "A" in use else 0


def report(result: Run, flood: int) -> None:
    mode = "on " if result.fair_share else "off"
    if result.b_latencies:
        p50 = common.percentile(result.b_latencies, 50)
        p99 = common.percentile(result.b_latencies, 99)
        latency = f"p50 {_ms(p50)}, p99 {_ms(p99)}"
    else:
        latency = "none started"
    if result.b_missing:
        latency += (
            f"; {result.b_missing} not started after {result.waited:.0f} s "
            f"(their latency is above {result.waited:.0f} s)"
        )
    print(
        f"fair share {mode}: B start latency {latency}; A's throughput meanwhile "
        f"{result.a_done / result.waited:,.0f} tasks/s ({result.a_done:,} done in "
        f"{result.waited:.1f} s; flood of {flood:,} submitted in "
        f"{result.flood_seconds:.1f} s)"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=10000)
    parser.add_argument("--b-tasks", type=int, default=10)
    parser.add_argument("--pace", type=float, default=0.2, help="seconds between B's")
    parser.add_argument(
        "--max-wait",
        type=float,
        default=300.0,
        help="seconds after B's last submit before a run gives up on B",
    )
    args = parser.parse_args()
    configure("warning")
    logging.getLogger("kos_see").setLevel(logging.ERROR)
    print(f"machine: {common.machine()}")
    print(
        f"tenant A floods {args.flood:,} no-op tasks, then tenant B submits "
        f"{args.b_tasks} at one per {args.pace:g} s; {SLOTS} slots"
    )
    sys.stdout.flush()
    for fair_share in (True, False):
        report(
            run(fair_share, args.flood, args.b_tasks, args.pace, args.max_wait),
            args.flood,
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
