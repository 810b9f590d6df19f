"""Replay: run a task's service again, as it ran, and compare what came out.

A replay is refused, saying what changed, when the service's content digest
or any dependency's digest differs from the provenance record: dependencies
are fetched again into a scratch folder to find out, exactly as an attempt
would fetch them. Otherwise a new task runs the same service version on the
same input, and its outputs' digests are compared with the original's.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kos_see.errors import DependencyFailed, ProvenanceNotFound, ServiceChanged
from kos_see.models import TaskRecord
from kos_see.provenance.dsse import statement_of
from kos_see.registry import Registry
from kos_see.store import Store

if TYPE_CHECKING:
    from kos_see.dependencies.prefetch import Provisioner


@dataclass(frozen=True)
class Comparison:
    identical: bool
    differ: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"identical": self.identical, "differ": self.differ}


def latest_statement(store: Store, task_id: str) -> dict[str, Any]:
    records = store.provenance_records(task_id)
    if not records:
        raise ProvenanceNotFound(
            f"task {task_id} has no provenance record (it never ran, or ran with "
            "provenance.enabled = false)",
            task_id=task_id,
        )
    return statement_of(records[-1]["envelope"])


def recorded_dependencies(statement: dict[str, Any]) -> dict[str, str]:
    resolved = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    return {d["name"]: "sha256:" + d["digest"]["sha256"] for d in resolved}


def changes_since(
    statement: dict[str, Any],
    task: TaskRecord,
    registry: Registry,
    provisioner: Provisioner,
) -> list[str]:
    """What differs now from what the recorded attempt ran on; empty: nothing."""
    recorded = recorded_dependencies(statement)
    ref = f"{task.service}@{task.version}"
    try:
        service, manifest = registry.resolve(ref)
    except ServiceChanged as exc:
        return [f"service {ref}: {exc.message}"]
    changes = []
    was = recorded.pop(f"service:{ref}", None)
    if was != service.digest:
        changes.append(f"service {ref}: digest was {was}, now {service.digest}")
    scratch = Path(tempfile.mkdtemp(prefix="kos-see-replay-"))
    try:
        now = {
            f.name: f.digest
            for f in provisioner.fetch(
                manifest.dependencies, json.loads(task.input), scratch
            )
        }
    except DependencyFailed as exc:
        return [*changes, f"a dependency cannot be fetched now: {exc.message}"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for name in sorted(set(recorded) | set(now)):
        before, after = recorded.get(name), now.get(name)
        if before is None:
            changes.append(f"{name}: new since the recorded run ({after})")
        elif after is None:
            changes.append(f"{name}: no longer declared (was {before})")
        elif before != after:
            changes.append(f"{name}: digest was {before}, now {after}")
    return changes


def subjects(statement: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: "sha256:" + s["digest"]["sha256"] for s in statement["subject"]}


def compare(original: dict[str, Any], replayed: dict[str, Any]) -> Comparison:
    """Compare two statements' subjects: each output file and the result."""
    before, after = subjects(original), subjects(replayed)
    differ = [
        {"name": name, "was": before.get(name), "now": after.get(name)}
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    ]
    return Comparison(not differ, differ)
