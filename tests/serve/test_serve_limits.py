"""`serve`'s request-body limits (serve/limits.py): the cap (413), the deadline (408), the keep-alive connection
kept within them, disconnects logged once at INFO, and the `serve` flags that set them. Raw sockets where a client
must do what no HTTP library does on purpose: stop mid-body, trickle, or lie about its length."""

import json
import logging
import select
import socket
import time

import httpx
import pytest

from diabetica_jax.cli import main
from diabetica_jax.configuration import load_config
from diabetica_jax.serve import ServeConfig, ServedModel, ServeLimits
from diabetica_jax.serve.app import create_app
from diabetica_jax.serve.server import BackgroundServer

CAP = 256 * 1024  # bytes: small, so no test sends more than a few hundred KiB
TIMEOUT = 2.0  # seconds for a body to arrive; a whole small body arrives with its headers
WAIT = 30.0  # seconds any test waits for an answer before it counts as none
SETTLE = 1.0  # seconds after a disconnect for anything logged late about it: more than the app's 0.5 s poll
QUESTION = "What is the HbA1c target for most adults with type 2 diabetes?"
LIMITS = ServeLimits(slots=2, max_prompt_tokens=256, max_new_tokens=512, max_waiting=8)
APP_OPTIONS = {"max_body_bytes": CAP, "body_timeout": TIMEOUT}  # the app under test (tests/serve/conftest.py)


@pytest.fixture(scope="module")
def served():
    model = ServedModel.load("", limits=LIMITS, warmup=True)
    yield model
    model.close()


@pytest.fixture
def records():
    """What the server side logs while the test runs: uvicorn's loggers do not propagate to the root (caplog)."""
    handler = _Collect()
    names = ("uvicorn", "asyncio", "diabetica_jax")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("diabetica_jax").setLevel(logging.INFO)
    yield handler.records
    for name in names:
        logging.getLogger(name).removeHandler(handler)
        logging.getLogger(name).setLevel(levels[name])


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def _connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=WAIT)


def _head(headers: dict[str, str], path: str = "/v1/chat/completions") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _read_reply(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 reply with a Content-Length (what every reply here has): status, headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        body += _recv(sock)
    return int(status.split()[1]), headers, body


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("the server closed the connection before its reply was complete")
    return data


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:  # it closed with bytes of ours unread
        return True


def _error(body: bytes) -> dict:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}  # the OpenAI layout every error here has
    return error


def _json_body(size: int) -> bytes:
    """A chat request for a model this server does not have (a quick 404 once read), padded to `size` bytes."""
    body = json.dumps({"model": "not-served", "messages": [{"role": "user", "content": "hi"}]}).encode()
    return body + b" " * (size - len(body))


@pytest.mark.bad_input  # a request serve must refuse: a row of the fault table
def test_a_body_declared_over_the_cap_is_refused_before_it_is_sent(server):
    with _connect(server) as sock:
        sock.sendall(_head({"Content-Type": "application/json", "Content-Length": str(2 * 10**9)}))  # no body
        status, headers, body = _read_reply(sock)
        assert status == 413 and headers["connection"] == "close"
        error = _error(body)
        assert error["code"] == "request_too_large" and str(CAP) in error["message"]
        assert _closed_by_server(sock)


