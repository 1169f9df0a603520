"""An OpenAI-compatible endpoint as the model under test (evaluation/remote.py) against the fake server:
order under concurrency, request parameters, failures recorded and resumed from the cache, letter
log-probabilities, and that the API key never leaks."""

import logging
import math

import numpy as np
import pytest
from fake_openai import FakeOpenAI

from diabetica_jax.evaluation.remote import RemoteModel
from diabetica_jax.generate import SamplingParams

KEY = "sk-remote-secret-456"
SYSTEM = {"role": "system", "content": "You are a diabetes expert."}


def _conversations(n):
    return [[SYSTEM, {"role": "user", "content": f"question {i}"}] for i in range(n)]


def _index(messages):
    return int(messages[-1]["content"].rsplit(" ", 1)[1])


def _model(url, tmp_path, **kwargs):
    kwargs = {"api_key_env": None, "concurrency": 3, "timeout": 5.0, "retries": 2, **kwargs}
    model = RemoteModel("openai:fake", url, cache_dir=tmp_path / "cache", **kwargs)
    model.chat.backoff = 0.01  # retries without waiting
    return model


def test_generate_keeps_order_under_concurrency(tmp_path):
    # the first question is answered last: replies finish in reverse order
    delays = {0: 0.4, 1: 0.2, 2: 0.0}
    with FakeOpenAI(lambda messages, model: ("sleep", delays[_index(messages)], "ABC"[_index(messages)])) as server:
        with _model(server.base_url, tmp_path) as remote:
            assert remote.name == "openai:fake" and remote.decoding is None
            assert remote.generate(_conversations(3), 16, SamplingParams()) == ["A", "B", "C"]
            assert remote.failures == []
    assert len(server.requests) == 3 and max(server.times) - min(server.times) < 0.2  # sent together
    for body in server.requests:
        assert body["model"] == "fake" and body["messages"][0] == SYSTEM
        assert (body["max_tokens"], body["temperature"], body["seed"]) == (16, 0.0, 0)
        assert "top_p" not in body and "repetition_penalty" not in body and "logprobs" not in body


def test_no_sampling_leaves_decoding_to_the_endpoint(tmp_path):
    # faithful mode on an API model: the paper's API runs used the endpoints' own defaults
    with FakeOpenAI(lambda messages, model: "ok") as server:
        assert _model(server.base_url, tmp_path).generate(_conversations(1), 16, None) == ["ok"]
    body = server.requests[0]
    assert body["max_tokens"] == 16 and not {"temperature", "top_p", "seed"} & set(body)


def test_sampling_parameters_and_cache_key(tmp_path, caplog):
    with FakeOpenAI(lambda messages, model: "ok") as server:
        remote = _model(server.base_url, tmp_path, concurrency=1)
        sampling = SamplingParams(temperature=0.7, top_p=0.9, repetition_penalty=1.1, seed=3)
        assert remote.generate(_conversations(1), 32, sampling) == ["ok"]
        assert remote.generate(_conversations(1), 32, sampling) == ["ok"]  # from the cache
        assert remote.generate(_conversations(1), 32, SamplingParams(temperature=0.7, top_p=0.9, seed=4)) == ["ok"]
        assert remote.generate(_conversations(1), 64, sampling) == ["ok"]
    # every parameter is in the cache key: another seed or max_tokens is a new request
    assert len(server.requests) == 3 and remote.chat.cache_hits == 1
    body = server.requests[0]
    assert (body["temperature"], body["top_p"], body["seed"], body["max_tokens"]) == (0.7, 0.9, 3, 32)
    assert "repetition_penalty" not in body
    assert "repetition_penalty=1.1 not sent" in caplog.text


def test_failure_mid_run_is_recorded_and_a_rerun_requests_only_it(tmp_path):
    with FakeOpenAI(lambda messages, model: 500 if _index(messages) == 1 else "ABC"[_index(messages)]) as server:
        remote = _model(server.base_url, tmp_path, retries=2)
        assert remote.generate(_conversations(3), 16) == ["A", "", "C"]
    assert len(server.requests) == 4  # two attempts at the failing item
    [(index, reason)] = remote.failures
    assert index == 1 and "openai:fake failed after 2 attempts: HTTP 500" in reason
    with FakeOpenAI(lambda messages, model: "ABC"[_index(messages)]) as healthy:  # another port: same cache
        rerun = _model(healthy.base_url, tmp_path)
        assert rerun.generate(_conversations(3), 16) == ["A", "B", "C"] and rerun.failures == []
    assert len(healthy.requests) == 1 and healthy.requests[0]["messages"][-1]["content"] == "question 1"
    assert rerun.chat.cache_hits == 2


