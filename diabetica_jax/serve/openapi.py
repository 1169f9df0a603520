"""GET /openapi.json: the routes and fields this server takes, as an OpenAPI 3.1 document.

Schema-driven tools (schemathesis, client generators) read it; its bounds are the ones protocol.py enforces
and this server's own limits (the most new tokens, the model's name), so a request the schema calls
invalid is refused with a 4xx. Rules that span fields (max_tokens 0 only with echo, top_logprobs only with
logprobs, stream_options only with stream, one prompt per stream) are if/then rules. The one rule a JSON
schema cannot state is a prompt's length in tokens: a valid request may still get 400 context_length_exceeded.
"""

from __future__ import annotations

from diabetica_jax.serve import protocol

JSON = "application/json"


def _error_responses(*statuses: int) -> dict:
    words = {400: "invalid field (named in error.param)", 401: "missing or wrong API key",
             404: "unknown model", 413: "request body over the size limit", 408: "request body too slow",
             429: "every slot busy and the queue full", 499: "the client went away",
             500: "the generation failed (the server keeps running)"}
    return {str(s): {"description": words[s], "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for s in statuses}


def _number(low: float, high: float, description: str, *, integer: bool = False, exclusive_low: bool = False) -> dict:
    bound = {"exclusiveMinimum": low} if exclusive_low else {"minimum": low}
    return {"type": ["integer" if integer else "number", "null"], **bound, "maximum": high,
            "description": description}


def below(n: int) -> str:
    """A regular expression for the decimal numbers 0 .. n-1 without leading zeros (token ids of a vocabulary)."""
    top = str(n - 1)
    shorter = [r"[1-9]\d{%d}" % (k - 1) if k > 1 else r"\d" for k in range(1, len(top))]
    same_length = []  # numbers of top's length, at most top: a prefix of top, then a smaller digit, then any
    for i, digit in enumerate(top):
        low = "1" if i == 0 and len(top) > 1 else "0"
        if int(digit) > int(low):
            rest = len(top) - i - 1
            same_length.append(f"{top[:i]}[{low}-{int(digit) - 1}]" + (r"\d{%d}" % rest if rest else ""))
    same_length.append(top)
    return "|".join(shorter + same_length)


def _sampling_fields(max_tokens: int, model: str, vocab_size: int) -> dict:
    flag = {"type": ["boolean", "null"]}
    return {
        "model": {"enum": [model], "description": "the served model's name (GET /v1/models); another is a 404"},
        "max_tokens": _number(0, max_tokens, "most new tokens (this server's limit); 0 only with echo",
                              integer=True),
        "temperature": _number(0, 2, "0: greedy"),
        "top_p": _number(0, 1, "nucleus mass kept", exclusive_low=True),
        "top_k": _number(-1, 1 << 20, "likeliest tokens kept (0 or -1: all)", integer=True),
        "repetition_penalty": _number(0, 10, "CTRL penalty over prompt and reply (1: off)", exclusive_low=True),
        "frequency_penalty": _number(-2, 2, "logit -= frequency_penalty * count"),
        "presence_penalty": _number(-2, 2, "logit -= presence_penalty if the token appeared"),
        "seed": _number(-(1 << 63), (1 << 63) - 1, "the sampling seed", integer=True),
        "stop": {"anyOf": [{"type": "string", "minLength": 1},
                           {"type": "array", "items": {"type": "string", "minLength": 1},
                            "maxItems": protocol.MAX_STOP_SEQUENCES}, {"type": "null"}]},
        "logit_bias": {"type": ["object", "null"], "maxProperties": protocol.MAX_LOGIT_BIAS,
                       "propertyNames": {"pattern": f"^0*({below(vocab_size)})$"},
                       "additionalProperties": {"type": "number", "minimum": -protocol.LOGIT_BIAS_RANGE,
                                                "maximum": protocol.LOGIT_BIAS_RANGE},
                       "description": "token id -> bias added to its logit"},
        "stream": flag,
        "stream_options": {"type": ["object", "null"], "properties": {"include_usage": flag},
                           "description": "only with stream: true"},
        "n": {"enum": [1, None]},
        "response_format": {"type": ["object", "null"], "properties": {"type": {"const": "text"}}},
    }


def _is_true(field: str) -> dict:
    return {"required": [field], "properties": {field: {"const": True}}}


def _when(condition: dict, then: dict | None = None, otherwise: dict | None = None) -> dict:
    rule = {"if": condition}
    if then is not None:
        rule["then"] = then
    if otherwise is not None:
        rule["else"] = otherwise
    return rule


_STREAM_OPTIONS_NEED_STREAM = _when({"required": ["stream_options"], "properties": {"stream_options": {
    "type": "object"}}}, then=_is_true("stream"))


def _request_schemas(max_tokens: int, vocab_size: int, model: str) -> dict:
    fields = _sampling_fields(max_tokens, model, vocab_size)
    text_part = {"type": "object", "required": ["type", "text"],
                 "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
    content = {"anyOf": [{"type": "string"}, {"type": "array", "items": text_part}]}
    asking = [role for role in (*protocol.ROLES, *protocol.ROLE_ALIASES) if role != "assistant"]
    message = {"anyOf": [  # an assistant turn may come without text (OpenAI's null content)
        {"type": "object", "required": ["role", "content"], "properties": {"role": {"enum": asking},
                                                                           "content": content}},
        {"type": "object", "required": ["role"], "properties": {
            "role": {"const": "assistant"}, "content": {"anyOf": [*content["anyOf"], {"type": "null"}]}}}]}
    ids = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": vocab_size - 1}, "minItems": 1}
    prompt = {"anyOf": [{"type": "string", "minLength": 1},
                        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
                         "maxItems": protocol.MAX_PROMPTS}, ids,
                        {"type": "array", "items": ids, "minItems": 1, "maxItems": protocol.MAX_PROMPTS}],
              "description": "text, texts, token ids or lists of token ids (one choice each); one when streaming"}
    at_least_one = {**fields["max_tokens"], "minimum": 1, "description": "most new tokens (this server's limit)"}
    chat = {"type": "object", "required": ["model", "messages"], "properties": {
        **fields, "messages": {"type": "array", "items": message, "minItems": 1},
        "max_tokens": at_least_one, "max_completion_tokens": at_least_one,
        "logprobs": {"type": ["boolean", "null"]},
        "top_logprobs": _number(0, protocol.MAX_CHAT_LOGPROBS, "alternatives per token; needs logprobs",
                                integer=True)}}
    completion = {"type": "object", "required": ["model", "prompt"], "properties": {
        **fields, "prompt": prompt, "echo": {"type": ["boolean", "null"], "description": "return the prompt too"},
        "logprobs": _number(0, protocol.MAX_COMPLETION_LOGPROBS, "alternatives per token", integer=True),
        "best_of": {"enum": [1, None]}},
        "allOf": [
            _when(_is_true("echo"), otherwise={"properties": {"max_tokens": {"minimum": 1}}}),  # 0 scores the prompt
            _when(_is_true("stream"), then={"properties": {"prompt": {"anyOf": [  # one prompt per stream
                prompt["anyOf"][0], prompt["anyOf"][2], {"type": "array", "maxItems": 1}]}}}),
            _STREAM_OPTIONS_NEED_STREAM]}
    chat["allOf"] = [_STREAM_OPTIONS_NEED_STREAM, _when(  # top_logprobs needs logprobs
        {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer", "minimum": 1}}},
        then=_is_true("logprobs"))]
    return {"ChatCompletionRequest": chat, "CompletionRequest": completion}


def _response_schemas() -> dict:
    usage = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
             "properties": {k: {"type": "integer"} for k in ("prompt_tokens", "completion_tokens", "total_tokens")}}
    finish = {"enum": ["stop", "length"]}
    chat_choice = {"type": "object", "required": ["index", "message", "finish_reason"], "properties": {
        "index": {"type": "integer"}, "finish_reason": finish, "logprobs": {"type": ["object", "null"]},
        "message": {"type": "object", "required": ["role", "content"],
                    "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}}}}}
    text_choice = {"type": "object", "required": ["index", "text", "finish_reason"], "properties": {
        "index": {"type": "integer"}, "text": {"type": "string"}, "finish_reason": finish,
        "logprobs": {"type": ["object", "null"]}}}

    def completion(kind: str, choice: dict) -> dict:
        return {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
                "properties": {"id": {"type": "string"}, "object": {"const": kind}, "created": {"type": "integer"},
                               "model": {"type": "string"}, "choices": {"type": "array", "items": choice},
                               "usage": usage}}

    error = {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
    return {"ChatCompletion": completion("chat.completion", chat_choice),
            "Completion": completion("text_completion", text_choice), "Error": error}


def _post(summary: str, request: str, response: str, *errors: int, stream: bool = True) -> dict:
    content = {JSON: {"schema": {"$ref": f"#/components/schemas/{response}"}}}
    if stream:
        # each event's data: a chunk object, an error object, or the closing "[DONE]"
        content["text/event-stream"] = {"schema": {"anyOf": [{"type": "object"}, {"const": "[DONE]"}]}}
    return {"post": {"summary": summary, "requestBody": {"required": True, "content": {
        JSON: {"schema": {"$ref": f"#/components/schemas/{request}"}}}},
        "responses": {"200": {"description": "the answer (server-sent events with stream: true)",
                              "content": content}, **_error_responses(*errors)}}}


def _object(**properties) -> dict:
    return {"type": "object", "properties": properties}


def schema(served) -> dict:
    """The OpenAPI document of `served`'s app."""
    generation_errors = (400, 401, 404, 408, 413, 429, 500)
    tokens = {"type": "array", "items": {"type": "integer", "minimum": 0}}
    plain = {JSON: {"schema": {"type": "object"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "diabetica-jax serve", "version": "1",
                 "description": f"An OpenAI-compatible API serving {served.name!r}."},
        "paths": {
            "/v1/chat/completions": _post("chat completion", "ChatCompletionRequest", "ChatCompletion",
                                          *generation_errors),
            "/v1/completions": _post("text completion, prompt scoring with echo", "CompletionRequest",
                                     "Completion", *generation_errors),
            "/v1/models": {"get": {"summary": "the served model", "responses": {
                "200": {"description": "a list of one model", "content": plain}, **_error_responses(401)}}},
            "/health": {"get": {"summary": "slots and counts", "responses": {
                "200": {"description": "ok", "content": plain}}}},
            "/tokenize": {"post": {"summary": "text or messages to token ids", "requestBody": {
                "required": True, "content": {JSON: {"schema": {
                    **_object(model={"enum": [served.name, None]}, prompt={"type": "string"},
                              add_special_tokens={"type": ["boolean", "null"]}), "required": ["prompt"]}}}},
                "responses": {"200": {"description": "the token ids", "content": {JSON: {"schema": _object(
                    count={"type": "integer"}, max_model_len={"type": "integer"}, tokens=tokens)}}},
                    **_error_responses(400, 401, 404, 408, 413)}}},
            "/detokenize": {"post": {"summary": "token ids to text", "requestBody": {
                "required": True, "content": {JSON: {"schema": {
                    "type": "object", "required": ["tokens"],
                    "properties": {"model": {"enum": [served.name, None]},
                                   "tokens": {"type": "array", "items": {
                                       "type": "integer", "minimum": 0, "maximum": served.vocab_size - 1}}}}}}},
                "responses": {"200": {"description": "the text", "content": {JSON: {"schema": _object(
                    prompt={"type": "string"})}}}, **_error_responses(400, 401, 404, 408, 413)}}},
            "/tokenizer_info": {"get": {"summary": "special tokens and chat template", "responses": {
                "200": {"description": "the tokenizer's settings", "content": plain}, **_error_responses(401)}}},
        },
        "components": {"schemas": {**_request_schemas(served.limits.max_new_tokens, served.vocab_size, served.name), **_response_schemas()}},
    }
