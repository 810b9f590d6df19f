"""API figures on the embedded default (SQLite, one engine process with its
REST and gRPC servers on loopback).

Prints: REST submit throughput in requests per second (signed envelopes
through the Python client; sequential on one connection, then from several
client threads), with no worker pool running so that intake alone is
measured; and the latency from a task's state change (the time the engine
recorded it) to its arrival at an SSE watcher and at a gRPC Watch, p50 and
p99, over no-op tasks run one after another on a serving engine.

    .venv/bin/python bench/api.py [--submits 1000] [--threads 4] [--tasks 100]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common
import grpc

from kos_see.api.grpc import engine_pb2, engine_pb2_grpc
from kos_see.api.server import ApiServer
from kos_see.client import Client
from kos_see.config import validate_config
from kos_see.engine import Engine
from kos_see.home import Home
from kos_see.logs import configure
from kos_see.security.keys import generate
from kos_see.security.principals import PrincipalStore


def open_api(serve: bool) -> tuple[Engine, ApiServer, object]:
    root = Path(tempfile.mkdtemp(prefix="kos-see-bench-api-"))
    home = Home(root)
    home.init()
    config = validate_config(
        {
            "execution": {"max_concurrent_tasks": 2},
            "logging": {"level": "warning"},
            "api": {"port": 0, "grpc_port": 0},
            "security": {"replay_window": "1h"},
        }
    )
    engine = Engine.open(home, config)
    for folder in sorted(common.SERVICES.iterdir()):
        engine.registry.add(folder)
    key = generate()
    PrincipalStore(engine.store).add("bench", "bench", "submitter", key.public)
    if serve:
        engine.serve()
    server = ApiServer(engine)
    server.start()
    return engine, server, key


def close(engine: Engine, server: ApiServer) -> None:
    server.stop()
    engine.close()
    shutil.rmtree(engine.home.root, ignore_errors=True)


def submit_throughput(submits: int, threads: int) -> tuple[float, float]:
    engine, server, key = open_api(serve=False)
    url = server.addresses.rest
    try:
        with Client(url, "bench", key) as client:
            client.submit("noop", {})  # warm up
            start = time.perf_counter()
            for _ in range(submits):
                client.submit("noop", {})
            sequential = submits / (time.perf_counter() - start)

        clients = [Client(url, "bench", key) for _ in range(threads)]
        per = submits // threads

        def run(c: Client) -> None:
            for _ in range(per):
                c.submit("noop", {})

        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, clients))
        parallel = per * threads / (time.perf_counter() - start)
        for c in clients:
            c.close()
    finally:
        close(engine, server)
    return sequential, parallel


def watch_latency(tasks: int) -> tuple[list[float], list[float]]:
    engine, server, key = open_api(serve=True)
    sse: list[float] = []
    rpc: list[float] = []
    try:
        with (
            Client(server.addresses.rest, "bench", key) as client,
            grpc.insecure_channel(server.addresses.grpc) as channel,
        ):
            stub = engine_pb2_grpc.EngineStub(channel)
            client.wait(client.submit("noop", {})["task"]["id"])  # warm up
            for _ in range(tasks):
                task_id = client.submit("noop", {})["task"]["id"]
                token = (("authorization", f"Bearer {client.token()}"),)
                watcher = threading.Thread(
                    target=_grpc_watch, args=(stub, task_id, token, rpc)
                )
                watcher.start()
                for event in client.events(task_id):
                    if event["kind"] == "state":
                        sse.append(time.time() - event["at"])
                watcher.join()
    finally:
        close(engine, server)
    return sse, rpc


def _grpc_watch(stub, task_id: str, token, out: list[float]) -> None:
    for event in stub.Watch(engine_pb2.WatchRequest(task_id=task_id), metadata=token):
        if event.kind == "state":
            out.append(time.time() - json.loads(event.data_json)["at"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submits", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=100)
    args = parser.parse_args()
    configure("warning", "text")
    print(f"machine: {common.machine()}")
    sequential, parallel = submit_throughput(args.submits, args.threads)
    print(f"REST submit, 1 client:  {sequential:8.0f} requests/s ({args.submits})")
    print(f"REST submit, {args.threads} clients: {parallel:8.0f} requests/s")
    sse, rpc = watch_latency(args.tasks)
    for name, values in (("SSE", sse), ("gRPC Watch", rpc)):
        print(
            f"state change -> {name:<10} "
            f"p50 {common.percentile(values, 50) * 1000:6.1f}"
            f" ms  p99 {common.percentile(values, 99) * 1000:6.1f} ms"
            f"  ({len(values)} state events)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
