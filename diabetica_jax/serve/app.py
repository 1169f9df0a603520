"""The HTTP side of `diabetica-jax serve`: an OpenAI-compatible API and the clinic web page, on Starlette.

Routes: POST /v1/chat/completions and /v1/completions (JSON, or server-sent events with `stream: true`),
GET /v1/models, GET /health, GET / (the web page), the tokenizer as vLLM serves it (POST /tokenize and
/detokenize, GET /tokenizer_info) and GET /openapi.json (the routes and fields). Every request is answered:
bad input gets a 4xx with an OpenAI-style JSON error naming the field, a failure inside gets a 500 JSON
error, and the server keeps running. A client that disconnects cancels its request, which frees its decode
slot at the next step. Request bodies are capped and must arrive in time (413, 408: serve/limits.py, which
also logs disconnects).

With an API key (read from an environment variable when the app is made; never logged) every /v1 and
tokenizer route wants `Authorization: Bearer KEY`; the page, /health and /openapi.json stay open (the page
asks the user for the key).
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
from diabetica_jax.serve import openapi, protocol, tokens
from diabetica_jax.serve.limits import BodyGuard, BodyLimits
from diabetica_jax.serve.model import ServedModel
from diabetica_jax.serve.protocol import APIError, GenerationRequest
from diabetica_jax.serve.text import TextStream, token_bytes

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

    async def tokenize(request: Request) -> Response:
        authorise(request)
        return JSONResponse(await tokens.tokenize(served, protocol.parse_body(await request.body())))

    async def detokenize(request: Request) -> Response:
        authorise(request)
        return JSONResponse(tokens.detokenize(served, protocol.parse_body(await request.body())))

    async def tokenizer_info(request: Request) -> Response:
        authorise(request)
        return JSONResponse(tokens.tokenizer_info(served))

    schema = openapi.schema(served)

    async def openapi_json(request: Request) -> Response:  # open, like the page: it says what the API takes
        return JSONResponse(schema)

    async def api_error(request: Request, exc: APIError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                     kind=kind).body(), status_code=exc.status_code, headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}", kind="server_error").body(),
                            status_code=500)

    routes = [
        Route("/", index), Route("/health", health), Route("/v1/models", models),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]), Route("/detokenize", detokenize, methods=["POST"]),
        Route("/tokenizer_info", tokenizer_info), Route("/openapi.json", openapi_json),
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
    prompts = [await run_in_threadpool(served.chat_tokens, req.messages)] if chat else \
        [p if isinstance(p, list) else await run_in_threadpool(served.text_tokens, p) for p in req.prompts]
    max_tokens = req.max_tokens if req.max_tokens is not None else served.limits.max_new_tokens
    if (req.max_tokens_asked or 0) > served.limits.max_new_tokens:
        raise APIError(400, f"max_tokens is {req.max_tokens_asked}; this server generates at most "
                       f"{served.limits.max_new_tokens}", "max_tokens")
    for i, prompt in enumerate(prompts):
        _check_prompt(served, prompt, max_tokens, "messages" if chat else "prompt",
                      "" if len(prompts) == 1 else f" (prompt {i})")
    protocol.check_token_ids(req.logit_bias, served.vocab_size, "logit_bias")
    sampling = served.sampling(req.temperature, req.top_p, None if req.top_k is None else max(req.top_k, 0),
                               req.repetition_penalty, req.seed)
    replies = []
    try:
        for i, prompt in enumerate(prompts):
            echoed = await _echo(served, req, prompt, req.prompts[i]) if req.echo else None
            replies.append(_Reply(served, req, i, prompt, echoed, chat))
            if max_tokens:
                replies[-1].submit(max_tokens, sampling)
    except BatcherError as e:
        for reply in replies:
            reply.cancel()
        busy = "wait for a slot" in str(e)
        raise APIError(429 if busy else 400, str(e), code="server_busy" if busy else None,
                       kind="rate_limit_error" if busy else "invalid_request_error") from None
    if req.stream:
        return StreamingResponse(replies[0].stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await _whole(served, req, replies, request)


def _check_prompt(served: ServedModel, prompt: list[int], max_tokens: int, field: str, which: str) -> None:
    """A prompt the server can take with `max_tokens` new tokens, or the 400 that says why not."""
    limits = served.limits
    protocol.check_token_ids(prompt, served.vocab_size, field)
    if len(prompt) > limits.max_prompt_tokens:
        raise APIError(400, f"the prompt{which} has {len(prompt)} tokens; this server takes at most "
                       f"{limits.max_prompt_tokens}", field, "context_length_exceeded")
    if len(prompt) + max_tokens > served.context_length:
        raise APIError(400, f"the prompt{which} ({len(prompt)} tokens) and max_tokens ({max_tokens}) pass the "
                       f"model's context of {served.context_length} positions", field, "context_length_exceeded")


async def _echo(served: ServedModel, req: GenerationRequest, tokens: list[int], prompt) -> tuple[str, list]:
    """The prompt as `echo` returns it: its text, and (with logprobs) each token's entry (None for the first)."""
    text = prompt if isinstance(prompt, str) else served.tokenizer.decode(tokens)
    entries = await run_in_threadpool(served.prompt_logprobs, tokens) if req.logprobs else []
    return text, list(zip(tokens, entries))


