"""Compare diabetica-jax logits with transformers (PyTorch) on a real checkpoint directory.

    python bench/hf_parity.py --model /data/Qwen2-1.5B-Instruct [--dtype bfloat16] [--mesh fsdp=4,tensor=2]

Prints the max and mean absolute logit difference and greedy next-token agreement on a few
diabetes prompts rendered with the checkpoint's chat template.
"""

from __future__ import annotations

import argparse

import numpy as np

PROMPTS = [
    "What is the HbA1c target for most non-pregnant adults with type 2 diabetes?",
    "糖尿病患者低血糖的定义是什么？",
    "Which drug class lowers cardiovascular risk in type 2 diabetes with heart failure?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--mesh", help="e.g. fsdp=4,tensor=2")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from diabetica_jax import hf
    from diabetica_jax.cli.shorthands import mesh_sizes
    from diabetica_jax.generate import left_pad
    from diabetica_jax.model import forward
    from diabetica_jax.model.runtime import RuntimeConfig
    from diabetica_jax.parallel import make_mesh

    tokenizer = hf.load_tokenizer(args.model)
    ids = [tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                          add_generation_prompt=True), add_special_tokens=False)
           for p in PROMPTS]
    tokens, valid, positions = left_pad(ids, tokenizer.pad_token_id or 0)
    mesh = make_mesh(mesh_sizes(args.mesh)) if args.mesh else None
    model, _ = hf.load(args.model, mesh=mesh, runtime=RuntimeConfig(dtype=args.dtype))
    ours = np.asarray(forward(model, tokens, positions, valid.astype(np.int32), mesh=mesh))
    del model

    reference_model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    with torch.no_grad():
        reference = reference_model(
            torch.as_tensor(tokens, dtype=torch.long), attention_mask=torch.as_tensor(valid, dtype=torch.long),
            position_ids=torch.as_tensor(positions, dtype=torch.long),
        ).logits.float().numpy()
    diff = np.abs(ours - reference)[valid]
    agree = (ours.argmax(-1) == reference.argmax(-1))[valid].mean()
    print(f"model {args.model} compute {args.dtype}: max |dlogit| {diff.max():.3e}, mean {diff.mean():.3e}, "
          f"greedy next-token agreement {agree:.4f} over {int(valid.sum())} positions")


if __name__ == "__main__":
    main()
