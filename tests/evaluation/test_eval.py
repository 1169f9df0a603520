"""Evaluation: metrics by hand, the A1 file end to end, a fake judge, and clear data errors."""

import json

import numpy as np
import pytest
from benchmark_files import DIABETICA
from fake_openai import FakeOpenAI

from diabetica_jax.configuration import load_config
from diabetica_jax.evaluation import metrics
from diabetica_jax.evaluation.config import EvalConfig
from diabetica_jax.evaluation.data import EvalDataError, load_items
from diabetica_jax.evaluation.runner import evaluate


def test_metrics_on_hand_computed_cases():
    assert metrics.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert metrics.rouge_n("高血糖", "血糖高", 1) == 1.0
    assert metrics.rouge_n("高血糖", "血糖高", 2) == pytest.approx(0.5)  # bigrams {高血, 血糖} vs {血糖, 糖高}
    assert metrics.rouge_l("高血糖", "血糖高") == pytest.approx(2 / 3)  # LCS 血糖
    assert metrics.rouge_l("体重 减轻", "体重减轻") == 1.0  # whitespace does not count
    assert metrics.bleu_char("高血糖", "高血糖") == pytest.approx(0.5757, abs=1e-4)  # short: smoothing method 4
    assert metrics.bleu_char("胰岛素", "高血糖") == 0.0


@pytest.mark.parametrize("reply, own, first_digit", [
    ("Reasons...\nScore: 8", 8.0, 8.0),
    ("I'd give it 8/10.", 8.0, None),
    ("评分：7.5分", 7.5, None),
    ("Score: 7.5", 7.5, 7.0),
    ("Score: 10", 10.0, 10.0),
    ("Score: 12", None, 1.0),
    ("The answer is fine.", None, None),
])
def test_judge_score_parsing(reply, own, first_digit):
    assert metrics.parse_score(reply) == own
    assert metrics.parse_score_original(reply) == first_digit


@pytest.mark.slow
@pytest.mark.shared
def test_mcq_a1_end_to_end_in_faithful_mode(tmp_path):
    cfg = load_config(EvalConfig, None, [
        "mode=faithful", f"protocol={DIABETICA / 'protocol.json'}", f"data_dir={DIABETICA}",
        "tasks=[{task: mcq, files: [ZhiCheng_MCQ_A1.csv]}]", "batch_size=32"])
    result = evaluate(cfg, tmp_path, progress=False)
    report = json.loads((tmp_path / "report_mcq.json").read_text())
    assert report["n_items"] == 235 and len(report["items"]) == 235
    assert all(item["answer"] in "ABCDE" and len(item["answer"]) == 1 for item in report["items"])
    assert sum(item["answer"] == "E" for item in report["items"]) > 10
    assert report["accuracy"] == sum(i["correct"] for i in report["items"]) / 235
    low, high = report["accuracy_ci95"]
    assert low <= report["accuracy"] <= high
    assert report["items"][0]["prompt"].endswith("不要输出汉字。")  # the protocol's prompt, not ours
    assert result["published"]["mcq_pooled_accuracy_pct"]["Diabetica-7B"] == 87.2
    for name in ("report.json", "summary.md", "comparison.png"):
        assert (tmp_path / name).is_file()


def _judge(messages, model):
    prompt = messages[-1]["content"]
    if "手抖" in prompt:
        return ("sleep", 2.0, "Score: 9")  # slower than the judge timeout
    if "眼底" in prompt:
        return "The answer is acceptable overall."  # no score
    if "feet" in prompt:
        return "Reasonable.\n6/10"
    return "Covers the rules.\nScore: 8"


@pytest.mark.slow
def test_dialog_with_a_fake_judge(tmp_path):
    with FakeOpenAI(_judge) as server:
        overrides = ["tasks=[{task: dialog, files: ['embedded:mini_dialog.jsonl']}]", "judge.backend=openai",
                     f"judge.base_url={server.base_url}", "judge.model=judge", "judge.timeout=0.5", "judge.retries=1"]
        result = evaluate(load_config(EvalConfig, None, overrides), tmp_path, progress=False)
        first_calls = len(server.requests)
    dialog = result["tasks"]["dialog"]
    assert (dialog["n_items"], dialog["n_scored"], dialog["n_unparsed"], dialog["n_failed"]) == (4, 2, 1, 1)
    assert dialog["mean_score"] == pytest.approx((8 + 6) / 2)
    items = json.loads((tmp_path / "report_dialog.json").read_text())["items"]
    unparsed = next(i for i in items if i["judge_status"] == "unparsed")
    assert unparsed["score"] is None and "acceptable" in unparsed["judge_reply"]
    assert first_calls == 4
    # a rerun asks the judge only about what is still missing (the timed-out item)
    with FakeOpenAI(_judge) as server:
        overrides = [o if "base_url" not in o else f"judge.base_url={server.base_url}" for o in overrides]
        evaluate(load_config(EvalConfig, None, overrides), tmp_path, progress=False)
        assert len(server.requests) == 1


