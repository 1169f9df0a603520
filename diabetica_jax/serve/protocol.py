"""The OpenAI API subset the server speaks: request validation and response objects.

Validation turns a request body into a `GenerationRequest` or raises `APIError`, whose JSON body has the
OpenAI error layout ({"error": {"message", "type", "param", "code"}}) and names the offending field.
A field set to `null` counts as left out, as OpenAI reads it. Unknown fields are ignored (clients send
`user`, `metadata`, ...); fields that would change what the answer means but are not implemented here
(`tools`, `n` > 1, `suffix`, `response_format` other than text) are refused, never silently dropped.
NaN and infinity are no numbers in JSON: anywhere in a body they are refused, naming the field.

/v1/completions takes its prompt as vLLM does: a string, a list of strings, a list of token ids or a list of
such lists (one choice per prompt), with `echo` (the prompt returned before the reply, with its token
log-probabilities when `logprobs` is set; `max_tokens` 0 then scores the prompt alone).

Parameters beyond OpenAI's: `top_k` and `repetition_penalty` (as vLLM takes them).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import uuid
from typing import Any

from diabetica_jax.generate.batcher import MAX_LOGIT_BIAS

ROLES = ("system", "user", "assistant")
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role
MAX_STOP_SEQUENCES = 4
MAX_PROMPTS = 64  # prompts in one /v1/completions request (each takes a decode slot)
MAX_COMPLETION_LOGPROBS = 5  # the legacy completions API's limit on `logprobs`
MAX_CHAT_LOGPROBS = 20  # the chat API's limit on `top_logprobs`
LOGIT_BIAS_RANGE = 100.0


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


Prompt = str | list[int]  # text, or token ids


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """A validated chat or text completion request. Sampling fields left out are None (the model's defaults)."""

    model: str
    messages: list[dict[str, str]] | None  # chat
    prompts: list[Prompt] | None  # text completion: one choice per prompt
    max_tokens: int | None  # 0 only with echo: score the prompt, generate nothing
    max_tokens_asked: int | None  # the larger of max_tokens and max_completion_tokens: both must be within limits
    temperature: float | None
    top_p: float | None
    top_k: int | None
    repetition_penalty: float | None
    frequency_penalty: float
    presence_penalty: float
    logit_bias: dict[int, float]
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int
    echo: bool = False


class _NonFinite:
    """What the JSON parser gives for NaN, Infinity or a number too large for a float, so that the field
    holding it can be named (the parser alone cannot say where it was)."""

    def __init__(self, text: str):
        self.text = text


def _parse_float(text: str):
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _find_non_finite(value, path: str) -> str | None:
    if isinstance(value, _NonFinite):
        return path
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for key, item in items:
        where = _find_non_finite(item, key if not path else f"{path}{key}" if key.startswith("[") else f"{path}.{key}")
        if where is not None:
            return where
    return None


def parse_body(raw: bytes) -> dict:
    """The request body as a JSON object without its null fields; NaN or infinity anywhere is refused."""
    try:
        body = json.loads(raw, parse_constant=_NonFinite, parse_float=_parse_float)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise APIError(400, "the request body nests too deeply") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    where = _find_non_finite(body, "")
    if where is not None:
        raise APIError(400, f"'{where}' is not a finite number (NaN and infinity are not JSON numbers)", where)
    return {key: value for key, value in body.items() if value is not None}


def parse_chat(body: dict) -> GenerationRequest:
    messages = parse_messages(body.get("messages"))
    if body.get("echo"):
        raise APIError(400, "'echo' is a /v1/completions field", "echo")
    return _request(body, messages=messages, prompts=None, chat=True)


def parse_messages(messages: Any) -> list[dict[str, str]]:
    """A chat's messages as [{role, content}] with text content and the system/user/assistant roles."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    return [_message(m, i) for i, m in enumerate(messages)]


def parse_completion(body: dict) -> GenerationRequest:
    if "suffix" in body:
        raise APIError(400, "'suffix' (text after the insertion point) is not supported by this server", "suffix")
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise APIError(400, "'echo' must be true or false", "echo")
    prompts = _prompts(body.get("prompt"))
    if body.get("stream") and len(prompts) > 1:
        raise APIError(400, "streaming takes one prompt per request; send the others separately", "prompt")
    return _request(body, messages=None, prompts=prompts, chat=False, echo=echo)


def _prompts(prompt: Any) -> list[Prompt]:
    """`prompt` as a list of prompts: a string, a list of strings, token ids or a list of token-id lists."""
    shape = "a string, a list of strings, a list of token ids or a list of token-id lists"
    if isinstance(prompt, str) or _is_ids(prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and (all(isinstance(p, str) for p in prompt)
                                                  or all(_is_ids(p) for p in prompt)):
        prompts = list(prompt)
    else:
        raise APIError(400, f"'prompt' must be {shape} (none of them empty)", "prompt")
    if len(prompts) > MAX_PROMPTS:
        raise APIError(400, f"'prompt' holds {len(prompts)} prompts; one request takes at most {MAX_PROMPTS}",
                       "prompt")
    for i, p in enumerate(prompts):
        if not p:
            raise APIError(400, f"'prompt'{'' if len(prompts) == 1 else f'[{i}]'} is empty", "prompt")
    return [p if isinstance(p, str) else [as_integer(t) for t in p] for p in prompts]


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(as_integer(t) is not None and t >= 0 for t in value)


def check_token_ids(ids, vocab_size: int, field: str) -> None:
    """The 400 naming `field` when a token id in `ids` (non-negative ints) is past the vocabulary."""
    bad = next((t for t in ids if t >= vocab_size), None)
    if bad is not None:
        raise APIError(400, f"'{field}' names token id {bad}; the vocabulary has ids 0 to {vocab_size - 1}", field)


def as_integer(value: Any) -> int | None:
    """`value` as an int when JSON Schema calls it an integer (1 and 1.0 alike; never true/false), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _message(m: Any, i: int) -> dict[str, str]:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise APIError(400, f"{where} must be an object with 'role' and 'content'", where)
    role, content = m.get("role"), m.get("content")
    if not isinstance(role, str):
        raise APIError(400, f"{where}.role must be a string, not {type(role).__name__}", f"{where}.role")
    role = ROLE_ALIASES.get(role, role)
    if role == "tool" or m.get("tool_calls"):
        raise APIError(400, f"{where}: tool calls and tool results need `tools`, which this server does not "
                       "support", f"{where}.role" if role == "tool" else f"{where}.tool_calls")
    if role not in ROLES:
        raise APIError(400, f"{where}.role must be one of {', '.join(ROLES + tuple(ROLE_ALIASES))}, not {role!r}",
                       f"{where}.role")
    if content is None and role == "assistant":  # OpenAI lets an assistant turn carry no text
        content = ""
    if isinstance(content, list):  # content parts: text only
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"{where}.content[{j}]: only text parts are supported", f"{where}.content")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise APIError(400, f"{where}.content must be a string or a list of text parts", f"{where}.content")
    return {"role": role, "content": content}


