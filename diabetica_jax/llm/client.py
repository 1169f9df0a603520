"""Chat with an LLM: an OpenAI-compatible endpoint, and the disk cache and retries every backend sits behind.

`OpenAIClient` talks to any OpenAI-compatible chat endpoint (`POST {base_url}/chat/completions`) over one
`httpx.Client`, so concurrent and successive requests reuse pooled connections. Each `chat` call is exactly
one HTTP request: it never retries, it classifies. Failures raise `LLMError` with `retryable` set for
timeouts, connection errors, 429 and 5xx, and for a 200 reply that is not JSON or has no
`choices[0].message.content` string (a proxy's error page, an overloaded server's cut-off body: another
attempt usually gets a real reply); `retry_after` comes from the reply's `Retry-After` header (429, 503).
Any other 4xx (bad request, bad key, unknown model) is not retryable, and its message names the status, the
endpoint and the server's error message. The API key is read from the environment variable named in the
config, sent only as `Authorization: Bearer`, and redacted from every error message.

`CachedChat` is the one place that retries (with `tenacity`), for every backend: it waits `Retry-After`
when the server sent one (capped at `MAX_RETRY_AFTER`), else exponential backoff with jitter (first wait
`backoff`, default `DEFAULT_BACKOFF`). It answers repeated requests from disk (keyed by a hash of backend
name, messages and parameters), so an interrupted run resumes without paying twice; failures are not
cached. `chat` treats an empty (or whitespace-only) reply as a retryable failure, never cached: the teacher,
the refiner and the judge have no use for one, so after the last attempt it is that item's failure like any
other. (`complete` keeps an empty `content`: for a model under test an empty completion is an answer.)
Entries are written to a temporary file and renamed into place, so a killed run leaves no half-written
entry under its real name; an entry that is damaged all the same (unreadable, not JSON, not the expected
shape: a disk that filled up, a crash before the data reached the disk) is a cache miss: a warning names
the file, the request is sent again and the entry overwritten. Its counters: `calls` counts attempts at the
backend (for `OpenAIClient`, HTTP requests sent, retries included), `cache_hits` requests answered from
disk, `failures` requests that raised `LLMError` after their last attempt. Curation (teacher, refine)
and evaluation (judge) use both.

`complete` (on both) is `chat` for callers that need more than the text: it sends extra request parameters
(`seed`, `top_p`, `logprobs`, `top_logprobs`, ...) and returns the endpoint's whole `choices[0]` object
(message, logprobs, finish_reason); its cache key includes every extra parameter. Evaluation's
`RemoteModel` (an endpoint as the model under test) uses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
from pathlib import Path
from typing import Protocol

import httpx
import tenacity

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 60.0  # seconds; a server asking for longer is not worth blocking a worker thread on
MAX_BACKOFF = 30.0  # seconds; the longest exponential wait between two attempts
DEFAULT_BACKOFF = 0.5  # seconds; CachedChat's first exponential wait when none is given


_MISS = object()  # CachedChat._read: no usable cache entry


class LLMError(RuntimeError):
    """The backend could not produce a reply. `retryable`: another attempt may succeed;
    `retry_after`: seconds the server asked to wait first (None when it did not say)."""

    def __init__(self, message: str, retryable: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.retryable, self.retry_after = retryable, retry_after


class ChatBackend(Protocol):
    name: str

    def chat(self, messages: list[dict[str, str]], max_tokens: int, temperature: float) -> str: ...


class OpenAIClient:
    """One OpenAI-compatible chat endpoint; thread-safe (httpx's connection pool is)."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.name = f"openai:{model}"
        self.api_key_env = api_key_env
        self.timeout = timeout
        self._http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def chat(self, messages, max_tokens: int, temperature: float) -> str:
        return self.complete(messages, max_tokens, temperature)["message"]["content"]

    def complete(self, messages, max_tokens: int, temperature: float | None, **extra) -> dict:
        """One request with `extra` body parameters (seed, top_p, logprobs, ...); the reply's `choices[0]`,
        whose `message.content` is a string (possibly empty). temperature None: not sent, the endpoint's
        default applies."""
        # Read the key per request: it lives only in the environment and in the header, never on self.
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body = {**extra, "model": self.model, "messages": messages, "max_tokens": max_tokens}
        if temperature is not None:
            body["temperature"] = temperature
        try:
            response = self._http.post(self.url, json=body, headers=headers)
        except httpx.TimeoutException as e:
            raise LLMError(f"timeout after {self.timeout} s from {self.url} ({type(e).__name__})",
                           retryable=True) from None
        except httpx.TransportError as e:
            raise LLMError(_redact(f"connection error to {self.url} ({type(e).__name__}: {e})", key),
                           retryable=True) from None
        if not response.is_success:
            status = response.status_code
            detail = _error_detail(response)
            raise LLMError(_redact(f"HTTP {status} from {self.url}" + (f": {detail}" if detail else ""), key),
                           retryable=status == 429 or status >= 500,
                           retry_after=_retry_after(response.headers.get("Retry-After")))
        # A 200 that is not a chat completion is most often a proxy's or an overloaded server's doing: retryable.
        try:
            payload = response.json()
        except ValueError:
            snippet = " ".join(response.text[:80].split())
            raise LLMError(_redact(f"reply from {self.url} is not JSON (HTTP {response.status_code}, "
                                   f"{response.headers.get('Content-Type', 'no Content-Type')}: {snippet!r})", key),
                           retryable=True) from None
        try:
            choice = payload["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise LLMError(f"reply from {self.url} has no choices[0]", retryable=True) from None
        if not _has_content(choice):
            raise LLMError(f"reply from {self.url} has no choices[0].message.content string", retryable=True)
        return choice


def _error_detail(response: httpx.Response) -> str:
    """The server's own explanation: OpenAI's {"error": {"message": ...}}, or a short plain-text body."""
    try:
        payload = response.json()
    except ValueError:
        return response.text.strip()[:200]
    error = payload.get("error", payload.get("detail")) if isinstance(payload, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error)[:500] if error else ""


def _retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After: <seconds>` header; the HTTP-date form falls back to backoff (None)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _has_content(choice) -> bool:
    """A `choices[0]` object with a `message.content` string (empty included)."""
    return (isinstance(choice, dict) and isinstance(choice.get("message"), dict)
            and isinstance(choice["message"].get("content"), str))


def _has_text(reply) -> bool:
    """A chat reply with something in it."""
    return isinstance(reply, str) and bool(reply.strip())


def _redact(message: str, key: str | None) -> str:
    # Some servers echo the key they rejected; it must not reach logs, rejects.jsonl or reports.
    return message.replace(key, "***") if key else message


class CachedChat:
    """Disk cache + retries (Retry-After or exponential backoff with jitter) in front of a chat backend.

    `retries` is the number of attempts per request (1: no retry); `backoff` the first exponential wait in s
    (None: `DEFAULT_BACKOFF`, read when the object is made).
    """

    def __init__(self, backend: ChatBackend, cache_dir: str | Path, retries: int = 3, backoff: float | None = None):
        self.backend, self.name = backend, backend.name
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.retries = max(1, retries)
        self.backoff = DEFAULT_BACKOFF if backoff is None else backoff
        self.calls = self.cache_hits = self.failures = 0
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def _path(self, *request) -> Path:
        key = json.dumps([self.name, *request], ensure_ascii=False, sort_keys=True)
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def _wait(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception()
        if error.retry_after is not None:
            return min(error.retry_after, MAX_RETRY_AFTER)
        # backoff * 2^(n-1) plus up to `backoff` of jitter, so concurrent workers do not retry in lockstep
        return min(self.backoff * 2 ** (state.attempt_number - 1), MAX_BACKOFF) + random.uniform(0, self.backoff)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        log.info("%s: %s; attempt %d of %d in %.1f s", self.name, state.outcome.exception(),
                 state.attempt_number + 1, self.retries, state.upcoming_sleep)

    def _attempt(self, call, valid, problem: str, *args, **kwargs):
        self._count("calls")
        result = call(*args, **kwargs)
        if not valid(result):  # inside the attempt: retried like any transient failure, and never cached
            raise LLMError(f"{problem} from {getattr(self.backend, 'url', self.name)}", retryable=True)
        return result

    def chat(self, messages, max_tokens: int = 512, temperature: float = 0.0) -> str:
        """The reply's text; an empty or whitespace-only reply is a retryable failure (see the module docstring)."""
        path = self._path(messages, max_tokens, temperature)  # the key every existing cache was written with
        return self._cached(path, "reply", _has_text, "empty reply", self.backend.chat, messages, max_tokens,
                            temperature)

    def complete(self, messages, max_tokens: int = 512, temperature: float = 0.0, **extra) -> dict:
        """The backend's whole `choices[0]` object, for requests with `extra` parameters (None values are
        not sent); cached under a key of name, messages, max_tokens, temperature and every extra parameter."""
        complete = getattr(self.backend, "complete", None)
        if complete is None:
            raise TypeError(f"{self.name} answers chat requests only (no complete())")
        extra = {k: v for k, v in extra.items() if v is not None}
        path = self._path("complete", messages, max_tokens, temperature, extra)
        return self._cached(path, "choice", _has_content, "reply without choices[0].message.content", complete,
                            messages, max_tokens, temperature, **extra)

    def _read(self, path: Path, field: str, valid):
        """The cached value at `path`, or _MISS (with a warning) when the entry is damaged."""
        try:
            value = json.loads(path.read_text(encoding="utf-8"))[field]
        except FileNotFoundError:  # removed since is_file(): a plain miss
            return _MISS
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            problem = f"{type(e).__name__}: {e}"
        else:
            if valid(value):
                return value
            problem = f"its {field!r} is {type(value).__name__} {str(value)[:40]!r}"
        log.warning("%s: damaged cache entry %s (%s): treated as a miss, asked again and overwritten",
                    self.name, path, problem)
        return _MISS

    def _cached(self, path: Path, field: str, valid, problem: str, call, *args, **kwargs):
        if path.is_file():
            value = self._read(path, field, valid)
            if value is not _MISS:
                self._count("cache_hits")
                return value
        # A fresh Retrying per request: its attempt state is per call, and calls come from many threads.
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries),
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, LLMError) and e.retryable),
            wait=self._wait, before_sleep=self._log_retry, reraise=True)
        try:
            result = retrying(self._attempt, call, valid, problem, *args, **kwargs)
        except LLMError as e:
            self._count("failures")
            attempts = retrying.statistics.get("attempt_number", 1)
            # `retryable` is kept: callers can tell "the server refused this request" (False) from "it was down"
            raise LLMError(f"{self.name} failed after {attempts} attempt{'s' * (attempts != 1)}: {e}",
                           retryable=e.retryable) from None
        # two threads (or two processes sharing the cache) may ask the same thing: a temporary name of their own
        tmp = path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.partial")
        tmp.write_text(json.dumps({field: result}, ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)
        return result
