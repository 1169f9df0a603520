"""How an MCQ reply's letter is read: own mode never rewards noise, faithful mode keeps the paper's rule."""

import pytest

from diabetica_jax.evaluation.tasks import ANSWER_RULES, extract_letter, mcq_metrics

OPTIONS = {letter: f"option {letter}" for letter in "ABCDE"}


@pytest.mark.parametrize("reply, letter", [
    ("B", "B"), ("B.", "B"), ("B. 二甲双胍", "B"), ("(C)", "C"), ("（D）二甲双胍", "D"), ("B二甲双胍", "B"),
    ("Answer: B", "B"), ("答案：E", "E"), ("正确答案是（A）", "A"), ("思考过程如下\nC. 二甲双胍", "C"),
    ("The answer is a combination. Answer: D", "D"),
])
def test_own_mode_reads_a_standalone_letter(reply, letter):
    assert extract_letter(reply, OPTIONS, "picked") == letter


@pytest.mark.parametrize("reply", [
    "2.胰岛素岛素岛素",  # the demo model's reply after training: no letter at all
    "Basal insulin first",  # the B of a word
    "HbA1c below 7%",  # the A of a word
    "维生素B12缺乏",  # a letter glued to a number
    "DKA needs fluids",  # capitals of an abbreviation
    "I think a diet",
    "",
])
def test_own_mode_never_reads_a_letter_inside_a_word(reply):
    assert extract_letter(reply, OPTIONS, "picked") is None


def test_own_mode_refuses_a_letter_that_is_not_an_option():
    assert extract_letter("F", {k: OPTIONS[k] for k in "ABCD"}, "picked") is None


@pytest.mark.parametrize("reply, letter", [
    ("Answer: B", "A"),  # the paper's rule, flaw kept: the A of "Answer"
    ("Basal insulin", "B"),
    ("2.胰岛素岛素", None),
])
def test_faithful_mode_keeps_the_papers_first_character_rule(reply, letter):
    assert extract_letter(reply, OPTIONS, "first_letter") == letter


def test_mcq_metrics_report_the_unanswered_rate_and_the_rule_that_scored():
    results = [{"prediction": "A", "correct": True}, {"prediction": None, "correct": False},
               {"prediction": None, "correct": False}, {"prediction": "B", "correct": False},
               {"prediction": None, "correct": None, "status": "failed: timeout"}]
    summary = mcq_metrics(results, "picked")
    assert summary["unanswered"] == 2
    assert summary["unanswered_rate"] == pytest.approx(0.5)
    assert summary["answered_rate"] == pytest.approx(0.5)
    assert summary["accuracy"] == pytest.approx(0.25)
    assert summary["answer_rule"] == ANSWER_RULES["picked"]
    assert "first A-E character" in mcq_metrics(results, "first_letter")["answer_rule"]


def test_passage_perplexity_equals_transformers_on_the_same_tokens(hf_checkpoints):
    """The perplexity task's negative log-likelihood per passage (left-padded in one batch, scored in vocabulary
    chunks) equals transformers' summed cross-entropy on each passage alone."""
    import numpy as np
    import torch
    from flax import nnx
    from transformers import AutoModelForCausalLM

    from diabetica_jax import hf
    from diabetica_jax.evaluation.perplexity import passage_nll

    path = hf_checkpoints["qwen2_tied"]
    model, _ = hf.load(path, progress=False)
    graphdef, state = nnx.split(model)
    rng = np.random.RandomState(1)
    passages = [rng.randint(0, 512, size=n).tolist() for n in (5, 40, 2, 70)]
    ours = passage_nll(graphdef, state, passages, pad_id=0, batch_size=3)
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for ids, (nll, count) in zip(passages, ours):
        with torch.no_grad():
            loss = reference(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()  # mean over n-1 tokens
        assert count == len(ids) - 1
        np.testing.assert_allclose(nll, loss * (len(ids) - 1), rtol=2e-5)


def test_perplexity_task_reads_markdown_paragraphs_and_reports_them(tmp_path):
    from diabetica_jax.configuration import load_config
    from diabetica_jax.evaluation.config import EvalConfig
    from diabetica_jax.evaluation.runner import evaluate

    text = tmp_path / "heldout.md"
    text.write_text("# Heading\n\n> a note\n\nFirst passage about insulin.\n\nSecond passage,\nover two lines.\n",
                    encoding="utf-8")
    cfg = load_config(EvalConfig, None, [f"tasks=[{{task: perplexity, files: ['{text}']}}]", "judge.backend=none"])
    report = evaluate(cfg, tmp_path / "out", progress=False)
    ppl = report["tasks"]["perplexity"]
    assert ppl["n_items"] == 2 and ppl["n_tokens"] > 4 and ppl["perplexity"] > 1000  # random weights: ~vocab size
    items = __import__("json").loads((tmp_path / "out" / "report_perplexity.json").read_text())["items"]
    assert [i["text"] for i in items] == ["First passage about insulin.", "Second passage,\nover two lines."]
    assert "| perplexity |" in (tmp_path / "out" / "summary.md").read_text()


def test_an_endpoint_has_no_perplexity_and_says_so():
    from diabetica_jax.evaluation.data import Item
    from diabetica_jax.evaluation.perplexity import NOT_AVAILABLE, run_perplexity

    results, summary = run_perplexity(object(), [Item("1", "some text", "")])
    assert summary["perplexity"] == NOT_AVAILABLE and results[0]["status"] == NOT_AVAILABLE


def test_letter_probability_is_the_chance_a_reply_opens_with_an_option_letter():
    import numpy as np

    from diabetica_jax.evaluation.data import Item
    from diabetica_jax.evaluation.prompts import OWN
    from diabetica_jax.evaluation.tasks import LETTERS, run_mcq

    class Model:
        failures = []

        def generate(self, conversations, max_new_tokens, sampling):
            return ["noise", "B."]

        def letter_logprobs(self, conversations, letters):
            scores = np.full((2, len(LETTERS)), np.log(0.01))
            scores[1, 1] = np.log(0.9)
            scores[:, 5:] = np.log(0.5)  # F, G, H: not options of these items, never counted
            return scores

    items = [Item(str(i), "Q\nA. a\nB. b\nC. c\nD. d\nE. e", "B", {k: k for k in "ABCDE"}) for i in range(2)]
    results, summary = run_mcq(Model(), items, OWN)
    assert [r["letter_probability"] for r in results] == pytest.approx([0.05, 0.94])
    assert summary["letter_probability"] == pytest.approx(0.495) and summary["answered_rate"] == 0.5
