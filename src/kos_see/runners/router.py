"""Runners by name: each attempt goes to the runner its task asks for."""

from __future__ import annotations

from kos_see.runners.base import (
    AttemptControl,
    AttemptOutcome,
    AttemptSpec,
    OnEvents,
    OnStarted,
    Runner,
)


class RunnerSet:
    """One Runner over several: ``spec.runner`` picks which runs an attempt.

    An attempt for a runner this engine lacks fails without a retry rather
    than running somewhere it did not ask for (a sandboxed task never runs
    unsandboxed)."""

    name = "runners"

    def __init__(self, runners: dict[str, Runner], main: str = "local_python") -> None:
        self.runners = runners
        self.main = main

    @property
    def launcher(self) -> object:
        """The main runner's launcher (the fork server, by default), as a
        single LocalPythonRunner would show it."""
        return getattr(self.runners[self.main], "launcher", None)

    def process_parents(self) -> list[int]:
        return [pid for r in self.runners.values() for pid in r.process_parents()]

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()

    def run(
        self,
        spec: AttemptSpec,
        control: AttemptControl,
        on_started: OnStarted,
        on_events: OnEvents,
    ) -> AttemptOutcome:
        runner = self.runners.get(spec.runner)
        if runner is None:
            known = ", ".join(sorted(self.runners))
            return AttemptOutcome(
                status="failed",
                error_kind="runner",
                error=f"this engine has no runner {spec.runner!r} (it has {known})",
            )
        return runner.run(spec, control, on_started, on_events)
