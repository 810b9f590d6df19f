"""The prompt library: named, versioned Jinja2 templates, rendered sandboxed.

A template lives at ``<library>/<name>/<version>.j2``. It is rendered in
Jinja2's sandboxed environment, so that it cannot reach Python internals
(``__class__``, ``__globals__``, ...), and with ``StrictUndefined``, so that a
missing variable is an error rather than an empty string.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from kos_see.dependencies.vault import sha256_digest
from kos_see.errors import DependencyFailed

SUFFIX = ".j2"


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    template_digest: str


class PromptLibrary:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        # Immutable too: a template cannot change the lists it is given.
        self.env = ImmutableSandboxedEnvironment(
            undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
        )

    def source(self, name: str, version: str) -> str:
        path = self.folder / name / f"{version}{SUFFIX}"
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise DependencyFailed(
                f"prompt {name}@{version} not found: no file {path}"
            ) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise DependencyFailed(
                f"prompt {name}@{version}: cannot read {path}: {exc}"
            ) from exc

    def render(self, name: str, version: str, values: dict[str, Any]) -> RenderedPrompt:
        source = self.source(name, version)
        try:
            text = self.env.from_string(source).render(values)
        except SecurityError as exc:
            raise DependencyFailed(
                f"prompt {name}@{version} was refused: it tries to reach what "
                f"the sandbox forbids ({exc})"
            ) from exc
        except TemplateError as exc:
            raise DependencyFailed(
                f"prompt {name}@{version} cannot be rendered: {exc}"
            ) from exc
        return RenderedPrompt(text, sha256_digest(source.encode()))
