"""The in-toto statement (v1) with a SLSA provenance predicate (v1) for one
attempt.

Subjects are what the attempt produced: each file under ``out/`` and the
result document. The build definition names what it ran on: the service's
content digest, the input's digest and every dependency's digest. The run
details say where and how: runner, sandbox profile and limits, Python
version and platform, worker host and timings.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kos_see.dependencies.prefetch import Fetched, Output

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://kos-see.dev/attempt/v1"
RESULT_NAME = "result.json"


@dataclass(frozen=True)
class AttemptFacts:
    task_id: str
    attempt: int
    service: str  # name@version
    service_digest: str
    input_digest: str
    tenant: str
    runner: str
    sandbox: str  # the isolation profile
    limits: dict[str, Any]
    worker: str
    started_at: float
    finished_at: float
    outcome: str
    result_digest: str | None
    dependencies: list[Fetched] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)


def _digest_set(digest: str) -> dict[str, str]:
    algorithm, _, value = digest.partition(":")
    return {algorithm: value}


def _time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def builder_version(engine_version: str) -> dict[str, str]:
    """The engine's, Python's and the platform's versions; read once per
    engine, since ``platform.platform()`` alone costs tens of microseconds."""
    return {
        "kos-see": engine_version,
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": platform.platform(),
    }


def build_statement(facts: AttemptFacts, builder: dict[str, str]) -> dict[str, Any]:
    subjects = [
        {"name": o.path, "digest": _digest_set(o.digest)} for o in facts.outputs
    ]
    if facts.result_digest is not None:
        subjects.append(
            {"name": RESULT_NAME, "digest": _digest_set(facts.result_digest)}
        )
    resolved = [
        {
            "name": f"service:{facts.service}",
            "digest": _digest_set(facts.service_digest),
        }
    ]
    resolved += [
        {
            "name": dep.name,
            "digest": _digest_set(dep.digest),
            "annotations": {
                "kind": dep.kind,
                "path": dep.path,
                "source": dep.source,
                "fetch_seconds": round(dep.fetch_seconds, 6),
            },
        }
        for dep in facts.dependencies
    ]
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "service": facts.service,
                    "input": {"digest": _digest_set(facts.input_digest)},
                    "tenant": facts.tenant,
                },
                "internalParameters": {
                    "runner": facts.runner,
                    "sandbox": facts.sandbox,
                    "limits": facts.limits,
                },
                "resolvedDependencies": resolved,
            },
            "runDetails": {
                "builder": {
                    "id": f"kos-see://{facts.worker}",
                    "version": builder,
                },
                "metadata": {
                    "invocationId": f"{facts.task_id}/{facts.attempt}",
                    "startedOn": _time(facts.started_at),
                    "finishedOn": _time(facts.finished_at),
                },
                "byproducts": [
                    {"name": "outcome", "annotations": {"outcome": facts.outcome}}
                ],
            },
        },
    }
