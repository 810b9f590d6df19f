"""What the queue holds now and why a tenant's ready work waits.

``Store.queue_stats`` reads the figures in one read transaction; this module
holds them (:class:`QueueStats`) and decides the reasons from the same rules
that a lease applies (``queue.fair``): a tenant whose CPU quota for the window
is used up, one at its running limit, and one whose head tasks all belong to
services at their concurrency limits are passed over by every lease.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from kos_see.queue.fair import LANES, Rules

# Where queued tasks wait: the two run lanes, and deferred until due.
QUEUE_LANES = (*LANES, "deferred")

CPU_QUOTA = "cpu_quota"
MAX_RUNNING = "max_running"
SERVICE_LIMITS = "service_limits"


@dataclass(frozen=True)
class Depth:
    """Queued tasks of one tenant in one lane."""

    lane: str
    tenant: str
    depth: int
    # Seconds the longest-waiting of them has been ready: since its not-before
    # time (submit, the end of a retry's backoff, an operator's requeue). In
    # the deferred lane: how overdue the most overdue task is, 0 if none is due.
    oldest_age: float


@dataclass(frozen=True)
class TenantUse:
    tenant: str
    queued: int
    running: int  # leased or running
    max_running: int | None
    cpu_used: float  # CPU seconds of attempts that ended in the quota window
    cpu_quota: float | None


@dataclass(frozen=True)
class Waiting:
    """Why a lease passes over a tenant that has ready work."""

    tenant: str
    reason: str  # CPU_QUOTA, MAX_RUNNING or SERVICE_LIMITS
    message: str
    services: tuple[str, ...] = ()  # with SERVICE_LIMITS: the services at limit


@dataclass(frozen=True)
class QueueStats:
    at: float
    cpu_window: float
    depths: list[Depth]  # per lane and tenant, lanes in QUEUE_LANES order
    tenants: list[TenantUse]  # by name
    running_by_service: dict[str, int]
    service_limits: dict[str, int]
    # Tenants with ready work that no lease would take now, by name.
    waiting: list[Waiting]
    # Tenants with ready work (realtime or batch, or deferred and due).
    ready_tenants: list[str] = field(default_factory=list)

    def depth(self, lane: str | None = None, tenant: str | None = None) -> int:
        return sum(
            d.depth
            for d in self.depths
            if (lane is None or d.lane == lane)
            and (tenant is None or d.tenant == tenant)
        )

    def oldest_age(self, lane: str | None = None, tenant: str | None = None) -> float:
        return max(
            (
                d.oldest_age
                for d in self.depths
                if (lane is None or d.lane == lane)
                and (tenant is None or d.tenant == tenant)
            ),
            default=0.0,
        )

    def why(self, tenant: str) -> Waiting | None:
        return next((w for w in self.waiting if w.tenant == tenant), None)

    def to_dict(self) -> dict[str, Any]:
        lanes: dict[str, Any] = {}
        for lane in QUEUE_LANES:
            rows = [d for d in self.depths if d.lane == lane]
            lanes[lane] = {
                "depth": sum(d.depth for d in rows),
                "oldest_age": max((d.oldest_age for d in rows), default=0.0),
                "tenants": {
                    d.tenant: {"depth": d.depth, "oldest_age": d.oldest_age}
                    for d in rows
                },
            }
        services = sorted(set(self.running_by_service) | set(self.service_limits))
        return {
            "at": self.at,
            "cpu_window": self.cpu_window,
            "lanes": lanes,
            "tenants": {
                t.tenant: {k: v for k, v in asdict(t).items() if k != "tenant"}
                for t in self.tenants
            },
            "services": {
                s: {
                    "running": self.running_by_service.get(s, 0),
                    "limit": self.service_limits.get(s),
                }
                for s in services
            },
            "ready_tenants": list(self.ready_tenants),
            "waiting": {
                w.tenant: {
                    "reason": w.reason,
                    "message": w.message,
                    "services": list(w.services),
                }
                for w in self.waiting
            },
        }


def waiting_reasons(
    ready_services: Mapping[str, Mapping[str, set[str]]],
    running_by_tenant: Mapping[str, int],
    running_by_service: Mapping[str, int],
    cpu_used: Mapping[str, float],
    rules: Rules,
) -> list[Waiting]:
    """Why each tenant with ready work is passed over, checked in the order a
    lease checks (``queue.fair``): CPU quota, running limit, service limits.

    ``ready_services``: tenant -> lane -> the services of its head tasks there.
    """
    found: list[Waiting] = []
    for tenant in sorted(ready_services):
        lanes = {lane: s for lane, s in ready_services[tenant].items() if s}
        if not lanes:
            continue
        quota = rules.cpu_quota(tenant) if rules.has_cpu_quotas else None
        used = cpu_used.get(tenant, 0.0)
        limit = rules.max_running(tenant)
        running = running_by_tenant.get(tenant, 0)
        if quota is not None and used >= quota:
            found.append(
                Waiting(
                    tenant,
                    CPU_QUOTA,
                    f"CPU quota used up: {used:.2f} s of {quota:g} s "
                    f"in the last {rules.cpu_window:g} s",
                )
            )
        elif limit is not None and running >= limit:
            found.append(
                Waiting(tenant, MAX_RUNNING, f"running limit of {limit} reached")
            )
        else:
            blocked = set()
            for services in lanes.values():
                full = {s for s in services if _at_limit(s, running_by_service, rules)}
                if full != services:
                    break
                blocked |= full
            else:
                names = tuple(sorted(blocked))
                found.append(
                    Waiting(
                        tenant,
                        SERVICE_LIMITS,
                        "its services are at their concurrency limits: "
                        + ", ".join(
                            f"{s} ({running_by_service.get(s, 0)}/"
                            f"{rules.service_limits[s]})"
                            for s in names
                        ),
                        names,
                    )
                )
    return found


def _at_limit(service: str, running: Mapping[str, int], rules: Rules) -> bool:
    limit = rules.service_limits.get(service)
    return limit is not None and running.get(service, 0) >= limit
