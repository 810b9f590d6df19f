"""Where an engine's dependencies and provenance come from: its home and config."""

from __future__ import annotations

from kos_see.config import EngineConfig
from kos_see.dependencies.paths import prompt_library, vault_url, vectors_path
from kos_see.dependencies.prefetch import Provisioner
from kos_see.home import Home
from kos_see.provenance.recorder import Recorder
from kos_see.security.keys import load_or_create


def make_provisioner(home: Home, config: EngineConfig) -> Provisioner:
    return Provisioner(
        config.dependencies,
        prompt_library(home, config),
        vault_url(home, config),
        vectors_path(home, config),
    )


def make_recorder(home: Home, config: EngineConfig) -> Recorder:
    key = load_or_create(home.engine_key_path) if config.provenance.enabled else None
    return Recorder(
        make_provisioner(home, config),
        key,
        runner=config.execution.default_runner,
        sandbox="isolated" if config.security.task_isolation else "none",
    )
