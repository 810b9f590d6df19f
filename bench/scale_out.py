"""Scale-out figures: PostgreSQL with 1, 2 and 4 worker processes, beside the
embedded SQLite store, all from the same run on the same machine.

Each configuration runs real ``kos-see serve`` processes on one home: the
SQLite one as one ``--role all`` process, the PostgreSQL ones as N ``--role
worker`` processes sharing a database of this run's own (dropped at the end).
A submitting client in this process measures:

- end-to-end no-op tasks per second: a burst of ``--tasks`` submitted at once,
  from the first submit to the last task's end;
- submit-to-start latency p50 and p99 at a paced ``--rate`` tasks per second:
  from the task's creation to its attempt's start, as the store records them.

Slots: ``--slots`` per worker process (the total grows with the processes).

    .venv/bin/python bench/scale_out.py [--tasks 400] [--paced 150] [--rate 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import common
import psycopg

from kos_see.config import load_config
from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.home import Home

PG_ADMIN = os.environ.get(
    "KOS_SEE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
KOS_SEE = [sys.executable, "-m", "kos_see.cli"]


class Setup:
    def __init__(self, store_url: str, workers: int, slots: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="kos-see-scale-"))
        self.home = Home(self.root / "home")
        self.home.init()
        self.workers = workers
        self.env = {
            **os.environ,
            "KOS_SEE_HOME": str(self.home.root),
            "KOS_SEE_STORE__URL": store_url,
            "KOS_SEE_EXECUTION__MAX_CONCURRENT_TASKS": str(slots),
            "KOS_SEE_LOGGING__LEVEL": "warning",
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def config(self):  # type: ignore[no-untyped-def]
        return load_config(self.home.config_path, self.env)

    def start(self, role: str) -> None:
        if self.env["KOS_SEE_STORE__URL"]:
            subprocess.run(
                [*KOS_SEE, "db", "upgrade"],
                env=self.env,
                check=True,
                capture_output=True,
            )
        engine = Engine.open(self.home, self.config())
        engine.registry.add(common.SERVICES / "noop")
        engine.close()
        for _ in range(self.workers):
            self.procs.append(
                subprocess.Popen(
                    [*KOS_SEE, "serve", "--role", role],
                    env=self.env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def wait_all(engine: Engine, ids: list[str], within: float = 600) -> None:
    deadline = time.monotonic() + within
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        pending = [t for t in pending if not engine.store.get_task(t).terminal]
        if pending:
            time.sleep(0.02)
    if pending:
        raise RuntimeError(f"{len(pending)} tasks did not finish")


def measure(setup: Setup, tasks: int, paced: int, rate: float) -> tuple[float, ...]:
    engine = Engine.open(setup.home, setup.config())
    try:
        # Warm every worker: each leases some of a first burst.
        warm = [submit(engine) for _ in range(4 * setup.workers)]
        wait_all(engine, warm, 120)
        start = time.perf_counter()
        ids = [submit(engine) for _ in range(tasks)]
        wait_all(engine, ids)
        per_second = tasks / (time.perf_counter() - start)

        ids = []
        next_at = time.perf_counter()
        for _ in range(paced):
            next_at += 1.0 / rate
            time.sleep(max(0.0, next_at - time.perf_counter()))
            ids.append(submit(engine))
        wait_all(engine, ids)
        latencies = []
        for task_id in ids:
            task = engine.store.get_task(task_id)
            attempt = engine.store.attempts(task_id)[-1]
            latencies.append((attempt.started_at - task.created_at) * 1000)
    finally:
        engine.close()
    return (
        per_second,
        common.percentile(latencies, 50),
        common.percentile(latencies, 99),
    )


def submit(engine: Engine) -> str:
    return engine.dispatcher.submit(SubmitRequest("noop", {})).task.id


def postgres_database() -> tuple[str, str]:
    name = f"kos_see_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return name, PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def drop(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--paced", type=int, default=150)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    print(f"machine: {common.machine()}")
    print(
        f"{args.tasks} no-op tasks per burst, {args.paced} paced at {args.rate:g}/s, "
        f"{args.slots} slots per process"
    )
    print(f"{'store':<24} {'tasks/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    rows: list[tuple[str, str, int]] = [("embedded SQLite, 1 process", "", 1)]
    rows += [
        (f"PostgreSQL, {n} worker(s)", "pg", n)
        for n in map(int, args.workers.split(","))
    ]
    for label, kind, workers in rows:
        name = ""
        url = ""
        if kind == "pg":
            name, url = postgres_database()
        setup = Setup(url, workers, args.slots)
        try:
            setup.start("worker" if kind == "pg" else "all")
            per_second, p50, p99 = measure(setup, args.tasks, args.paced, args.rate)
        finally:
            setup.stop()
            if name:
                drop(name)
        print(f"{label:<24} {per_second:8.1f} {p50:8.1f} {p99:8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
