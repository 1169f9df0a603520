import json

import pytest

from diabetica_jax.hf import config_from_dict, config_to_dict, list_presets, preset_config
from diabetica_jax.model.config import ConfigError
from diabetica_jax.model.runtime import RuntimeConfig

QWEN2_4X = {  # transformers 4.x config.json form: rope_theta at top level
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536,
    "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
    "rope_theta": 1000000.0, "rope_scaling": None, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
    "use_sliding_window": False, "sliding_window": 131072, "max_window_layers": 21, "hidden_act": "silu",
}


def written_architectures(cfg) -> list[str]:
    return config_to_dict(cfg)["architectures"]


def test_transformers_4_and_5_forms_give_the_same_config():
    v5 = {k: v for k, v in QWEN2_4X.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0}
    v5["layer_types"] = ["full_attention"] * 28
    a, b = config_from_dict(QWEN2_4X), config_from_dict(v5)
    assert a == b
    assert a.rope_theta == 1e6 and a.head_dim == 128 and a.qkv_bias and not a.qk_norm


def test_written_config_reads_back_identically():
    cfg = preset_config("qwen3-1.7b")
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_type='yarn'"),
        ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e6}}, "rope_type='dynamic'"),
        ({"rope_scaling": {"type": "linear"}}, "needs 'factor'"),
        ({"mlp_bias": True}, "mlp_bias=true"),
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
        config_from_dict(raw, source="some/config.json")
    assert message in str(err.value)
    assert "some/config.json" in str(err.value) or "num_key_value_heads" in message


def test_presets_have_the_published_parameter_counts():
    assert {"tiny", "qwen2-0.5b", "qwen2-1.5b", "qwen2-7b", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b",
            "qwen3-0.6b", "qwen3-1.7b", "qwen3-8b", "llama3-8b", "llama3.1-8b"} <= set(list_presets())
    assert preset_config("llama3-8b").num_params() == 8_030_261_248
    assert preset_config("llama3.1-8b").num_params() == 8_030_261_248
    assert preset_config("qwen2-0.5b").num_params() == 494_032_768
    assert preset_config("qwen2-1.5b").num_params() == 1_543_714_304
    assert preset_config("qwen2-7b").num_params() == 7_615_616_512
    assert preset_config("qwen3-8b").num_params() == 8_190_735_360
    tiny = preset_config("tiny")
    assert tiny.vocab_size == 151_936 and tiny.tie_word_embeddings


def test_runtime_options_are_validated():
    with pytest.raises(ValueError, match="attention: 'flash' is not one of"):
        RuntimeConfig(attention="flash")
    with pytest.raises(ConfigError, match="unknown model preset"):
        preset_config("qwen9-1t")


LLAMA31_4X = {  # a Llama 3.1 config.json as transformers 4.x writes it
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "attention_bias": False,
    "mlp_bias": False, "max_position_embeddings": 131072, "hidden_act": "silu", "pretraining_tp": 1,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}


def test_llama31_both_forms_preset_and_written_config_agree():
    v5 = {k: v for k, v in LLAMA31_4X.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = {**LLAMA31_4X["rope_scaling"], "rope_theta": 500000.0}
    a, b = config_from_dict(LLAMA31_4X), config_from_dict(v5)
    assert a == b == preset_config("llama3.1-8b").replace(bos_token_id=None, eos_token_id=None)
    assert a.family == "llama" and written_architectures(a) == ["LlamaForCausalLM"] and not a.qkv_bias and not a.o_proj_bias
    assert a.rope_scaling.kind == "llama3" and a.rope_scaling.original_max_position_embeddings == 8192
    written = config_to_dict(a)
    assert written["model_type"] == "llama" and written["rope_scaling"]["rope_type"] == "llama3"
    assert written["rope_parameters"]["rope_theta"] == 500000.0 and written["rope_parameters"]["factor"] == 8.0
    assert config_from_dict(json.loads(json.dumps(written))) == a
    # linear scaling (the 4.x `type` key), and a Llama 2 file without rope_theta: base 10000
    llama2 = {**LLAMA31_4X, "rope_scaling": {"type": "linear", "factor": 2.0}}
    del llama2["rope_theta"]
    c = config_from_dict(llama2)
    assert c.rope_theta == 10000.0 and (c.rope_scaling.kind, c.rope_scaling.factor) == ("linear", 2.0)
    assert config_from_dict(config_to_dict(c)) == c
    # attention_bias puts biases on q, k, v and o
    biased = config_from_dict({**LLAMA31_4X, "attention_bias": True})
    assert biased.qkv_bias and biased.o_proj_bias and biased.num_params() == a.num_params() + 32 * (4096 + 2 * 1024 + 4096)


def test_mistral_loads_only_without_an_active_sliding_window():
    mistral = {**LLAMA31_4X, "architectures": ["MistralForCausalLM"], "model_type": "mistral", "rope_scaling": None,
               "max_position_embeddings": 32768, "sliding_window": None}
    cfg = config_from_dict(mistral)
    assert cfg.family == "mistral" and written_architectures(cfg) == ["MistralForCausalLM"] and not cfg.qkv_bias
    assert config_to_dict(cfg)["sliding_window"] is None
    assert config_from_dict({**mistral, "sliding_window": 32768}) == cfg  # never binds: full attention
    with pytest.raises(ConfigError, match="sliding_window=4096 < max_position_embeddings=32768"):
        config_from_dict({**mistral, "sliding_window": 4096}, source="mistral/config.json")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architectures": ["GPT2LMHeadModel"]}, "architectures=['GPT2LMHeadModel'] is not supported"),
        ({"architectures": [], "model_type": "gpt2"}, "model_type='gpt2' is not supported"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling rope_type='yarn'"),
        ({"rope_scaling": None, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}},
         "rope_parameters rope_type='dynamic'"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}}, "needs 'low_freq_factor'"),
    ],
)
def test_unsupported_llama_configs_list_what_is_supported(change, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict({**LLAMA31_4X, **change}, source="llama/config.json")
    text = str(err.value)
    assert message in text and "llama/config.json" in text
    if "architectures=" in message:
        assert "supported architectures" in text
        assert all(a in text for a in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"))
    if "model_type=" in message:
        assert all(t in text for t in ("'llama'", "'mistral'", "'qwen2'", "'qwen3'"))
    if "rope_type='yarn'" in message or "rope_type='dynamic'" in message:
        assert "supported rope types: ['default', 'linear', 'llama3']" in text
