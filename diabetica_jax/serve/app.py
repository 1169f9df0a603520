"""The HTTP side of `diabetica-jax serve`: an OpenAI-compatible API and the clinic web page, on Starlette.

Routes: POST /v1/chat/completions and /v1/completions (JSON, or server-sent events with `stream: true`),
GET /v1/models, GET /health, and GET / (the web page). Every request is answered: bad input gets a 4xx
with an OpenAI-style JSON error naming the field, a failure inside gets a 500 JSON error, and the server
keeps running. A client that disconnects cancels its request, which frees its decode slot at the next step.
Request bodies are capped and must arrive in time (413, 408: serve/limits.py, which also logs disconnects).

With an API key (read from an environment variable when the app is made; never logged) every /v1 route
wants `Authorization: Bearer KEY`; the page and /health stay open (the page asks the user for the key).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from diabetica_jax.generate.batcher import BatcherError, Finished
from diabetica_jax.serve import protocol
from diabetica_jax.serve.limits import BodyGuard, BodyLimits
from diabetica_jax.serve.model import ServedModel
from diabetica_jax.serve.protocol import APIError, GenerationRequest
from diabetica_jax.serve.text import TextStream

log = logging.getLogger(__name__)

DISCONNECT_POLL = 0.5  # seconds between checks that a non-streaming client is still there
# The page loads nothing from elsewhere and may not be framed by another site (clickjacking).
PAGE_HEADERS = {"Content-Security-Policy": "frame-ancestors 'none'", "X-Frame-Options": "DENY",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def create_app(served: ServedModel, api_key_env: str | None = None,
               max_body_bytes: int = BodyLimits.max_body_bytes, body_timeout: float = BodyLimits.body_timeout
               ) -> Starlette:
    body_limits = BodyLimits(max_body_bytes, body_timeout)  # checked now: Starlette builds middleware lazily
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ValueError(f"environment variable {api_key_env} (the API key) is not set or empty")
    page = resources.files("diabetica_jax.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    def authorise(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise APIError(401, "missing or wrong API key (Authorization: Bearer ...)", code="invalid_api_key",
                           kind="authentication_error")

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    async def health(request: Request) -> Response:  # open, for load balancers and probes: no key needed
        return JSONResponse({"status": "ok", **served.batcher.load})

    async def models(request: Request) -> Response:
        authorise(request)
        limits = {"max_prompt_tokens": served.limits.max_prompt_tokens, "max_new_tokens": served.limits.max_new_tokens}
        # beyond OpenAI's fields: the limits (the page starts within them) and whether this is a demo model
        # (random or tiny weights; the page shows the description as a notice)
        return JSONResponse({"object": "list", "data": [
            {"id": served.name, "object": "model", "created": 0, "owned_by": "diabetica-jax", "limits": limits,
             "parameters": served.parameters, "demo": served.description is not None,
             "description": served.description}]})

    async def chat_completions(request: Request) -> Response:
        authorise(request)
        return await _generate(served, request, protocol.parse_chat(protocol.parse_body(await request.body())))

    async def completions(request: Request) -> Response:
        authorise(request)
        return await _generate(served, request, protocol.parse_completion(protocol.parse_body(await request.body())))

    async def api_error(request: Request, exc: APIError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                     kind=kind).body(), status_code=exc.status_code)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}", kind="server_error").body(),
                            status_code=500)

    routes = [
        Route("/", index), Route("/health", health), Route("/v1/models", models),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(BodyGuard, limits=body_limits)],
                    exception_handlers={APIError: api_error, HTTPException: http_error, Exception: server_error})
    app.state.served = served
    return app


async def _generate(served: ServedModel, request: Request, req: GenerationRequest) -> Response:
    if req.model != served.name:
        raise APIError(404, f"model {req.model!r} is not served here; this server has {served.name!r}", "model",
                       "model_not_found", kind="not_found_error")
    chat = req.messages is not None
    # tokenising a long prompt takes milliseconds: off the event loop, so other streams keep flowing
    prompt = await run_in_threadpool(served.chat_tokens, req.messages) if chat else \
        await run_in_threadpool(served.text_tokens, req.prompt)
    limits = served.limits
    if len(prompt) > limits.max_prompt_tokens:
        raise APIError(400, f"the prompt has {len(prompt)} tokens; this server takes at most "
                       f"{limits.max_prompt_tokens}", "messages" if chat else "prompt", "context_length_exceeded")
    max_tokens = req.max_tokens if req.max_tokens is not None else limits.max_new_tokens
    if max_tokens > limits.max_new_tokens:
        raise APIError(400, f"max_tokens is {max_tokens}; this server generates at most {limits.max_new_tokens}",
                       "max_tokens")
    sampling = served.sampling(req.temperature, req.top_p, None if req.top_k is None else max(req.top_k, 0),
                               req.repetition_penalty, req.seed)
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    try:
        ticket = served.batcher.submit(
            prompt, max_tokens, sampling, frequency_penalty=req.frequency_penalty,
            presence_penalty=req.presence_penalty, logprobs=req.logprobs,
            deliver=lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
    except BatcherError as e:
        busy = "wait for a slot" in str(e)
        raise APIError(429 if busy else 400, str(e), code="server_busy" if busy else None,
                       kind="rate_limit_error" if busy else "invalid_request_error") from None
    reply = _Reply(served, req, ticket, events, len(prompt), chat)
    if req.stream:
        return StreamingResponse(reply.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await reply.whole(request)


class _Reply:
    """One request's answer, built from its ticket's events as text pieces with their finish reason."""

    def __init__(self, served: ServedModel, req: GenerationRequest, ticket, events: asyncio.Queue,
                 prompt_tokens: int, chat: bool):
        self.served, self.req, self.ticket, self.events = served, req, ticket, events
        self.prompt_tokens, self.chat = prompt_tokens, chat
        self.id, self.created = protocol.new_id(chat), int(time.time())
        self.text = TextStream(served.tokenizer, req.stop)

    async def pieces(self, poll=None):
        """(text, logprob entries, finish_reason or None) per token; the last has the finish reason.
        `poll` (async, returns True when the client is gone) is awaited every DISCONNECT_POLL seconds."""
        received = 0  # tokens seen: with logprobs, token i's entry is ticket.logprobs[i]
        checked = time.monotonic()
        while True:
            if poll and time.monotonic() - checked >= DISCONNECT_POLL:  # tokens may flow for minutes: look anyway
                checked = time.monotonic()
                if await poll():
                    self.ticket.cancel()
                    return
            try:
                event = await asyncio.wait_for(self.events.get(), DISCONNECT_POLL) if poll else await self.events.get()
            except asyncio.TimeoutError:
                continue
            if isinstance(event, Finished):
                if event.reason == "error":
                    raise _Failed(event.error)
                yield self.text.finish(), [], "length" if event.reason == "length" else "stop"
                return
            piece = self.text.push(event)
            entries = [(event, self.ticket.logprobs[received])] if self.req.logprobs else []
            received += 1
            if self.text.stopped:
                self.ticket.cancel()  # a stop string ended the reply: free the slot now
                yield piece, entries, "stop"
                return
            yield piece, entries, None

    async def whole(self, request: Request) -> Response:
        texts, entries, finish = [], [], None
        try:
            async for piece, more, reason in self.pieces(poll=request.is_disconnected):
                texts.append(piece)
                entries += more
                finish = reason
        except _Failed as e:
            raise APIError(500, f"generation failed: {e}", kind="server_error") from None
        if finish is None:  # the client went away
            return Response(status_code=499)
        usage = protocol.usage(self.prompt_tokens, len(self.ticket.tokens))
        return JSONResponse(protocol.completion_object(self.id, self.served.name, self.chat, "".join(texts), finish,
                                                       usage, self._logprobs(entries), self.created))

    async def stream(self):
        chunk = lambda **kw: protocol.chunk_object(self.id, self.served.name, self.chat, self.created, **kw)
        try:
            if self.chat:
                yield protocol.sse(chunk(role=True, text=""))
            async for piece, entries, finish in self.pieces():
                if piece or entries:
                    yield protocol.sse(chunk(text=piece, logprobs=self._logprobs(entries)))
                if finish is not None:  # the closing chunk: empty delta (chat) or text, and the reason
                    yield protocol.sse(chunk(finish_reason=finish, text=None if self.chat else ""))
            if self.req.include_usage:
                yield protocol.sse(chunk(no_choices=True,
                                         usage_=protocol.usage(self.prompt_tokens, len(self.ticket.tokens))))
            yield protocol.sse("[DONE]")
        except _Failed as e:
            yield protocol.sse(APIError(500, f"generation failed: {e}", kind="server_error").body())
        finally:  # also when the client disconnects mid-stream (the response task is cancelled)
            self.ticket.cancel()

    def _logprobs(self, entries) -> dict | None:
        if not self.req.logprobs or not entries:
            return None
        decode = self.served.tokenizer.decode
        top_n = self.req.top_logprobs
        if self.chat:
            def item(token_id, logprob):
                text = decode([token_id])
                return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

            return {"content": [{**item(t, chosen), "top_logprobs": [item(i, v) for i, v in top[:top_n]]}
                                for t, (chosen, top) in entries]}
        return {"tokens": [decode([t]) for t, _ in entries], "token_logprobs": [chosen for _, (chosen, _) in entries],
                "top_logprobs": [{decode([i]): v for i, v in top[:top_n]} for _, (_, top) in entries]}


class _Failed(Exception):
    """The batcher reported an error for this request."""
