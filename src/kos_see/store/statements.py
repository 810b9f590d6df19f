"""The statements on the engine's hot path, built once.

Building a SQLAlchemy statement costs far more than running it, so the ones
that run for every task (submit, lease, attempt writes) are built here once,
with bound parameters, and executed with parameter sets (executemany where a
batch has several rows).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import bindparam

from kos_see.store.schema import (
    attempts,
    events,
    fair_share,
    provenance,
    queue_state,
    services,
    tasks,
)

QUEUED = "queued"
HELD = ("leased", "running")

insert_task = tasks.insert()
insert_events = events.insert()
insert_attempt = attempts.insert()

latest_version = (
    sa.select(services.c.version)
    .where(services.c.name == bindparam("name"))
    .order_by(services.c.registered_at.desc())
    .limit(1)
)

task_by_id = sa.select(tasks).where(tasks.c.id == bindparam("task_id"))
task_by_key = sa.select(tasks).where(
    tasks.c.tenant == bindparam("tenant"),
    tasks.c.idempotency_key == bindparam("key"),
)

fences = sa.select(tasks.c.id, tasks.c.state, tasks.c.lease_epoch).where(
    tasks.c.id.in_(bindparam("ids", expanding=True))
)

mark_running = (
    tasks.update()
    .where(tasks.c.id == bindparam("b_id"))
    .values(state="running", updated_at=bindparam("b_at"))
)

set_progress = (
    tasks.update()
    .where(tasks.c.id == bindparam("b_id"))
    .values(
        progress_done=bindparam("b_done"),
        progress_total=bindparam("b_total"),
        progress_message=bindparam("b_message"),
    )
)

# One statement for every way an attempt ends. A NULL parameter keeps the
# column (result, not_before), and b_lane NULL means "the task's run class".
finish_task = (
    tasks.update()
    .where(tasks.c.id == bindparam("b_id"))
    .values(
        state=bindparam("b_state"),
        updated_at=bindparam("b_at"),
        lease_owner=None,
        lease_expires_at=None,
        error=bindparam("b_error"),
        error_kind=bindparam("b_error_kind"),
        result=sa.func.coalesce(bindparam("b_result", type_=sa.Text), tasks.c.result),
        finished_at=bindparam("b_finished_at", type_=sa.Float),
        not_before=sa.func.coalesce(
            bindparam("b_not_before", type_=sa.Float), tasks.c.not_before
        ),
        lane=sa.func.coalesce(bindparam("b_lane", type_=sa.String), tasks.c.run_class),
        max_attempts=tasks.c.max_attempts + bindparam("b_extra_attempts"),
    )
)

end_attempt = (
    attempts.update()
    .where(
        attempts.c.task_id == bindparam("b_id"),
        attempts.c.number == bindparam("b_number"),
    )
    .values(
        ended_at=bindparam("b_ended_at"),
        outcome=bindparam("b_outcome"),
        exit_code=bindparam("b_exit_code"),
        signal=bindparam("b_signal"),
        cpu_seconds=bindparam("b_cpu_seconds"),
        peak_rss_kb=bindparam("b_peak_rss_kb"),
        stdout=bindparam("b_stdout"),
        stderr=bindparam("b_stderr"),
        stdout_bytes=bindparam("b_stdout_bytes"),
        stderr_bytes=bindparam("b_stderr_bytes"),
        events_dropped=bindparam("b_events_dropped"),
        error=bindparam("b_error"),
    )
)

# Leasing.

promote_due = (
    tasks.update()
    .where(
        tasks.c.state == QUEUED,
        tasks.c.lane == "deferred",
        tasks.c.not_before <= bindparam("now"),
    )
    .values(lane=tasks.c.run_class)
)

# The distinct tenants with queued tasks in a lane: a loose index scan, one
# index probe per tenant however many tasks each has queued.
active_tenants = sa.text(
    """
    WITH RECURSIVE lane_tenants(tenant) AS (
        SELECT min(tenant) FROM tasks WHERE state = 'queued' AND lane = :lane
        UNION ALL
        SELECT (
            SELECT min(tenant) FROM tasks
            WHERE state = 'queued' AND lane = :lane AND tenant > lane_tenants.tenant
        )
        FROM lane_tenants WHERE lane_tenants.tenant IS NOT NULL
    )
    SELECT tenant FROM lane_tenants WHERE tenant IS NOT NULL
    """
)


def _tenant_heads(*conditions: sa.ColumnElement[bool]) -> sa.Select:
    """A tenant's best queued tasks in a lane, by rank."""
    return (
        sa.select(tasks.c.id, tasks.c.service, tasks.c.rank_at)
        .where(
            tasks.c.state == QUEUED,
            tasks.c.lane == bindparam("lane"),
            tasks.c.tenant == bindparam("tenant"),
            *conditions,
        )
        .order_by(tasks.c.rank_at, tasks.c.id)
        .limit(bindparam("limit"))
    )


heads = _tenant_heads()
# The same without the services that have a concurrency limit, which are
# read one service at a time, each up to the room it has left.
heads_except = _tenant_heads(
    tasks.c.service.not_in(bindparam("services", expanding=True))
)
heads_of_service = _tenant_heads(tasks.c.service == bindparam("service"))

running_counts = (
    sa.select(tasks.c.tenant, tasks.c.service, sa.func.count())
    .where(tasks.c.state.in_(HELD))
    .group_by(tasks.c.tenant, tasks.c.service)
)

finish_tags = sa.select(fair_share).where(
    fair_share.c.tenant.in_(bindparam("tenants", expanding=True))
)
update_tag = (
    fair_share.update()
    .where(
        fair_share.c.lane == bindparam("b_lane"),
        fair_share.c.tenant == bindparam("b_tenant"),
    )
    .values(finish_tag=bindparam("b_tag"))
)
insert_tag = fair_share.insert()

state_values = sa.select(queue_state)
update_state_value = (
    queue_state.update()
    .where(queue_state.c.key == bindparam("b_key"))
    .values(value=bindparam("b_value"))
)
insert_state_value = queue_state.insert()

claim = (
    tasks.update()
    .where(tasks.c.id.in_(bindparam("ids", expanding=True)), tasks.c.state == QUEUED)
    .values(
        state="leased",
        lease_owner=bindparam("owner"),
        lease_epoch=tasks.c.lease_epoch + 1,
        lease_expires_at=bindparam("expires"),
        attempts=tasks.c.attempts + 1,
        cancel_requested=False,
        updated_at=bindparam("now"),
        # The previous attempt's error stays on its attempt row, not the task.
        error=None,
        error_kind=None,
    )
    .returning(*tasks.c)
)

cpu_used = (
    sa.select(tasks.c.tenant, sa.func.sum(attempts.c.cpu_seconds))
    .select_from(attempts.join(tasks, tasks.c.id == attempts.c.task_id))
    .where(attempts.c.ended_at >= bindparam("since"))
    .group_by(tasks.c.tenant)
)

next_due = sa.select(sa.func.min(tasks.c.not_before)).where(
    tasks.c.state == QUEUED, tasks.c.lane == "deferred"
)


# Dependencies and provenance, written in the attempt's batch.
record_dependencies = (
    attempts.update()
    .where(
        attempts.c.task_id == bindparam("b_id"),
        attempts.c.number == bindparam("b_number"),
    )
    .values(dependencies=bindparam("b_dependencies"))
)
record_outputs = (
    tasks.update()
    .where(tasks.c.id == bindparam("b_id"))
    .values(outputs=bindparam("b_outputs"))
)
insert_provenance = provenance.insert()
