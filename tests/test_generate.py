"""Greedy decoding (the interim, cache-free decoder) equals transformers' generate; the main job runs."""

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from diabetica_jax import hf
from diabetica_jax.cli import main
from diabetica_jax.generate import greedy_generate


def test_batched_left_padded_greedy_equals_transformers_generate(hf_checkpoints):
    path = hf_checkpoints["qwen3"]
    rng = np.random.RandomState(3)
    prompts = [rng.randint(0, 500, n).tolist() for n in (3, 9, 6)]
    model, _ = hf.load(path, progress=False)
    ours = greedy_generate(model, prompts, max_new_tokens=10, stop_ids=[511], pad_id=510)
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for prompt, out in zip(prompts, ours):
        expected = reference.generate(
            torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=511, pad_token_id=510
        )[0, len(prompt):].tolist()
        if 511 in expected:
            expected = expected[: expected.index(511)]
        assert out == expected


def test_generation_stops_at_stop_token(hf_checkpoints):
    model, _ = hf.load(hf_checkpoints["qwen2_tied"], progress=False)
    free = greedy_generate(model, [[1, 2, 3]], max_new_tokens=6, stop_ids=[511], pad_id=0)[0]
    assert len(free) == 6
    # make the third generated token a stop token: output is cut before it
    cut = greedy_generate(model, [[1, 2, 3]], max_new_tokens=6, stop_ids=[free[2]], pad_id=0)[0]
    assert cut == free[: free.index(free[2])]


def test_generate_command_on_the_embedded_default(capsys):
    assert main(["generate", "--prompt", "什么是糖尿病？", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "preset tiny (random weights, seed 0)" in out and "9.8M parameters" in out
    assert ">>> 什么是糖尿病？" in out