async def _whole(served: ServedModel, req: GenerationRequest, replies: list[_Reply], request: Request) -> Response:
    """The non-streamed answer: every prompt's reply as one choice, once all are done."""
    try:
        done = await asyncio.gather(*(reply.whole(request.is_disconnected) for reply in replies))
    except _Failed as e:
        raise APIError(500, f"generation failed: {e}", kind="server_error") from None
    finally:
        for reply in replies:
            reply.cancel()  # no-ops for finished ones; frees the others' slots when one failed
    if any(choice is None for choice in done):  # the client went away
        return Response(status_code=499)
    usage = protocol.usage(sum(r.prompt_tokens for r in replies), sum(r.completion_tokens for r in replies))
    return JSONResponse(protocol.completion_object(replies[0].id, served.name, replies[0].chat, done, usage,
                                                   replies[0].created))


class _Reply:
    """One prompt's answer (one choice), built from its ticket's events as text pieces with their finish reason.
    With `echo`, the prompt's text and token entries come first; with max_tokens 0 there is no ticket."""

    def __init__(self, served: ServedModel, req: GenerationRequest, index: int, prompt: list[int],
                 echoed: tuple[str, list] | None, chat: bool):
        self.served, self.req, self.index, self.echoed, self.chat = served, req, index, echoed, chat
        self.prompt, self.prompt_tokens = prompt, len(prompt)
        self.ticket, self.events = None, asyncio.Queue()
        self.id, self.created = protocol.new_id(chat), int(time.time())
        self.text = TextStream(served.tokenizer, req.stop)

    def submit(self, max_tokens: int, sampling) -> None:
        loop = asyncio.get_running_loop()
        self.ticket = self.served.batcher.submit(
            self.prompt, max_tokens, sampling, frequency_penalty=self.req.frequency_penalty,
            presence_penalty=self.req.presence_penalty, logprobs=self.req.logprobs,
            logit_bias=self.req.logit_bias or None,
            deliver=lambda event: loop.call_soon_threadsafe(self.events.put_nowait, event))

    def cancel(self) -> None:
        if self.ticket is not None:
            self.ticket.cancel()

    @property
    def completion_tokens(self) -> int:
        return 0 if self.ticket is None else len(self.ticket.tokens)

    async def pieces(self, poll=None):
        """(text, logprob entries, finish_reason or None) per token; the last has the finish reason.
        `poll` (async, returns True when the client is gone) is awaited every DISCONNECT_POLL seconds."""
        if self.echoed is not None:
            text, entries = self.echoed
            yield text, entries, None if self.ticket else "length"
        if self.ticket is None:
            return
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

    async def whole(self, poll) -> dict | None:
        """This prompt's choice object, or None when the client went away."""
        texts, entries, finish = [], [], None
        async for piece, more, reason in self.pieces(poll=poll):
            texts.append(piece)
            entries += more
            finish = reason
        if finish is None:
            return None
        return protocol.choice_object(self.index, self.chat, "".join(texts), finish, self._logprobs(entries))

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
                                         usage_=protocol.usage(self.prompt_tokens, self.completion_tokens)))
            yield protocol.sse("[DONE]")
        except _Failed as e:
            yield protocol.sse(APIError(500, f"generation failed: {e}", kind="server_error").body())
        finally:  # also when the client disconnects mid-stream (the response task is cancelled)
            self.cancel()

    def _logprobs(self, entries) -> dict | None:
        """The logprobs object of `entries` [(token id, (its logprob, [(id, logprob)] best first) or None)]:
        None marks an echoed prompt's first token, which nothing predicts."""
        if not self.req.logprobs or not entries:
            return None
        tokenizer, top_n = self.served.tokenizer, self.req.top_logprobs
        decode = tokenizer.decode
        if self.chat:
            def item(token_id, logprob):
                return {"token": decode([token_id]), "logprob": logprob,
                        "bytes": list(token_bytes(tokenizer, token_id))}

            return {"content": [{**item(t, chosen), "top_logprobs": [item(i, v) for i, v in top[:top_n]]}
                                for t, (chosen, top) in entries]}

        def alternatives(token_id, entry):  # the top `logprobs` and the token itself, as vLLM reports them
            if entry is None:
                return None
            chosen, top = entry
            return {**{decode([i]): v for i, v in top[:top_n]}, decode([token_id]): chosen}

        return {"tokens": [decode([t]) for t, _ in entries],
                "token_logprobs": [None if e is None else e[0] for _, e in entries],
                "top_logprobs": [alternatives(t, e) for t, e in entries]}


class _Failed(Exception):
    """The batcher reported an error for this request."""
