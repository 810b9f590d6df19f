"""Fetching an attempt's dependencies into its working directory, and
collecting the files it wrote under ``out/`` into the vault.

The ``Provisioner`` is the engine's: it holds the vault, the prompt library
and the vector store (whose embedder loads once, on first use). Vectors are
fetched first so that prompts can use their matches; each fetch is timed,
and any failure becomes ``DependencyFailed`` naming the dependency.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kos_see.config import DependenciesConfig
from kos_see.dependencies.declared import (
    ArtifactDependency,
    Dependencies,
    PromptDependency,
    VectorDependency,
)
from kos_see.dependencies.embed import make_embedder
from kos_see.dependencies.prompts import PromptLibrary
from kos_see.dependencies.vault import Vault, read_url, sha256_digest
from kos_see.errors import DependencyFailed, KosSeeError

if TYPE_CHECKING:
    from kos_see.dependencies.vectors import VectorStore

log = logging.getLogger(__name__)

OUT_DIR = "out"


@dataclass(frozen=True)
class Fetched:
    kind: str  # prompt, artifact, vectors
    name: str  # e.g. prompt:summary@1
    path: str  # where it was written, relative to the working directory
    digest: str  # of the bytes written
    fetch_seconds: float
    source: str  # template digest, artifact URL or digest, collection

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Output:
    path: str  # relative to the working directory, under out/
    digest: str
    size: int


class Provisioner:
    def __init__(
        self,
        config: DependenciesConfig,
        prompt_library: Path,
        vault_url: str,
        vectors_path: Path,
    ) -> None:
        self.config = config
        self.prompts = PromptLibrary(prompt_library)
        self.vault = Vault(vault_url)
        self.vectors_path = vectors_path
        self._vectors: VectorStore | None = None
        # Slots ask at once; the model behind the store must load only once.
        self._vectors_lock = threading.Lock()

    @property
    def vectors(self) -> VectorStore:
        with self._vectors_lock:
            return self._vector_store()

    def _vector_store(self) -> VectorStore:
        if self._vectors is None:
            # Imported on first use: sqlite-vec costs a tenth of a second to
            # load, which a service without vector dependencies never pays.
            from kos_see.dependencies.vectors import VectorStore

            self._vectors = VectorStore(self.vectors_path, make_embedder(self.config))
        return self._vectors

    # fetching

    def fetch(
        self, declared: Dependencies, document: Any, workdir: Path
    ) -> list[Fetched]:
        """Write every dependency into ``workdir``; raises DependencyFailed."""
        fetched: list[Fetched] = []
        matches: dict[str, list[dict[str, Any]]] = {}
        for vector in declared.vectors:
            found, record = self._timed(
                vector.label, self._vectors_for, vector, document, workdir
            )
            matches[vector.name] = found
            fetched.append(record)
        values = dict(document) if isinstance(document, dict) else {}
        values.update({"input": document, "vectors": matches})
        for prompt in declared.prompts:
            fetched.append(
                self._timed(prompt.label, self._prompt, prompt, values, workdir)[1]
            )
        for artifact in declared.artifacts:
            fetched.append(
                self._timed(artifact.label, self._artifact, artifact, workdir)[1]
            )
        return fetched

    def _timed(self, label: str, fetch, *args):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            value, kind, path, data, source = fetch(*args)
        except DependencyFailed as exc:
            raise DependencyFailed(f"{label}: {exc.message}", dependency=label) from exc
        except KosSeeError as exc:
            raise DependencyFailed(
                f"{label} could not be fetched: {exc.message}", dependency=label
            ) from exc
        except OSError as exc:
            raise DependencyFailed(
                f"{label} could not be written: {exc}", dependency=label
            ) from exc
        seconds = time.perf_counter() - started
        return value, Fetched(kind, label, path, sha256_digest(data), seconds, source)

    def _vectors_for(
        self, vector: VectorDependency, document: Any, workdir: Path
    ) -> tuple[Any, str, str, bytes, str]:
        text = _field(document, vector.query_from)
        top_k = min(vector.top_k, self.config.max_top_k)
        found = [
            m.to_dict() for m in self.vectors.query(vector.collection, text, top_k)
        ]
        data = json.dumps(found, sort_keys=True, ensure_ascii=False).encode()
        _write(workdir, vector.target, data)
        return found, "vectors", vector.target, data, f"collection:{vector.collection}"

    def _prompt(
        self, prompt: PromptDependency, values: dict[str, Any], workdir: Path
    ) -> tuple[Any, str, str, bytes, str]:
        rendered = self.prompts.render(prompt.name, prompt.version, values)
        data = rendered.text.encode()
        _write(workdir, prompt.target, data)
        return None, "prompt", prompt.target, data, rendered.template_digest

    def _artifact(
        self, artifact: ArtifactDependency, workdir: Path
    ) -> tuple[Any, str, str, bytes, str]:
        cap = min(
            artifact.max_bytes or self.config.max_artifact_bytes,
            self.config.max_artifact_bytes,
        )
        if artifact.url is None:
            assert artifact.digest is not None
            data = self.vault.get_bytes(artifact.digest, cap)
            source = artifact.digest
        else:
            data = read_url(artifact.url, self.config.url_schemes, cap)
            got = sha256_digest(data)
            if artifact.digest is not None and got != artifact.digest:
                raise DependencyFailed(
                    f"{artifact.url} has digest {got}, not the declared "
                    f"{artifact.digest}"
                )
            # Kept in the vault, so that a replay can name it by digest.
            self.vault.put_bytes(data)
            source = artifact.url
        _write(workdir, artifact.path, data)
        return None, "artifact", artifact.path, data, source

    # collecting

    def collect(self, workdir: Path) -> list[Output]:
        """Store each regular file under ``workdir/out`` in the vault."""
        root = workdir / OUT_DIR
        if not root.is_dir() or root.is_symlink():
            return []
        outputs = []
        for folder, dirs, files in os.walk(root, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                output = self._collect_one(workdir, Path(folder) / name)
                if output is not None:
                    outputs.append(output)
        return outputs

    def _collect_one(self, workdir: Path, path: Path) -> Output | None:
        relative = path.relative_to(workdir).as_posix()
        info = path.lstat()
        # A symlink could point at any file the engine can read: never followed.
        if not stat.S_ISREG(info.st_mode):
            log.warning(
                "output skipped: not a regular file",
                extra={"action": "output_skipped", "path": relative},
            )
            return None
        if info.st_size > self.config.max_artifact_bytes:
            log.warning(
                "output skipped: over the artifact size cap",
                extra={
                    "action": "output_skipped",
                    "path": relative,
                    "size": info.st_size,
                },
            )
            return None
        stored = self.vault.put_bytes(path.read_bytes())
        return Output(relative, stored.digest, stored.size)


def _field(document: Any, dotted: str) -> str:
    value = document
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DependencyFailed(f"the task's input has no field {dotted!r}")
        value = value[part]
    if not isinstance(value, str) or not value.strip():
        raise DependencyFailed(
            f"the task's input field {dotted!r} is not a non-empty string"
        )
    return value


def _write(workdir: Path, relative: str, data: bytes) -> None:
    target = workdir / relative
    if not target.resolve().is_relative_to(workdir.resolve()):
        raise DependencyFailed(f"{relative!r} would be written outside the attempt")
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    target.write_bytes(data)
