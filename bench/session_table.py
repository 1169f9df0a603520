"""One table from a GPU session's JSON lines (bench/gpu_session.sh): decode and training rows, each beside the run
labelled `before` and beside PyTorch/transformers measured in the same call.

    python bench/session_table.py OUT_DIR   # reads generate.jsonl, train.jsonl, hf_torch_baseline.json (or baseline.txt)

A run without a label is named after where its package came from (a `before` tree, or this one). Missing files
or rows (a step that ran out of time) leave their rows out and say so; the table never invents a figure.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path


def read_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def label_of(record: dict) -> str:
    if record.get("label"):
        return record["label"]
    return "before" if "before" in record.get("command", "") else "this tree"


def ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


def decode_rows(records: list[dict], torch_generate: dict[int, float]) -> list[str]:
    before = {r["batch"]: r["new_tokens_per_s"] for r in records if label_of(r) == "before"}
    rows = ["| decode | batch | new tokens/s | vs before | vs transformers |", "|---|---|---|---|---|"]
    for r in records:
        b, speed = r["batch"], r["new_tokens_per_s"]
        rows.append(f"| {label_of(r)} | {b} | {speed:,.1f} | {ratio(speed, before.get(b))} | "
                    f"{ratio(speed, torch_generate.get(b))} |")
    return rows


def train_rows(records: list[dict], torch_train: float | None) -> list[str]:
    def shape(r):
        return r.get("preset"), r.get("rows"), r.get("lora_rank", 0)

    before = {shape(r): r["tokens_per_s"] for r in records if label_of(r) == "before"}
    rows = ["| training | model, rows | tokens/s | MFU | vs before | vs transformers |", "|---|---|---|---|---|---|"]
    for r in records:
        speed = r["tokens_per_s"]
        lora = f", LoRA r{r['lora_rank']}" if r.get("lora_rank") else ""
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"  # n/a: no peak known (a CPU)
        rows.append(f"| {label_of(r)} (remat {r.get('remat', '?')}) | {r.get('preset')}, {r.get('rows')}{lora} | "
                    f"{speed:,.0f} | {mfu} | {ratio(speed, before.get(shape(r)))} | "
                    f"{ratio(speed, torch_train)} |")
    return rows


def read_baseline(out: Path) -> dict:
    """The transformers figures: the baseline script's JSON, or, when it ran out of time before writing that (its
    batch-32 generate has), the result dicts it printed as it went (baseline.txt)."""
    if (out / "hf_torch_baseline.json").is_file():
        return json.loads((out / "hf_torch_baseline.json").read_text())
    baseline = {"train": [], "generate": []}
    printed = (out / "baseline.txt").read_text().splitlines() if (out / "baseline.txt").is_file() else []
    for line in printed:
        try:
            record = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError):
            continue
        if isinstance(record, dict) and "tokens_per_s" in record:
            baseline["train"].append(record)
        elif isinstance(record, dict) and "new_tokens_per_s" in record:
            baseline["generate"].append(record)
    return baseline if baseline["train"] or baseline["generate"] else {}


def main(out: Path) -> None:
    baseline = read_baseline(out)
    torch_generate = {g["bsz"]: g["new_tokens_per_s"] for g in baseline.get("generate", [])}
    torch_train = max((t["tokens_per_s"] for t in baseline.get("train", [])), default=None)
    if not baseline:
        print("(no transformers baseline in this session: its columns are empty)")
    for name, rows in (("generate.jsonl", decode_rows(read_lines(out / "generate.jsonl"), torch_generate)),
                       ("train.jsonl", train_rows(read_lines(out / "train.jsonl"), torch_train))):
        if len(rows) == 2:
            print(f"(no rows in {name})")
            continue
        print("\n".join(rows))
        print()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