def _number(body: dict, name: str, low: float, high: float, *, integer: bool = False, open_low: bool = False):
    value = body.get(name)
    if value is None:
        return None
    if integer and as_integer(value) is not None:
        value = as_integer(value)
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise APIError(400, f"'{name}' must be {'an integer' if integer else 'a number'}, not {value!r:.80}", name)
    if value < low or value > high or (open_low and value == low):
        lower = f"above {low}" if open_low else f"at least {low}"
        raise APIError(400, f"'{name}' must be {lower} and at most {high}, not {value}", name)
    return value


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise APIError(400, f"'{name}' must be true or false", name)
    return value


def _logit_bias(body: dict) -> dict[int, float]:
    """`logit_bias` as {token id: bias}; the ids are checked against the vocabulary by the server."""
    bias = body.get("logit_bias", {})
    if not isinstance(bias, dict):
        raise APIError(400, "'logit_bias' must be an object of token id -> bias", "logit_bias")
    if len(bias) > MAX_LOGIT_BIAS:
        raise APIError(400, f"'logit_bias' has {len(bias)} entries; at most {MAX_LOGIT_BIAS}", "logit_bias")
    out = {}
    for key, value in bias.items():
        if not key.isdigit() or not key.isascii():
            raise APIError(400, f"'logit_bias' keys are token ids (digits), not {key!r:.40}", "logit_bias")
        if isinstance(value, bool) or not isinstance(value, int | float) or abs(value) > LOGIT_BIAS_RANGE:
            raise APIError(400, f"'logit_bias' values are numbers from {-LOGIT_BIAS_RANGE:g} to "
                           f"{LOGIT_BIAS_RANGE:g}, not {value!r:.40} (token {key})", "logit_bias")
        out[int(key)] = float(value)
    return out


