"""Where a home keeps its prompt library, vault and vector database, unless
``[dependencies]`` says otherwise."""

from __future__ import annotations

from pathlib import Path

from kos_see.config import EngineConfig
from kos_see.home import Home


def prompt_library(home: Home, config: EngineConfig) -> Path:
    configured = config.dependencies.prompt_library
    return Path(configured) if configured else home.root / "prompts"


def vault_url(home: Home, config: EngineConfig) -> str:
    return config.dependencies.vault_url or str(home.root / "vault")


def vectors_path(home: Home, config: EngineConfig) -> Path:
    configured = config.dependencies.vectors_url
    return Path(configured) if configured else home.root / "vectors.db"
