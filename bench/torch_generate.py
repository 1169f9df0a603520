"""transformers `generate` throughput on a GPU for a Qwen2-shaped model with random weights: the baseline that
bench/generate_throughput.py is compared with (same prompt and new-token counts, greedy, bf16).

    python bench/torch_generate.py --preset qwen2-1.5b --batches 32 --json results.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="qwen2-1.5b")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--json")
    args = parser.parse_args()

    import torch
    import transformers

    from diabetica_jax import hf

    hf_config = transformers.Qwen2Config(**hf.config_to_dict(hf.preset_config(args.preset)))
    model = transformers.Qwen2ForCausalLM(hf_config).to("cuda", torch.bfloat16).eval()
    for batch in args.batches:
        ids = torch.randint(0, hf_config.vocab_size, (batch, args.prompt), device="cuda")
        run = lambda n, ids=ids: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            run(4)  # warm up
            torch.cuda.synchronize()
            start = time.perf_counter()
            run(args.new)
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        record = {"preset": args.preset, "device": torch.cuda.get_device_name(0), "batch": batch, "prompt": args.prompt,
                  "new": args.new, "seconds": seconds, "new_tokens_per_s": batch * args.new / seconds,
                  "torch": torch.__version__, "transformers": transformers.__version__, "command": " ".join(sys.argv)}
        print(record, flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
