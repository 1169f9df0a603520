"""Loss masks under the embedded ChatML template and the published Qwen2.5-Instruct and Qwen3 chat
templates (tests/templates/).

Qwen3 opens the last answer with an empty `<think>\n\n</think>\n\n` block: the mask must still
cover exactly the assistant contents (and their <|im_end|>), and a record whose mask cannot be
derived must be a counted reject, not an error that stops loading.
"""

from pathlib import Path

import pytest

from diabetica_jax.data.chat import EmptyLossMask, LossMaskError, encode_messages
from diabetica_jax.data.loader import TokenStore
from diabetica_jax.data.records import Record
from diabetica_jax.hf.tokenizer import embedded_tokenizer

TEMPLATES = Path(__file__).parents[1] / "templates"

CONVERSATIONS = {
    "single turn": [{"role": "user", "content": "什么是糖尿病？"}, {"role": "assistant", "content": "一种以高血糖为特征的代谢病。"}],
    "with system": [{"role": "system", "content": "You are a diabetes educator."},
                    {"role": "user", "content": "What is HbA1c?"},
                    {"role": "assistant", "content": "Average glucose over about three months."}],
    "multi turn": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
                   {"role": "user", "content": "低血糖怎么办？"}, {"role": "assistant", "content": "先吃15克糖，15分钟后复测。"}],
    "multi turn with system": [
        {"role": "system", "content": "回答要简短。"},
        {"role": "user", "content": "空腹血糖正常值？"}, {"role": "assistant", "content": "3.9-6.1 mmol/L。"},
        {"role": "user", "content": "Is 7.2 high?"}, {"role": "assistant", "content": "Yes: 7.0 or more suggests diabetes."},
        {"role": "user", "content": "谢谢"}, {"role": "assistant", "content": "不客气，记得定期复查。"}],
}


def _tokenizer(template: str):
    tokenizer = embedded_tokenizer()  # a fresh instance each call: setting the template is local
    if template != "chatml":  # the embedded tokenizer's own template
        tokenizer.chat_template = (TEMPLATES / f"{template}.jinja").read_text(encoding="utf-8")
    return tokenizer


@pytest.fixture(scope="module", params=["chatml", "qwen2_5", "qwen3"])
def tokenizer(request):
    return _tokenizer(request.param)


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_mask_is_exactly_the_assistant_contents(tokenizer, name):
    messages = CONVERSATIONS[name]
    ids, mask = encode_messages(tokenizer, messages)
    reference = tokenizer.apply_chat_template(messages, tokenize=True)
    reference = reference["input_ids"] if hasattr(reference, "keys") else reference
    assert ids.tolist() == list(reference)
    answers = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert tokenizer.decode(ids[mask == 1]) == "".join(answers)
    # nothing of the prompt side leaks in: the tokens before the first answer carry no loss
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = tokenizer.apply_chat_template(messages[:first], tokenize=False, add_generation_prompt=True)
    assert mask[: len(tokenizer.encode(prompt))].sum() == 0


def test_qwen3_think_block_gets_no_loss():
    tokenizer = _tokenizer("qwen3")
    messages = CONVERSATIONS["multi turn"]
    ids, mask = encode_messages(tokenizer, messages)
    text = tokenizer.decode(ids)
    assert text.count("<think>\n\n</think>\n\n") == 1  # the template's empty block before the last answer
    assert "think>" not in tokenizer.decode(ids[mask == 1])


def test_an_underivable_mask_is_a_counted_reject():
    tokenizer = _tokenizer("qwen3")
    # Qwen3's template moves reasoning out of the content: what is trained on is not what was written
    altered = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>greet</think>\n\nHello!"}]
    with pytest.raises(LossMaskError, match="record r1: the chat template altered"):
        encode_messages(tokenizer, altered, "r1")
    assert issubclass(LossMaskError, EmptyLossMask)

    def record(i, messages):
        return Record(id=f"r{i}", source="s", kind="dialogue", language="en", provenance={}, messages=messages)

    store = TokenStore([record(0, CONVERSATIONS["single turn"]), record(1, altered)], tokenizer, seq_len=256)
    assert store.stats.dropped_empty_mask == 1 and store.stats.examples == 1


def test_a_tokenizer_without_a_chat_template_gets_plain_paragraphs():
    from diabetica_jax.generate.chat import chat_prompt

    tokenizer = embedded_tokenizer()
    tokenizer.chat_template = None  # a base model's tokenizer (Llama 2, Meditron)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "什么是糖尿病？"}]
    ids = chat_prompt(tokenizer, messages)
    assert tokenizer.decode(ids) == "Be brief.\n\n什么是糖尿病？\n"


def test_the_embedded_tokenizer_is_not_lent_to_another_family(tmp_path):
    import json

    from diabetica_jax.hf import HFCheckpointError, load_tokenizer

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(HFCheckpointError, match="does not fit model_type 'llama'"):
        load_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert load_tokenizer(tmp_path).convert_tokens_to_ids("<|im_end|>") == 151645


def test_a_template_that_is_not_chatml_is_refused_up_front():
    from diabetica_jax.data.chat import UnsupportedTemplate

    tokenizer = embedded_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                               "{{ m['content'] }}<|eot_id|>{% endfor %}")  # Llama 3's turn layout
    with pytest.raises(UnsupportedTemplate, match="ChatML"):
        encode_messages(tokenizer, CONVERSATIONS["single turn"])
