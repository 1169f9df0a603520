"""`serve` as third-party clients use it: lm-evaluation-harness, vLLM-style /v1/completions (token-id prompts,
lists of prompts, echo with prompt logprobs), and every field honoured or refused with a 400 naming it.

The server runs a tiny random Qwen2 saved by transformers with the real Qwen2 tokenizer, so transformers'
own forward pass (and lm-eval's `hf` model over it) is the reference.
"""

import json
import logging
import math
from pathlib import Path

import httpx
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="transformers' PyTorch model is the reference: pip install -e '.[test]'")

from hf_models import make_hf_checkpoint  # noqa: E402

from diabetica_jax.hf import embedded_tokenizer  # noqa: E402
from diabetica_jax.serve import ServedModel, ServeLimits  # noqa: E402
from diabetica_jax.serve.app import create_app  # noqa: E402
from diabetica_jax.serve.server import BackgroundServer  # noqa: E402

CONTEXT = 512  # the checkpoint's max_position_embeddings
LIMITS = ServeLimits(slots=2, max_prompt_tokens=500, max_new_tokens=64, max_waiting=64)  # 500 + 64 > CONTEXT
PROMPT = "Insulin lowers blood glucose by"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2-real-vocab")
    make_hf_checkpoint("qwen2_tied", path, vocab_size=151936, max_position_embeddings=CONTEXT)
    embedded_tokenizer().save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def served(checkpoint):
    model = ServedModel.load(str(checkpoint), limits=LIMITS)
    yield model
    model.close()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def reference(checkpoint):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    model.eval()

    def logprobs(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        return torch.log_softmax(logits, dim=-1).numpy()

    return logprobs


def _complete(http, served, **body):
    reply = http.post("/v1/completions", json={"model": served.name, "temperature": 0, **body})
    assert reply.status_code == 200, reply.text
    return reply.json()


# ---- prompts as vLLM takes them, and echo ------------------------------------------------------------


@pytest.mark.slow
def test_echo_scores_every_prompt_token_as_transformers_does(http, served, reference):
    ids = served.text_tokens(PROMPT)
    out = _complete(http, served, prompt=ids, echo=True, max_tokens=0, logprobs=5)
    choice = out["choices"][0]
    assert choice["text"] == PROMPT and choice["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    logprobs = choice["logprobs"]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None  # nothing predicts it
    expected = reference(ids)
    for position in range(1, len(ids)):
        row = expected[position - 1]
        assert logprobs["token_logprobs"][position] == pytest.approx(row[ids[position]], abs=1e-4)
        best = np.argsort(-row)[:5]
        top = logprobs["top_logprobs"][position]
        assert {served.tokenizer.decode([i]) for i in best} <= set(top)  # the top 5 and the token itself
        assert max(top.values()) == pytest.approx(row[best[0]], abs=1e-4)
    assert "".join(logprobs["tokens"]) == PROMPT

    # echo with generation: the prompt first, then the reply; the last entry is the generated token's
    both = _complete(http, served, prompt=ids, echo=True, max_tokens=1, logprobs=1)["choices"][0]
    alone = _complete(http, served, prompt=ids, max_tokens=1)["choices"][0]
    assert both["text"] == PROMPT + alone["text"]
    assert len(both["logprobs"]["token_logprobs"]) == len(ids) + 1
    assert both["logprobs"]["token_logprobs"][-1] == pytest.approx(float(expected[-1].max()), abs=1e-4)


def test_prompts_as_text_token_ids_and_lists_of_either(http, served):
    texts = ["Metformin is", "Type 1 diabetes is"]
    one_by_one = [_complete(http, served, prompt=t, max_tokens=6)["choices"][0]["text"] for t in texts]
    as_list = _complete(http, served, prompt=texts, max_tokens=6)
    assert [c["index"] for c in as_list["choices"]] == [0, 1]
    assert [c["text"] for c in as_list["choices"]] == one_by_one
    ids = [served.text_tokens(t) for t in texts]
    assert _complete(http, served, prompt=ids[0], max_tokens=6)["choices"][0]["text"] == one_by_one[0]
    as_ids = _complete(http, served, prompt=ids, max_tokens=6)
    assert [c["text"] for c in as_ids["choices"]] == one_by_one
    assert as_ids["usage"]["prompt_tokens"] == sum(map(len, ids))
    assert as_ids["usage"]["completion_tokens"] == 12


def test_the_tokenizer_routes_are_the_servers_own_tokenizer(http, served):
    tokens = http.post("/tokenize", json={"prompt": PROMPT, "add_special_tokens": False}).json()
    assert tokens["tokens"] == served.text_tokens(PROMPT) and tokens["count"] == len(tokens["tokens"])
    assert tokens["max_model_len"] == CONTEXT
    assert http.post("/detokenize", json={"tokens": tokens["tokens"]}).json() == {"prompt": PROMPT}
    info = http.get("/tokenizer_info").json()
    assert info["eos_token"] == served.tokenizer.eos_token and info["chat_template"]
    assert http.post("/detokenize", json={"tokens": [10**9]}).status_code == 400


# ---- lm-evaluation-harness: its default local-completions against its own hf model ----------------------


MCQ_ITEMS = [
    {"question": "Which hormone lowers blood glucose?", "choices": ["insulin", "glucagon", "cortisol"], "answer": 0},
    {"question": "HbA1c reflects mean glucose over about", "choices": ["one day", "three months", "a year"],
     "answer": 1},
    {"question": "Type 1 diabetes is mainly", "choices": ["autoimmune", "caused by diet", "infectious"], "answer": 0},
    {"question": "Metformin is a first-line drug for", "choices": ["type 2 diabetes", "asthma"], "answer": 0},
    {"question": "A fasting glucose of 7.0 mmol/L or more suggests", "choices": ["diabetes", "anaemia"],
     "answer": 0},
]


def _lm_eval_task(folder: Path) -> str:
    data = folder / "mcq.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in MCQ_ITEMS), encoding="utf-8")
    (folder / "mcq.yaml").write_text(f"""task: diabetes_mcq_conformance
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""", encoding="utf-8")
    return "diabetes_mcq_conformance"


@pytest.mark.slow
def test_lm_eval_local_completions_equals_its_hf_model(server, served, checkpoint, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is in the test extra: pip install -e '.[test]'")
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task = _lm_eval_task(tmp_path)
    manager = TaskManager(include_path=str(tmp_path))

    def run(model: str, args: str) -> dict:
        return lm_eval.simple_evaluate(model=model, model_args=args, tasks=[task], task_manager=manager,
                                       log_samples=True, device="cpu")

    # default settings: token-id prompts, echo, logprobs 1, and the tokenizer found at /tokenize
    api = run("local-completions", f"model={served.name},base_url={server.url}/v1/completions")
    hf = run("hf", f"pretrained={checkpoint},dtype=float32")
    api_samples, hf_samples = api["samples"][task], hf["samples"][task]
    assert len(api_samples) == len(hf_samples) == len(MCQ_ITEMS)
    for a, h in zip(sorted(api_samples, key=lambda s: s["doc_id"]), sorted(hf_samples, key=lambda s: s["doc_id"])):
        api_ll = [r[0][0] for r in a["resps"]]
        hf_ll = [r[0][0] for r in h["resps"]]
        assert api_ll == pytest.approx(hf_ll, abs=1e-4)
        assert [r[0][1] for r in a["resps"]] == [r[0][1] for r in h["resps"]]  # is_greedy too
        assert len(set(np.round(api_ll, 3))) == len(api_ll)  # real scores, not a tie-break over zeros
        assert all(ll < -1 for ll in api_ll)
    assert api["results"][task]["acc,none"] == hf["results"][task]["acc,none"]


# ---- every field honoured or refused -------------------------------------------------------------------

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize("route, body, param", [
    # NaN / infinity are no JSON numbers: refused wherever they are, naming the field
    ("chat", '{"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
     "temperature"),
    ("chat", '{"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "top_p": NaN}', "top_p"),
    ("chat", '{"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "frequency_penalty": NaN}',
     "frequency_penalty"),
    ("chat", '{"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "presence_penalty": NaN}',
     "presence_penalty"),
    ("chat", '{"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "seed": -Infinity}', "seed"),
    ("chat", '{"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "repetition_penalty": 1e999}',
     "repetition_penalty"),
    ("text", '{"model": "MODEL", "prompt": "hi", "logit_bias": {"5": NaN}}', "logit_bias.5"),
])
@pytest.mark.bad_input  # a request serve must refuse: a row of the fault table
def test_non_finite_numbers_are_refused_naming_the_field(http, served, route, body, param):
    path = "/v1/chat/completions" if route == "chat" else "/v1/completions"
    reply = http.post(path, content=body.replace("MODEL", served.name).encode(), headers={"content-type": "application/json"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param


@pytest.mark.parametrize("route, extra, param", [
    ("chat", {"response_format": "json"}, "response_format"),
    ("chat", {"response_format": [1]}, "response_format"),
    ("chat", {"response_format": 5}, "response_format"),
    ("chat", {"response_format": {"type": "json_object"}}, "response_format"),
    ("chat", {"stream_options": {"include_usage": True}}, "stream_options"),
    ("chat", {"messages": [{"role": "tool", "content": "42", "tool_call_id": "x"}]}, "messages[0].role"),
    ("chat", {"logit_bias": {"abc": 1}}, "logit_bias"),
    ("chat", {"logit_bias": {"5": 101}}, "logit_bias"),
    ("chat", {"logit_bias": {"999999999": 1}}, "logit_bias"),
    ("chat", {"logit_bias": [1]}, "logit_bias"),
    ("text", {"suffix": " and so on"}, "suffix"),
    ("text", {"max_tokens": 0}, "max_tokens"),  # generates nothing without echo
    ("text", {"prompt": [1, "a"]}, "prompt"),
    ("text", {"prompt": [[1, 2], []]}, "prompt"),
    ("text", {"prompt": [151936]}, "prompt"),  # past the vocabulary
    ("text", {"prompt": ["a", "b"], "stream": True}, "prompt"),
    ("text", {"logprobs": 6}, "logprobs"),
    ("text", {"prompt": "x" * 10, "max_tokens": 64, "echo": "yes"}, "echo"),
])
@pytest.mark.bad_input  # a request serve must refuse: a row of the fault table
def test_fields_not_honoured_are_refused_with_a_400_naming_them(http, served, route, extra, param):
    base = {"model": served.name, **(CHAT if route == "chat" else {"prompt": "hi", "max_tokens": 2})}
    path = "/v1/chat/completions" if route == "chat" else "/v1/completions"
    reply = http.post(path, json={**base, **extra})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param
    # the keep-alive connection survives a refusal: the next request on it is answered
    assert http.post("/v1/chat/completions", json={"model": served.name, **CHAT}).status_code == 200


@pytest.mark.parametrize("extra", [
    {"n": None, "stream": None, "temperature": None, "stop": None, "logprobs": None, "top_logprobs": None,
     "response_format": None, "seed": None, "stream_options": None},
    {"messages": [{"role": "developer", "content": "Answer briefly."}, {"role": "user", "content": "hi"}]},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None},
                  {"role": "user", "content": "and?"}]},
    {"response_format": {"type": "text"}, "user": "someone", "metadata": {"k": "v"}},
])
def test_what_openai_accepts_is_accepted(http, served, extra):
    reply = http.post("/v1/chat/completions", json={"model": served.name, **CHAT, **extra})
    assert reply.status_code == 200, reply.text


def test_developer_messages_are_system_messages(http, served):
    def ask(role):
        return http.post("/v1/chat/completions", json={"model": served.name, "max_tokens": 6, "temperature": 0,
                                                        "messages": [{"role": role, "content": "Answer briefly."},
                                                                     {"role": "user", "content": "hi"}]}).json()
    assert ask("developer")["choices"][0]["message"] == ask("system")["choices"][0]["message"]
    assert ask("developer")["usage"] == ask("system")["usage"]


@pytest.mark.bad_input  # a request serve must refuse: a row of the fault table
def test_prompt_and_max_tokens_are_checked_against_the_models_context(http, served, checkpoint, caplog):
    ids = served.text_tokens("glucose " * 600)[:480]
    reply = http.post("/v1/completions", json={"model": served.name, "prompt": ids, "max_tokens": 40})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt" and "512" in error["message"]
    assert _complete(http, served, prompt=ids, max_tokens=32)["usage"]["completion_tokens"] >= 1  # 480 + 32 fits

    with caplog.at_level(logging.WARNING, logger="diabetica_jax.serve.model"):
        ServedModel.load(str(checkpoint), limits=LIMITS).close()
    assert any("context of 512" in r.getMessage() for r in caplog.records)


# ---- the schema -------------------------------------------------------------------------------------------


def test_openapi_describes_the_routes_and_the_servers_limits(http, served):
    schema = http.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/tokenize"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["CompletionRequest"]["properties"]
    assert request["max_tokens"]["maximum"] == LIMITS.max_new_tokens
    assert {"prompt", "echo", "logprobs", "logit_bias"} <= set(request)
    assert math.isfinite(request["logprobs"]["maximum"])


def test_logprob_bytes_are_the_tokens_raw_bytes(http, served):
    tokenizer = served.tokenizer
    # a character the tokenizer splits: its first token holds part of its UTF-8 bytes, which decoding that token
    # alone shows as the replacement character
    char = next(c for c in map(chr, range(0x4E00, 0x9FFF)) if len(tokenizer.encode(c, add_special_tokens=False)) > 1)
    first = tokenizer.encode(char, add_special_tokens=False)[0]
    reply = http.post("/v1/chat/completions", json={
        "model": served.name, **CHAT, "max_tokens": 1, "logprobs": True, "logit_bias": {str(first): 100}}).json()
    entry = reply["choices"][0]["logprobs"]["content"][0]
    assert entry["token"] == tokenizer.decode([first])
    raw = bytes(entry["bytes"])
    assert raw and len(raw) < len(char.encode()) and char.encode().startswith(raw)


schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the test extra: pip install -e '.[test]'")
import hypothesis  # noqa: E402  (schemathesis brings it)
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402


@pytest.fixture(scope="module")
def small_server(checkpoint):
    """The same model with small limits and every program compiled up front: schemathesis sends hundreds of
    requests, each with up to max_tokens new tokens."""
    model = ServedModel.load(str(checkpoint), limits=ServeLimits(slots=2, max_prompt_tokens=64, max_new_tokens=4),
                             warmup=True)
    with BackgroundServer(create_app(model)) as running:
        yield running
    model.close()


@pytest.fixture(scope="module")
def api_schema(small_server):
    return schemathesis.openapi.from_url(f"{small_server.url}/openapi.json")


from_schema = schemathesis.pytest.from_fixture("api_schema")


@from_schema.parametrize()
@hypothesis.settings(max_examples=15, deadline=None, derandomize=True)
def test_schemathesis_finds_nothing(case):
    """Requests made from the schema: invalid ones refused with a 4xx, responses as documented, never a 5xx, and
    valid ones answered: a token budget is the one rule a JSON schema cannot state (a prompt's length in
    tokens), so a valid request may get only that 400."""
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
    if case.meta.generation.mode.is_positive and response.status_code >= 400:
        assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded", \
            response.text
