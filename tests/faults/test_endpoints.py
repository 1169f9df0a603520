"""Endpoint faults (issue 15): a teacher, judge or model-under-test endpoint that times out, answers 500, 429
with Retry-After, a 200 that is no chat completion (not JSON, no choices) or an empty reply, in the middle
of a real run (curation with a teacher, evaluation of an `openai:NAME` model with a judge).

Each test injects one fault through tests/fake_openai.py into the stage as the CLI runs it:
- transient (the fault hits some items a few times, then the endpoint answers): the run completes with no
  failure, the retries show in the request counts, and the output is the one a run without faults gives;
- persistent (those items fail on every attempt): they are recorded as failed per item (a reject with the
  reason for curation, `failed: ...` and n_failed for evaluation), the other items complete, every input is
  accounted for once; a rerun against a healthy endpoint asks only for the failed items (the rest come from
  the cache) and ends with the output of a run that never saw a fault;
- a damaged cache entry (truncated, empty, the wrong shape) is a miss with a warning naming the file, and a
  run that dies between writing an entry and renaming it into place leaves no entry behind.

The retries wait no backoff here (DEFAULT_BACKOFF 0), except for 429, where the backoff is made long
enough that honouring Retry-After: 0 instead shows in the waits CachedChat chose (no timing is measured).
What the writers do once the records are out (curation's token store and plot, evaluation's plots) involves
no endpoint and is skipped to keep each run well under a second.
"""

import json
import logging
import threading
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

from diabetica_jax.configuration import load_config
from diabetica_jax.curate.config import load_curate_config
from diabetica_jax.curate.pipeline import curate
from diabetica_jax.data.records import Record
from diabetica_jax.evaluation.config import EvalConfig
from diabetica_jax.evaluation.runner import evaluate
from diabetica_jax.llm import client as llm_client

TIMEOUT = 0.4  # the client's timeout (s); a stalled reply takes twice that
RETRIES = 3  # attempts per request
TRANSIENT = RETRIES - 1  # a transient fault fails this many attempts, the last one succeeds

FAULTS = {  # kind: (the fake server's reply, what the failure reason says)
    "timeout": (lambda ok: ("sleep", 2 * TIMEOUT, ok), "timeout after"),
    "http500": (lambda ok: 500, "HTTP 500"),
    "http429": (lambda ok: {"status": 429, "headers": {"Retry-After": "0"},
                            "body": {"error": {"message": "rate limit reached"}}}, "HTTP 429"),
    "not_json": (lambda ok: {"status": 200, "raw": "<html><body>502 Bad Gateway</body></html>"}, "is not JSON"),
    "no_choices": (lambda ok: {"status": 200, "body": {"object": "chat.completion", "choices": []}},
                   "has no choices[0]"),
    "empty": (lambda ok: "", "empty reply"),
}
# an empty completion is a legitimate answer of a model under test (evaluation/remote.py): no fault there
MODEL_FAULTS = [k for k in FAULTS if k != "empty"]


class Endpoint:
    """The fake server's reply function: `answer(i, model)` for item i (`item(messages)`, None: not an item),
    except that requests for the items in `faulted` to the model `target` get the fault first, `times` times
    (None: always)."""

    def __init__(self, item, answer, kind=None, faulted=(), target=None, times=None):
        self.item, self.answer, self.target = item, answer, target
        self.fault = FAULTS[kind][0] if kind else None
        self.left = {i: times for i in faulted}
        self.lock = threading.Lock()

    def __call__(self, messages, model):
        i = self.item(messages)
        with self.lock:
            faulty = model == self.target and i in self.left and self.left[i] != 0
            if faulty and self.left[i] is not None:
                self.left[i] -= 1
        return self.fault(self.answer(i, model)) if faulty else self.answer(i, model)


def per_item(server: FakeOpenAI, item, model: str) -> dict:
    """{item: requests the server received for it from `model`}."""
    counts = {}
    for body in server.requests:
        if body["model"] == model:
            i = item(body["messages"])
            counts[i] = counts.get(i, 0) + 1
    return counts


