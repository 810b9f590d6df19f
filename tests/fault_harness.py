"""Fault injection against engines that share one PostgreSQL (and Redis).

A run starts worker processes (``kos-see serve --role worker``) and two
scheduler processes on one home whose store is PostgreSQL, submits tasks
with idempotency keys while a seeded schedule of faults plays (SIGKILL of a
worker at random moments, SIGSTOP of a worker past its lease and SIGCONT,
a PostgreSQL restart, a Redis stop and start), drains, and then checks the
whole history:

- every accepted submit names one task, and the same key always the same one;
- every task reaches exactly one terminal state, by allowed transitions;
- a succeeded task has exactly one succeeded attempt, of the task's current
  epoch, and its stored result is that attempt's: nothing was committed by a
  superseded epoch;
- the committed attempt's effect is in the ledger the service appends to.

The service itself writes the ledger (one JSON line per attempt start and
finish), so the history does not depend on what the engine says about itself.

``tests/test_faults.py`` runs a short seeded run in CI. A longer one, or a
replay of a failing seed: ``.venv/bin/python tests/fault_harness.py --seed 7
--tasks 400 --kills 40``. The fault schedule and the submits follow from the
seed; the moments the operating system schedules processes do not, so a
replay reproduces the same faults at the same offsets, not the same
interleaving to the microsecond.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from kos_see.config import EngineConfig, load_config
from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.errors import KosSeeError
from kos_see.home import Home
from kos_see.states import TERMINAL, TaskState, allowed

KOS_SEE = [sys.executable, "-m", "kos_see.cli"]
PG_ADMIN = os.environ.get(
    "KOS_SEE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("KOS_SEE_TEST_REDIS", "redis://127.0.0.1:6379/0")

SERVICE = """
import json, os, time

def _append(path, record):
    # One write of one line on an O_APPEND file: lines never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\\n").encode())
    finally:
        os.close(fd)

def run(inputs):
    me = {"task": os.environ["KOS_SEE_TASK_ID"],
          "attempt": int(os.environ["KOS_SEE_ATTEMPT"]), "pid": os.getpid()}
    _append(inputs["ledger"], {**me, "event": "start", "at": time.time()})
    time.sleep(inputs["sleep"])
    _append(inputs["ledger"], {**me, "event": "finish", "at": time.time()})
    return {"attempt": me["attempt"], "key": inputs["key"]}