@pytest.mark.bad_input  # a request serve must refuse: a row of the fault table
def test_a_chunked_body_is_refused_once_it_passes_the_cap(server):
    # never ended: a server that held the body whole to measure it would still be waiting for the rest
    with _connect(server) as sock:
        sock.sendall(_head({"Content-Type": "application/json", "Transfer-Encoding": "chunked"}))
        for _ in range(CAP // 65536 + 1):
            sock.sendall(_chunk(b"x" * 65536))
        status, headers, body = _read_reply(sock)
        assert status == 413 and headers["connection"] == "close"
        assert _error(body)["code"] == "request_too_large"
        assert _closed_by_server(sock)


def test_bodies_within_the_cap_are_read_and_keep_their_connection(server):
    with _connect(server) as sock:  # one connection for all three requests
        sock.sendall(_head({"Transfer-Encoding": "chunked"}) + _chunk(_json_body(1000)) + _chunk(b""))
        status, headers, body = _read_reply(sock)
        assert status == 404 and _error(body)["param"] == "model" and "connection" not in headers
        sock.sendall(_head({"Content-Length": str(CAP)}) + _json_body(CAP))  # exactly the cap
        status, headers, body = _read_reply(sock)
        assert status == 404 and "connection" not in headers
        sock.sendall(_head({"Content-Length": str(CAP + 1)}) + _json_body(CAP + 1))
        status, headers, _ = _read_reply(sock)
        assert status == 413 and headers["connection"] == "close"


@pytest.mark.parametrize("client", ["trickles", "stalls"])
@pytest.mark.bad_input  # a request serve must refuse: a row of the fault table
def test_a_slow_body_gets_408_and_its_connection_closed_while_others_are_served(server, served, client):
    with _connect(server) as sock:
        # Content-Length says 1000 bytes; a trickling client sends one every 0.1 s (each arrives well before any
        # idle timeout would fire), a stalling one sends 10 and no more
        sock.sendall(_head({"Content-Type": "application/json", "Content-Length": "1000"}) + b'{"model": ')
        started = time.monotonic()
        other = httpx.post(f"{server.url}/v1/chat/completions", timeout=WAIT, json={
            "model": served.name, "max_tokens": 2, "messages": [{"role": "user", "content": QUESTION}]})
        assert other.status_code == 200 and other.json()["choices"][0]["message"]["content"] is not None
        while not select.select([sock], [], [], 0.1)[0]:
            assert time.monotonic() - started < WAIT, "no answer to the slow body"
            if client == "trickles":
                sock.sendall(b" ")
        status, headers, body = _read_reply(sock)
        waited = time.monotonic() - started
        assert status == 408 and headers["connection"] == "close"
        assert _error(body)["code"] == "request_timeout"
        assert TIMEOUT - 0.2 < waited < TIMEOUT + 10
        assert _closed_by_server(sock)


@pytest.mark.parametrize("phase", ["body", "stream", "waiting"])
def test_a_disconnect_is_logged_once_at_info_and_frees_its_slot(server, served, records, phase):
    request = {"model": served.name, "max_tokens": 500, "temperature": 0, "stream": phase == "stream",
               "messages": [{"role": "user", "content": QUESTION}]}
    complete = httpx.post(f"{server.url}/v1/chat/completions", json={**request, "max_tokens": 4}, timeout=WAIT)
    assert complete.status_code == 200  # a reply that completes, streamed or not, is no disconnect (checked below)
    cancelled = served.batcher.load["finished"].get("cancelled", 0)
    if phase == "body":  # the client goes while sending its body
        with _connect(server) as sock:
            sock.sendall(_head({"Content-Type": "application/json", "Content-Length": "1000"}) + b'{"model": ')
            time.sleep(0.3)
    elif phase == "stream":  # mid-stream, after its first token
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=request, timeout=WAIT) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    break
    else:  # while waiting for a whole reply
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/chat/completions", json=request, timeout=httpx.Timeout(WAIT, read=1.0))

    def logged():
        return [r for r in records if r.name == "diabetica_jax.serve.limits" and "disconnected" in r.getMessage()]

    deadline = time.monotonic() + WAIT
    while not logged() or served.batcher.load["active"]:
        assert time.monotonic() < deadline, "the disconnect was not logged, or its slot not freed"
        time.sleep(0.05)
    time.sleep(SETTLE)
    (line,) = logged()
    assert line.levelno == logging.INFO
    assert ("while sending its body" if phase == "body" else "before its reply was complete") in line.getMessage()
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING or r.exc_info] == []
    expected = cancelled if phase == "body" else cancelled + 1  # a request still sending its body had no slot
    assert served.batcher.load["finished"].get("cancelled", 0) == expected


def test_create_app_refuses_limits_that_are_not_positive(served):
    with pytest.raises(ValueError, match="max_body_bytes"):
        create_app(served, max_body_bytes=0)
    with pytest.raises(ValueError, match="body_timeout"):
        create_app(served, body_timeout=-1.0)


def test_the_serve_flags_set_the_limits(monkeypatch, capsys):
    defaults = load_config(ServeConfig, None)
    assert (defaults.max_body_mb, defaults.body_timeout) == (8, 30)

    seen = {}

    def run(app, host, port):  # instead of serving in the foreground: probe the app `serve` made
        with BackgroundServer(app) as running:
            url = f"{running.url}/v1/chat/completions"
            seen["over"] = httpx.post(url, content=b"x" * 300_000, timeout=WAIT).status_code  # 0.25 MiB: 262144
            seen["under"] = httpx.post(url, content=b"x" * 200_000, timeout=WAIT).status_code  # read: not JSON
            with _connect(running) as sock:
                sock.sendall(_head({"Content-Length": "100"}))
                started = time.monotonic()
                seen["slow"] = _read_reply(sock)[0]
                seen["waited"] = time.monotonic() - started

    monkeypatch.setattr("diabetica_jax.serve.server.run", run)
    assert main(["serve", "--no-warmup", "--max-body-mb", "0.25", "--body-timeout", "1"]) == 0
    assert seen["over"] == 413 and seen["under"] == 400 and seen["slow"] == 408
    assert seen["waited"] < 10  # the flag's 1 s, not the default 30 s

    def load(*args, **kw):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(ServedModel, "load", load)
    capsys.readouterr()
    assert main(["serve", "--max-body-mb", "0"]) == 2
    assert "max_body_bytes must be a positive integer" in capsys.readouterr().err