@pytest.fixture(scope="module", autouse=True)
def no_drawing():
    """Skip what the writers do after the records are out and no endpoint takes part in (curation's token
    store and plot, evaluation's plots): seconds per run, and nothing these tests look at."""
    import numpy as np

    from diabetica_jax.curate import write
    from diabetica_jax.evaluation import runner

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(write, "_plot", lambda *args: None)
        patch.setattr(write, "_token_lengths", lambda *args: np.zeros(0, dtype=np.int64))
        patch.setattr(runner, "compare_plot", lambda *args: False)
        yield


@pytest.fixture
def waits(monkeypatch):
    """No backoff between attempts (Retry-After still counts); the list of the waits CachedChat slept before
    each retry (it logs every retry, with its wait, just before sleeping)."""
    monkeypatch.setattr(llm_client, "DEFAULT_BACKOFF", 0.0)
    chosen = []
    log_retry = llm_client.CachedChat._log_retry

    def spy(self, state):
        chosen.append(state.upcoming_sleep)
        return log_retry(self, state)

    monkeypatch.setattr(llm_client.CachedChat, "_log_retry", spy)
    return chosen


def arm(kind: str, monkeypatch) -> None:
    """For 429: a backoff (0.2 s, doubling, with jitter) that a wait of Retry-After's 0 s can be told from."""
    if kind == "http429":
        monkeypatch.setattr(llm_client, "DEFAULT_BACKOFF", 0.2)


def check_waits(kind: str, waits: list, retries: int) -> None:
    assert len(waits) == retries  # one wait before every retry
    if kind == "http429":
        assert waits == [0.0] * retries  # the server's Retry-After: 0, not the backoff


# ---- curation: the teacher ------------------------------------------------------------------------

PASSAGES = {
    "Fasting glucose": "A fasting plasma glucose of 7.0 mmol/L or higher is diagnostic of diabetes. Without clear "
                       "symptoms, the result should be confirmed by repeat testing on another day.",
    "Hypoglycaemia": "A conscious person with hypoglycaemia should take 15 to 20 g of glucose. Glucose should be "
                     "rechecked after 15 minutes and treatment repeated if it is still low.",
    "Metformin": "Metformin is the preferred first-line glucose-lowering drug for type 2 diabetes. It is "
                 "contraindicated when eGFR is below 30 mL/min.",
    "Foot care": "People with diabetes should inspect their feet daily and wear well-fitting footwear. A foot "
                 "examination with monofilament testing is recommended at least once a year.",
}
HEADINGS = list(PASSAGES)
FAULTED = HEADINGS[2:]  # asked after the first two (teacher concurrency 2): the fault hits mid-run


def heading(messages) -> str | None:
    prompt = messages[-1]["content"]
    return next((h for h in HEADINGS if f"Passage:\n{h}\n" in prompt), None)


def teacher_reply(h: str, model: str) -> str:
    """One grounded question-answer pair per passage."""
    return json.dumps([{"question": f"What does the passage on {h} say first?",
                        "answer": PASSAGES[h].split(". ")[0] + "."}])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    guide = tmp_path_factory.mktemp("corpus") / "guide.md"
    guide.write_text("".join(f"## {h}\n\n{t}\n\n" for h, t in PASSAGES.items()), encoding="utf-8")
    return [str(guide)]


def curate_with(server: FakeOpenAI, corpus: list[str], out: Path) -> dict:
    overrides = ["augment.backend=openai", f"augment.base_url={server.base_url}", "augment.model=teacher",
                 f"augment.timeout={TIMEOUT}", f"augment.retries={RETRIES}", "augment.concurrency=2",
                 "augment.qa_per_passage=1", "augment.explain_mcqs=false",
                 "decontamination.embedded_benchmarks=false"]
    return curate(load_curate_config(None, overrides, inputs=corpus), out, progress=False)


def shard_records(out: Path) -> dict[str, dict]:
    from array_record.python.array_record_module import ArrayRecordReader

    from diabetica_jax.data.shards import shard_paths

    records = {}
    for path in shard_paths(out):
        reader = ArrayRecordReader(str(path))
        for raw in reader.read_all():
            record = Record.from_json(json.loads(raw)).to_json()
            assert record["id"] not in records  # no record twice
            records[record["id"]] = record
        reader.close()
    return records


def rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]


def card_counts(card: dict) -> dict:
    augment = card["augment"]
    return {"collected": card["collected"], "kept": card["kept"], "rejected": card["rejected"],
            "generated": card["generated"], "kinds": augment["kinds"]}


@pytest.fixture(scope="module")
def curated(corpus, tmp_path_factory) -> dict:
    """A run that never saw a fault: its records and data card."""
    out = tmp_path_factory.mktemp("curated") / "out"
    with FakeOpenAI(Endpoint(heading, teacher_reply)) as server:
        card = curate_with(server, corpus, out)
    records = shard_records(out)
    # every passage kept, each with its question-answer pair
    assert card["augment"]["failures"] == 0 and card["kept"] == len(records) == 2 * len(PASSAGES)
    return {"records": records, "card": card_counts(card),
            "passages": {r["id"]: r["text"].split("\n")[0] for r in records.values() if r["kind"] == "passage"}}


def same_output(out: Path, card: dict, curated: dict, ledger) -> None:
    """The output (records and counts) is the faultless run's; the records missing from it go to the ledger."""
    records = shard_records(out)
    ledger.lost(len(set(curated["records"]) - set(records)), len(curated["records"]))
    assert records == curated["records"]
    assert card_counts(card) == curated["card"]
    assert not [r for r in rejects(out) if r["stage"] == "augment"]


@pytest.mark.fault
@pytest.mark.parametrize("kind", list(FAULTS))
def test_teacher_transient_fault_is_retried(kind, corpus, curated, tmp_path, monkeypatch, waits, ledger):
    arm(kind, monkeypatch)
    with FakeOpenAI(Endpoint(heading, teacher_reply, kind, FAULTED, "teacher", times=TRANSIENT)) as server:
        card = curate_with(server, corpus, tmp_path / "out")
    # the faulted passages were asked again until they got an answer, the others once
    assert per_item(server, heading, "teacher") == {h: 1 + TRANSIENT * (h in FAULTED) for h in HEADINGS}
    assert card["augment"]["calls"] == len(server.requests) and card["augment"]["failures"] == 0
    check_waits(kind, waits, TRANSIENT * len(FAULTED))
    same_output(tmp_path / "out", card, curated, ledger)


@pytest.mark.fault
@pytest.mark.parametrize("kind", list(FAULTS))
def test_teacher_persistent_fault_rejects_those_passages_and_a_rerun_asks_only_for_them(
        kind, corpus, curated, tmp_path, monkeypatch, waits, ledger, caplog):
    arm(kind, monkeypatch)
    out = tmp_path / "out"
    with FakeOpenAI(Endpoint(heading, teacher_reply, kind, FAULTED, "teacher")) as server:
        card = curate_with(server, corpus, out)
    assert per_item(server, heading, "teacher") == {h: RETRIES if h in FAULTED else 1 for h in HEADINGS}
    check_waits(kind, waits, (RETRIES - 1) * len(FAULTED))
    assert card["augment"]["failures"] == len(FAULTED)

    # each faulted passage is one reject that says why; the others went through with their pairs
    failed = [r for r in rejects(out) if r["stage"] == "augment"]
    assert sorted(r["record"]["text"].split("\n")[0] for r in failed) == sorted(FAULTED)
    for reject in failed:
        assert reject["reason"].startswith(f"openai:teacher failed after {RETRIES} attempts: ")
        assert FAULTS[kind][1] in reject["reason"]
    records = shard_records(out)
    kept = {r["text"].split("\n")[0] for r in records.values() if r["kind"] == "passage"}
    assert kept == set(HEADINGS) - set(FAULTED)
    assert {r["provenance"]["augmented_from"] for r in records.values() if r["kind"] == "qa"} == {
        i for i, h in curated["passages"].items() if h not in FAULTED}
    # nothing silently dropped: every input passage is kept or rejected, once; the card adds up
    passages = [r["id"] for r in records.values() if r["kind"] == "passage"] + [r["record"]["id"] for r in failed]
    assert sorted(passages) == sorted(curated["passages"])
    assert card["kept"] + card["rejected"] == card["collected"] + card["generated"]
    assert card["augment"]["kinds"]["qa"]["rejected_by_reason"] == {"teacher call failed": len(FAULTED)}

    # the endpoint is back: only the failed passages are asked for, the rest comes from the cache
    with FakeOpenAI(Endpoint(heading, teacher_reply)) as healthy:
        again = curate_with(healthy, corpus, out)
    assert per_item(healthy, heading, "teacher") == dict.fromkeys(FAULTED, 1)
    assert again["augment"]["cache_hits"] == len(HEADINGS) - len(FAULTED)
    same_output(out, again, curated, ledger)
    assert "damaged cache entry" not in caplog.text


