"""What the server takes from a client's connection: a cap on the request body and a deadline for it to arrive.

`BodyGuard` is ASGI middleware around the app; it wraps `receive` and `send` and nothing else, so streamed replies
and the app's disconnect checks (`request.is_disconnected()`, Starlette's listener under a streamed reply) see the
same messages as without it.

- A body over `max_body_bytes` gets 413: at once when its Content-Length says so (nothing of it is read), else as
  soon as the bytes counted on arrival pass the cap, so an oversized body is never held whole.
- A body not complete `body_timeout` seconds after the request started gets 408. This is a deadline for the whole
  body, not an idle timeout: a client trickling a byte a second is refused too.
- A client that disconnects before its reply is complete is logged once, at INFO. Starlette reports a client that
  left mid-body by raising `ClientDisconnect` out of `request.body()`; uncaught it reaches the app's catch-all
  handler, which logs it as a server failure, and uvicorn, which logs it again. It is a client going away: this
  middleware ends the request there.

Both refusals close the connection (`Connection: close`), as the rest of the body stays unread: reading it only to
keep the connection would mean receiving what the cap is there to refuse, and a client waiting for `100 Continue`
never sends it, so the next request's start could not be found. Every request within the limits keeps its
keep-alive connection, error replies included.
"""

from __future__ import annotations

import dataclasses
import logging

import anyio
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from diabetica_jax.serve.config import MIB, ServeConfig
from diabetica_jax.serve.protocol import APIError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BodyLimits:
    """The largest request body in bytes, and the seconds from a request's start within which its body must arrive.
    Checked when made, so a bad value stops `create_app` (and `serve`, before it loads the model)."""

    max_body_bytes: int = round(ServeConfig.max_body_mb * MIB)  # the defaults of `serve`
    body_timeout: float = ServeConfig.body_timeout

    def __post_init__(self):
        if type(self.max_body_bytes) is not int or self.max_body_bytes < 1:  # type(): True is no size
            raise ValueError(f"max_body_bytes must be a positive integer, not {self.max_body_bytes!r}")
        if type(self.body_timeout) not in (int, float) or not self.body_timeout > 0:  # NaN is not > 0 either
            raise ValueError(f"body_timeout must be a positive number of seconds, not {self.body_timeout!r}")


class BodyGuard:
    """The middleware: one `_Exchange` per HTTP request."""

    def __init__(self, app: ASGIApp, limits: BodyLimits):
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (and websockets, which this app has none of)
            await self.app(scope, receive, send)
            return
        await _Exchange(scope, receive, send, self.limits).run(self.app)


class _Refused(Exception):
    """Raised out of `receive` into the app, caught again by `_Exchange.run`, which answers with `error`."""

    def __init__(self, error: APIError):
        super().__init__(error.message)
        self.error = error


class _Exchange:
    """One request through the guard: its body counted and timed as the app reads it, its reply watched."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, limits: BodyLimits):
        self.scope, self._receive, self._send, self.limits = scope, receive, send, limits
        self.deadline = anyio.current_time() + limits.body_timeout
        self.received = 0  # body bytes so far
        self.body_complete = False
        self.reply_started = self.reply_complete = False
        self.gone_logged = False

    async def run(self, app: ASGIApp) -> None:
        declared = _content_length(self.scope)
        if declared is not None and declared > self.limits.max_body_bytes:
            await self._refuse(self._too_large(f"is {declared} (its Content-Length)"))
            return
        try:
            await app(self.scope, self.receive, self.send)
        except _Refused as refused:
            if self.reply_started:  # the app answered before reading its body: too late for another answer
                raise
            await self._refuse(refused.error)
        except ClientDisconnect:
            self._client_gone()

    async def receive(self) -> Message:
        message = await self._receive() if self.body_complete else await self._receive_body()
        if message["type"] == "http.disconnect" and not self.reply_complete:
            self._client_gone()
        return message

    async def send(self, message: Message) -> None:
        # marked before passing it on: the server wakes a waiting `receive` with http.disconnect once the reply
        # is complete, and that is no client going away
        if message["type"] == "http.response.start":
            self.reply_started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.reply_complete = True
        await self._send(message)

    async def _receive_body(self) -> Message:
        try:
            with anyio.fail_at(self.deadline):
                message = await self._receive()
        except TimeoutError:
            raise _Refused(APIError(408, f"the request body did not arrive within {self.limits.body_timeout:g} s",
                                    code="request_timeout")) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limits.max_body_bytes:
                raise _Refused(self._too_large("was longer (counted as it arrived)"))
            self.body_complete = not message.get("more_body", False)
        return message

    def _too_large(self, size: str) -> APIError:
        return APIError(413, f"this server takes request bodies of at most {self.limits.max_body_bytes} bytes; "
                        f"this one {size}", code="request_too_large")

    async def _refuse(self, error: APIError) -> None:
        response = JSONResponse(error.body(), status_code=error.status, headers={"Connection": "close"})
        await response(self.scope, self._receive, self._send)

    def _client_gone(self) -> None:
        if self.gone_logged:  # a streamed reply's listener and the app's own checks may both see it
            return
        self.gone_logged = True
        client = self.scope.get("client")
        log.info("%s %s from %s: the client disconnected %s", self.scope["method"], self.scope["path"],
                 f"{client[0]}:{client[1]}" if client else "an unknown address",
                 "before its reply was complete" if self.body_complete else "while sending its body")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:  # the server refuses a malformed one before the app sees it; never guess here
                return None
    return None
