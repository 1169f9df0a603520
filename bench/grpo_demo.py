"""GRPO on CPU: the reward rising on the synthetic MCQ set (diabetica_jax/demo/synthetic_mcq.py).

    python bench/grpo_demo.py                      # format SFT (40 steps), then 40 GRPO steps: the reward curve
    python bench/grpo_demo.py --steps 60 --out bench/results/grpo_demo

Stage 1 teaches the tiny preset the answer format only (each item answered with a random letter), so
it starts GRPO answering with letters but knowing no keys: about a quarter of its answers are right by
chance. Stage 2 is `method: grpo` on the items (--prompts per step, --group-size completions each), rewarded by
the evaluation's own MCQ rule. Prints each GRPO step's mean reward and time, writes OUT/grpo_demo.json
and OUT/grpo_reward.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft-steps", type=int, default=40)
    parser.add_argument("--steps", type=int, default=40, help="GRPO steps")
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8, help="items per GRPO step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/grpo_demo"))
    parser.add_argument("--run-dir", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    args = parser.parse_args(argv)

    from diabetica_jax.configuration import load_config
    from diabetica_jax.curate.write import write_shards
    from diabetica_jax.demo import synthetic_mcq
    from diabetica_jax.evaluation.prompts import OWN
    from diabetica_jax.train.config import TrainConfig
    from diabetica_jax.train.loop import train

    root = args.run_dir or Path(tempfile.mkdtemp(prefix="grpo-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    common = ["model.preset=tiny", "model.runtime.dtype=float32", "model.runtime.remat=none", "data.seq_len=128",
              "loop.loss_chunk=32", "loop.tensorboard=false", "loop.async_checkpoint=false", "optim.warmup_steps=0"]
    write_shards(root / "curated", synthetic_mcq.format_records(args.items, system=OWN.system, template=OWN.mcq), 1)
    items = synthetic_mcq.write_items(root / "items.csv", args.items)

    started = time.perf_counter()
    sft = load_config(TrainConfig, None, common + [
        "data.source=curated", f"data.path={root / 'curated'}", "data.global_batch=8", "data.packing=none",
        "data.epochs=100", "optim.lr=1e-2", f"loop.steps={args.sft_steps}", f"loop.checkpoint_every={args.sft_steps}"])
    train(sft, root / "sft", progress=False)
    sft_seconds = time.perf_counter() - started

    batch = args.prompts * args.group_size
    grpo = load_config(TrainConfig, None, common + [
        "method=grpo", f"grpo.items={items}", f"model.init_from={root / 'sft'}", f"grpo.group_size={args.group_size}",
        "grpo.max_new_tokens=4", f"grpo.temperature={args.temperature}", f"data.global_batch={batch}",
        "data.epochs=1000", f"optim.lr={args.lr}", f"loop.steps={args.steps}", f"loop.checkpoint_every={args.steps}"])
    started = time.perf_counter()
    result = train(grpo, root / "grpo", progress=True, name="grpo")
    grpo_seconds = time.perf_counter() - started

    history = [{"step": m["step"], "reward": m["reward"], "step_time_s": m["step_time_s"]} for m in result.history]
    print(f"format SFT: {args.sft_steps} steps in {sft_seconds:.0f} s; GRPO: {args.steps} steps in {grpo_seconds:.0f} s")
    print("step  reward  step_s")
    for h in history:
        print(f"{h['step']:4d}  {h['reward']:6.3f}  {h['step_time_s']:6.2f}")
    window = max(1, len(history) // 5)
    first = sum(h["reward"] for h in history[:window]) / window
    last = sum(h["reward"] for h in history[-window:]) / window
    steady = sorted(h["step_time_s"] for h in history[1:]) or [float("nan")]
    print(f"mean reward, first {window} steps: {first:.3f}; last {window}: {last:.3f}; "
          f"median step {steady[len(steady) // 2]:.2f} s (rollout + update, {batch} completions)")

    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"sft_steps": args.sft_steps, "grpo_steps": args.steps, "completions_per_step": batch,
               "sft_seconds": sft_seconds, "grpo_seconds": grpo_seconds, "first_reward": first, "last_reward": last,
               "median_step_s": steady[len(steady) // 2], "history": history}
    (args.out / "grpo_demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(history, window, args.out / "grpo_reward.png")
    print(f"wrote {args.out / 'grpo_demo.json'} and {args.out / 'grpo_reward.png'}")
    return 0


def _plot(history, window, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    rewards = [h["reward"] for h in history]
    smooth = [sum(rewards[max(0, i - window + 1):i + 1]) / len(rewards[max(0, i - window + 1):i + 1])
              for i in range(len(rewards))]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(steps, rewards, "o", alpha=0.4, label="step mean")
    ax.plot(steps, smooth, "-", label=f"mean of {window}")
    ax.axhline(0.25, color="grey", linestyle=":", label="chance (1 of 4)")
    ax.set(xlabel="GRPO step", ylabel="reward (MCQ key picked)", ylim=(-0.02, 1.02),
           title="GRPO on the synthetic MCQ set, tiny model, CPU")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
