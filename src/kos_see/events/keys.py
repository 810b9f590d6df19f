"""Every Redis key the engine uses, in one place.

All start with ``events.prefix``, so that engines on different stores can
share one Redis without meeting.
"""

from __future__ import annotations

# The consumer group on the stream of all events that callback delivery reads.
CALLBACK_GROUP = "callbacks"


def all_events(prefix: str) -> str:
    """The stream of every event of every task (capped)."""
    return f"{prefix}:events"


def task_events(prefix: str, task_id: str) -> str:
    """The stream of one task's events (capped)."""
    return f"{prefix}:task:{task_id}"


def relay_lock(prefix: str) -> str:
    """Held by the one process that copies events from the store to Redis."""
    return f"{prefix}:relay"


def relay_cursor(prefix: str) -> str:
    """The id of the last store event copied to the streams."""
    return f"{prefix}:relay-cursor"