def _logprobs_choice(top):
    token, logprob = top[0]
    return {"choice": {"message": {"role": "assistant", "content": token},
                       "logprobs": {"content": [{"token": token, "logprob": logprob,
                                                 "top_logprobs": [{"token": t, "logprob": p} for t, p in top]}]}}}


def test_letter_logprobs_from_top_logprobs(tmp_path):
    replies = {0: [("B", -0.1), (" A", -2.5), ("A", -3.0), ("The", -4.0)], 1: [("E", -0.01), ("C", -5.0)]}
    with FakeOpenAI(lambda messages, model: _logprobs_choice(replies[_index(messages)])) as server:
        remote = _model(server.base_url, tmp_path)
        scores = remote.letter_logprobs(_conversations(2), "ABCDE")
    assert scores.shape == (2, 5) and remote.logprob_failures == []
    assert scores[0, 0] == pytest.approx(math.log(math.exp(-2.5) + math.exp(-3.0)))  # " A" and "A" together
    assert scores[0, 1] == pytest.approx(-0.1)
    assert np.isneginf(scores[0, 2:]).all()  # not among the top tokens
    assert scores[1, 4] == pytest.approx(-0.01) and scores[1, 2] == pytest.approx(-5.0)
    assert np.isneginf(scores[1, [0, 1, 3]]).all()
    for body in server.requests:
        assert (body["logprobs"], body["top_logprobs"], body["max_tokens"], body["temperature"]) == (True, 20, 1, 0.0)


@pytest.mark.parametrize("answer", ["B", 400], ids=["no-logprobs-in-reply", "logprobs-refused"])
def test_letter_logprobs_not_available(tmp_path, caplog, answer):
    with FakeOpenAI(lambda messages, model: answer) as server:
        remote = _model(server.base_url, tmp_path)
        assert remote.letter_logprobs(_conversations(3), "ABCDE") is None
        assert len(server.requests) == 1  # the first item showed it: the others were not asked
    assert "not available" in caplog.text


def test_letter_logprobs_failure_is_a_nan_row(tmp_path):
    reply = _logprobs_choice([("A", -0.2)])
    with FakeOpenAI(lambda messages, model: 503 if _index(messages) == 2 else reply) as server:
        remote = _model(server.base_url, tmp_path, retries=1)
        scores = remote.letter_logprobs(_conversations(3), "AB")
    assert scores[:2, 0] == pytest.approx([-0.2, -0.2]) and np.isneginf(scores[:2, 1]).all()
    assert np.isnan(scores[2]).all() and [i for i, _ in remote.logprob_failures] == [2]
    assert len(server.requests) == 3


def test_key_is_sent_as_bearer_and_never_logged(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)  # httpx/httpcore debug records included
    monkeypatch.setenv("REMOTE_KEY", KEY)
    tried = set()

    def reply(messages, model):
        i = _index(messages)
        if i == 0 and i not in tried:  # one retry, which is logged
            tried.add(i)
            return 503
        if i == 1:  # some servers echo the key they reject
            return {"status": 401, "body": {"error": {"message": f"Incorrect API key provided: {KEY}"}}}
        return "ok"

    with FakeOpenAI(reply) as server:
        remote = _model(server.base_url, tmp_path, api_key_env="REMOTE_KEY", retries=3, concurrency=2)
        assert remote.generate(_conversations(3), 8) == ["ok", "", "ok"]
        assert remote.letter_logprobs(_conversations(1), "AB") is None  # a cached reply without logprobs: none
    assert set(server.auth_headers) == {f"Bearer {KEY}"} and len(server.auth_headers) == 5
    [(index, reason)] = remote.failures
    assert index == 1 and "HTTP 401" in reason and "Incorrect API key provided: ***" in reason and KEY not in reason
    assert any("attempt 2 of 3" in r.getMessage() for r in caplog.records)
    assert KEY not in caplog.text and all(KEY not in r.getMessage() for r in caplog.records)
    assert KEY not in repr(remote) and KEY not in repr(vars(remote)) and KEY not in repr(vars(remote.client))
    cached = "".join(p.read_text() for p in (tmp_path / "cache").iterdir())
    assert cached and KEY not in cached


def test_constructor_checks(tmp_path):
    with pytest.raises(ValueError, match="no model name"):
        RemoteModel("openai:", "http://127.0.0.1:1/v1", None, tmp_path)
    remote = RemoteModel("gpt-4o", "http://127.0.0.1:1/v1", None, tmp_path)
    assert remote.name == "openai:gpt-4o"
    # nothing to ask: nothing is sent (port 1 is never contacted)
    assert remote.generate([], 8) == [] and remote.letter_logprobs([], "AB").shape == (0, 2)
