"""The clinic web page (GET /) in headless Chromium against the server with the tiny random model.

Drives Debian's `chromium` + `chromium-driver` through Selenium (never Selenium Manager: nothing is downloaded).
Checks what a user sees (the research-model notice, the model name and its demo notice, role prompts), that an answer streams in
more than one piece and equals the non-streaming API's greedy answer, that follow-ups carry the history, and
that HTTP errors (401 without the API key, 400 for too many tokens) are shown in the chat.
Screenshots go to $DIABETICA_ARTIFACTS when set, else the test's tmp_path.
"""

import os
import shutil
from pathlib import Path

import httpx
import pytest

from diabetica_jax.serve import ServedModel, ServeLimits
from diabetica_jax.serve.app import create_app
from diabetica_jax.serve.server import BackgroundServer

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # the test extra: pip install -e '.[test]'
    webdriver = None

MAX_NEW_TOKENS = 64  # the server's limit; the page's default (256) is above it, so the page lowers it
ANSWER_TOKENS = 24
ANSWER_WAIT = 60  # seconds for one streamed answer (the first one compiles the model)
QUESTION = "What HbA1c target is appropriate for a frail 82-year-old on insulin?"
FOLLOW_UP = "And for a fit 50-year-old?\nPlease be brief."  # typed with Shift+Enter
KEY_ENV = "DIABETICA_WEB_TEST_KEY"
FINISHED = ("done", "error", "stopped")


def _browser_paths() -> tuple[str, str]:
    missing = []
    if webdriver is None:
        missing.append("the selenium package (pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not chromium:
        missing.append("chromium (Debian package `chromium`)")
    if not chromedriver:
        missing.append("chromedriver (Debian package `chromium-driver`)")
    if missing:
        pytest.skip("the web page test needs " + ", ".join(missing) + "; on Debian: apt-get install chromium "
                    "chromium-driver && pip install selenium")
    return chromium, chromedriver


@pytest.fixture(scope="module")
def driver():
    chromium, chromedriver = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,900", "--disable-extensions", "--no-first-run", "--lang=en-US"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors: script or CSP failures
    browser = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    browser.set_page_load_timeout(30)
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def served(driver):  # after `driver`: a machine without Chromium skips before loading the model
    model = ServedModel.load("", limits=ServeLimits(slots=4, max_prompt_tokens=256, max_new_tokens=MAX_NEW_TOKENS))
    yield model
    model.close()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    where = os.environ.get("DIABETICA_ARTIFACTS")
    if not where:
        return tmp_path
    path = Path(where)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _open(driver, url: str, model_name: str):
    driver.get(url + "/")
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "model-name").text == model_name)


def _set(driver, element_id: str, value: str):
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def _last_answer(driver):
    """The newest assistant bubble, once it has finished (done, error or stopped)."""
    def finished(d):
        bubbles = d.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant")
        return bubbles[-1] if bubbles and bubbles[-1].get_attribute("data-state") in FINISHED else False

    return WebDriverWait(driver, ANSWER_WAIT, poll_frequency=0.1).until(finished)


def _text(driver, bubble, selector: str = ".content") -> str:
    """The exact text (textContent: whitespace kept, unlike Selenium's rendered .text)."""
    return driver.execute_script("return arguments[0].querySelector(arguments[1]).textContent", bubble, selector)


def _greedy(url: str, name: str, messages: list[dict], max_tokens: int, key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=60, json={
        "model": name, "messages": messages, "max_tokens": max_tokens, "temperature": 0})
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


