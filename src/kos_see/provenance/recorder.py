"""What the worker does around each attempt for dependencies and provenance.

The ``Recorder`` is the engine's (its vault, prompt library, vector store and
signing key); ``begin`` gives one ``AttemptRecord`` per attempt, whose hooks
the runner calls: ``prepare`` after the working directory is made and before
the process starts, ``collect`` after the process ended and before the
directory goes. ``seal`` then signs the statement once and attaches it to
the attempt's finishing write, so that it is stored in the same batch.

A service that declares no dependencies gets no ``prepare`` hook at all, and
with provenance off no hooks either: its attempts pay nothing for this.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kos_see.errors import DependencyFailed
from kos_see.models import AttemptFinished, Lease, ProvenanceWrite, ServiceRecord
from kos_see.provenance.dsse import sign_envelope
from kos_see.provenance.statement import (
    AttemptFacts,
    build_statement,
    builder_version,
)
from kos_see.registry.manifest import Manifest
from kos_see.runners.base import AttemptOutcome
from kos_see.security.keys import SigningKey

if TYPE_CHECKING:
    from kos_see.dependencies.prefetch import Fetched, Output, Provisioner

log = logging.getLogger(__name__)

# Outcomes whose process ran to an end of its own (or was timed out): their
# out/ files are the attempt's outputs. A released or lost attempt made none.
RAN = frozenset({"succeeded", "failed", "timed_out"})


def engine_version() -> str:
    try:
        return version("kos-see")
    except PackageNotFoundError:
        return "unknown"


class Recorder:
    def __init__(
        self,
        provisioner: Provisioner,
        key: SigningKey | None,
        runner: str,
        sandbox: str,
    ) -> None:
        self.provisioner = provisioner
        self.key = key  # None: dependencies without provenance
        self.runner = runner
        self.sandbox = sandbox
        self.builder = builder_version(engine_version())

    def begin(
        self, lease: Lease, service: ServiceRecord, manifest: Manifest, worker: str
    ) -> AttemptRecord:
        return AttemptRecord(self, lease, service, manifest, worker)


class AttemptRecord:
    def __init__(
        self,
        recorder: Recorder,
        lease: Lease,
        service: ServiceRecord,
        manifest: Manifest,
        worker: str,
    ) -> None:
        self.recorder = recorder
        self.lease = lease
        self.service = service
        self.manifest = manifest
        self.worker = worker
        self.started_at = time.time()
        self.fetched: list[Fetched] = []
        self.outputs: list[Output] = []

    @property
    def prepare_hook(self):  # type: ignore[no-untyped-def]
        return self.prepare if self.manifest.dependencies else None

    @property
    def collect_hook(self):  # type: ignore[no-untyped-def]
        return self.collect if self.recorder.key is not None else None

    def prepare(self, workdir: Path) -> AttemptOutcome | None:
        task = self.lease.task
        try:
            self.fetched = self.recorder.provisioner.fetch(
                self.manifest.dependencies, json.loads(task.input), workdir
            )
        except DependencyFailed as exc:
            log.warning(
                "dependency fetch failed",
                extra={
                    "action": "dependency_failed",
                    "task_id": task.id,
                    "attempt": self.lease.attempt,
                    "dependency": exc.details.get("dependency"),
                    "error": exc.message,
                },
            )
            return AttemptOutcome(
                status="failed",
                retryable=True,
                error_kind="dependency",
                error=f"a dependency could not be fetched: {exc.message}",
            )
        for fetched in self.fetched:
            log.info(
                "dependency fetched",
                extra={
                    "action": "dependency_fetched",
                    "task_id": task.id,
                    "attempt": self.lease.attempt,
                    "service": task.service,
                    "kind": fetched.kind,
                    "dependency": fetched.name,
                    "digest": fetched.digest,
                    "fetch_seconds": fetched.fetch_seconds,
                },
            )
        return None

    def collect(self, workdir: Path, outcome: AttemptOutcome) -> None:
        if outcome.status in RAN:
            self.outputs = self.recorder.provisioner.collect(workdir)

    def seal(self, finished: AttemptFinished) -> AttemptFinished:
        """``finished`` with its provenance: one signature per attempt."""
        key = self.recorder.key
        dependencies = json.dumps([f.to_dict() for f in self.fetched])
        outputs = json.dumps(
            {o.path: {"digest": o.digest, "size": o.size} for o in self.outputs},
            sort_keys=True,
        )
        if key is None and not self.fetched:
            return finished
        if key is None:
            record = ProvenanceWrite(dependencies, outputs, "", "")
            return dataclasses.replace(finished, provenance=record)
        payload = self._payload(finished)
        envelope = sign_envelope(payload, key)
        record = ProvenanceWrite(
            dependencies,
            outputs,
            "sha256:" + hashlib.sha256(payload).hexdigest(),
            json.dumps(envelope, sort_keys=True),
        )
        return dataclasses.replace(finished, provenance=record)

    def _payload(self, finished: AttemptFinished) -> bytes:
        task = self.lease.task
        result_digest = None
        if finished.result is not None:
            result_digest = (
                "sha256:" + hashlib.sha256(finished.result.encode()).hexdigest()
            )
        facts = AttemptFacts(
            task_id=task.id,
            attempt=self.lease.attempt,
            service=f"{task.service}@{task.version}",
            service_digest=self.service.digest,
            input_digest=task.input_digest,
            tenant=task.tenant,
            runner=task.runner or self.manifest.runner or self.recorder.runner,
            sandbox=self.recorder.sandbox,
            limits=self.manifest.limits.model_dump(exclude_none=True),
            worker=self.worker,
            started_at=self.started_at,
            finished_at=finished.at,
            outcome=finished.outcome,
            result_digest=result_digest,
            dependencies=self.fetched,
            outputs=self.outputs,
        )
        statement: dict[str, Any] = build_statement(facts, self.recorder.builder)
        return json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
