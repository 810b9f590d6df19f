"""Wake-ups between processes that share an engine home.

A serving engine listens on a Unix datagram socket in the abstract namespace,
named after its home; a CLI process that submitted or cancelled sends it one
datagram, so the engine reacts at once instead of polling the store. When no
engine listens, ``send`` says so, which the CLI reports to the user.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path

MESSAGES = frozenset({"submit", "cancel"})


def address(home_root: Path) -> bytes:
    digest = hashlib.sha256(str(home_root).encode()).hexdigest()[:32]
    return b"\0kos-see-" + digest.encode()


def send(home_root: Path, message: str) -> bool:
    """True if a serving engine received it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address(home_root))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except BlockingIOError:
            return True  # its queue is full: it has wake-ups pending already
    return True


def engine_listening(home_root: Path) -> bool:
    return send(home_root, "ping")


class WakeListener:
    """Receives wake-ups on a thread and passes each message to ``on_message``."""

    def __init__(self, home_root: Path, on_message: Callable[[str], None]) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            # The address is taken while an engine serves this home: binding it
            # is also what keeps a second engine from serving the same home.
            self._sock.bind(address(home_root))
        except OSError:
            self._sock.close()
            raise
        self._on_message = on_message
        self._thread = threading.Thread(
            target=self._loop, name="wake-listener", daemon=True
        )
        self._closed = False

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(64)
            except OSError:
                return
            message = data.decode(errors="replace")
            if message in MESSAGES:
                self._on_message(message)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
