import json

import pytest

from diabetica_jax.model.config import ConfigError, QwenConfig, list_presets

QWEN2_4X = {  # transformers 4.x config.json form: rope_theta at top level
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536,
    "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
    "rope_theta": 1000000.0, "rope_scaling": None, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
    "use_sliding_window": False, "sliding_window": 131072, "max_window_layers": 21, "hidden_act": "silu",
}


def test_transformers_4_and_5_forms_give_the_same_config():
    v5 = {k: v for k, v in QWEN2_4X.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0}
    v5["layer_types"] = ["full_attention"] * 28
    a, b = QwenConfig.from_hf_dict(QWEN2_4X), QwenConfig.from_hf_dict(v5)
    assert a == b
    assert a.rope_theta == 1e6 and a.head_dim == 128 and a.qkv_bias and not a.qk_norm


def test_written_config_reads_back_identically():
    cfg = QwenConfig.preset("qwen3-1.7b")
    assert QwenConfig.from_hf_dict(json.loads(json.dumps(cfg.to_hf_dict()))) == cfg


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_type='yarn'"),
        ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e6}}, "rope_type='dynamic'"),
        ({"use_sliding_window": True, "max_window_layers": 21}, "sliding-window"),
        ({"layer_types": ["full_attention"] * 27 + ["sliding_attention"]}, "layers [27]"),
        ({"architectures": ["Qwen2MoeForCausalLM"]}, "Qwen2MoeForCausalLM"),
        ({"num_experts": 60}, "mixture of experts"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"hidden_size": None}, "'hidden_size' is missing"),
        ({"num_key_value_heads": 5}, "multiple of num_key_value_heads"),
    ],
)
def test_unsupported_or_broken_configs_are_refused(change, message):
    raw = {**QWEN2_4X, **change}
    with pytest.raises(ConfigError, match=None) as err:
        QwenConfig.from_hf_dict(raw, source="some/config.json")
    assert message in str(err.value)
    assert "some/config.json" in str(err.value) or "num_key_value_heads" in message


def test_presets_have_the_published_parameter_counts():
    assert {"tiny", "qwen2-0.5b", "qwen2-1.5b", "qwen2-7b", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b",
            "qwen3-0.6b", "qwen3-1.7b", "qwen3-8b"} <= set(list_presets())
    assert QwenConfig.preset("qwen2-0.5b").num_params() == 494_032_768
    assert QwenConfig.preset("qwen2-1.5b").num_params() == 1_543_714_304
    assert QwenConfig.preset("qwen2-7b").num_params() == 7_615_616_512
    assert QwenConfig.preset("qwen3-8b").num_params() == 8_190_735_360
    tiny = QwenConfig.preset("tiny")
    assert tiny.vocab_size == 151_936 and tiny.tie_word_embeddings


def test_runtime_options_are_validated():
    with pytest.raises(ConfigError, match="attention='flash'"):
        QwenConfig.preset("tiny", attention="flash")
    with pytest.raises(ConfigError, match="unknown model preset"):
        QwenConfig.preset("qwen9-1t")
