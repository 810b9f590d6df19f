"""What a manifest's ``[dependencies]`` declares.

Example::

    [[dependencies.vectors]]
    name = "context"                # written to vectors/context.json
    collection = "stdlib"
    query_from = "question"         # the input field whose text is the query
    top_k = 5

    [[dependencies.prompts]]
    name = "summary"                # <prompt library>/summary/1.j2
    version = "1"
    path = "prompt.txt"             # default: prompts/<name>.txt

    [[dependencies.artifacts]]
    digest = "sha256:..."           # from the vault; or url = "https://..."
    path = "data/words.txt"

Vectors are fetched first, so that a prompt can use their matches
(``vectors.context``) beside the task's input fields.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
COLLECTION_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
# Paths the engine itself writes in the working directory.
RESERVED = frozenset({"input.json", "tmp", "out"})


def checked_path(value: str) -> str:
    """A relative path that stays inside the working directory."""
    path = PurePosixPath(value)
    if not path.parts or path.is_absolute() or ".." in path.parts or "\\" in value:
        raise ValueError(
            f"{value!r} must be a relative path to a file inside the working "
            "directory, without '..'"
        )
    if path.parts[0] in RESERVED:
        raise ValueError(
            f"{value!r} is under {path.parts[0]!r}, which the engine itself uses"
        )
    return str(path)


class _Declared(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _PlacedByDefault(_Declared):
    # Where in the working directory the fetched text goes; empty: a default
    # place that the kind of dependency names (``target``).
    path: str = ""

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return checked_path(value) if value else value


class PromptDependency(_PlacedByDefault):
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=NAME_PATTERN)

    @property
    def target(self) -> str:
        return self.path or f"prompts/{self.name}.txt"

    @property
    def label(self) -> str:
        return f"prompt:{self.name}@{self.version}"


class ArtifactDependency(_Declared):
    digest: str | None = Field(None, pattern=DIGEST_PATTERN)
    url: str | None = None
    path: str
    max_bytes: int | None = Field(None, ge=1)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return checked_path(value)

    @model_validator(mode="after")
    def _source(self) -> ArtifactDependency:
        if self.digest is None and self.url is None:
            raise ValueError("an artifact needs a digest, a url, or both")
        return self

    @property
    def label(self) -> str:
        return f"artifact:{self.path}"


class VectorDependency(_PlacedByDefault):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    collection: str = Field(pattern=COLLECTION_PATTERN)
    query_from: str = Field(min_length=1)
    top_k: int = Field(5, ge=1)

    @property
    def target(self) -> str:
        return self.path or f"vectors/{self.name}.json"

    @property
    def label(self) -> str:
        return f"vectors:{self.name}"


class Dependencies(_Declared):
    prompts: list[PromptDependency] = Field(default_factory=list)
    artifacts: list[ArtifactDependency] = Field(default_factory=list)
    vectors: list[VectorDependency] = Field(default_factory=list)

    @model_validator(mode="after")
    def _distinct_paths(self) -> Dependencies:
        targets = [p.target for p in self.prompts]
        targets += [a.path for a in self.artifacts]
        targets += [v.target for v in self.vectors]
        seen: set[str] = set()
        for target in targets:
            if target in seen:
                raise ValueError(f"two dependencies write the same path {target!r}")
            seen.add(target)
        return self

    def __bool__(self) -> bool:
        return bool(self.prompts or self.artifacts or self.vectors)
