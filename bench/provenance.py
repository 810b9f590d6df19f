"""What provenance costs per attempt: building the in-toto statement and
signing its DSSE envelope once (Ed25519), measured in a loop without any
process or store around it.

    .venv/bin/python bench/provenance.py [--attempts 5000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import common

from kos_see.config import EngineConfig
from kos_see.dependencies.prefetch import Fetched, Output, Provisioner
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=5000)
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
    print(f"machine: {common.machine()}")


if __name__ == "__main__":
    main()
