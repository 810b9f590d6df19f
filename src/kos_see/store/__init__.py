"""The store: one interface (``base.Store``), SQL backends on SQLAlchemy Core."""

from kos_see.store.base import RefusedWrite, Renewal, Store, TaskFilter
from kos_see.store.open import open_store

__all__ = ["RefusedWrite", "Renewal", "Store", "TaskFilter", "open_store"]
