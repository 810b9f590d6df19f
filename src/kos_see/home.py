"""The engine's home: one folder holding its config, embedded store and work area.

Chosen by ``--home DIR``, else ``KOS_SEE_HOME``, else ``~/.kos-see``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kos_see.config import EngineConfig, load_config
from kos_see.errors import HomeError

HOME_ENV = "KOS_SEE_HOME"


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def database_path(self) -> Path:
        return self.root / "see.db"

    @property
    def wake_socket(self) -> Path:
        # Where a serving engine listens for wake-ups after a submit or cancel.
        return self.root / "engine.sock"

    @property
    def serve_lock(self) -> Path:
        return self.root / "serve.lock"

    def workdir_root(self, config: EngineConfig) -> Path:
        configured = config.execution.workdir_root
        return Path(configured) if configured else self.root / "work"

    def store_url(self, config: EngineConfig) -> str:
        return config.store.url or f"sqlite:///{self.database_path}"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def load_config(self) -> EngineConfig:
        return load_config(self.config_path)

    def require(self) -> Home:
        if not self.exists():
            raise HomeError(
                f"{self.root} is not an engine home (no config.toml); "
                f"create it with: kos-see --home {self.root} init"
            )
        return self

    def init(self) -> bool:
        """Create the folder and a commented config; False if it existed."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.config_path.exists():
            return False
        template = resources.files("kos_see").joinpath("home_config.toml")
        self.config_path.write_text(template.read_text(encoding="utf-8"))
        return True


def resolve_home(option: str | Path | None) -> Home:
    chosen = option or os.environ.get(HOME_ENV) or Path.home() / ".kos-see"
    return Home(Path(chosen).expanduser().absolute())
