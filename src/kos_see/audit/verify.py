"""Checking the audit log, reading it, and pruning it without breaking it.

``verify_log`` walks the entries in order and names the first one that does
not hold: a position missing, an entry whose hash does not match its
content, an entry that does not follow its predecessor, or a chain that
disagrees with a signed checkpoint. Entries after the newest checkpoint are
protected by the chain alone: someone who can write the database and knows
the hash rule could append well-formed entries there, until the next
checkpoint signs the head.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kos_see.audit.chain import (
    GENESIS,
    AuditEntry,
    Checkpoint,
    checkpoint_message,
    recomputed,
    sign_checkpoint,
)
from kos_see.errors import AuditError
from kos_see.security.keys import SigningKey, key_id, verify
from kos_see.store.schema import audit_checkpoints, audit_entries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    entries: int
    first_seq: int | None
    last_seq: int | None
    checkpoints: int
    broken_seq: int | None = None  # the first entry that breaks the chain
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def checkpoints(store: Any) -> list[Checkpoint]:
    with store._read() as conn:
        rows = conn.execute(
            sa.select(audit_checkpoints).order_by(audit_checkpoints.c.seq)
        ).all()
    return [Checkpoint(**row._mapping) for row in rows]


def entries(store: Any, task_id: str | None = None) -> Iterator[AuditEntry]:
    query = sa.select(audit_entries).order_by(audit_entries.c.seq)
    if task_id is not None:
        query = query.where(audit_entries.c.task_id == task_id)
    with store._read(snapshot=True) as conn:
        rows = conn.execute(query).all()
    for row in rows:
        yield AuditEntry(**row._mapping)


def verify_log(store: Any, public: Ed25519PublicKey) -> VerifyReport:
    points = checkpoints(store)
    signer = key_id(public)
    for point in points:
        message = checkpoint_message(point.seq, point.hash, point.at, point.key_id)
        if point.key_id != signer or not verify(public, message, point.signature):
            return _broken(
                0,
                None,
                None,
                len(points),
                point.seq,
                (
                    f"the checkpoint at entry {point.seq} is not signed by the engine "
                    f"key {signer}"
                ),
            )
    by_seq = {point.seq: point for point in points}
    walk = _Walk(by_seq)
    for entry in entries(store):
        problem = walk.step(entry)
        if problem is not None:
            return _broken(walk.count, walk.first, walk.last, len(points), *problem)
    # A checkpoint past the last entry means the tail was cut off. (A log
    # pruned to nothing keeps only its checkpoint, and verifies.)
    if walk.last is not None:
        beyond = [p.seq for p in points if p.seq > walk.last]
        if beyond:
            start = walk.last + 1
            return _broken(
                walk.count,
                walk.first,
                walk.last,
                len(points),
                start,
                (
                    f"entries {start} to {max(beyond)} are missing: a signed "
                    f"checkpoint covers entry {max(beyond)}"
                ),
            )
    return VerifyReport(True, walk.count, walk.first, walk.last, len(points))


class _Walk:
    def __init__(self, by_seq: dict[int, Checkpoint]) -> None:
        self.by_seq = by_seq
        self.count = 0
        self.first: int | None = None
        self.last: int | None = None
        self.prev_hash = GENESIS

    def step(self, entry: AuditEntry) -> tuple[int, str] | None:
        if self.last is None:
            problem = self._start(entry)
        elif entry.seq != self.last + 1:
            problem = (
                self.last + 1,
                f"entry {self.last + 1} is missing (the next entry present is "
                f"{entry.seq})",
            )
        else:
            problem = None
        if problem is not None:
            return problem
        if entry.prev_hash != self.prev_hash:
            return entry.seq, (
                f"entry {entry.seq} does not follow entry {entry.seq - 1}: an entry "
                "was removed, inserted or moved before it"
            )
        if recomputed(entry) != entry.hash:
            return entry.seq, (
                f"entry {entry.seq} was altered: its hash does not match its content"
            )
        point = self.by_seq.get(entry.seq)
        if point is not None and point.hash != entry.hash:
            return entry.seq, (
                f"entry {entry.seq} differs from the signed checkpoint at it: the "
                "chain up to it was rewritten"
            )
        self.count += 1
        self.first = entry.seq if self.first is None else self.first
        self.last = entry.seq
        self.prev_hash = entry.hash
        return None

    def _start(self, entry: AuditEntry) -> tuple[int, str] | None:
        if entry.seq == 1:
            self.prev_hash = GENESIS
            return None
        point = self.by_seq.get(entry.seq - 1)
        if point is None:
            return 1, (
                f"entries 1 to {entry.seq - 1} are missing and no signed checkpoint "
                f"vouches for entry {entry.seq - 1}, where the log now starts"
            )
        self.prev_hash = point.hash
        return None


def _broken(
    count: int,
    first: int | None,
    last: int | None,
    points: int,
    seq: int,
    problem: str,
) -> VerifyReport:
    return VerifyReport(False, count, first, last, points, seq, problem)


def prune(
    store: Any, key: SigningKey, retention: float, now: float | None = None
) -> int:
    """Remove entries older than ``retention`` seconds; the remaining log
    starts from a checkpoint signed at the cut. Refuses to prune a log that
    does not verify, so that pruning never destroys evidence of tampering."""
    now = time.time() if now is None else now
    report = verify_log(store, key.public)
    if not report.ok:
        raise AuditError(
            f"the audit log does not verify ({report.problem}); nothing was "
            "pruned, so that the evidence stays",
            broken_seq=report.broken_seq,
        )
    with store._write() as conn:
        young = conn.execute(
            sa.select(sa.func.min(audit_entries.c.seq)).where(
                audit_entries.c.at >= now - retention
            )
        ).scalar()
        newest = conn.execute(sa.select(sa.func.max(audit_entries.c.seq))).scalar()
        cut = (newest if young is None else young - 1) or 0
        row = conn.execute(
            sa.select(audit_entries.c.hash).where(audit_entries.c.seq == cut)
        ).first()
        if row is None:
            return 0
        conn.execute(audit_checkpoints.delete().where(audit_checkpoints.c.seq <= cut))
        point = sign_checkpoint(key, cut, row.hash, now)
        conn.execute(audit_checkpoints.insert().values(**point.__dict__))
        removed = conn.execute(
            audit_entries.delete().where(audit_entries.c.seq <= cut)
        ).rowcount
    log.info(
        "audit log pruned",
        extra={"action": "audit_pruned", "removed": removed, "up_to": cut},
    )
    return int(removed or 0)
