"""Workers on separate network hosts, and one cut off mid-run.

Each worker runs in a network namespace of its own (``ip netns``), joined to
this host by a veth pair, and reaches PostgreSQL and Redis over its own
address (10.77.N.1, forwarded here to the servers on the loopback). While
tasks run, one namespace's link goes down for longer than a lease, then comes
back; the run then drains and the fault harness checks the whole history
(``fault_harness.check``): nothing lost, nothing committed twice, no result
from a superseded epoch.

Needs root and iproute2. ``tests/test_netns.py`` runs it in CI; by hand:

    sudo .venv/bin/python tests/netns_partition.py [--seed 5] [--cut 8]

Everything it creates (namespaces, veth pairs, the database, Redis keys) is
removed at the end, also after a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import fault_harness as fh

PG_PORT, REDIS_PORT = 5432, 6379
FORWARD_PG, FORWARD_REDIS = 15432, 16379


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Namespace:
    """A network namespace with a veth link to this host: 10.77.N.2 inside,
    10.77.N.1 here."""

    def __init__(self, tag: str, number: int) -> None:
        self.name = f"kss-{tag}-{number}"
        self.host_if = f"ksh{tag}{number}"[:15]
        self.inner_if = f"ksn{tag}{number}"[:15]
        self.host_addr = f"10.77.{number}.1"
        self.inner_addr = f"10.77.{number}.2"

    def create(self) -> None:
        ip("netns", "add", self.name)
        ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.inner_if)
        ip("link", "set", self.inner_if, "netns", self.name)
        ip("addr", "add", f"{self.host_addr}/24", "dev", self.host_if)
        ip("link", "set", self.host_if, "up")
        inside = ("netns", "exec", self.name, "ip")
        ip(*inside, "addr", "add", f"{self.inner_addr}/24", "dev", self.inner_if)
        ip(*inside, "link", "set", self.inner_if, "up")
        ip(*inside, "link", "set", "lo", "up")

    def cut(self) -> None:
        ip("link", "set", self.host_if, "down")

    def mend(self) -> None:
        ip("link", "set", self.host_if, "up")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("netns", "del", self.name)
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("link", "del", self.host_if)


class Forwarder:
    """TCP forwarding from each namespace's host address to the servers on
    the loopback, in a thread of this process."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.servers: list[asyncio.Server] = []
        self.writers: list[asyncio.StreamWriter] = []

    def start(self) -> None:
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("forwarder did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        for address in self.addresses:
            for listen, target in ((FORWARD_PG, PG_PORT), (FORWARD_REDIS, REDIS_PORT)):
                self.servers.append(
                    self.loop.run_until_complete(
                        asyncio.start_server(self._pipe(target), address, listen)
                    )
                )
        self.ready.set()
        self.loop.run_forever()

    def _pipe(self, port: int):  # type: ignore[no-untyped-def]
        async def handle(reader, writer):  # type: ignore[no-untyped-def]
            self.writers.append(writer)
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                writer.close()
                return
            self.writers.append(up_writer)
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))

        return handle

    def stop(self) -> None:
        done = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        done.result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()

    async def _shutdown(self) -> None:
        for server in self.servers:
            server.close()
        for writer in self.writers:
            writer.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


async def _copy(reader, writer) -> None:  # type: ignore[no-untyped-def]
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class NetnsCluster(fh.Cluster):
    """The harness's cluster with each worker in its namespace."""

    def __init__(self, root, plan, store_url, events_url, spaces) -> None:  # type: ignore[no-untyped-def]
        super().__init__(root, plan, store_url, events_url)
        self.spaces = spaces
        self.store_url = store_url
        self.events_url = events_url

    def worker_env(self, number: int) -> dict[str, str]:
        host = self.spaces[number].host_addr
        db = self.store_url.rsplit("/", 1)[1]
        return {
            **self.env,
            "KOS_SEE_STORE__URL": f"postgresql://postgres@{host}:{FORWARD_PG}/{db}",
            "KOS_SEE_EVENTS__URL": f"redis://{host}:{FORWARD_REDIS}/0"
            if self.events_url
            else "",
        }

    def start(self) -> None:
        for number, space in enumerate(self.spaces):
            log = open(self.logs / f"worker{number}.log", "wb")  # noqa: SIM115
            self._log_files.append(log)
            self.workers[number] = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    space.name,
                    *fh.KOS_SEE,
                    "serve",
                    "--role",
                    "worker",
                ],
                env=self.worker_env(number),
                stdout=log,
                stderr=subprocess.STDOUT,
            )