def reply_heading(path: Path) -> str | None:
    """The passage a cached (or half-written) teacher reply is about."""
    text = path.read_text(encoding="utf-8")
    return next((h for h in HEADINGS if f"passage on {h} say" in text), None)


def damage(path: Path, how: str) -> None:
    text = path.read_text(encoding="utf-8")
    if how == "truncated":  # cut off mid-write
        path.write_text(text[: len(text) // 2], encoding="utf-8")
    elif how == "empty":
        path.write_bytes(b"")
    else:  # JSON, but no reply in it
        path.write_text(json.dumps({next(iter(json.loads(text))): None}), encoding="utf-8")


DAMAGES = ["truncated", "empty", "wrong_shape"]


@pytest.mark.fault
@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_teacher_cache_entry_is_a_miss(how, corpus, curated, tmp_path, waits, ledger, caplog):
    out = tmp_path / "out"
    with FakeOpenAI(Endpoint(heading, teacher_reply)) as server:
        curate_with(server, corpus, out)
    entries = {reply_heading(p): p for p in (out / "cache" / "augment").glob("*.json")}
    assert set(entries) == set(HEADINGS)
    for h in FAULTED:
        damage(entries[h], how)
    with FakeOpenAI(Endpoint(heading, teacher_reply)) as healthy, caplog.at_level(logging.WARNING):
        again = curate_with(healthy, corpus, out)
    # asked again for exactly the damaged entries, each named in a warning, and each overwritten
    assert per_item(healthy, heading, "teacher") == dict.fromkeys(FAULTED, 1)
    for h in FAULTED:
        assert f"damaged cache entry {entries[h]}" in caplog.text
        assert json.loads(entries[h].read_text())["reply"] == teacher_reply(h, "teacher")
    assert again["augment"]["cache_hits"] == len(HEADINGS) - len(FAULTED)
    same_output(out, again, curated, ledger)


@pytest.mark.fault
def test_a_run_killed_while_writing_a_cache_entry_leaves_no_entry(corpus, curated, tmp_path, monkeypatch, waits,
                                                                  ledger):
    """The process dies (here: an exception) after writing an entry's temporary file, before renaming it."""
    rename = Path.replace

    class Killed(Exception):
        pass

    def die_on_the_last(self, target):
        if self.suffix == ".partial" and reply_heading(self) == FAULTED[-1]:
            raise Killed
        return rename(self, target)

    out = tmp_path / "out"
    monkeypatch.setattr(Path, "replace", die_on_the_last)
    with FakeOpenAI(Endpoint(heading, teacher_reply)) as server, pytest.raises(Killed):
        curate_with(server, corpus, out)
    monkeypatch.setattr(Path, "replace", rename)
    cache = out / "cache" / "augment"
    assert len(list(cache.glob("*.partial"))) == 1  # the half-done write, under a name no lookup reads
    with FakeOpenAI(Endpoint(heading, teacher_reply)) as healthy:
        again = curate_with(healthy, corpus, out)
    assert per_item(healthy, heading, "teacher") == {FAULTED[-1]: 1}
    same_output(out, again, curated, ledger)


# ---- evaluation: the model under test and the judge -----------------------------------------------

DIALOG = Path(__file__).resolve().parents[2] / "diabetica_jax" / "demo" / "benchmarks" / "mini_dialog.jsonl"
QUESTIONS = [json.loads(line)["question"] for line in DIALOG.read_text(encoding="utf-8").splitlines()]
ITEMS = range(len(QUESTIONS))
FAULTED_ITEMS = [2, 3]  # asked after items 0 and 1 (concurrency 2)


def item(messages) -> int | None:
    text = "\n".join(m["content"] for m in messages)
    return next((i for i, q in enumerate(QUESTIONS) if q in text), None)


def eval_reply(i: int, model: str) -> str:
    return f"Answer {i}: please see your doctor." if model == "mut" else f"Reasoning about answer {i}.\nScore: {i + 5}"


def evaluate_with(server: FakeOpenAI, out: Path) -> dict:
    url = server.base_url
    overrides = ["model.path=openai:mut", f"endpoint.base_url={url}", f"endpoint.timeout={TIMEOUT}",
                 f"endpoint.retries={RETRIES}", "endpoint.concurrency=2", "judge.backend=openai",
                 f"judge.base_url={url}", "judge.model=judge", f"judge.timeout={TIMEOUT}", f"judge.retries={RETRIES}",
                 "judge.concurrency=2", "tasks=[{task: dialog, files: ['embedded:mini_dialog.jsonl']}]"]
    evaluate(load_config(EvalConfig, None, overrides), out, progress=False)
    return json.loads((out / "report_dialog.json").read_text(encoding="utf-8"))


FIELDS = ("id", "output", "score", "score_own", "score_original", "judge_reply", "judge_status")


def items_of(report: dict) -> list[tuple]:
    return [tuple(r[k] for k in FIELDS) for r in report["items"]]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> dict:
    """An evaluation that never saw a fault."""
    with FakeOpenAI(Endpoint(item, eval_reply)) as server:
        report = evaluate_with(server, tmp_path_factory.mktemp("evaluated") / "out")
    assert report["n_items"] == len(QUESTIONS) and report["n_failed"] == 0
    assert report["n_scored"] == len(QUESTIONS) and report["mean_score"] == 5 + (len(QUESTIONS) - 1) / 2
    return report


def same_report(report: dict, evaluated: dict, ledger) -> None:
    ids = [r["id"] for r in report["items"]]
    ledger.lost(len(set(r["id"] for r in evaluated["items"]) - set(ids)), len(evaluated["items"]))
    assert items_of(report) == items_of(evaluated)
    for key in ("n_items", "n_failed", "n_scored", "n_unparsed", "mean_score", "mean_score_own", "by_class"):
        assert report[key] == evaluated[key], key


TARGETS = [(kind, "mut") for kind in MODEL_FAULTS] + [(kind, "judge") for kind in FAULTS]


@pytest.mark.fault
@pytest.mark.parametrize("kind, target", TARGETS)
def test_eval_transient_fault_is_retried(kind, target, evaluated, tmp_path, monkeypatch, waits, ledger):
    arm(kind, monkeypatch)
    with FakeOpenAI(Endpoint(item, eval_reply, kind, FAULTED_ITEMS, target, times=TRANSIENT)) as server:
        report = evaluate_with(server, tmp_path / "out")
    for model in ("mut", "judge"):
        extra = TRANSIENT if model == target else 0
        assert per_item(server, item, model) == {i: 1 + extra * (i in FAULTED_ITEMS) for i in ITEMS}, model
    check_waits(kind, waits, TRANSIENT * len(FAULTED_ITEMS))
    same_report(report, evaluated, ledger)


@pytest.mark.fault
@pytest.mark.parametrize("kind, target", TARGETS)
def test_eval_persistent_fault_fails_those_items_and_a_rerun_asks_only_for_them(kind, target, evaluated, tmp_path,
                                                                              monkeypatch, waits, ledger):
    arm(kind, monkeypatch)
    out = tmp_path / "out"
    with FakeOpenAI(Endpoint(item, eval_reply, kind, FAULTED_ITEMS, target)) as server:
        report = evaluate_with(server, out)
    asked = {"mut": {i: RETRIES if target == "mut" and i in FAULTED_ITEMS else 1 for i in ITEMS},
             # the judge is not asked about an answer that was never generated
             "judge": {i: RETRIES if target == "judge" and i in FAULTED_ITEMS else 1 for i in ITEMS
                       if target == "judge" or i not in FAULTED_ITEMS}}
    for model in ("mut", "judge"):
        assert per_item(server, item, model) == asked[model], model
    check_waits(kind, waits, (RETRIES - 1) * len(FAULTED_ITEMS))

    # every item once, in order; the faulted ones failed with the reason, the others scored as without faults
    assert [r["id"] for r in report["items"]] == [r["id"] for r in evaluated["items"]]
    prefix = "failed: generation: openai:mut" if target == "mut" else "failed: openai:judge"
    for i, (row, clean) in enumerate(zip(report["items"], evaluated["items"])):
        if i in FAULTED_ITEMS:
            assert row["judge_status"].startswith(f"{prefix} failed after {RETRIES} attempts: ")
            assert FAULTS[kind][1] in row["judge_status"] and row["score"] is None
        else:
            assert tuple(row[k] for k in FIELDS) == tuple(clean[k] for k in FIELDS)
    assert report["n_failed"] == len(FAULTED_ITEMS) and report["n_unparsed"] == 0
    assert report["n_scored"] == len(QUESTIONS) - len(FAULTED_ITEMS)

    # the endpoint is back: a rerun asks only about the failed items and ends as a faultless run
    with FakeOpenAI(Endpoint(item, eval_reply)) as healthy:
        again = evaluate_with(healthy, out)
    assert per_item(healthy, item, "mut") == (dict.fromkeys(FAULTED_ITEMS, 1) if target == "mut" else {})
    assert per_item(healthy, item, "judge") == dict.fromkeys(FAULTED_ITEMS, 1)
    same_report(again, evaluated, ledger)


@pytest.mark.fault
def test_an_empty_completion_of_the_model_under_test_is_its_answer(evaluated, tmp_path, waits, ledger):
    """Not a failure: asked once, judged, cached (a rerun asks nothing)."""
    with FakeOpenAI(Endpoint(item, eval_reply, "empty", FAULTED_ITEMS, "mut")) as server:
        report = evaluate_with(server, tmp_path / "out")
    assert per_item(server, item, "mut") == per_item(server, item, "judge") == dict.fromkeys(ITEMS, 1)
    assert waits == [] and report["n_failed"] == 0
    assert [r["output"] == "" for r in report["items"]] == [i in FAULTED_ITEMS for i in ITEMS]
    assert all(r["judge_status"] == "scored" for r in report["items"])
    ledger.lost(len(evaluated["items"]) - len(report["items"]), len(evaluated["items"]))
    with FakeOpenAI(Endpoint(item, eval_reply)) as healthy:
        again = evaluate_with(healthy, tmp_path / "out")
    assert not healthy.requests and items_of(again) == items_of(report)


@pytest.mark.fault
@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_model_and_judge_cache_entries_are_misses(how, evaluated, tmp_path, waits, ledger, caplog):
    out = tmp_path / "out"
    with FakeOpenAI(Endpoint(item, eval_reply)) as server:
        evaluate_with(server, out)

    def entry(folder: str, marker: str) -> Path:  # the cache holds replies only: found by what they say
        (path,) = [p for p in (out / "cache" / folder).rglob("*.json") if marker in p.read_text()]
        return path

    damaged = [entry("model", f"Answer {FAULTED_ITEMS[0]}:"), entry("judge", f"about answer {FAULTED_ITEMS[1]}.")]
    for path in damaged:
        damage(path, how)
    with FakeOpenAI(Endpoint(item, eval_reply)) as healthy, caplog.at_level(logging.WARNING):
        again = evaluate_with(healthy, out)
    assert per_item(healthy, item, "mut") == {FAULTED_ITEMS[0]: 1}
    # item 2's new answer is the same text, so its verdict comes from the cache; item 3's was damaged
    assert per_item(healthy, item, "judge") == {FAULTED_ITEMS[1]: 1}
    for path in damaged:
        assert f"damaged cache entry {path}" in caplog.text
        json.loads(path.read_text())  # overwritten with a whole entry
    same_report(again, evaluated, ledger)