def test_bad_benchmark_files_name_file_and_row(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\n\"Question: x\nOption A: a\nOption B: b\",C：c\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match=rf"{bad}: row 0: answer letter C is not among"):
        load_items(bad, "mcq")
    bad.write_text("question,answer\n\"Question: x\nOption A: a\nOption B: b\",\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match=rf"{bad}: row 0: empty 'answer'"):
        load_items(bad, "mcq")
    bad.write_text("stem,key\nx,A\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"missing column 'question'"):
        load_items(bad, "mcq")


@pytest.mark.shared
def test_the_dialogue_workbook_reads_with_rules_and_references():
    items = load_items(DIABETICA / "120_benchmark.xlsx", "dialog")
    assert len(items) == 120 and items[0].answer.startswith("1.") and items[0].reference


def test_wilson_interval_contains_the_estimate_at_0_and_100_percent():
    # float rounding once put the 0% lower bound at 3e-17 (n=11) and the 100% upper bound at
    # 0.9999999999999999 (n=6): both outside the point estimate
    for total in range(1, 301):
        low, high = metrics.wilson_interval(0, total)
        assert low == 0.0 < high, total
        low, high = metrics.wilson_interval(total, total)
        assert low < high == 1.0, total


def _mcq_run(name, correct, total):
    from diabetica_jax.evaluation.tasks import mcq_metrics

    results = [{"correct": i < correct, "loglik_correct": i < correct, "prediction": "A"} for i in range(total)]
    return {"model": name, "mode": "own", "tasks": {"mcq": mcq_metrics(results, "picked")},
            "published": {"mcq_pooled_accuracy_pct": {"Diabetica-7B": 87.2}}}


@pytest.mark.parametrize("correct, total", [(0, 11), (6, 6), (0, 235), (77, 77)])
def test_comparison_plot_of_an_all_wrong_or_all_right_model(tmp_path, correct, total):
    from diabetica_jax.evaluation.summary import compare_plot

    run = _mcq_run("m", correct, total)
    low, high = run["tasks"]["mcq"]["accuracy_ci95"]
    assert low <= run["tasks"]["mcq"]["accuracy"] <= high
    assert compare_plot([run], tmp_path / "comparison.png") is True
    assert (tmp_path / "comparison.png").stat().st_size > 0


def test_a_failing_plot_is_logged_not_raised(tmp_path, caplog):
    from diabetica_jax.evaluation.summary import compare_plot

    run = _mcq_run("m", 3, 10)
    run["tasks"]["mcq"]["accuracy_ci95"] = (0.9, 0.1)  # an interval that misses its estimate: clipped, drawn
    assert compare_plot([run], tmp_path / "clipped.png") is True
    (tmp_path / "a file").write_text("")
    with caplog.at_level("ERROR"):  # a plot that cannot be written: logged, no exception
        assert compare_plot([run], tmp_path / "a file" / "broken.png") is False
    assert "plot" in caplog.text


# ---- faithful mode: the paper's rules, computed by hand from protocol.json; the own rules beside them ----

@pytest.mark.parametrize("reply, original, own", [
    ("Reasons...\nScore: 7.5", 7.0, 7.5),  # original reads the first character after 'Score: '
    ("Score: **10**", None, 10.0),  # s = '**10**': s[0] '*' is no digit -> dropped
    ("Good on rules 1-3.\n[9]", None, 9.0),  # no 'Score: ' -> last character ']' -> dropped
    ("Score: 8\nOn reflection, rule 2 is missed.\nScore: 3", 8.0, 3.0),  # original: FIRST; own: the final verdict
    ("Fine.\nScore：8", 8.0, 8.0),  # NFKC: 'Score:8', no 'Score: ' -> the last character '8'
    ("Fine.\nScore：9 points", None, 9.0),  # NFKC 'Score:9 points': no 'Score: ' -> last character 's' -> dropped
    ("Score: ８", 8.0, 8.0),  # full-width digit, NFKC -> '8'
    ("Score: １０", 10.0, 10.0),
    ("Score:  9", None, 9.0),  # two spaces: s = ' 9', s[0] is a space -> dropped
    ("Score: 12", 1.0, None),  # original '1'; own: out of range
    ("Score: 10/10", 10.0, 10.0),
    ("It covers every rule, 7", 7.0, None),  # original falls back to the last character
    ("", None, None),
])
def test_original_and_own_score_rules(reply, original, own):
    assert metrics.parse_score_original(reply) == original
    assert metrics.parse_score(reply) == own


def test_faithful_rouge_counts_whitespace_and_own_rouge_does_not():
    # candidate 体,重,' ',减,轻 (5) vs reference 体,重,减,轻 (4): 4 shared unigrams -> P 4/5, R 1 -> F1 8/9
    assert metrics.rouge_n("体重 减轻", "体重减轻", 1, keep_whitespace=True) == pytest.approx(8 / 9)
    # bigrams 体重, 重' ', ' '减, 减轻 vs 体重, 重减, 减轻: 2 shared -> P 2/4, R 2/3 -> F1 4/7
    assert metrics.rouge_n("体重 减轻", "体重减轻", 2, keep_whitespace=True) == pytest.approx(4 / 7)
    assert metrics.rouge_l("体重 减轻", "体重减轻", keep_whitespace=True) == pytest.approx(8 / 9)  # LCS 4
    assert metrics.rouge_l(" 高血糖", "高血糖", keep_whitespace=True) == pytest.approx(2 * 3 / 4 / (3 / 4 + 1))
    for fn in (metrics.rouge_l, lambda c, r, **k: metrics.rouge_n(c, r, 1, **k)):
        assert fn("体重 减轻", "体重减轻") == 1.0  # own: whitespace dropped
    # empty output: 0.0 (the paper's own rouge_l divides by zero there; we score it 0)
    for keep in (True, False):
        assert metrics.rouge_n("", "高血糖", 1, keep_whitespace=keep) == 0.0
        assert metrics.rouge_n("高", "高", 2, keep_whitespace=keep) == 0.0  # no bigram on either side
        assert metrics.rouge_l("", "", keep_whitespace=keep) == 0.0
    assert metrics.bleu_word("", "insulin") == 0.0 and metrics.bleu_char("", "高") == 0.0


def test_word_bleu_is_the_papers_and_char_bleu_is_named_as_such():
    import math

    # tokens ['insulin', 'resistance'] both sides (lower-cased): p1 = p2 = 1; p3, p4 have no matches and method 4
    # gives them 1 / (2^k * 5 / ln(hyp_len=2)) / 1, k = 1, 2; brevity penalty 1
    expected = (math.log(2) / 10 * math.log(2) / 20) ** 0.25
    assert metrics.bleu_word("Insulin resistance", "insulin resistance") == pytest.approx(expected)
    assert expected == pytest.approx(0.22139, abs=1e-5)
    # an unspaced Chinese answer is one token: close to exact match
    assert metrics.bleu_word("胰岛素抵抗", "胰岛素抵抗") == 1.0
    assert metrics.bleu_word("胰岛素", "胰岛素抵抗") == 0.0
    assert metrics.bleu_char("高血糖", "高血糖") == pytest.approx(0.5757, abs=1e-4)
    assert metrics.word_tokens("Insulin resistance.") == ["insulin", "resistance", "."]


class _FakeModel:
    """The model-under-test interface, with canned replies."""

    name = "fake"
    decoding = None

    def __init__(self, replies, logprobs=None):
        self.replies, self.logprobs, self.calls = replies, logprobs, []

    def generate(self, conversations, max_new_tokens, sampling):
        self.calls.append((conversations, max_new_tokens, sampling))
        return [self.replies[i % len(self.replies)] for i in range(len(conversations))]

    def letter_logprobs(self, conversations, letters):
        return self.logprobs


class _FakeJudge:
    name = "fake-judge"

    def __init__(self, replies):
        self.replies, self.calls = replies, []

    def chat(self, messages, max_tokens, temperature):
        self.calls.append((max_tokens, temperature))
        for key, reply in self.replies.items():
            if key in messages[-1]["content"]:
                return reply
        return "Score: 5"


def test_dialog_scores_by_both_rules_and_per_category():
    from diabetica_jax.evaluation.data import Item
    from diabetica_jax.evaluation.prompts import OWN
    from diabetica_jax.evaluation.tasks import run_dialog

    items = [Item("1", "q-one", "rules", item_class="药物", item_type="Treatment"),
             Item("2", "q-two", "rules", item_class="药物", item_type="Treatment"),
             Item("3", "q-three", "rules", item_class="低血糖", item_type="Others")]
    judge = _FakeJudge({"q-one": "Score: **10**", "q-two": "Score: 7.5", "q-three": "Score: 8\nScore: 3"})
    results, summary = run_dialog(_FakeModel(["answer"]), items, OWN, judge)
    assert [r["score_own"] for r in results] == [10.0, 7.5, 3.0]
    assert [r["score_original"] for r in results] == [None, 7.0, 8.0]
    assert summary["score_rule"] == "own" and summary["mean_score"] == pytest.approx((10 + 7.5 + 3) / 3)
    assert summary["mean_score_original"] == pytest.approx(7.5) and summary["n_unparsed_original"] == 1
    assert summary["by_class"]["药物"] == {"n_items": 2, "mean_score": pytest.approx(8.75), "n_scored": 2}
    assert summary["by_type"]["Others"]["mean_score"] == 3.0
    assert judge.calls == [(1024, 0.0)] * 3
    assert "药物" in __import__("diabetica_jax.evaluation.summary", fromlist=["x"]).summary_markdown(
        [{"model": "m", "mode": "own", "tasks": {"dialog": summary}, "published": {}}])


@pytest.mark.shared
def test_faithful_prompts_take_judge_settings_and_dialog_decoding_from_the_protocol():
    from diabetica_jax.evaluation.data import Item
    from diabetica_jax.evaluation.prompts import from_protocol
    from diabetica_jax.evaluation.tasks import run_dialog, task_sampling

    prompts = from_protocol(DIABETICA / "protocol.json")
    assert (prompts.judge_max_tokens, prompts.judge_temperature, prompts.judge_model) == (
        2048, 0.2, "gpt-4-0125-preview")
    judge = _FakeJudge({"q": "Score: **10**"})
    results, summary = run_dialog(_FakeModel(["a"]), [Item("1", " q ", "r")], prompts, judge)
    assert judge.calls == [(2048, 0.2)] and summary["score_rule"] == "original"
    assert results[0]["score"] is None and summary["n_unparsed"] == 1 and summary["mean_score_own"] == 10.0
    assert results[0]["prompt"] == " q "  # verbatim
    qwen7b = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
    dialog = task_sampling(prompts, "dialog", True, qwen7b, 42)
    assert (dialog.temperature, dialog.top_p, dialog.top_k, dialog.repetition_penalty, dialog.seed) == (
        0.7, 0.8, 20, 1.1, 42)  # the protocol's explicit repetition_penalty over the checkpoint's
    assert task_sampling(prompts, "mcq", True, qwen7b, 43).repetition_penalty == 1.05
    assert task_sampling(prompts, "mcq", True, None, 42) is None  # an endpoint: its own defaults
    assert task_sampling(prompts, "mcq", False, qwen7b, 42).greedy  # own mode: greedy whatever the checkpoint


def test_mcq_without_letter_logprobs_reports_not_available():
    from diabetica_jax.evaluation.data import Item
    from diabetica_jax.evaluation.prompts import OWN
    from diabetica_jax.evaluation.tasks import run_mcq

    items = [Item("1", "q", "B", {"A": "a", "B": "b"}), Item("2", "q", "A", {"A": "a", "B": "b"})]
    model = _FakeModel(["B"])
    _, summary = run_mcq(model, items, OWN)
    assert summary["accuracy"] == 0.5 and summary["loglik_accuracy"].startswith("not available")
    conversation = model.calls[0][0][0]
    assert [m["role"] for m in conversation] == ["system", "user"]
    import numpy as np

    logprobs = np.log(np.full((2, 8), 0.01))
    logprobs[:, 0] = np.log(0.5)  # A most likely
    _, summary = run_mcq(_FakeModel(["B"], logprobs), items, OWN)
    assert summary["loglik_accuracy"] == 0.5


@pytest.mark.shared
def test_the_dialogue_workbook_is_read_verbatim_with_class_and_type():
    items = load_items(DIABETICA / "120_benchmark.xlsx", "dialog")
    assert sum(i.question != i.question.strip() for i in items) == 38
    assert sum(i.answer != i.answer.strip() for i in items) == 12
    assert all(i.item_class and i.item_type for i in items)


SAMPLING_CONFIG = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from hf_models import make_hf_checkpoint

    return make_hf_checkpoint("qwen2_tied", tmp_path_factory.mktemp("ckpt") / "tiny-qwen2")


@pytest.fixture(scope="module")
def protocol_file(tmp_path_factory):
    """A protocol in the layout of Diabetica's protocol.json, written here so these tests need no ../shared."""
    decoding = {"seed": 42, "max_new_tokens": 32}
    protocol = {
        "system_prompt": "You are a helpful assistant.",
        "mcq": {"user_prompt": "{question}\n只输出选项字母。", "decoding": decoding},
        "fill_in_the_blank": {"user_prompt": "填空：\n<question>", "placeholder": "<question>", "decoding": decoding},
        "dialog": {"user_prompt": "{question}", "decoding": {"max_new_tokens": 64, "repetition_penalty": 1.1},
                   "judge": {"model": "judge-model", "temperature": 0.2, "max_tokens": 256,
                             "prompt": "Rate <output> for <instruction> by <rule>. Answer with Score: "}},
        "published_results": {"mcq_pooled_accuracy_pct": {"Some-7B": 70.0}},
    }
    path = tmp_path_factory.mktemp("protocol") / "protocol.json"
    path.write_text(json.dumps(protocol, ensure_ascii=False), encoding="utf-8")
    return path


def _faithful_overrides(checkpoint, protocol, *extra):
    return [f"model.path={checkpoint}", "mode=faithful", f"protocol={protocol}",
            "tasks=[{task: mcq, files: ['embedded:mini_mcq.csv'], limit: 2}, "
            "{task: cloze, files: ['embedded:mini_cloze.csv'], limit: 2}]", *extra]


@pytest.mark.slow
def test_faithful_mode_samples_with_the_checkpoints_generation_config_over_seeds(tmp_path, tiny_checkpoint,
                                                                                 protocol_file):
    (tiny_checkpoint / "generation_config.json").write_text(json.dumps(SAMPLING_CONFIG))
    cfg = load_config(EvalConfig, None, _faithful_overrides(tiny_checkpoint, protocol_file, "seeds=2"))
    result = evaluate(cfg, tmp_path, progress=False)
    assert result["seeds"] == [42, 43]
    assert result["decoding"]["source"] == str(tiny_checkpoint / "generation_config.json")
    mcq = result["tasks"]["mcq"]
    assert mcq["decoding"] == {"strategy": "sampling", "temperature": 0.7, "top_p": 0.8, "top_k": 20,
                               "repetition_penalty": 1.05, "max_new_tokens": 32}
    assert [s["seed"] for s in mcq["per_seed"]] == [42, 43]
    stats = mcq["seed_stats"]["accuracy"]
    assert stats["n"] == 2 and stats["mean"] == pytest.approx(np.mean([s["accuracy"] for s in mcq["per_seed"]]))
    assert mcq["accuracy"] == mcq["per_seed"][0]["accuracy"]  # the headline is seed 42's run
    cloze = result["tasks"]["cloze"]
    assert cloze["bleu_kind"] == "bleu_word" and len(cloze["per_seed"]) == 2 and "rougeL" in cloze["seed_stats"]
    report = json.loads((tmp_path / "report_mcq.json").read_text())
    assert len(report["items"]) == 2 and list(report["items_by_seed"]) == ["43"]
    assert "2 seeds: mean" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow
def test_faithful_mode_is_greedy_when_the_checkpoint_says_so_and_modes_run_side_by_side(tmp_path, tiny_checkpoint,
                                                                                        protocol_file):
    (tiny_checkpoint / "generation_config.json").write_text(json.dumps({"do_sample": False, "eos_token_id": 2}))
    cfg = load_config(EvalConfig, None,
                      _faithful_overrides(tiny_checkpoint, protocol_file, "modes=[own, faithful]", "seeds=2"))
    result = evaluate(cfg, tmp_path, progress=False)
    own, faithful = result["runs"]
    assert (own["mode"], faithful["mode"]) == ("own", "faithful") and result["mode"] == "own"
    assert faithful["tasks"]["mcq"]["decoding"]["strategy"] == "greedy" and faithful["seeds"] == [42, 43]
    assert own["seeds"] == [42] and own["decoding"]["source"] == "own mode: greedy"
    # the tiny random checkpoint's 512-token vocabulary does not cover the chat template's ids (151643+), so
    # its letter log-probabilities are NaN: not available, never counted as wrong answers
    own_mcq = own["tasks"]["mcq"]
    assert isinstance(own_mcq["loglik_accuracy"], float) or (
        own_mcq["loglik_accuracy"].startswith("not available (no item has a usable")
        and own_mcq["loglik_unavailable"] == own_mcq["n_items"])
    for mode in ("own", "faithful"):
        assert (tmp_path / mode / "report.json").is_file()
    assert (tmp_path / "summary.md").is_file() and (tmp_path / "comparison.png").is_file()


def test_an_openai_endpoint_as_the_model_under_test(tmp_path):
    with FakeOpenAI(lambda messages, model: "B") as server:
        cfg = load_config(EvalConfig, None, [
            "model.path=openai:fake", f"endpoint.base_url={server.base_url}",
            "tasks=[{task: mcq, files: ['embedded:mini_mcq.csv'], limit: 2}]"])
        result = evaluate(cfg, tmp_path, progress=False)
    assert result["model"] == "openai:fake" and result["tasks"]["mcq"]["n_items"] == 2
    assert result["decoding"]["tasks"]["mcq"]["strategy"] == "greedy"  # own mode: temperature 0
    loglik = result["tasks"]["mcq"]["loglik_accuracy"]
    assert isinstance(loglik, float) or loglik.startswith("not available")


@pytest.mark.shared
@pytest.mark.slow
def test_a1_with_a_tiny_llama_and_an_endpoint_merge_into_one_comparison(tmp_path, hf_checkpoints):
    """The paper's comparison in small: a Llama-family checkpoint through the JAX engine and an API model
    through the endpoint client, both on the A1 file in faithful mode, merged with the published rows."""
    from diabetica_jax.evaluation.compare import write_comparison
    from diabetica_jax.hf.tokenizer import embedded_tokenizer

    llama = hf_checkpoints["llama3"]
    embedded_tokenizer().save_pretrained(str(llama))  # a checkpoint brings its own tokenizer
    common = ["mode=faithful", f"protocol={DIABETICA / 'protocol.json'}", f"data_dir={DIABETICA}",
              "tasks=[{task: mcq, files: [ZhiCheng_MCQ_A1.csv]}]", "batch_size=64"]
    evaluate(load_config(EvalConfig, None, common + [f"model.path={llama}"]), tmp_path / "llama", progress=False)
    with FakeOpenAI(lambda messages, model: "E") as server:
        evaluate(load_config(EvalConfig, None, common + ["model.path=openai:fake-gpt", f"endpoint.base_url={server.base_url}"]),
                 tmp_path / "api", progress=False)
    assert len([r for r in server.requests if not r.get("logprobs")]) == 235  # one answer per item
    result = write_comparison([tmp_path / "llama", tmp_path / "api"], tmp_path / "compare", DIABETICA / "protocol.json")
    rows = {(r["model"], r["mode"]): r for r in result["rows"]}
    api = rows["openai:fake-gpt", "faithful"]
    items = json.loads((tmp_path / "api" / "report_mcq.json").read_text())["items"]
    assert api["mcq_a1_pct"] == pytest.approx(100 * sum(i["answer"] == "E" for i in items) / 235)
    assert rows["llama3", "faithful"]["mcq_n_items"] == 235
    published = json.loads((DIABETICA / "protocol.json").read_text())["published_results"]
    assert sum(r["published"] for r in result["rows"]) == len(
        set(published["mcq_pooled_accuracy_pct"]) | set(published["dialog_gpt4_judge_mean"]))
    assert "(published)" in (tmp_path / "compare" / "comparison.md").read_text()


# ---- review fixes ----

class _StubEngine:
    def __init__(self):
        self.calls = []

    def generate(self, chunk, max_new_tokens, params):
        self.calls.append((len(chunk), params))
        return [[1] for _ in chunk]


def _stub_model_under_test(batch_size):
    from types import SimpleNamespace

    from diabetica_jax.evaluation.tasks import ModelUnderTest

    mut = ModelUnderTest.__new__(ModelUnderTest)
    mut.batch_size, mut.progress, mut.engine = batch_size, False, _StubEngine()
    mut.tokenizer = SimpleNamespace(decode=lambda ids, skip_special_tokens: "x")
    mut.prompt_ids = lambda conversation: [1, 2]
    return mut


def test_each_generation_batch_samples_with_its_own_seed():
    from diabetica_jax.generate import SamplingParams

    mut = _stub_model_under_test(batch_size=2)
    conversations = [[{"role": "user", "content": "q"}]] * 5
    sampled = SamplingParams(temperature=0.7, top_k=20, top_p=0.8, seed=42)
    assert mut.generate(conversations, 4, sampled) == ["x"] * 5
    seeds = [params.seed for _, params in mut.engine.calls]
    assert seeds == [(42 * 1_000_003 + start) % 2**31 for start in (0, 2, 4)] and len(set(seeds)) == 3
    assert all(params.temperature == 0.7 and params.top_k == 20 for _, params in mut.engine.calls)
    mut.engine.calls.clear()
    mut.generate(conversations, 4, sampled)  # deterministic
    assert [params.seed for _, params in mut.engine.calls] == seeds
    mut.engine.calls.clear()
    greedy = SamplingParams(repetition_penalty=1.05, seed=42)
    mut.generate(conversations, 4, greedy)
    assert [params for _, params in mut.engine.calls] == [greedy] * 3


def test_mcq_rows_without_usable_letter_scores_leave_loglik_accuracy():
    from diabetica_jax.evaluation.data import Item
    from diabetica_jax.evaluation.prompts import OWN
    from diabetica_jax.evaluation.tasks import run_mcq

    options = {"A": "a", "B": "b", "C": "c"}
    items = [Item(str(i), "q", answer, options) for i, answer in enumerate("BBCB")]
    logprobs = np.full((4, 8), np.log(0.01))
    logprobs[0, 1] = np.log(0.9)  # B: right
    logprobs[1, 2] = np.log(0.9)  # C: wrong
    logprobs[2] = np.nan  # the remote log-prob request failed
    logprobs[3, :3] = -np.inf  # no allowed letter among the endpoint's top log-probabilities
    results, summary = run_mcq(_FakeModel(["B"], logprobs), items, OWN)
    assert [r["loglik_prediction"] for r in results] == ["B", "C", None, None]
    assert [r["loglik_correct"] for r in results] == [True, False, None, None]
    assert summary["loglik_accuracy"] == 0.5 and summary["loglik_unavailable"] == 2
    assert summary["accuracy"] == 0.75  # the generated answers are unaffected
    logprobs[:2] = np.nan
    _, summary = run_mcq(_FakeModel(["B"], logprobs), items, OWN)
    assert summary["loglik_accuracy"].startswith("not available (no item has a usable")
    assert summary["loglik_unavailable"] == 4


def test_pooling_dialogue_files_weights_means_by_scored_items():
    from diabetica_jax.evaluation.pooling import pool as _pool

    one = {"n_items": 4, "mean_score": 8.0, "n_scored": 2, "n_unparsed": 1, "n_failed": 1, "judge": "j",
           "score_rule": "own", "mean_score_own": 8.0, "n_scored_own": 2, "n_unparsed_own": 1,
           "mean_score_original": 6.0, "n_scored_original": 1, "n_unparsed_original": 2,
           "by_class": {"药物": {"n_items": 4, "mean_score": 8.0, "n_scored": 2}}, "by_type": {}}
    two = {"n_items": 2, "mean_score": None, "n_scored": 0, "n_unparsed": 2, "n_failed": 0, "judge": "j",
           "score_rule": "own", "mean_score_own": None, "n_scored_own": 0, "n_unparsed_own": 2,
           "mean_score_original": 4.0, "n_scored_original": 3, "n_unparsed_original": 0,
           "by_class": {"药物": {"n_items": 2, "mean_score": None, "n_scored": 0}}, "by_type": {}}
    pooled = _pool({"a.jsonl": one, "b.jsonl": two})
    assert pooled["mean_score"] == 8.0 and pooled["mean_score_own"] == 8.0  # None does not erase it
    assert pooled["mean_score_original"] == pytest.approx((6.0 * 1 + 4.0 * 3) / 4)  # by n_scored_original
    assert (pooled["n_items"], pooled["n_scored"], pooled["n_unparsed"], pooled["n_failed"]) == (6, 2, 3, 1)
    assert pooled["n_scored_original"] == 4 and pooled["judge"] == "j" and pooled["score_rule"] == "own"
    assert pooled["by_class"] == {"药物": {"n_items": 6, "mean_score": 8.0, "n_scored": 2}}
    items = [{"class": "药物", "type": "T", "score": 9.0}, {"class": "低血糖", "type": "T", "score": None}]
    pooled = _pool({"a.jsonl": one, "b.jsonl": two}, items)
    assert pooled["by_class"] == {"低血糖": {"n_items": 1, "mean_score": None, "n_scored": 0},
                                  "药物": {"n_items": 1, "mean_score": 9.0, "n_scored": 1}}
    cloze_one = {"n_items": 3, "n_failed": 2, "rougeL": 0.9, "bleu_kind": "bleu_char"}
    cloze_two = {"n_items": 3, "n_failed": 0, "rougeL": 0.3, "bleu_kind": "bleu_char"}
    pooled = _pool({"a.csv": cloze_one, "b.csv": cloze_two})
    assert pooled["rougeL"] == pytest.approx((0.9 * 1 + 0.3 * 3) / 4) and pooled["bleu_kind"] == "bleu_char"


def test_config_rejects_a_task_twice_and_two_files_of_one_name():
    from diabetica_jax.configuration import FieldError
    from diabetica_jax.evaluation.config import TaskSection

    with pytest.raises(FieldError, match=r"^tasks: task mcq named in two sections"):
        EvalConfig(tasks=[TaskSection("mcq", ["a.csv"]), TaskSection("mcq", ["b.csv"])])
    with pytest.raises(FieldError, match=r"^tasks: mcq: two files named a.csv"):
        EvalConfig(tasks=[TaskSection("mcq", ["x/a.csv", "y/a.csv"])])
    EvalConfig(tasks=[TaskSection("mcq", ["a.csv", "b.csv"]), TaskSection("cloze", ["a.csv"])])


class _BertScoreBoom:
    def __init__(self):
        self.kwargs = []

    def score(self, candidates, references, **kwargs):
        self.kwargs.append(kwargs)
        raise RuntimeError("CUDA out of memory")


def test_a_bertscore_error_is_reported_not_raised(tmp_path, monkeypatch):
    import sys

    from diabetica_jax.evaluation.tasks import NEEDS_MBERT, _bertscore

    fake = _BertScoreBoom()
    monkeypatch.setitem(sys.modules, "bert_score", fake)
    mbert = tmp_path / "mbert"
    mbert.mkdir()
    (mbert / "config.json").write_text(json.dumps(
        {"model_type": "bert", "num_hidden_layers": 12, "vocab_size": 119547}))
    assert _bertscore(["a"], ["a"], str(mbert)) == "not computed (RuntimeError: CUDA out of memory)"
    assert fake.kwargs[-1]["num_layers"] == 9
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "xlm-roberta", "num_hidden_layers": 24}))
    _bertscore(["a"], ["a"], str(other))
    assert "num_layers" not in fake.kwargs[-1]  # bert_score chooses the layer for another model

    def unknown_path(candidates, references, model_type, lang, num_layers=None):
        raise KeyError(model_type)  # bert_score's model2layers has no entry for a local path

    fake.score = unknown_path
    assert _bertscore(["a"], ["a"], str(other)) == NEEDS_MBERT