"""


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the run starts
    kind: str  # kill, stop, restart_postgres, restart_redis
    worker: int = 0


@dataclass(frozen=True)
class RunPlan:
    seed: int
    tasks: int = 60
    workers: int = 3
    slots: int = 3
    kills: int = 6
    stops: int = 1
    restart_postgres: bool = True
    restart_redis: bool = True
    duplicate_share: float = 0.2
    submit_seconds: float = 12.0
    lease_seconds: float = 2.0
    drain_seconds: float = 120.0

    def faults(self) -> list[Fault]:
        """The fault schedule, from the seed alone."""
        rng = random.Random(self.seed)
        span = self.submit_seconds + 4
        faults = [
            Fault(rng.uniform(1, span), "kill", rng.randrange(self.workers))
            for _ in range(self.kills)
        ]
        faults += [
            Fault(rng.uniform(1, span), "stop", rng.randrange(self.workers))
            for _ in range(self.stops)
        ]
        if self.restart_postgres:
            faults.append(Fault(rng.uniform(3, span), "restart_postgres"))
        if self.restart_redis:
            faults.append(Fault(rng.uniform(2, span), "restart_redis"))
        return sorted(faults, key=lambda f: f.at)

    def sleeps(self) -> list[float]:
        rng = random.Random(self.seed * 7919 + 1)
        return [rng.uniform(0.2, 1.5) for _ in range(self.tasks)]


@dataclass
class History:
    submits: dict[str, set[str]] = field(default_factory=dict)  # key -> task ids
    faults_done: list[str] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


# servers


def restart_postgres() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )


def stop_redis() -> None:
    subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "shutdown", "nosave"],
        capture_output=True,
        timeout=30,
    )


def start_redis() -> None:
    subprocess.run(
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/var/lib/redis",
            "--logfile",
            "/var/log/redis/ci.log",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    # The daemon forks before it listens: wait until it answers.
    deadline = time.monotonic() + 15
    while not redis_up() and time.monotonic() < deadline:
        time.sleep(0.05)


def redis_up() -> bool:
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "ping"], capture_output=True, timeout=10
    )
    return done.stdout.strip() == b"PONG"


def ensure_servers_up() -> None:
    """Both servers run when a run ends, whatever happened (others use them)."""
    if not redis_up():
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            start_redis()
    for _ in range(60):
        try:
            psycopg.connect(PG_ADMIN, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            time.sleep(1)


def create_database() -> tuple[str, str]:
    name = f"kos_see_faults_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return name, PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# the cluster: one home, its workers and schedulers as processes


class Cluster:
    def __init__(self, root: Path, plan: RunPlan, store_url: str, events_url: str):
        self.root = root
        self.plan = plan
        self.home = Home(root / "home")
        self.home.init()
        self.env = {
            **os.environ,
            "KOS_SEE_HOME": str(self.home.root),
            "KOS_SEE_STORE__URL": store_url,
            "KOS_SEE_EVENTS__URL": events_url,
            "KOS_SEE_EVENTS__PREFIX": f"kos-see-faults-{plan.seed}-{os.getpid()}",
            "KOS_SEE_EXECUTION__MAX_CONCURRENT_TASKS": str(plan.slots),
            "KOS_SEE_EXECUTION__LEASE_SECONDS": str(plan.lease_seconds),
            "KOS_SEE_EXECUTION__HEARTBEAT_SECONDS": str(plan.lease_seconds / 4),
            "KOS_SEE_EXECUTION__KILL_GRACE": "0.5",
            "KOS_SEE_EXECUTION__SHUTDOWN_GRACE": "1",
            "KOS_SEE_QUEUE__RETRY_LIMIT": "50",
            "KOS_SEE_QUEUE__RETRY_BASE": "0.01",
            "KOS_SEE_QUEUE__RETRY_CAP": "0.05",
        }
        self.workers: list[subprocess.Popen[bytes] | None] = [None] * plan.workers
        self.schedulers: list[subprocess.Popen[bytes]] = []
        self.stopped: set[int] = set()
        self.ledger = root / "ledger.jsonl"
        self.logs = root / "logs"
        self.logs.mkdir()
        self._starts = 0
        self._log_files: list[Any] = []

    def config(self) -> EngineConfig:
        return load_config(self.home.config_path, self.env)

    def spawn(self, role: str, name: str) -> subprocess.Popen[bytes]:
        self._starts += 1
        log = open(self.logs / f"{name}-{self._starts}.log", "wb")  # noqa: SIM115
        self._log_files.append(log)
        return subprocess.Popen(
            [*KOS_SEE, "serve", "--role", role],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def start(self) -> None:
        for number in range(self.plan.workers):
            self.workers[number] = self.spawn("worker", f"worker{number}")
        for number in range(2):
            self.schedulers.append(self.spawn("scheduler", f"scheduler{number}"))

    def kill(self, number: int) -> None:
        proc = self.workers[number]
        if proc is not None and proc.poll() is None:
            if number in self.stopped:
                os.kill(proc.pid, signal.SIGCONT)
                self.stopped.discard(number)
            proc.kill()
            proc.wait(timeout=30)
        self.workers[number] = self.spawn("worker", f"worker{number}")

    def pause(self, number: int, seconds: float) -> None:
        proc = self.workers[number]
        if proc is None or proc.poll() is not None or number in self.stopped:
            return
        os.kill(proc.pid, signal.SIGSTOP)
        self.stopped.add(number)

        def resume() -> None:
            time.sleep(seconds)
            if number in self.stopped and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
            self.stopped.discard(number)

        threading.Thread(target=resume, daemon=True).start()

    def stop(self) -> None:
        procs = [p for p in [*self.workers, *self.schedulers] if p is not None]
        for number in list(self.stopped):
            proc = self.workers[number]
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for log in self._log_files:
            log.close()


def register_service(cluster: Cluster) -> None:
    folder = cluster.root / "effect"
    folder.mkdir()
    (folder / "service.toml").write_text(
        'name = "effect"\nversion = "1.0.0"\nentrypoint = "main.py:run"\n'
        'timeout = "30s"\n'
    )
    (folder / "main.py").write_text(SERVICE)
    engine = Engine.open(cluster.home, cluster.config())
    try:
        engine.registry.add(folder)
    finally:
        engine.close()


# the run


def submit_all(cluster: Cluster, plan: RunPlan, history: History) -> None:
    """Every task once with its key, some twice; each submit retried with the
    same key until the store takes it (it may be restarting)."""
    rng = random.Random(plan.seed * 31 + 3)
    sleeps = plan.sleeps()
    keys = [f"k{plan.seed}-{n}" for n in range(plan.tasks)]
    order = keys + [k for k in keys if rng.random() < plan.duplicate_share]
    pause = plan.submit_seconds / max(1, len(order))
    engine = Engine.open(cluster.home, cluster.config())
    try:
        for key in order:
            number = int(key.rsplit("-", 1)[1])
            request = SubmitRequest(
                service="effect",
                input={
                    "ledger": str(cluster.ledger),
                    "sleep": sleeps[number],
                    "key": key,
                },
                idempotency_key=key,
                tenant=f"t{number % 3}",
            )
            task_id = submit_until_taken(engine, request, history)
            history.submits.setdefault(key, set()).add(task_id)
            time.sleep(pause)
    finally:
        engine.close()


def submit_until_taken(engine: Engine, request: SubmitRequest, history: History) -> str:
    deadline = time.monotonic() + 90
    while True:
        try:
            return engine.dispatcher.submit(request).task.id
        except KosSeeError as exc:
            history.counts["submit_retried"] += 1
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"submit of {request.idempotency_key} failed"
                ) from exc
            time.sleep(0.2)


def play_faults(cluster: Cluster, plan: RunPlan, history: History, t0: float) -> None:
    for fault in plan.faults():
        time.sleep(max(0.0, t0 + fault.at - time.monotonic()))
        if fault.kind == "kill":
            cluster.kill(fault.worker)
        elif fault.kind == "stop":
            cluster.pause(fault.worker, plan.lease_seconds * 2.5)
        elif fault.kind == "restart_postgres":
            restart_postgres()
        elif fault.kind == "restart_redis":
            stop_redis()
            time.sleep(1.5)
            start_redis()
        history.faults_done.append(f"{fault.at:.2f}s {fault.kind} {fault.worker}")


def add_schedule(cluster: Cluster) -> None:
    """A schedule firing every minute, which both schedulers serve: each fire
    time must make one task however the two race."""
    document = {"ledger": str(cluster.ledger), "sleep": 0.1, "key": "tick"}
    done = subprocess.run(
        [*KOS_SEE, "schedules", "add", "tick", "--cron", "* * * * *"]
        + ["--tz", "UTC", "--service", "effect", "--input", json.dumps(document)],
        env=cluster.env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"schedules add failed: {done.stderr}")


def pause_schedule(cluster: Cluster) -> None:
    """No new fire times while draining (retried: the store may restart)."""
    for _ in range(30):
        done = subprocess.run(
            [*KOS_SEE, "schedules", "pause", "tick"],
            env=cluster.env,
            capture_output=True,
        )
        if done.returncode == 0:
            return
        time.sleep(1)
    raise RuntimeError("schedules pause failed")


def scheduled_tasks(engine: Engine) -> list[str]:
    import sqlalchemy as sa

    from kos_see.store.schema import tasks

    with engine.store._read() as conn:  # type: ignore[attr-defined]
        query = sa.select(tasks.c.id).where(tasks.c.schedule.is_not(None))
        return [row[0] for row in conn.execute(query)]


def drain(cluster: Cluster, plan: RunPlan, history: History) -> None:
    ids = {i for ids in history.submits.values() for i in ids}
    deadline = time.monotonic() + plan.drain_seconds
    engine = Engine.open(cluster.home, cluster.config())
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(KosSeeError):
                ids |= set(scheduled_tasks(engine))
            try:
                left = [i for i in ids if not engine.store.get_task(i).terminal]
            except KosSeeError:
                left = list(ids)
            if not left:
                _await_streams(engine, ids, deadline)
                return
            time.sleep(0.5)
        history.violations.append(f"{len(left)} tasks not terminal after drain")
    finally:
        engine.close()


def _await_streams(engine: Engine, ids: set[str], deadline: float) -> None:
    """Give the serving relay time to copy the last events before the cluster
    stops: the check afterwards wants every stored event in its stream."""
    if not engine.config.events.url:
        return
    while time.monotonic() < deadline:
        probe = History()
        for task_id in ids:
            check_stream(engine, task_id, probe)
        if not probe.violations:
            return
        time.sleep(0.5)


def run(plan: RunPlan, events: bool = True) -> History:
    history = History()
    name, store_url = create_database()
    root = Path(tempfile.mkdtemp(prefix="kos-see-faults-"))
    cleanup: list[Callable[[], None]] = []
    try:
        cluster = Cluster(root, plan, store_url, REDIS_URL if events else "")
        cleanup.append(cluster.stop)  # a run cut short leaves no engine behind
        _upgrade(cluster)
        register_service(cluster)
        add_schedule(cluster)
        cluster.start()
        t0 = time.monotonic()
        faults = threading.Thread(
            target=play_faults, args=(cluster, plan, history, t0), daemon=True
        )
        faults.start()
        submit_all(cluster, plan, history)
        faults.join(timeout=plan.submit_seconds + 120)
        pause_schedule(cluster)
        drain(cluster, plan, history)
        cluster.stop()
        history.ledger = read_ledger(cluster.ledger)
        check(cluster, history)
        history.counts["refused_writes"] = count_in_logs(cluster.logs, "write_refused")
        history.counts["rescued"] = count_in_logs(cluster.logs, "leases_rescued")
    finally:
        for stop in cleanup:
            with contextlib.suppress(Exception):
                stop()
        ensure_servers_up()
        with contextlib.suppress(psycopg.Error):
            drop_database(name)
        if events:
            drop_streams(f"kos-see-faults-{plan.seed}-{os.getpid()}")
    if not history.violations:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    else:
        history.violations.append(f"logs and ledger kept in {root}")
    return history


def _upgrade(cluster: Cluster) -> None:
    done = subprocess.run(
        [*KOS_SEE, "db", "upgrade"], env=cluster.env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"db upgrade failed: {done.stderr}")


def drop_streams(prefix: str) -> None:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL)
        names = list(client.scan_iter(f"{prefix}:*"))
        if names:
            client.delete(*names)
        client.close()
    except redis.RedisError:
        pass


def read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def count_in_logs(folder: Path, action: str) -> int:
    return sum(
        path.read_text(errors="replace").count(f"action={action}")
        for path in folder.iterdir()
    )


# the checks


def check(cluster: Cluster, history: History) -> None:
    bad = history.violations
    for key, ids in history.submits.items():
        if len(ids) != 1:
            bad.append(f"key {key} named {len(ids)} tasks: {sorted(ids)}")
    finishes = {
        (r["task"], r["attempt"]) for r in history.ledger if r["event"] == "finish"
    }
    engine = Engine.open(cluster.home, cluster.config())
    try:
        states = engine.store.state_counts()
        scheduled = scheduled_tasks(engine)
        history.counts["scheduled"] = len(scheduled)
        if sum(states.values()) != len(history.submits) + len(scheduled):
            bad.append(
                f"{sum(states.values())} tasks for {len(history.submits)} keys "
                f"and {len(scheduled)} scheduled"
            )
        fires = Counter(engine.store.get_task(t).idempotency_key for t in scheduled)
        bad.extend(f"fire {key} made {n} tasks" for key, n in fires.items() if n > 1)
        for task_id in [
            *scheduled,
            *(i for ids in history.submits.values() for i in ids),
        ]:
            check_task(engine, task_id, finishes, history)
    finally:
        engine.close()


def check_task(
    engine: Engine, task_id: str, finishes: set[tuple[str, int]], history: History
) -> None:
    bad = history.violations
    task = engine.store.get_task(task_id)
    if task is None:
        bad.append(f"task {task_id} accepted but not stored")
        return
    if engine.config.events.url:
        check_stream(engine, task_id, history)
    path = [
        (e.data.get("from"), e.data["state"])
        for e in engine.store.events(task_id, limit=100_000)
        if e.kind == "state"
    ]
    terminal = [to for _, to in path if TaskState(to) in TERMINAL]
    if len(terminal) != 1 or terminal[0] != task.state.value:
        bad.append(f"task {task_id}: terminal states {terminal}, now {task.state}")
    for source, target in path[1:]:
        if source is not None and not allowed(TaskState(source), TaskState(target)):
            bad.append(f"task {task_id}: illegal {source} -> {target}")
    history.counts[task.state.value] += 1
    history.counts["attempts"] += task.attempts
    if task.state != TaskState.SUCCEEDED:
        return
    won = [a for a in engine.store.attempts(task_id) if a.outcome == "succeeded"]
    if len(won) != 1:
        bad.append(f"task {task_id}: {len(won)} succeeded attempts")
        return
    if won[0].epoch != task.lease_epoch:
        bad.append(
            f"task {task_id}: result of epoch {won[0].epoch} committed, "
            f"current epoch {task.lease_epoch}"
        )
    if (task.result_value() or {}).get("attempt") != won[0].number:
        bad.append(f"task {task_id}: stored result is not attempt {won[0].number}'s")
    if (task_id, won[0].number) not in finishes:
        bad.append(f"task {task_id}: committed attempt {won[0].number} not in ledger")


def check_stream(engine: Engine, task_id: str, history: History) -> None:
    """Once the run is over, the task's stream holds its stored events, in
    order, each once (Redis restarted empty mid-run: the relay copied again)."""
    import redis

    from kos_see.events import keys
    from kos_see.events.streams import event_of

    stored = [e.id for e in engine.store.events(task_id, limit=100_000)]
    client = redis.Redis.from_url(engine.config.events.url, decode_responses=True)
    try:
        name = keys.task_events(engine.config.events.prefix, task_id)
        streamed = [event_of(f).id for _, f in client.xrange(name)]
    finally:
        client.close()
    if streamed != stored:
        history.violations.append(
            f"task {task_id}: stream {streamed[:5]}... != stored {stored[:5]}..."
        )
    history.counts["streamed_events"] += len(streamed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--stops", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=40.0, help="submit span")
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args(argv)
    plan = RunPlan(
        seed=args.seed,
        tasks=args.tasks,
        workers=args.workers,
        kills=args.kills,
        stops=args.stops,
        submit_seconds=args.seconds,
        restart_redis=not args.no_redis,
        drain_seconds=300,
    )
    print(f"seed {plan.seed}: {len(plan.faults())} faults", flush=True)
    history = run(plan, events=not args.no_redis)
    print("faults:", *history.faults_done, sep="\n  ")
    print("counts:", dict(history.counts))
    if history.violations:
        print("VIOLATIONS:", *history.violations, sep="\n  ")
        print(f"replay: python tests/fault_harness.py --seed {plan.seed} ...")
        return 1
    print("history checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
