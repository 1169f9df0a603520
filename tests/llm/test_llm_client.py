"""The OpenAI-compatible client and its cache against a fake endpoint: what is retried, how long it waits,
connection reuse, and that the API key never leaks into errors or logs."""

import logging
import socket

import pytest
from fake_openai import FakeOpenAI

from diabetica_jax.llm import client as llm_client
from diabetica_jax.llm.client import CachedChat, LLMError, OpenAIClient

KEY = "sk-test-secret-123"
HELLO = [{"role": "user", "content": "hello"}]


def _chat(url, tmp_path, retries=3, timeout=5.0, api_key_env=None):
    # backoff tiny: a test that sees a ~1 s gap knows it came from Retry-After, not from backoff
    return CachedChat(OpenAIClient(url, "m", api_key_env, timeout), tmp_path / "cache", retries=retries, backoff=0.01)


def _script(*answers):
    """A reply function that gives `answers` in order, then repeats the last one."""
    answers = list(answers)
    return lambda messages, model: answers.pop(0) if len(answers) > 1 else answers[0]


@pytest.mark.parametrize("status", [400, 401])
def test_client_errors_fail_after_one_request(tmp_path, monkeypatch, status):
    monkeypatch.setenv("FAKE_KEY", KEY)
    body = {"error": {"message": f"Incorrect API key provided: {KEY}"}}  # some servers echo the key
    with FakeOpenAI(_script({"status": status, "body": body})) as server:
        chat = _chat(server.base_url, tmp_path, api_key_env="FAKE_KEY")
        with pytest.raises(LLMError) as error:
            chat.chat(HELLO, 8)
        assert len(server.requests) == 1
    message = str(error.value)
    assert f"HTTP {status} from {server.base_url}/chat/completions" in message
    assert "Incorrect API key provided" in message and KEY not in message
    assert (chat.calls, chat.failures) == (1, 1) and not list((tmp_path / "cache").iterdir())


def test_server_error_is_retried_then_succeeds_and_is_cached(tmp_path):
    with FakeOpenAI(_script(503, "hi")) as server:
        chat = _chat(server.base_url, tmp_path)
        assert chat.chat(HELLO, 8) == "hi"
        assert chat.chat(HELLO, 8) == "hi"  # from disk
        assert len(server.requests) == 2
    assert (chat.calls, chat.cache_hits, chat.failures) == (2, 1, 0)


def test_persistent_server_error_uses_every_attempt_and_is_not_cached(tmp_path):
    with FakeOpenAI(_script(500)) as server:
        chat = _chat(server.base_url, tmp_path, retries=3)
        for _ in range(2):
            with pytest.raises(LLMError, match=r"openai:m failed after 3 attempts: HTTP 500 from .*: fake error 500"):
                chat.chat(HELLO, 8)
        assert len(server.requests) == 6  # the second request was not answered from the cache
    assert (chat.calls, chat.failures) == (6, 2)


def test_429_waits_for_retry_after(tmp_path):
    with FakeOpenAI(_script({"status": 429, "headers": {"Retry-After": "1"}}, "ok")) as server:
        assert _chat(server.base_url, tmp_path).chat(HELLO, 8) == "ok"
        assert len(server.times) == 2 and server.times[1] - server.times[0] >= 0.95


def test_retry_after_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(llm_client, "MAX_RETRY_AFTER", 0.05)
    with FakeOpenAI(_script({"status": 503, "headers": {"Retry-After": "3600"}}, "ok")) as server:
        assert _chat(server.base_url, tmp_path).chat(HELLO, 8) == "ok"
        assert server.times[1] - server.times[0] < 1.0


def test_timeouts_and_refused_connections_are_retried(tmp_path):
    with FakeOpenAI(_script(("sleep", 0.6, "late"), "ok")) as server:
        assert _chat(server.base_url, tmp_path, timeout=0.2).chat(HELLO, 8) == "ok"
        assert len(server.requests) == 2
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    chat = _chat(f"http://127.0.0.1:{port}/v1", tmp_path / "refused", retries=2)
    with pytest.raises(LLMError, match="failed after 2 attempts: connection error"):
        chat.chat(HELLO, 8)
    assert chat.calls == 2


def test_connections_are_reused(tmp_path):
    with FakeOpenAI(_script(503, "a")) as server:
        chat = _chat(server.base_url, tmp_path)
        for i in range(4):
            chat.chat([{"role": "user", "content": f"question {i}"}], 8)
        assert len(server.requests) == 5 and len(set(server.client_ports)) == 1


def test_key_is_sent_as_bearer_and_never_logged(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)  # httpx/httpcore debug records included
    monkeypatch.setenv("FAKE_KEY", KEY)
    with FakeOpenAI(_script(503, "ok", {"status": 401, "body": {"error": {"message": f"bad key {KEY}"}}})) as server:
        chat = _chat(server.base_url, tmp_path, api_key_env="FAKE_KEY")
        assert chat.chat(HELLO, 8) == "ok"
        with pytest.raises(LLMError) as error:
            chat.chat([{"role": "user", "content": "again"}], 8)
    assert server.auth_headers == [f"Bearer {KEY}"] * 3
    assert KEY not in str(error.value) and "bad key ***" in str(error.value)
    assert any("attempt 2 of 3" in r.getMessage() for r in caplog.records)  # the retry was logged...
    assert all(KEY not in r.getMessage() for r in caplog.records) and KEY not in caplog.text  # ...without the key
