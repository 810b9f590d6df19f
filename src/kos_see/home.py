"""The engine's home: one folder holding its config, embedded store and work area.

Chosen by ``--home DIR``, else ``KOS_SEE_HOME``, else ``~/.kos-see``.
"""

from __future__ import annotations

import hashlib
import os
import stat
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

    @property
    def keys_dir(self) -> Path:
        # Key pairs made by `kos-see keys new`, and the engine's own key.
        return self.root / "keys"

    @property
    def engine_key_path(self) -> Path:
        # Signs audit checkpoints and provenance records.
        return self.keys_dir / "engine.key"

    @property
    def operator_key_path(self) -> Path:
        # The key `init` makes for the home's owner: an admin principal.
        return self.keys_dir / "operator.key"

    @property
    def secrets_dir(self) -> Path:
        # One file per secret; an attempt gets copies of the ones it may use.
        return self.root / "secrets"

    def policy_path(self, config: EngineConfig) -> Path:
        configured = config.security.policy_file
        return Path(configured) if configured else self.root / "policy.csv"

    def workdir_root(self, config: EngineConfig) -> Path:
        """Where attempts' working directories go.

        By default a folder of this user's on the shared-memory filesystem when
        there is one: creating and removing a directory there costs microseconds,
        on a disk it may cost milliseconds per attempt. Elsewhere, <home>/work.
        """
        configured = config.execution.workdir_root
        if configured:
            return Path(configured)
        return _private_tmpfs_dir(self.root) or self.root / "work"

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
        if self.root.exists() and not self.root.is_dir():
            raise HomeError(
                f"{self.root} is not a folder; an engine home is a folder: "
                "choose another path with --home"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self.config_path.exists():
                return False
            template = resources.files("kos_see").joinpath("home_config.toml")
            self.config_path.write_text(template.read_text(encoding="utf-8"))
        except OSError as exc:
            raise HomeError(
                f"cannot create an engine home at {self.root}: "
                f"{exc.strerror or exc}; choose another path with --home"
            ) from exc
        return True


def resolve_home(option: str | Path | None) -> Home:
    chosen = option or os.environ.get(HOME_ENV) or Path.home() / ".kos-see"
    # Resolved, so that a symlinked path or H/../H names the same home (and
    # the same wake-up address) as H itself.
    return Home(Path(chosen).expanduser().resolve())


SHARED_MEMORY = Path("/dev/shm")


def _private_tmpfs_dir(home_root: Path) -> Path | None:
    if not SHARED_MEMORY.is_dir() or not os.access(SHARED_MEMORY, os.W_OK):
        return None
    base = SHARED_MEMORY / f"kos-see-{os.getuid()}"
    try:
        base.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(base)
    except OSError:
        return None
    # Anyone can create names in /dev/shm: use the folder only if it is a real
    # directory that this user owns and nobody else can enter.
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.getuid()
        or (info.st_mode & 0o077)
    ):
        return None
    digest = hashlib.sha256(str(home_root).encode()).hexdigest()[:16]
    return base / digest
