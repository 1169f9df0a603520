"""Running the app: in the foreground for `diabetica-jax serve`, or on a background thread (tests, benchmarks)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time

import uvicorn

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(app, host: str = "127.0.0.1", port: int = 8000) -> None:
    if not is_loopback(host):
        log.warning("serving on %s: reachable from other machines; this is a research model, not a medical "
                    "device, and should sit behind authentication (--api-key-env) and TLS", host)
    # uvicorn's other defaults are kept on purpose: h11 (its parser unless httptools is installed) holds at most
    # 16 KiB of an unfinished request head before answering 400 (h11_max_incomplete_event_size), and an idle
    # keep-alive connection closes after 5 s (timeout_keep_alive); bodies are capped and timed by serve/limits.py.
    # No limit_concurrency: the batcher already answers 429 past --max-waiting, and a cap on connections would
    # turn away /health probes and the page with 503s while long streams hold theirs.
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


class BackgroundServer:
    """The app on a thread, on 127.0.0.1 and a free port unless told otherwise; `url` is its base URL."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.url = f"http://{host}:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True,
                                       name="uvicorn")
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
