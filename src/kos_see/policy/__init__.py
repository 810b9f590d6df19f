"""Whether a caller may: the policy gate, on Casbin's role-based model with domains."""

from kos_see.policy.gate import Decision, PolicyGate

__all__ = ["Decision", "PolicyGate"]
