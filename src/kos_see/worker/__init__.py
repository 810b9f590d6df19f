"""The worker: leases tasks and drives runners through their attempts."""

from kos_see.worker.pool import WorkerPool

__all__ = ["WorkerPool"]
