"""Run an app with uvicorn in a background thread on a free loopback port (tests, benchmarks).

with ServerThread(app) as server:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

LOOPBACK = "127.0.0.1"


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 (a free port unless `port` is given)."""

    def __init__(self, app: Any, port: int = 0, start_timeout: float = 60.0) -> None:
        self.app, self.start_timeout = app, start_timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, port))
        self.port = self.sock.getsockname()[1]
        self.server: Any = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> ServerThread:
        import uvicorn

        config = uvicorn.Config(self.app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
