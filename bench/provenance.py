"""What provenance costs per attempt.

First the statement and its one Ed25519 signature alone, in a loop. Then the
whole engine: no-op tasks end to end with provenance on and off, in
alternating rounds, reporting the engine process's CPU time per task (all its
threads; attempts and the fork server are other processes), which the load
of other processes on the machine disturbs far less than wall time.

    .venv/bin/python bench/provenance.py [--attempts 5000] [--tasks 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import common

from kos_see.config import EngineConfig, validate_config
from kos_see.dependencies.prefetch import Fetched, Output, Provisioner
from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.home import Home
from kos_see.models import AttemptFinished, Lease, ServiceRecord, TaskRecord
from kos_see.provenance.recorder import AttemptRecord, Recorder
from kos_see.registry.manifest import Manifest
from kos_see.security.keys import generate
from kos_see.states import TaskState


def _lease() -> Lease:
    now = time.time()
    task = TaskRecord(
        **{
            **{f: None for f in TaskRecord.__dataclass_fields__},
            "id": "01bench",
            "service": "noop",
            "version": "1",
            "digest": "sha256:" + "a" * 64,
            "tenant": "default",
            "principal": "local",
            "input": "{}",
            "input_digest": "sha256:" + "b" * 64,
            "state": TaskState.RUNNING,
        }
    )
    return Lease(task=task, epoch=1, attempt=1, owner="bench", expires_at=now + 30)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def engine_cpu_per_task(tasks: int, provenance: bool) -> tuple[float, float]:
    """Engine CPU microseconds per no-op task, and tasks per second."""
    root = Path(tempfile.mkdtemp(prefix="kos-see-bench-"))
    home = Home(root)
    home.init()
    config = validate_config(
        {
            "execution": {"max_concurrent_tasks": 2},
            "logging": {"level": "warning"},
            "provenance": {"enabled": provenance},
        }
    )
    engine = Engine.open(home, config)
    try:
        engine.registry.add(common.SERVICES / "noop")
        engine.serve()
        engine.wait(engine.dispatcher.submit(SubmitRequest("noop", {})).task.id, 60)
        cpu, wall = _cpu(), time.perf_counter()
        ids = [
            engine.dispatcher.submit(SubmitRequest("noop", {})).task.id
            for _ in range(tasks)
        ]
        for task_id in ids:
            engine.wait(task_id, 600)
        cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    finally:
        engine.close()
        shutil.rmtree(root, ignore_errors=True)
    return cpu / tasks * 1e6, tasks / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=5000)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    config = EngineConfig()
    provisioner = Provisioner(
        config.dependencies, folder / "p", str(folder / "v"), folder / "x.db"
    )
    recorder = Recorder(provisioner, generate(), "local_python", "isolated")
    service = ServiceRecord("noop", "1", "sha256:" + "a" * 64, str(folder), {}, 0.0)
    manifest = Manifest(name="noop", version="1", entrypoint="main.py")
    lease = _lease()
    finished = AttemptFinished(
        "01bench", 1, 1, time.time(), "succeeded", TaskState.SUCCEEDED, result="{}"
    )
    for with_deps in (False, True):
        started = time.perf_counter()
        for _ in range(args.attempts):
            record = AttemptRecord(recorder, lease, service, manifest, "bench")
            if with_deps:
                record.fetched = [
                    Fetched(
                        "prompt",
                        "prompt:p@1",
                        "p.txt",
                        "sha256:" + "c" * 64,
                        0.001,
                        "sha256:" + "d" * 64,
                    )
                ] * 3
                record.outputs = [Output("out/a", "sha256:" + "e" * 64, 10)] * 2
            record.seal(finished)
        per = (time.perf_counter() - started) / args.attempts * 1e6
        label = "3 dependencies, 2 outputs" if with_deps else "no dependencies"
        print(
            f"provenance per attempt ({label}): {per:.0f} us (statement + 1 signature)"
        )
    figures: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for enabled in (False, True):
            figures[enabled].append(engine_cpu_per_task(args.tasks, enabled))
    for enabled in (False, True):
        cpu = min(f[0] for f in figures[enabled])
        rate = max(f[1] for f in figures[enabled])
        print(
            f"engine CPU per no-op task, provenance {'on' if enabled else 'off'}: "
            f"{cpu:.0f} us (best of {args.rounds} rounds of {args.tasks}; "
            f"best {rate:.0f} tasks/s)"
        )
    print(f"machine: {common.machine()}")


if __name__ == "__main__":
    main()
