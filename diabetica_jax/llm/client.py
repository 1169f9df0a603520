"""Chat with an LLM: an OpenAI-compatible endpoint, and the disk cache every backend sits behind.

`OpenAIClient` talks to any OpenAI-compatible chat endpoint (`POST {base_url}/chat/completions`);
its API key is read from the environment variable named in the config and never logged.
`CachedChat` answers repeated requests from disk (keyed by a hash of model, messages and
parameters), so an interrupted run resumes without paying twice; failures are retried with
exponential backoff and are not cached. Curation (teacher, refine) and evaluation (judge) use both.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol


class LLMError(RuntimeError):
    """The backend could not produce a reply (after retries)."""


class ChatBackend(Protocol):
    name: str

    def chat(self, messages: list[dict[str, str]], max_tokens: int, temperature: float) -> str: ...


class OpenAIClient:
    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"openai:{model}"
        self.api_key_env = api_key_env
        self.timeout = timeout

    def chat(self, messages, max_tokens: int, temperature: float) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "max_tokens": max_tokens,
                           "temperature": temperature}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            raise LLMError(f"HTTP {e.code} from {self.base_url}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise LLMError(f"timeout or connection error ({type(reason).__name__}: {reason})") from None
        except json.JSONDecodeError:
            raise LLMError("reply is not JSON") from None
        try:
            return payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise LLMError("reply has no choices[0].message.content") from None


class CachedChat:
    """Disk cache + retries with exponential backoff in front of a chat backend."""

    def __init__(self, backend: ChatBackend, cache_dir: str | Path, retries: int = 3, backoff: float = 0.5):
        self.backend, self.name = backend, backend.name
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.retries, self.backoff = retries, backoff
        self.calls = self.cache_hits = self.failures = 0
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def _path(self, messages, max_tokens, temperature) -> Path:
        key = json.dumps([self.name, messages, max_tokens, temperature], ensure_ascii=False, sort_keys=True)
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def chat(self, messages, max_tokens: int = 512, temperature: float = 0.0) -> str:
        path = self._path(messages, max_tokens, temperature)
        if path.is_file():
            self._count("cache_hits")
            return json.loads(path.read_text(encoding="utf-8"))["reply"]
        last = None
        for attempt in range(self.retries):
            self._count("calls")
            try:
                reply = self.backend.chat(messages, max_tokens, temperature)
            except LLMError as e:
                last = e
                time.sleep(self.backoff * 2**attempt)
                continue
            tmp = path.with_suffix(".partial")
            tmp.write_text(json.dumps({"reply": reply}, ensure_ascii=False), encoding="utf-8")
            tmp.replace(path)
            return reply
        self._count("failures")
        raise LLMError(f"chat backend failed after {self.retries} attempts: {last}")
