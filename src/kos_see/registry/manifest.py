"""The manifest: a service folder's ``service.toml``.

Example::

    name = "word-count"
    version = "1.0.0"
    description = "Counts words in a text"
    runner = "local_python"
    entrypoint = "main.py"          # a script, or "main.py:run" for a function
    timeout = "60s"
    retry_limit = 0
    retry_backoff = "exponential"   # exponential, fixed or none; default [queue]'s
    retry_base = "1s"               # default: queue.retry_base
    retry_cap = "5m"                # default: queue.retry_cap
    queue_class = "batch"

    [limits]
    cpu_seconds = 30
    memory_mb = 512

    [input_schema]                  # JSON Schema of the task's input
    type = "object"
    required = ["text"]
    properties.text.type = "string"
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from kos_see.config import Seconds
from kos_see.dependencies.declared import Dependencies
from kos_see.errors import ManifestError
from kos_see.registry.digest import read_regular_file
from kos_see.registry.schema import check_input_schema

MANIFEST_NAME = "service.toml"
KNOWN_RUNNERS = frozenset({"local_python", "sandbox"})
SECRET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"


class Limits(BaseModel):
    """Per-attempt resource limits, applied as rlimits in the attempt's process."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_seconds: int | None = Field(None, ge=1)
    # Address space, which counts every mapping of the interpreter (tens of
    # MiB before any service code runs), hence the floor.
    memory_mb: int | None = Field(None, ge=64)
    open_files: int | None = Field(None, ge=16)
    processes: int | None = Field(None, ge=1)
    file_size_mb: int | None = Field(None, ge=1)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)
    description: str = ""
    runner: str | None = None  # None: the engine's execution.default_runner
    entrypoint: str
    timeout: Seconds | None = None  # None: execution.worker_timeout
    retry_limit: int | None = Field(None, ge=0, le=1000)  # None: queue.retry_limit
    # Backoff between attempts; each None: the [queue] key of the same name.
    retry_backoff: Literal["exponential", "fixed", "none"] | None = None
    retry_base: Seconds | None = None
    retry_cap: Seconds | None = None
    queue_class: Literal["realtime", "batch"] | None = None
    # Attempts of this service running at once across the engine; None: no limit.
    max_concurrent: int | None = Field(None, ge=1, strict=True)
    limits: Limits = Limits()
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    # Secrets the service needs, by name: each attempt gets those the policy
    # grants the submitter as files under secrets/ in its working directory.
    secrets: list[Annotated[str, Field(pattern=SECRET_PATTERN)]] = Field(
        default_factory=list
    )
    # Prompts, artifacts and vector matches fetched before each attempt.
    dependencies: Dependencies = Dependencies()

    @field_validator("runner")
    @classmethod
    def _known_runner(cls, value: str | None) -> str | None:
        if value is not None and value not in KNOWN_RUNNERS:
            known = ", ".join(sorted(KNOWN_RUNNERS))
            raise ValueError(f"unknown runner {value!r}; known runners: {known}")
        return value

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError(
                f"timeout {value:g} s is not a timeout (0 does not mean 'none'); "
                "give a positive duration such as '10m', or leave timeout out "
                "to use execution.worker_timeout"
            )
        return value

    @field_validator("retry_cap")
    @classmethod
    def _cap_not_below_base(
        cls, value: float | None, info: ValidationInfo
    ) -> float | None:
        base = info.data.get("retry_base")
        if value is not None and base is not None and base > value:
            raise ValueError(
                f"retry_base ({base:g} s) is above retry_cap ({value:g} s); the "
                "cap is the longest wait between attempts, so it must be at least "
                "the base"
            )
        return value

    @field_validator("input_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_input_schema(value)
        return value

    @property
    def entry_file(self) -> str:
        return self.entrypoint.partition(":")[0]

    @property
    def entry_function(self) -> str | None:
        return self.entrypoint.partition(":")[2] or None


def load_manifest(folder: Path) -> Manifest:
    """Read and check ``folder/service.toml``, including that the entrypoint exists."""
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ManifestError(f"{folder} is not a folder; a service is a folder")
    try:
        data = tomllib.loads(read_regular_file(path).decode("utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"{folder} has no {MANIFEST_NAME}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path} is not UTF-8 text") from exc
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{path}: {_describe(exc)}") from exc
    _check_entrypoint(folder, manifest, path)
    return manifest


def _check_entrypoint(folder: Path, manifest: Manifest, path: Path) -> None:
    entry = (folder / manifest.entry_file).resolve()
    if not entry.is_relative_to(folder.resolve()):
        raise ManifestError(
            f"{path}: entrypoint {manifest.entrypoint!r} points outside the "
            "service folder"
        )
    if not entry.is_file():
        raise ManifestError(
            f"{path}: entrypoint {manifest.entry_file!r} does not exist in {folder}"
        )
    function = manifest.entry_function
    if function is not None and not function.isidentifier():
        raise ManifestError(
            f"{path}: entrypoint function {function!r} is not a Python identifier"
        )
    if function is not None and function not in _top_level_names(entry):
        raise ManifestError(
            f"{path}: entrypoint {manifest.entrypoint!r}: {manifest.entry_file} "
            f"defines no top-level function {function!r}"
        )


def _top_level_names(entry: Path) -> set[str]:
    """Names a module binds at its top level, read without running it."""
    try:
        tree = ast.parse(read_regular_file(entry), filename=str(entry))
    except SyntaxError as exc:
        raise ManifestError(
            f"{entry} is not valid Python: {exc.msg} (line {exc.lineno})"
        ) from exc
    names: set[str] = set()
    statements = list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.If | ast.Try | ast.With):
            # Still the top level: a definition under `if` or `try` counts.
            for field in ("body", "orelse", "finalbody", "handlers"):
                statements.extend(getattr(node, field, []))
        elif isinstance(node, ast.ExceptHandler):
            statements.extend(node.body)
    return names


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {key!r}")
        elif err["type"] == "missing":
            parts.append(f"missing key {key!r}")
        else:
            message = err["msg"].removeprefix("Value error, ")
            parts.append(f"{key}: {message}")
    return "; ".join(parts)
