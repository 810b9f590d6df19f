"""Runners: adapters that execute one attempt in an environment."""

from kos_see.runners.base import AttemptControl, AttemptOutcome, AttemptSpec, Runner

__all__ = ["AttemptControl", "AttemptOutcome", "AttemptSpec", "Runner"]
