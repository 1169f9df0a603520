"""The OpenAI API subset the server speaks: request validation and response objects.

Validation turns a request body into a `GenerationRequest` or raises `APIError`, whose JSON body has the
OpenAI error layout ({"error": {"message", "type", "param", "code"}}) and names the offending field.
Unknown fields are ignored (clients send `user`, `metadata`, ...); fields that would change what the answer
means but are not implemented here (`tools`, `n` > 1, `response_format` other than text) are refused.

Parameters beyond OpenAI's: `top_k` and `repetition_penalty` (as vLLM takes them).
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from typing import Any

ROLES = ("system", "user", "assistant")
MAX_STOP_SEQUENCES = 4


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """A validated chat or text completion request. Sampling fields left out are None (the model's defaults)."""

    model: str
    messages: list[dict[str, str]] | None  # chat
    prompt: str | None  # text completion
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    repetition_penalty: float | None
    frequency_penalty: float
    presence_penalty: float
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def parse_chat(body: dict) -> GenerationRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    return _request(body, messages=[_message(m, i) for i, m in enumerate(messages)], prompt=None, chat=True)


def parse_completion(body: dict) -> GenerationRequest:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise APIError(400, "'prompt' must be a non-empty string (one prompt per request)", "prompt")
    return _request(body, messages=None, prompt=prompt, chat=False)


def _message(m: Any, i: int) -> dict[str, str]:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise APIError(400, f"{where} must be an object with 'role' and 'content'", where)
    role, content = m.get("role"), m.get("content")
    if role not in ROLES:
        raise APIError(400, f"{where}.role must be one of {', '.join(ROLES)}, not {role!r}", f"{where}.role")
    if isinstance(content, list):  # content parts: text only
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"{where}.content[{j}]: only text parts are supported", f"{where}.content")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise APIError(400, f"{where}.content must be a string", f"{where}.content")
    return {"role": role, "content": content}


def _number(body: dict, name: str, low: float, high: float, *, integer: bool = False, open_low: bool = False):
    value = body.get(name)
    if value is None:
        return None
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise APIError(400, f"'{name}' must be {'an integer' if integer else 'a number'}, not {value!r}", name)
    if value < low or value > high or (open_low and value == low):
        lower = f"above {low}" if open_low else f"at least {low}"
        raise APIError(400, f"'{name}' must be {lower} and at most {high}, not {value}", name)
    return value


def _request(body: dict, *, messages, prompt, chat: bool) -> GenerationRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required (GET /v1/models lists the names)", "model")
    for name in ("tools", "functions", "tool_choice"):
        if body.get(name):
            raise APIError(400, f"'{name}' is not supported by this server", name)
    if (body.get("response_format") or {}).get("type", "text") != "text":
        raise APIError(400, "only response_format type 'text' is supported", "response_format")
    if body.get("n", 1) != 1:
        raise APIError(400, "only n=1 is supported", "n")
    if body.get("best_of", 1) != 1:
        raise APIError(400, "only best_of=1 is supported", "best_of")
    max_tokens = _number(body, "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens",
                         1, 1 << 30, integer=True)
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP_SEQUENCES:
        raise APIError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOP_SEQUENCES}", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object", "stream_options")
    if chat:
        logprobs = body.get("logprobs") or False
        if not isinstance(logprobs, bool):
            raise APIError(400, "'logprobs' must be true or false", "logprobs")
        top_logprobs = _number(body, "top_logprobs", 0, 20, integer=True) or 0
        if top_logprobs and not logprobs:
            raise APIError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
    else:  # the legacy completions API: logprobs is the number of alternatives
        top_logprobs = _number(body, "logprobs", 0, 5, integer=True)
        logprobs, top_logprobs = top_logprobs is not None, top_logprobs or 0
    return GenerationRequest(
        model=model, messages=messages, prompt=prompt, max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0, open_low=True),
        top_k=_number(body, "top_k", -1, 1 << 20, integer=True),
        repetition_penalty=_number(body, "repetition_penalty", 0.0, 10.0, open_low=True),
        frequency_penalty=_number(body, "frequency_penalty", -2.0, 2.0) or 0.0,
        presence_penalty=_number(body, "presence_penalty", -2.0, 2.0) or 0.0,
        stop=stop, seed=_number(body, "seed", -(1 << 63), (1 << 63) - 1, integer=True),
        stream=stream, include_usage=bool(options.get("include_usage", False)),
        logprobs=logprobs, top_logprobs=top_logprobs,
    )


# ---- responses -----------------------------------------------------------------------------------------


def new_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_object(request_id: str, model: str, chat: bool, text: str, finish_reason: str,
                      usage_: dict, logprobs: dict | None, created: int | None = None) -> dict:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": logprobs}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {"id": request_id, "object": "chat.completion" if chat else "text_completion",
            "created": created or int(time.time()), "model": model, "choices": [choice], "usage": usage_}


def chunk_object(request_id: str, model: str, chat: bool, created: int, *, text: str | None = None,
                 role: bool = False, finish_reason: str | None = None, logprobs: dict | None = None,
                 usage_: dict | None = None, no_choices: bool = False) -> dict:
    """One server-sent event's object; `no_choices` makes the closing usage-only chunk."""
    out: dict[str, Any] = {"id": request_id, "object": "chat.completion.chunk" if chat else "text_completion",
                           "created": created, "model": model}
    if no_choices:
        out["choices"] = []
    else:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": logprobs}
        if chat:
            delta: dict[str, str] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
        out["choices"] = [choice]
    if usage_ is not None:
        out["usage"] = usage_
    return out


def sse(obj: dict | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n".encode()
