"""Many engine processes on one PostgreSQL: ``kos-see db upgrade``, ``kos-see
serve --role``, LISTEN/NOTIFY wake-ups, and a worker paused past its lease.

Real ``kos-see`` processes on a database of the test's own (created and
dropped here), as an operator would run them on several hosts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from conftest import PG_ADMIN_URL, missing_service

from kos_see.config import load_config
from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.home import Home
from kos_see.store.schema import SCHEMA_REVISION

KOS_SEE = [sys.executable, "-m", "kos_see.cli"]

NAP = """
import time

def run(inputs):
    time.sleep(inputs.get("sleep", 0.2))
    return {"slept": inputs.get("sleep", 0.2)}
"""


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """An empty database (no schema) of this test's own."""
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        missing_service(f"no PostgreSQL at {PG_ADMIN_URL}: {exc}")
    name = f"kos_see_scale_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Hosts:
    """One home's config, shared by every ``kos-see`` process started here."""

    def __init__(self, root: Path, store_url: str) -> None:
        self.home = Home(root / "home")
        self.home.init()
        self.env = {
            **os.environ,
            "KOS_SEE_HOME": str(self.home.root),
            "KOS_SEE_STORE__URL": store_url,
            "KOS_SEE_EXECUTION__MAX_CONCURRENT_TASKS": "2",
            "KOS_SEE_EXECUTION__LEASE_SECONDS": "2",
            "KOS_SEE_EXECUTION__HEARTBEAT_SECONDS": "0.5",
            "KOS_SEE_EXECUTION__KILL_GRACE": "0.5",
            "KOS_SEE_EXECUTION__SHUTDOWN_GRACE": "1",
            "KOS_SEE_QUEUE__RETRY_BASE": "0.01",
            "KOS_SEE_QUEUE__RETRY_CAP": "0.05",
        }
        self.procs: list[subprocess.Popen[str]] = []
        self.logs: list[Path] = []

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*KOS_SEE, *args], env=self.env, capture_output=True, text=True, timeout=60
        )

    def serve(self, role: str) -> subprocess.Popen[str]:
        log = self.home.root.parent / f"serve-{len(self.procs)}.log"
        self.logs.append(log)
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [*KOS_SEE, "serve", "--role", role],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        self.procs.append(proc)
        return proc

    def engine(self) -> Engine:
        return Engine.open(self.home, load_config(self.home.config_path, self.env))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_text(self, number: int) -> str:
        return self.logs[number].read_text(errors="replace")


@pytest.fixture
def hosts(tmp_path: Path, fresh_database: str) -> Iterator[Hosts]:
    made = Hosts(tmp_path, fresh_database)
    yield made
    made.stop()


def register_nap(hosts: Hosts, tmp_path: Path) -> None:
    folder = tmp_path / "nap"
    folder.mkdir()
    (folder / "service.toml").write_text(
        'name = "nap"\nversion = "1.0.0"\nentrypoint = "main.py:run"\nretry_limit = 3\n'
    )
    (folder / "main.py").write_text(NAP)
    done = hosts.run("services", "add", str(folder))
    assert done.returncode == 0, done.stderr