def holds_work(store_url: str, pid: int, within: float) -> bool:
    import psycopg

    deadline = time.monotonic() + within
    with psycopg.connect(store_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            found = conn.execute(
                "SELECT count(*) FROM tasks WHERE state = 'running' "
                "AND lease_owner LIKE %s",
                (f"%:{pid}:%",),
            ).fetchone()[0]
            if found:
                return True
            time.sleep(0.02)
    return False


def run(seed: int, cut_seconds: float, tasks: int = 30) -> fh.History:
    rng = random.Random(seed)
    tag = f"{os.getpid() % 1000}"
    spaces = [Namespace(tag, n) for n in (1, 2)]
    plan = fh.RunPlan(
        seed=seed,
        tasks=tasks,
        workers=len(spaces),
        kills=0,
        stops=0,
        restart_postgres=False,
        restart_redis=False,
        submit_seconds=tasks / 5,
    )
    history = fh.History()
    name, store_url = fh.create_database()
    root = Path(tempfile.mkdtemp(prefix="kos-see-netns-"))
    forwarder = None
    try:
        for space in spaces:
            space.create()
        forwarder = Forwarder([s.host_addr for s in spaces])
        forwarder.start()
        cluster = NetnsCluster(root, plan, store_url, fh.REDIS_URL, spaces)
        fh._upgrade(cluster)
        fh.register_service(cluster)
        cluster.start()
        number = rng.randrange(len(spaces))
        victim = spaces[number]

        def partition() -> None:
            time.sleep(rng.uniform(1.0, 2.0))
            # Cut it while it runs something, so that the cut has work to lose.
            holds_work(store_url, cluster.workers[number].pid, within=20)
            victim.cut()
            history.faults_done.append(f"cut {victim.name}")
            time.sleep(cut_seconds)
            victim.mend()
            history.faults_done.append(f"mended {victim.name}")

        cutter = threading.Thread(target=partition, daemon=True)
        cutter.start()
        fh.submit_all(cluster, plan, history)
        cutter.join(timeout=cut_seconds + 30)
        fh.drain(cluster, plan, history)
        cluster.stop()
        history.ledger = fh.read_ledger(cluster.ledger)
        fh.check(cluster, history)
        history.counts["refused_writes"] = fh.count_in_logs(
            cluster.logs, "write_refused"
        )
    finally:
        for space in spaces:
            space.remove()
        if forwarder is not None:
            forwarder.stop()
        fh.ensure_servers_up()
        with contextlib.suppress(Exception):
            fh.drop_database(name)
        fh.drop_streams(f"kos-see-faults-{plan.seed}-{os.getpid()}")
    if history.violations:
        history.violations.append(f"logs and ledger kept in {root}")
    elif not os.environ.get("KOS_SEE_KEEP_RUN"):
        shutil.rmtree(root, ignore_errors=True)
    return history


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--cut", type=float, default=8.0, help="seconds cut off")
    parser.add_argument("--tasks", type=int, default=30)
    args = parser.parse_args()
    history = run(args.seed, args.cut, args.tasks)
    print("faults:", *history.faults_done, sep="\n  ")
    print("counts:", dict(history.counts))
    if history.violations:
        print("VIOLATIONS:", *history.violations, sep="\n  ")
        return 1
    print("history checks passed")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