def _screenshot(driver, path: Path) -> Path:
    assert driver.save_screenshot(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, f"{path}: {len(data)} bytes"
    return path


def test_page_streams_answers_that_match_the_api(driver, server, served, artifacts):
    _open(driver, server.url, served.name)
    notice = driver.find_element(By.ID, "notice")
    assert notice.is_displayed()
    assert "not medical advice" in notice.text and "emergency services" in notice.text
    assert "research model" in notice.text.lower() and "diagnose" in notice.text
    # a random preset: the page is named after it, not "Diabetica", and says it is a demo model
    assert driver.find_element(By.ID, "page-title").text == served.name and served.name in driver.title
    assert "Diabetica" not in driver.title
    assert driver.find_element(By.ID, "model-badge").is_displayed()
    demo = driver.find_element(By.ID, "demo-notice")
    assert demo.is_displayed() and "random weights" in demo.text

    prompt = driver.find_element(By.ID, "system-prompt")
    patient = prompt.get_property("value")
    assert "plain" in patient and "emergency" in patient  # the first role: patient
    Select(driver.find_element(By.ID, "role")).select_by_value("clinician")
    clinician = prompt.get_property("value")
    assert clinician != patient and "guideline" in clinician and "mmol/mol" in clinician
    prompt.send_keys(Keys.END, " Answer in English.")  # the user's edit is what gets sent
    system = prompt.get_property("value").strip()
    assert system == clinician.strip() + " Answer in English."

    _set(driver, "max-tokens", str(ANSWER_TOKENS))
    _set(driver, "input", QUESTION)
    driver.find_element(By.ID, "send").click()
    first = _last_answer(driver)
    assert first.get_attribute("data-state") == "done", first.text
    answer = _text(driver, first)
    assert answer.strip()
    assert int(first.get_attribute("data-chunks")) > 1  # it streamed
    messages = [{"role": "system", "content": system}, {"role": "user", "content": QUESTION}]
    assert answer == _greedy(server.url, served.name, messages, ANSWER_TOKENS)
    users = driver.find_elements(By.CSS_SELECTOR, "#messages .msg.user .content")
    assert [u.text for u in users] == [QUESTION]

    # a follow-up: Shift+Enter is a new line, Enter sends; the conversation so far goes with it
    box = driver.find_element(By.ID, "input")
    first_line, second_line = FOLLOW_UP.split("\n")
    box.send_keys(first_line, Keys.SHIFT, Keys.ENTER, Keys.NULL, second_line)
    assert box.get_property("value") == FOLLOW_UP
    assert len(driver.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant")) == 1
    box.send_keys(Keys.ENTER)
    WebDriverWait(driver, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant")) == 2)
    second = _last_answer(driver)
    assert second.get_attribute("data-state") == "done", second.text
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": FOLLOW_UP}]
    assert _text(driver, second) == _greedy(server.url, served.name, messages, ANSWER_TOKENS)
    assert driver.find_element(By.ID, "input").get_property("value") == ""

    _screenshot(driver, artifacts / "web_page_chat.png")

    # a third turn takes the conversation past the server's 256 prompt tokens: the 400 shows in the chat
    _set(driver, "input", QUESTION)
    driver.find_element(By.ID, "send").click()
    WebDriverWait(driver, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant")) == 3)
    too_long = _last_answer(driver)
    assert too_long.get_attribute("data-state") == "error"
    error = _text(driver, too_long, ".error")
    assert "400" in error and "at most 256" in error and "start a new chat" in error, error

    driver.find_element(By.ID, "new-chat").click()  # clears the conversation
    assert not driver.find_elements(By.CSS_SELECTOR, "#messages .msg")
    _set(driver, "input", QUESTION)  # Stop aborts the answer (clicked before the reply can arrive)
    driver.execute_script("document.getElementById('send').click(); document.getElementById('stop').click();")
    stopped = _last_answer(driver)
    assert stopped.get_attribute("data-state") == "stopped"
    assert driver.find_element(By.ID, "send").is_enabled() and not driver.find_element(By.ID, "stop").is_displayed()

    # the console holds the one refused request and nothing else (no script or CSP failure)
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    refused = [e for e in errors if "chat/completions" in e and "status of 400" in e]
    assert len(refused) == 1 and len(errors) == 1, errors


def test_page_shows_http_errors_in_the_chat(driver, served, artifacts, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "web-test-key")
    with BackgroundServer(create_app(served, api_key_env=KEY_ENV)) as locked:
        driver.get(locked.url + "/")
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "model-name").text == "unavailable")

        _set(driver, "input", QUESTION)  # no key typed: 401
        driver.find_element(By.ID, "send").click()
        bubble = _last_answer(driver)
        assert bubble.get_attribute("data-state") == "error"
        error = _text(driver, bubble, ".error")
        assert "401" in error and "API key" in error
        assert bubble.find_element(By.CSS_SELECTOR, ".error").is_displayed()

        _set(driver, "api-key", "web-test-key")  # with the key, the model name appears ...
        driver.find_element(By.ID, "input").click()  # (the key field's change event)
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "model-name").text == served.name)
        # the page started its max tokens within the server's limit (256 -> 64); asking for more gets a 400
        assert driver.find_element(By.ID, "max-tokens").get_attribute("value") == str(MAX_NEW_TOKENS)
        _set(driver, "max-tokens", str(MAX_NEW_TOKENS + 36))
        _set(driver, "input", QUESTION)
        driver.find_element(By.ID, "send").click()
        WebDriverWait(driver, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 2)
        bubble = _last_answer(driver)
        assert bubble.get_attribute("data-state") == "error"
        error = _text(driver, bubble, ".error")
        assert "400" in error and f"at most {MAX_NEW_TOKENS}" in error

        _set(driver, "max-tokens", "8")  # within the limits, with the key: an answer
        _set(driver, "input", QUESTION)
        driver.find_element(By.ID, "send").click()
        WebDriverWait(driver, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 3)
        bubble = _last_answer(driver)
        assert bubble.get_attribute("data-state") == "done", bubble.text
        assert _text(driver, bubble).strip()
        _screenshot(driver, artifacts / "web_page_errors.png")