def wait_for(predicate, within: float = 60.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def listeners(store_url: str) -> int:
    with psycopg.connect(store_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query = 'LISTEN kos_see_wake'"
        ).fetchone()[0]


def test_db_upgrade_makes_the_schema_and_engines_refuse_a_database_without_it(
    hosts: Hosts, fresh_database: str
) -> None:
    before = hosts.run("services", "list")
    assert before.returncode == 1
    assert "run 'kos-see db upgrade'" in before.stderr, before.stderr

    first = hosts.run("db", "upgrade", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {
        "store": fresh_database,
        "from": None,
        "to": SCHEMA_REVISION,
    }
    again = hosts.run("db", "upgrade")
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout
    assert hosts.run("services", "list").returncode == 0


def test_split_roles_need_a_shared_store_and_the_api_role_serves_the_api(
    hosts: Hosts, tmp_path: Path
) -> None:
    embedded = {**hosts.env, "KOS_SEE_STORE__URL": ""}
    done = subprocess.run(
        [*KOS_SEE, "serve", "--role", "worker"],
        env=embedded,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--role worker needs a store that processes share" in done.stderr

    # On a shared store the api role serves the network API and nothing else.
    assert hosts.run("db", "upgrade").returncode == 0
    hosts.env["KOS_SEE_API__PORT"] = "0"
    hosts.env["KOS_SEE_API__GRPC_PORT"] = "0"
    api = hosts.serve("api")
    url = wait_for_rest_url(hosts.logs[-1], api)
    health = httpx.get(f"{url}/healthz", timeout=10)
    assert health.status_code == 200, health.text
    assert "slots" not in hosts.logs[-1].read_text()  # no worker pool started


def wait_for_rest_url(log: Path, proc: subprocess.Popen[str]) -> str:
    """The REST address that a serving process prints once its API listens."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(r"api: REST (http://\S+?)(,|\s)", log.read_text())
        if match:
            return match.group(1)
        assert proc.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(f"no API address in {log}: {log.read_text()}")


def test_worker_processes_share_the_queue_and_wake_on_notify(
    hosts: Hosts, tmp_path: Path, fresh_database: str
) -> None:
    assert hosts.run("db", "upgrade").returncode == 0
    register_nap(hosts, tmp_path)
    for _ in range(2):
        hosts.serve("worker")
    hosts.serve("scheduler")
    # Each serving process listens on the wake-up channel.
    assert wait_for(lambda: listeners(fresh_database) == 3), listeners(fresh_database)

    engine = hosts.engine()
    try:
        ids = [
            engine.dispatcher.submit(
                SubmitRequest("nap", {"sleep": 0.4}, tenant=f"t{n % 2}")
            ).task.id
            for n in range(12)
        ]
        assert wait_for(lambda: all(engine.store.get_task(t).terminal for t in ids))
        workers = set()
        for task_id in ids:
            assert engine.store.get_task(task_id).state == "succeeded"
            workers |= {a.worker for a in engine.store.attempts(task_id)}
        assert len(workers) == 2, workers  # both processes took work

        # Idle workers look at the queue every 5 s on their own; a submit's
        # NOTIFY wakes them at once.
        time.sleep(1.0)
        woken = engine.dispatcher.submit(SubmitRequest("nap", {"sleep": 0})).task
        assert wait_for(lambda: engine.store.get_task(woken.id).terminal)
        started = engine.store.attempts(woken.id)[0].started_at
        assert started - woken.created_at < 3.0, started - woken.created_at
    finally:
        engine.close()


def test_a_worker_paused_past_its_lease_cannot_commit_and_its_task_runs_once_more(
    hosts: Hosts, tmp_path: Path
) -> None:
    assert hosts.run("db", "upgrade").returncode == 0
    register_nap(hosts, tmp_path)
    paused = hosts.serve("worker")
    engine = hosts.engine()
    try:
        task = engine.dispatcher.submit(SubmitRequest("nap", {"sleep": 2.0})).task
        assert wait_for(lambda: engine.store.get_task(task.id).state == "running")
        os.kill(paused.pid, signal.SIGSTOP)
        hosts.serve("worker")  # its rescuer finds the lease expired
        assert wait_for(lambda: engine.store.get_task(task.id).attempts == 2)
        time.sleep(2.5)  # the first attempt's process ends meanwhile
        os.kill(paused.pid, signal.SIGCONT)
        assert wait_for(lambda: engine.store.get_task(task.id).terminal)
        assert wait_for(lambda: "action=write_refused" in hosts.log_text(0), 30), (
            hosts.log_text(0)
        )

        final = engine.store.get_task(task.id)
        first, second = engine.store.attempts(task.id)
        # The rescue superseded epoch 1; the new lease's epoch is later still.
        assert final.state == "succeeded"
        assert (first.outcome, first.epoch) == ("lost", 1)
        assert second.outcome == "succeeded"
        assert second.epoch == final.lease_epoch > first.epoch
        ends = [
            e.data["state"]
            for e in engine.store.events(task.id)
            if e.kind == "state" and e.data["state"] == "succeeded"
        ]
        assert ends == ["succeeded"]
    finally:
        engine.close()


def test_watch_json_from_another_process_follows_the_task_through_redis(
    hosts: Hosts, tmp_path: Path, redis_url: str
) -> None:
    prefix = f"kos-see-test-{uuid.uuid4().hex[:10]}"
    hosts.env.update(KOS_SEE_EVENTS__URL=redis_url, KOS_SEE_EVENTS__PREFIX=prefix)
    assert hosts.run("db", "upgrade").returncode == 0
    register_nap(hosts, tmp_path)
    hosts.serve("worker")
    try:
        submitted = hosts.run("submit", "nap", "--input", '{"sleep": 1.0}', "--json")
        assert submitted.returncode == 0, submitted.stderr
        task_id = json.loads(submitted.stdout)["id"]
        watched = hosts.run("watch", "--json", task_id)
        assert watched.returncode == 0, watched.stderr
        lines = [json.loads(line) for line in watched.stdout.splitlines()]
        states = [e["state"] for e in lines if e["kind"] == "state"]
        assert states == ["received", "queued", "leased", "running", "succeeded"]
        ids = [e["id"] for e in lines]
        assert ids == sorted(set(ids))  # in order, each once

        import redis

        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            name = f"{prefix}:task:{task_id}"
            assert wait_for(lambda: client.xlen(name) == len(lines), 30)
        finally:
            hosts.stop()  # its relay copies once more on the way out
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)
            client.close()
    finally:
        hosts.stop()