def _request(body: dict, *, messages, prompts, chat: bool, echo: bool = False) -> GenerationRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required (GET /v1/models lists the names)", "model")
    for name in ("tools", "functions", "tool_choice"):
        if body.get(name):
            raise APIError(400, f"'{name}' is not supported by this server", name)
    response_format = body.get("response_format", {})
    if not isinstance(response_format, dict):
        raise APIError(400, "'response_format' must be an object such as {\"type\": \"text\"}", "response_format")
    if response_format.get("type", "text") != "text":
        raise APIError(400, "only response_format type 'text' is supported", "response_format")
    if _number(body, "n", 1, 1 << 20, integer=True) not in (None, 1):
        raise APIError(400, "only n=1 is supported", "n")
    if _number(body, "best_of", 1, 1 << 20, integer=True) not in (None, 1):
        raise APIError(400, "only best_of=1 is supported", "best_of")
    # both names are checked; the newer one wins when a client sends both
    token_field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    asked = [_number(body, name, 0, 1 << 30, integer=True) for name in ("max_tokens", "max_completion_tokens")]
    max_tokens = asked[1] if token_field == "max_completion_tokens" else asked[0]
    for name, value in zip(("max_tokens", "max_completion_tokens"), asked):
        if value == 0 and not echo:
            raise APIError(400, f"'{name}' 0 generates nothing: it is only taken with 'echo' (score the prompt)", name)
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP_SEQUENCES:
        raise APIError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOP_SEQUENCES}", "stop")
    stream = _flag(body, "stream")
    options = body.get("stream_options", {})
    if not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object", "stream_options")
    if "stream_options" in body and not stream:
        raise APIError(400, "'stream_options' is only taken with 'stream': true", "stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool | None):
        raise APIError(400, "'stream_options.include_usage' must be true or false", "stream_options.include_usage")
    if chat:
        logprobs = _flag(body, "logprobs")
        top_logprobs = _number(body, "top_logprobs", 0, MAX_CHAT_LOGPROBS, integer=True) or 0
        if top_logprobs and not logprobs:
            raise APIError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
    else:  # the legacy completions API: logprobs is the number of alternatives
        top_logprobs = _number(body, "logprobs", 0, MAX_COMPLETION_LOGPROBS, integer=True)
        logprobs, top_logprobs = top_logprobs is not None, top_logprobs or 0
    return GenerationRequest(
        model=model, messages=messages, prompts=prompts, max_tokens=max_tokens,
        max_tokens_asked=max((a for a in asked if a is not None), default=None),
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0, open_low=True),
        top_k=_number(body, "top_k", -1, 1 << 20, integer=True),
        repetition_penalty=_number(body, "repetition_penalty", 0.0, 10.0, open_low=True),
        frequency_penalty=_number(body, "frequency_penalty", -2.0, 2.0) or 0.0,
        presence_penalty=_number(body, "presence_penalty", -2.0, 2.0) or 0.0,
        logit_bias=_logit_bias(body),
        stop=stop, seed=_number(body, "seed", -(1 << 63), (1 << 63) - 1, integer=True),
        stream=stream, include_usage=bool(include_usage),
        logprobs=logprobs, top_logprobs=top_logprobs, echo=echo,
    )


# ---- responses -----------------------------------------------------------------------------------------


def new_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def choice_object(index: int, chat: bool, text: str, finish_reason: str, logprobs: dict | None) -> dict:
    choice: dict[str, Any] = {"index": index, "finish_reason": finish_reason, "logprobs": logprobs}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return choice


def completion_object(request_id: str, model: str, chat: bool, choices: list[dict], usage_: dict,
                      created: int | None = None) -> dict:
    return {"id": request_id, "object": "chat.completion" if chat else "text_completion",
            "created": created or int(time.time()), "model": model, "choices": choices, "usage": usage_}


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
