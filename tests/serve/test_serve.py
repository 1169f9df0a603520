"""`diabetica-jax serve`: the OpenAI client, curl and plain HTTP against the server with the tiny model."""

import concurrent.futures
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

openai = pytest.importorskip("openai", reason="the openai client is in the test extra: pip install -e '.[test]'")

from diabetica_jax.cli import main  # noqa: E402
from diabetica_jax.generate.chat import chat_prompt  # noqa: E402
from diabetica_jax.serve import ServedModel, ServeLimits  # noqa: E402
from diabetica_jax.serve.app import create_app  # noqa: E402
from diabetica_jax.serve.server import BackgroundServer  # noqa: E402

MINI_MCQ = Path(__file__).resolve().parents[2] / "diabetica_jax" / "demo" / "benchmarks" / "mini_mcq.csv"
LIMITS = ServeLimits(slots=4, max_prompt_tokens=256, max_new_tokens=512, max_waiting=64)
QUESTION = "What is the HbA1c target for most adults with type 2 diabetes?"


@pytest.fixture(scope="module")
def served():
    model = ServedModel.load("", limits=LIMITS, warmup=True)
    yield model
    model.close()


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def _ask(client, name, content, **kw):
    return client.chat.completions.create(model=name, messages=[{"role": "user", "content": content}],
                                          temperature=0, **kw)


