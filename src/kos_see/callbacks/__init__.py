"""Webhooks: a task's callback URL gets a signed POST on its terminal state."""

from kos_see.callbacks.signing import sign_payload, verify_payload
from kos_see.callbacks.store import CallbackStore, check_url

__all__ = ["CallbackStore", "check_url", "sign_payload", "verify_payload"]
