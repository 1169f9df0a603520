"""Any OpenAI-compatible endpoint as the model under test (`--model openai:NAME`): GPT-4, Claude through a
compatible gateway, vLLM, or this project's own server.

`RemoteModel` answers the same two questions the local model does, over HTTP:

- `generate(conversations, max_new_tokens, sampling)`: one chat request per conversation, in parallel
  (`concurrency` worker threads), the outputs in the conversations' order. `SamplingParams` becomes request
  parameters: `temperature` (0 = greedy is sent as temperature 0), `top_p` (only when < 1) and `seed`.
  `repetition_penalty` and `top_k` are not OpenAI parameters and are ignored (logged once when they are
  set): an endpoint decodes with its own rules, so `decoding` is None ("the endpoint's own defaults").
- `letter_logprobs(conversations, letters)`: the log-probability of each letter as the first token of the
  reply, from a `logprobs: true, top_logprobs: 20, max_tokens: 1` request (temperature 0). A letter is
  matched by the token's text with surrounding whitespace stripped ("A" and " A" both count, their
  probabilities added); a letter not among the 20 top tokens gets -inf. When the endpoint does not return
  logprobs (many gateways do not, or refuse the parameter with a 4xx), the answer is None and the report
  says "not available"; the first conversation is asked alone first, so an endpoint without logprobs
  costs one request, not one per item.

Every request goes through `CachedChat` (llm/client.py): retries with Retry-After or exponential backoff,
and a disk cache keyed by model name, messages and every request parameter, so a rerun after a failure or
an interruption re-requests only what is missing. The cache key holds the model name, not the URL: the same
model behind a restarted server on another port is still answered from the cache (keep one cache
directory per model and run, as the runner does).

Timeouts, connection errors, 429, 5xx and 200 replies that are not a chat completion (not JSON, no
`choices[0].message.content` string) are retried (llm/client.py). A request that still fails after its
retries does not abort the run. `generate` returns "" for that item and lists it in `self.failures` as
(index, reason); `letter_logprobs` gives it a row of NaN and lists it in `self.logprob_failures`. Each call
resets its own list, so a task reads `failures` after `generate` and `logprob_failures` after
`letter_logprobs`, and marks those items as failed rather than as wrong answers (failures are not cached: a
rerun asks for them again).

An empty completion (`content: ""`) is an answer, not a failure: a model under test may well say nothing
(or stop at once), and that is its result to be scored, so it is neither retried nor listed in `failures`,
and it is cached like any other reply. (The teacher and the judge, which go through `CachedChat.chat`,
treat an empty reply as a retryable failure instead: they have no use for one.)

The API key is read from the environment variable `api_key_env` per request and sent only as
`Authorization: Bearer`; it is never stored on this object, logged, or put into an error or failure reason.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from diabetica_jax.generate import SamplingParams
from diabetica_jax.llm.client import CachedChat, LLMError, OpenAIClient

log = logging.getLogger(__name__)

PREFIX = "openai:"
TOP_LOGPROBS = 20  # the most OpenAI's API returns


class RemoteModel:
    """An OpenAI-compatible chat endpoint as the model under test; `model` is the endpoint's model name
    ("gpt-4o", or "openai:gpt-4o" as `--model` writes it)."""

    def __init__(self, model: str, base_url: str, api_key_env: str | None, cache_dir: str | Path,
                 concurrency: int = 4, timeout: float = 60.0, retries: int = 3):
        model = model.removeprefix(PREFIX)
        if not model:
            raise ValueError(f"no model name in {PREFIX!r}: write {PREFIX}NAME, e.g. {PREFIX}gpt-4o")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.name = f"{PREFIX}{model}"
        self.decoding: dict | None = None  # the endpoint's own defaults
        self.concurrency = concurrency
        self.client = OpenAIClient(base_url, model, api_key_env, timeout)
        self.chat = CachedChat(self.client, cache_dir, retries=retries)
        self.failures: list[tuple[int, str]] = []  # of the last generate()
        self.logprob_failures: list[tuple[int, str]] = []  # of the last letter_logprobs()
        self._warned_ignored = False

    def close(self) -> None:
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"RemoteModel({self.name!r}, {self.client.base_url!r})"

    def _run(self, ask, n: int) -> list:
        """ask(i) for i in range(n) on `concurrency` threads; results in order, LLMError instances for failures."""
        def safe(i):
            try:
                return ask(i)
            except LLMError as e:
                return e

        if n <= 1 or self.concurrency == 1:
            return [safe(i) for i in range(n)]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, n)) as pool:
            return list(pool.map(safe, range(n)))

    def request_parameters(self, sampling: SamplingParams | None) -> dict:
        """The OpenAI request parameters `sampling` maps to (besides max_tokens); None: none at all, so the
        endpoint decodes with its own defaults (faithful mode: the paper's API models ran with theirs)."""
        if sampling is None:
            return {}
        ignored = [f"{name}={getattr(sampling, name)}" for name, off in (("repetition_penalty", 1.0), ("top_k", 0))
                   if getattr(sampling, name) != off]
        if ignored and not self._warned_ignored:
            self._warned_ignored = True
            log.warning("%s: %s not sent (not OpenAI request parameters); the endpoint decodes without them",
                        self.name, ", ".join(ignored))
        params = {"temperature": 0.0 if sampling.greedy else float(sampling.temperature), "seed": sampling.seed}
        if sampling.top_p < 1.0:
            params["top_p"] = float(sampling.top_p)
        return params

    def generate(self, conversations: list[list[dict[str, str]]], max_new_tokens: int,
                 sampling: SamplingParams | None = None) -> list[str]:
        """One reply per conversation, in order; "" for a request that failed after its retries, which is
        then listed in `self.failures` as (index, reason). An empty completion is a reply like any other."""
        params = self.request_parameters(sampling)
        temperature = params.pop("temperature", None)

        def ask(i):
            # CachedChat.complete returns (fresh or cached) only choices with a message.content string
            return self.chat.complete(conversations[i], max_new_tokens, temperature, **params)["message"]["content"]

        results = self._run(ask, len(conversations))
        self.failures = _failures(results, self.name, "requests")
        return ["" if isinstance(r, LLMError) else r for r in results]

    def letter_logprobs(self, conversations: list[list[dict[str, str]]], letters: str) -> np.ndarray | None:
        """[n, len(letters)] log-probabilities of each letter as the reply's first token (-inf: not among the
        top 20; a row of NaN: the request failed, see `self.logprob_failures`); None when the endpoint does
        not return logprobs."""
        self.logprob_failures = []
        rows = np.full((len(conversations), len(letters)), np.nan)
        if not conversations:
            return rows

        def ask(i):
            choice = self.chat.complete(conversations[i], 1, 0.0, logprobs=True, top_logprobs=TOP_LOGPROBS)
            return _first_token_logprobs(choice, letters)

        # The first conversation alone: an endpoint without logprobs costs one request, not one per item.
        first = self._run(ask, 1)[0]
        if isinstance(first, LLMError) and not first.retryable:
            log.warning("%s: the endpoint refused a logprobs request, so letter log-likelihoods are not "
                        "available: %s", self.name, first)
            return None
        if first is None:
            log.warning("%s: the endpoint returned no logprobs; letter log-likelihoods are not available", self.name)
            return None
        rest = self._run(lambda i: ask(i + 1), len(conversations) - 1)
        results = [first, *rest]
        for i, result in enumerate(results):
            if result is None:  # logprobs for some items but not for others: a gateway changing its mind
                results[i] = LLMError(f"{self.name}: reply has no logprobs")
            elif not isinstance(result, LLMError):
                rows[i] = result
        self.logprob_failures = _failures(results, self.name, "logprob requests")
        return rows


def _failures(results: list, name: str, what: str) -> list[tuple[int, str]]:
    failures = [(i, str(r)) for i, r in enumerate(results) if isinstance(r, LLMError)]
    if failures:
        log.warning("%s: %d of %d %s failed after retries (items %s); they are recorded as failed, and a "
                    "rerun requests only them. First: %s", name, len(failures), len(results), what,
                    ", ".join(str(i) for i, _ in failures[:10]) + (", ..." if len(failures) > 10 else ""),
                    failures[0][1])
    return failures


def _first_token_logprobs(choice: dict, letters: str) -> np.ndarray | None:
    """Each letter's log-probability among the first token's top_logprobs; None when the reply has none."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content or not isinstance(content[0], dict):
        return None
    first = content[0]
    candidates = first.get("top_logprobs") or []
    if not candidates and "token" in first:  # top_logprobs ignored: at least the chosen token is known
        candidates = [first]
    row = np.full(len(letters), -np.inf)
    for candidate in candidates:
        token, logprob = str(candidate.get("token", "")).strip(), candidate.get("logprob")
        if len(token) == 1 and token in letters and isinstance(logprob, (int, float)) and not math.isnan(logprob):
            j = letters.index(token)
            row[j] = np.logaddexp(row[j], float(logprob))
    return row