def test_openai_client_streaming_and_not_agree_with_the_generate_command(client, served, capsys):
    assert main(["generate", "--prompt", QUESTION, "--max-new-tokens", "16"]) == 0
    printed = capsys.readouterr().out
    expected = printed.split(f">>> {QUESTION}\n", 1)[1][:-1]  # print() added the last newline

    assert [m.id for m in client.models.list().data] == [served.name]
    whole = _ask(client, served.name, QUESTION, max_tokens=16)
    assert whole.choices[0].message.content == expected
    assert whole.usage.prompt_tokens == len(chat_prompt(served.tokenizer, [{"role": "user", "content": QUESTION}]))
    assert whole.usage.completion_tokens == 16 and whole.choices[0].finish_reason == "length"

    chunks = list(_ask(client, served.name, QUESTION, max_tokens=16, stream=True,
                       stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) > 1  # it did stream
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 16


def test_stop_strings_seeds_logprobs_and_text_completions(client, served):
    whole = _ask(client, served.name, QUESTION, max_tokens=16).choices[0].message.content
    stop = whole[len(whole) // 2: len(whole) // 2 + 3]
    cut = _ask(client, served.name, QUESTION, max_tokens=16, stop=[stop]).choices[0]
    assert cut.message.content == whole[: whole.index(stop)] and cut.finish_reason == "stop"

    def sampled(seed):
        return client.chat.completions.create(model=served.name, messages=[{"role": "user", "content": QUESTION}],
                                              max_tokens=12, temperature=1.0, top_p=0.9, seed=seed
                                              ).choices[0].message.content
    assert sampled(7) == sampled(7) != sampled(8)

    scored = _ask(client, served.name, QUESTION, max_tokens=1, logprobs=True, top_logprobs=5).choices[0]
    first = scored.logprobs.content[0]
    assert first.token == scored.message.content and len(first.top_logprobs) == 5
    assert first.top_logprobs[0].logprob == pytest.approx(first.logprob)  # greedy picked the likeliest

    text = client.completions.create(model=served.name, prompt="Insulin lowers", max_tokens=8, temperature=0)
    assert text.choices[0].text and text.usage.completion_tokens == 8


@pytest.mark.slow
def test_curl_against_the_serve_command():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CLINIC_KEY": "s3cret-key"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "diabetica_jax.cli", "serve", "--port", str(port), "--max-prompt-tokens", "64",
         "--max-tokens", "16", "--slots", "2", "--api-key-env", "CLINIC_KEY"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "slow"
            time.sleep(0.5)

        def curl(*args):
            done = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True,
                                  timeout=60)
            body, _, status = done.stdout.rpartition("\n")
            return int(status), body

        request = json.dumps({"model": "tiny-random", "max_tokens": 8,
                              "messages": [{"role": "user", "content": QUESTION}]})
        status, body = curl(f"{url}/v1/chat/completions", "-H", "Content-Type: application/json", "-d", request)
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
        status, body = curl(f"{url}/v1/chat/completions", "-H", "Authorization: Bearer s3cret-key",
                            "-H", "Content-Type: application/json", "-d", request)
        assert status == 200 and json.loads(body)["choices"][0]["message"]["content"]
        status, body = curl("-N", f"{url}/v1/chat/completions", "-H", "Authorization: Bearer s3cret-key",
                            "-d", request[:-1] + ', "stream": true}')
        events = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
        assert status == 200 and events[-1] == "[DONE]" and len(events) > 3
        status, body = curl(f"{url}/")
        assert status == 200 and "not medical advice" in body.lower()
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert "s3cret-key" not in output  # the key is never logged


def test_32_concurrent_requests_are_each_answered_once(client, served, server):
    questions = [f"Patient {i}: my fasting glucose is {90 + 3 * i} mg/dL, is that normal?" for i in range(32)]
    before = served.batcher.load
    compiled = served.batcher.compilations

    def ask(i):
        if i % 4 == 0:  # a quarter of them stream
            chunks = _ask(client, served.name, questions[i], max_tokens=12, stream=True)
            return i, None, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reply = _ask(client, served.name, questions[i], max_tokens=12)
        return i, reply.id, reply.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, range(32)))
    after = served.batcher.load
    assert after["admitted"] - before["admitted"] == 32  # every request reached a slot exactly once
    assert sum(after["finished"].values()) - sum(before["finished"].values()) == 32
    ids = [i for _, i, _ in answers if i is not None]
    assert len(set(ids)) == len(ids) == 24
    alone = {i: _ask(client, served.name, questions[i], max_tokens=12).choices[0].message.content for i in (0, 5, 31)}
    assert all(answers[i][2] == text for i, text in alone.items())  # each got its own question's answer
    assert served.batcher.peak_active == served.limits.slots
    assert served.batcher.compilations == compiled  # prompt buckets and the step were compiled at warmup


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    ({"model": "other-model", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ({"model": "tiny-random", "messages": []}, 400, "messages"),
    ({"model": "tiny-random", "messages": [{"role": "doctor", "content": "hi"}]}, 400, "messages[0].role"),
    ({"model": "tiny-random", "messages": [{"role": "user", "content": "hi " * 400}]}, 400, "messages"),
    ({"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 400, "temperature"),
    ({"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 400, "top_p"),
    ({"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, 400,
     "max_tokens"),
    ({"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]},
     400, "stop"),
    ({"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n"),
    ({"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
     400, "tools"),
    ({"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "stream"),
])
@pytest.mark.bad_input  # a request serve must refuse: a row of the fault table
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(server, client, served, body, status, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = httpx.post(f"{server.url}/v1/chat/completions", content=content, timeout=30)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert error["message"] and error["param"] == param
    assert _ask(client, served.name, "still there?", max_tokens=2).choices[0].message.content is not None


def test_unknown_routes_and_methods_answer_json(server):
    assert httpx.get(f"{server.url}/v1/nothing").json()["error"]["type"] == "not_found_error"
    wrong = httpx.get(f"{server.url}/v1/chat/completions")
    assert wrong.status_code == 405 and "error" in wrong.json()
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["slots"] == 4
    page = httpx.get(f"{server.url}/")
    assert page.headers["content-security-policy"] == "frame-ancestors 'none'"  # no framing by other sites
    assert page.headers["x-content-type-options"] == "nosniff"
    listed = httpx.get(f"{server.url}/v1/models").json()["data"][0]
    assert listed["limits"] == {"max_prompt_tokens": 256, "max_new_tokens": 512}  # the page starts within them


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_frees_its_slot(server, served, stream, monkeypatch):
    # each decode call slowed by 10 ms: 500 tokens take 5 s or more, so the request is still decoding when the
    # client goes, however busy the machine (unslowed, a loaded CI machine saw it finish first)
    decode = served.batcher._decode
    monkeypatch.setattr(served.batcher, "_decode", lambda: (time.sleep(0.01), decode())[1])
    cancelled = served.batcher.load["finished"].get("cancelled", 0)
    request = {"model": served.name, "max_tokens": 500, "stream": stream, "temperature": 0,
               "messages": [{"role": "user", "content": QUESTION}]}
    if stream:
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=request, timeout=60) as reply:
            for line in reply.iter_lines():  # the first chunk with a token: it is decoding; now the client goes
                if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    break
            assert served.batcher.load["active"] == 1
    else:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up long before 500 tokens
            httpx.post(f"{server.url}/v1/chat/completions", json=request, timeout=httpx.Timeout(60, read=1.0))
        assert served.batcher.load["active"] == 1
    deadline = time.monotonic() + 30
    while served.batcher.load["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    load = served.batcher.load
    assert load["active"] == 0 and load["finished"].get("cancelled", 0) == cancelled + 1


def test_an_api_key_is_required_when_set_and_never_logged(served, monkeypatch, caplog):
    monkeypatch.setenv("DIABETICA_TEST_KEY", "k-123456")
    caplog.set_level(logging.DEBUG)
    with BackgroundServer(create_app(served, api_key_env="DIABETICA_TEST_KEY")) as running:
        refused = httpx.get(f"{running.url}/v1/models")
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        with openai.OpenAI(base_url=f"{running.url}/v1", api_key="k-123456", max_retries=0) as c:
            assert _ask(c, served.name, QUESTION, max_tokens=2).choices[0].message.content is not None
        assert httpx.get(f"{running.url}/health").status_code == 200  # health and the page stay open
    assert "k-123456" not in caplog.text
    monkeypatch.delenv("DIABETICA_TEST_KEY")
    with pytest.raises(ValueError, match="DIABETICA_TEST_KEY"):
        create_app(served, api_key_env="DIABETICA_TEST_KEY")


def test_eval_points_at_the_server_as_its_model_under_test(server, served, tmp_path, caplog):
    """The evaluation's openai:NAME model under test, answered by `serve` (generation and MCQ letter logprobs)."""
    out = tmp_path / "eval"
    caplog.set_level(logging.WARNING)
    assert main(["eval", "--model", f"openai:{served.name}", "--endpoint", f"{server.url}/v1", "--task", "mcq",
                 "--data", str(MINI_MCQ), "--out", str(out)]) == 0
    report = json.loads((out / "report_mcq.json").read_text())
    assert report["n_items"] == 10 and report["n_failed"] == 0
    # letter log-likelihoods were asked for and answered (a random model rarely ranks a letter in its top 20,
    # so whether they score is not the point here)
    assert "logprobs" not in caplog.text
