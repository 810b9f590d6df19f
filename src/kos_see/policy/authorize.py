"""What the policy gate is asked for each action the dispatcher takes.

A submit needs ``submit service:NAME``, ``submit class:CLASS`` and, for each
secret its manifest declares, ``submit secret:NAME``; its priority, timeout
and the manifest's limits must stay within the ceilings (``p2`` lines) of
the caller's roles; a ceiling may force the sandbox runner. Every decision
is kept, allowed or not, for the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kos_see.errors import PermissionDenied
from kos_see.policy.gate import Decision, PolicyGate, denied
from kos_see.registry.manifest import Manifest
from kos_see.security.verify import Caller

# Ceiling name, what it bounds, and how to read that from a request.
LIMIT_CHECKS = (
    ("memory_mb_max", "memory_mb", "the manifest's limits.memory_mb"),
    ("cpu_seconds_max", "cpu_seconds", "the manifest's limits.cpu_seconds"),
    ("processes_max", "processes", "the manifest's limits.processes"),
)


@dataclass
class Grant:
    decisions: list[Decision] = field(default_factory=list)
    ceiling_rules: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    runner: str | None = None  # forced by policy

    def audit(self) -> dict[str, Any]:
        return {
            "decisions": [
                {
                    "object": d.object,
                    "action": d.action,
                    "allowed": d.allowed,
                    "rule": d.rule,
                }
                for d in self.decisions
            ],
            "ceilings": self.ceiling_rules,
        }


def authorize_submit(
    gate: PolicyGate,
    caller: Caller,
    tenant: str,
    service: str,
    manifest: Manifest,
    queue_class: str,
    priority: int,
    timeout: float,
    grant: Grant,
) -> Grant:
    """Fill ``grant`` with the decisions; PermissionDenied at the first refusal
    (``grant`` then holds the decisions up to it, for the audit log)."""
    objects = [f"service:{service}", f"class:{queue_class}"]
    objects += [f"secret:{name}" for name in manifest.secrets]
    for obj in objects:
        require(gate, caller, tenant, "submit", obj, grant)
    grant.secrets = list(manifest.secrets)
    ceilings = gate.ceilings(caller, tenant)
    grant.ceiling_rules = ceilings.rules
    grant.runner = ceilings.runner
    values = ceilings.values
    _bound(caller, tenant, "priority_min", values, priority, "the priority", low=True)
    _bound(caller, tenant, "priority_max", values, priority, "the priority")
    _bound(caller, tenant, "timeout_max", values, timeout, "the task's timeout")
    limits = manifest.limits
    for ceiling, attribute, what in LIMIT_CHECKS:
        if ceiling in values:
            asked = getattr(limits, attribute)
            _bound(caller, tenant, ceiling, values, asked, what)
    return grant


def require(
    gate: PolicyGate, caller: Caller, tenant: str, action: str, obj: str, grant: Grant
) -> Decision:
    decision = gate.decide(caller, tenant, action, obj)
    grant.decisions.append(decision)
    if not decision.allowed:
        raise denied(decision)
    return decision


def _bound(
    caller: Caller,
    tenant: str,
    ceiling: str,
    values: dict[str, float],
    asked: float | None,
    what: str,
    low: bool = False,
) -> None:
    limit = values.get(ceiling)
    if limit is None:
        return
    if asked is None:
        # No limit asked for means no limit at all: above any ceiling.
        problem = f"{what} is not set (unlimited)"
    elif (asked < limit) if low else (asked > limit):
        problem = f"{what} {asked:g} is {'below' if low else 'above'} it"
    else:
        return
    raise PermissionDenied(
        f"principal {caller.principal!r} (role {caller.role or 'none'}) has a "
        f"{ceiling} of {limit:g} in tenant {tenant!r}, and {problem}",
        permission=ceiling,
        tenant=tenant,
        principal=caller.principal,
    )