def test_null_top_k_and_top_p_in_generation_config_turn_the_filter_off(tmp_path):
    from diabetica_jax.evaluation.prompts import OWN
    from diabetica_jax.evaluation.tasks import task_sampling
    from diabetica_jax.hf import read_generation_config

    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.7, "top_k": None, "top_p": None}))
    decoding = read_generation_config(tmp_path)
    assert (decoding["top_k"], decoding["top_p"]) == (0, 1.0)
    sampling = task_sampling(OWN, "mcq", True, {**decoding, "top_k": None, "top_p": None}, 42)
    assert (sampling.temperature, sampling.top_k, sampling.top_p) == (0.7, 0, 1.0)


def test_word_tokens_fall_back_when_punkt_tab_cannot_be_loaded(monkeypatch):
    import nltk

    def word_tokenize(text, preserve_line=False):
        if not preserve_line:
            raise LookupError("Resource punkt_tab not found.")
        return text.split()

    monkeypatch.setattr(metrics, "_punkt_available", lambda: True)
    monkeypatch.setattr(nltk, "word_tokenize", word_tokenize)
    assert metrics.word_tokens("Insulin resistance") == ["insulin", "resistance"]


def test_faithful_mode_keys_an_unparsable_mcq_item_by_the_answer_cells_first_letter(tmp_path):
    from diabetica_jax.evaluation.prompts import OWN
    from diabetica_jax.evaluation.tasks import run_mcq

    path = tmp_path / "mcq.csv"
    path.write_text("question,answer\n糖尿病的诊断标准是什么？,C：空腹血糖≥7.0\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match=rf"{path}: row 0"):
        load_items(path, "mcq")  # own mode: strict
    [item] = load_items(path, "mcq", faithful=True)
    assert (item.answer, item.options) == ("C", None)
    faithful = __import__("dataclasses").replace(OWN, mcq_rule="first_letter")
    results, summary = run_mcq(_FakeModel(["C"], np.zeros((1, 8))), [item], faithful)
    assert results[0]["correct"] is True and results[0]["loglik_prediction"] is None
    path.write_text("question,answer\n糖尿病的诊断标准是什么？,空腹血糖≥7.0\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match=rf"{path}: row 0"):
        load_items(path, "mcq", faithful=True)  # no A-E letter to key it by
