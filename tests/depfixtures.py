"""Helpers for the dependency and provenance tests.

``embedding_server`` is a real HTTP server on loopback that answers the
engine's endpoint embedder with a deterministic toy embedding (letter
counts), standing in for a model server: the real MiniLM embedder is
exercised by the example's test, once, since loading it takes seconds.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

from kos_see.home import Home
from kos_see.security.keys import load_private


def letter_vector(text: str) -> list[float]:
    counts = [0.0] * 26
    for char in text.lower():
        if "a" <= char <= "z":
            counts[ord(char) - 97] += 1
    norm = math.sqrt(sum(c * c for c in counts)) or 1.0
    return [c / norm for c in counts]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (the http.server hook's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        reply = json.dumps(
            {"embeddings": [letter_vector(t) for t in body["texts"]]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def embedding_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/embed"
    finally:
        server.shutdown()
        server.server_close()


def verify_with_securesystemslib(envelope: dict, home: Home) -> bytes:
    """The envelope's payload, verified by securesystemslib (not the engine's
    code) against the engine's public key; raises if it does not verify."""
    signing = load_private(home.engine_key_path)
    key = SSlibKey.from_crypto(signing.public, keyid=signing.key_id)
    parsed = Envelope.from_dict(envelope)
    verified = parsed.verify([key], 1)
    assert signing.key_id in verified
    return parsed.payload
