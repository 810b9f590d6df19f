"""What every command shares: the home it works on and the engine opened on it."""

from __future__ import annotations

from pathlib import Path

from kos_see.engine import Engine
from kos_see.home import Home, resolve_home
from kos_see.logs import configure


class CliContext:
    def __init__(self, home: Path | None, key: str | None = None) -> None:
        self.home: Home = resolve_home(home)
        self.key = key  # the signing key named by --key; None: config or operator

    def engine(self) -> Engine:
        self.home.require()
        config = self.home.load_config()
        configure(
            config.logging.level if config.logging.level != "info" else "warning",
            config.logging.format,
        )
        return Engine.open(self.home, config)
