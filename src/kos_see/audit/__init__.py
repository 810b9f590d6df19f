"""The tamper-evident audit log: hash-chained entries and signed checkpoints."""

from kos_see.audit.chain import AuditEntry, entry_hash
from kos_see.audit.log import AuditLog
from kos_see.audit.verify import VerifyReport, prune, verify_log

__all__ = [
    "AuditEntry",
    "AuditLog",
    "VerifyReport",
    "entry_hash",
    "prune",
    "verify_log",
]
