"""The API server: uvicorn (REST) and gRPC on one engine, plus the webhook
sender, in threads of the calling process.

``kos-see serve`` starts one when ``[api] enabled = true``; ``kos-see api``
runs one on its own beside (or without) a serving engine. Either way every
request goes through the engine's dispatcher.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass

import uvicorn

from kos_see.api.actions import ApiActions
from kos_see.api.auth import Authenticator
from kos_see.api.feed import EventFeed
from kos_see.api.rest import create_app
from kos_see.api.tokens import TokenIssuer
from kos_see.callbacks.sender import CallbackSender
from kos_see.engine import Engine
from kos_see.errors import KosSeeError
from kos_see.security import keys
from kos_see.security.principals import PrincipalStore

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
STOP_GRACE = 2


@dataclass(frozen=True)
class Addresses:
    rest: str  # http://host:port
    grpc: str | None  # host:port, or None without gRPC


class ApiServer:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        config = engine.config
        self.feed = EventFeed(engine.store)
        self.sender = CallbackSender(engine.store, config.callbacks)
        issuer = TokenIssuer(
            keys.load_or_create(engine.home.engine_key_path),
            PrincipalStore(engine.store),
        )
        self.auth = Authenticator(engine.dispatcher, issuer)
        self.actions = ApiActions(
            engine.store,
            engine.dispatcher,
            config,
            issuer,
            self.feed,
            on_callback=self.sender.wake,
        )
        self.app = create_app(self.actions, self.auth)
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._grpc = None
        self.addresses: Addresses | None = None

    def start(self) -> Addresses:
        api = self.engine.config.api
        rest_port = self._start_rest(api.host, api.port)
        grpc_address = None
        if api.grpc_port is not None:
            from kos_see.api.grpc.server import start_grpc

            self._grpc, port, _health = start_grpc(
                self.actions, self.auth, api.host, api.grpc_port
            )
            grpc_address = f"{_url_host(api.host)}:{port}"
        self.sender.start()
        self.engine.add_task_listener(self.on_tasks_changed)
        self.addresses = Addresses(
            f"http://{_url_host(api.host)}:{rest_port}", grpc_address
        )
        log.info(
            "api serving",
            extra={
                "action": "api_started",
                "rest": self.addresses.rest,
                "grpc": self.addresses.grpc,
            },
        )
        return self.addresses

    def on_tasks_changed(self, ended: bool) -> None:
        """The engine flushed task writes: wake streams, and the webhook sender
        when a task ended."""
        self.feed.poke()
        if ended:
            self.sender.wake()

    def _start_rest(self, host: str, port: int) -> int:
        # Bind here, so that port 0 gives a free port known before serving.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP said outright: asyncio sets TCP_NODELAY on accepted
        # sockets only when their proto says TCP, and without it every small
        # response waits out the client's delayed ACK (about 40 ms).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise KosSeeError(
                f"cannot listen for REST on {host}:{port}: {exc.strerror}; set "
                "api.port to a free port"
            ) from exc
        bound = sock.getsockname()[1]
        # Open event streams do not hold a stop up for longer than this.
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=STOP_GRACE,
        )
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._uvicorn.run,
            kwargs={"sockets": [sock]},
            name="kos-see-rest",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise KosSeeError(f"the REST server on {host}:{bound} did not start")
            time.sleep(0.01)
        return bound

    def stop(self) -> None:
        self.engine.remove_task_listener(self.on_tasks_changed)
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait(5)
            self._grpc = None
        self.sender.stop()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
