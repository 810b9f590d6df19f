"""Which ready tasks a worker leases next: the queue manager's ordering.

The order is decided in four levels, each written down with its bound in
``docs/queue.md``:

1. Lane (queue class). ``realtime`` goes before ``batch``, except that while
   both have work, batch earns ``batch_min_share`` of a dispatch per dispatch
   and takes one whenever it has earned a whole one.
2. Tenant, inside a lane: start-time fair queueing. Each tenant has a finish
   tag; the lane has a virtual time V. The tenant with the smallest start tag
   ``max(F, V)`` goes next; then ``V = start`` and ``F = start + 1/weight``.
   A tenant that was idle re-enters at V, so it neither banks credit for the
   time it was idle nor waits behind the backlog of a tenant that floods.
3. Priority with aging, inside a tenant: tasks go by ``rank_at``, which is
   ``created_at - priority * aging`` (set at submit).
4. Age: ties in rank go by creation order, then id.

Tenants over a quota and tasks of services at their concurrency limit are
passed over; everything else that is ready is taken while slots are free,
so no slot idles while an allowed task waits.

The planner is a pure function of a snapshot of the queue, so the store can
read the snapshot and write the plan in one transaction, and the tests can
check its bounds on arbitrary inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

LANES = ("realtime", "batch")


@dataclass(frozen=True)
class Candidate:
    """A ready task at the head of its tenant's queue in one lane."""

    task_id: str
    tenant: str
    service: str
    rank_at: float


@dataclass
class Snapshot:
    """What the planner needs to know, read in the leasing transaction."""

    # lane -> tenant -> that tenant's best ready tasks, in rank order
    heads: dict[str, dict[str, list[Candidate]]]
    finish_tags: dict[tuple[str, str], float] = field(default_factory=dict)
    virtual_time: dict[str, float] = field(default_factory=dict)
    batch_credit: float = 0.0
    running_by_tenant: dict[str, int] = field(default_factory=dict)
    running_by_service: dict[str, int] = field(default_factory=dict)
    tenant_limits: dict[str, int] = field(default_factory=dict)  # max running
    service_limits: dict[str, int] = field(default_factory=dict)
    cpu_blocked: frozenset[str] = frozenset()  # tenants over their CPU quota
    # The stored values behind virtual_time and batch_credit, as read.
    shared_state: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    fair_share: bool = True
    batch_min_share: float = 0.2
    weights: Mapping[str, float] = field(default_factory=dict)
    default_weight: float = 1.0

    def weight(self, tenant: str) -> float:
        return self.weights.get(tenant, self.default_weight)


@dataclass
class Plan:
    chosen: list[Candidate]
    finish_tags: dict[tuple[str, str], float]
    virtual_time: dict[str, float]
    batch_credit: float
    waiting: dict[str, str]  # tenant -> why its ready work was passed over


def plan(snapshot: Snapshot, policy: Policy, slots: int) -> Plan:
    """Choose up to ``slots`` tasks to lease, best first."""
    state = _State(snapshot, policy)
    chosen: list[Candidate] = []
    while len(chosen) < slots:
        lane = state.next_lane()
        if lane is None:
            break
        tenant = state.next_tenant(lane)
        candidate = state.take(lane, tenant)
        chosen.append(candidate)
    return Plan(
        chosen=chosen,
        finish_tags=state.tags,
        virtual_time=state.vtime,
        batch_credit=state.credit,
        waiting=state.waiting,
    )


class _State:
    def __init__(self, snapshot: Snapshot, policy: Policy) -> None:
        self.policy = policy
        self.limits = snapshot
        self.heads = {
            lane: {t: list(c) for t, c in tenants.items() if c}
            for lane, tenants in snapshot.heads.items()
        }
        self.tags = dict(snapshot.finish_tags)
        self.vtime = {lane: snapshot.virtual_time.get(lane, 0.0) for lane in LANES}
        self.credit = snapshot.batch_credit
        self.by_tenant = dict(snapshot.running_by_tenant)
        self.by_service = dict(snapshot.running_by_service)
        self.waiting: dict[str, str] = {}

    def next_lane(self) -> str | None:
        ready = [lane for lane in LANES if self._eligible(lane)]
        if not ready:
            return None
        if len(ready) == 1:
            return ready[0]
        # Both lanes have allowed work: batch earns its minimum share.
        self.credit += self.policy.batch_min_share
        # The tolerance absorbs rounding: ten additions of 0.1 fall short of 1.
        if self.credit >= 1.0 - 1e-9:
            self.credit = max(0.0, self.credit - 1.0)
            return "batch"
        return "realtime"

    def next_tenant(self, lane: str) -> str:
        tenants = self._eligible(lane)
        if not self.policy.fair_share:
            return min(tenants, key=lambda t: self._head(lane, t).rank_at)
        return min(
            tenants,
            key=lambda t: (self._start_tag(lane, t), self._head(lane, t).rank_at, t),
        )

    def take(self, lane: str, tenant: str) -> Candidate:
        candidate = self._head(lane, tenant)
        self.heads[lane][tenant].remove(candidate)
        start = self._start_tag(lane, tenant)
        self.vtime[lane] = start
        self.tags[(lane, tenant)] = start + 1.0 / self.policy.weight(tenant)
        self.by_tenant[tenant] = self.by_tenant.get(tenant, 0) + 1
        self.by_service[candidate.service] = (
            self.by_service.get(candidate.service, 0) + 1
        )
        return candidate

    def _start_tag(self, lane: str, tenant: str) -> float:
        return max(self.tags.get((lane, tenant), 0.0), self.vtime[lane])

    def _eligible(self, lane: str) -> list[str]:
        return [t for t in self.heads.get(lane, {}) if self._allowed_head(lane, t)]

    def _head(self, lane: str, tenant: str) -> Candidate:
        for candidate in self.heads[lane][tenant]:
            if self._service_free(candidate.service):
                return candidate
        raise AssertionError("_head called for a tenant with no allowed task")

    def _allowed_head(self, lane: str, tenant: str) -> bool:
        if not self.heads[lane][tenant]:
            return False
        if tenant in self.limits.cpu_blocked:
            self.waiting[tenant] = "cpu quota used up for this window"
            return False
        limit = self.limits.tenant_limits.get(tenant)
        if limit is not None and self.by_tenant.get(tenant, 0) >= limit:
            self.waiting[tenant] = f"running limit of {limit} reached"
            return False
        if not any(self._service_free(c.service) for c in self.heads[lane][tenant]):
            self.waiting[tenant] = "its services are at their concurrency limits"
            return False
        return True

    def _service_free(self, service: str) -> bool:
        limit = self.limits.service_limits.get(service)
        return limit is None or self.by_service.get(service, 0) < limit


@dataclass(frozen=True)
class Rules:
    """The policy and the limits a lease applies, taken from config and manifests."""

    policy: Policy = Policy()
    tenant_max_running: Mapping[str, int | None] = field(default_factory=dict)
    default_max_running: int | None = None
    service_limits: Mapping[str, int] = field(default_factory=dict)
    tenant_cpu_seconds: Mapping[str, float | None] = field(default_factory=dict)
    default_cpu_seconds: float | None = None
    cpu_window: float = 3600.0

    def max_running(self, tenant: str) -> int | None:
        return self.tenant_max_running.get(tenant, self.default_max_running)

    def cpu_quota(self, tenant: str) -> float | None:
        return self.tenant_cpu_seconds.get(tenant, self.default_cpu_seconds)

    @property
    def has_cpu_quotas(self) -> bool:
        return self.default_cpu_seconds is not None or any(
            v is not None for v in self.tenant_cpu_seconds.values()
        )
