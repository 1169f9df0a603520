"""Training start-up against corpus size: token store build, time to the first step, peak RSS.

    python bench/train_startup.py [--records 10000 100000 1000000] [--steps 4 --seq 512]

For each size it writes a synthetic curated set (diabetes QA chat records of about 117 tokens with the embedded
Qwen2 tokenizer, in 16 ArrayRecord shards through curation's own `write_shards`), builds its token store
(data/token_store.py; timed on its own: curation or the first training start pays it once), then runs

    diabetica-jax train configs/train/tiny.yaml data.source=curated data.path=SET data.seq_len=512
        loop.steps=STEPS ...

as a subprocess, twice: the first start after the build (it computes the packing plan and caches it), and a
restart in a fresh run directory (plan from the cache). Reported per size and start: seconds from launch to
its data being ready (RUN_DIR/data_stats.json written: token store opened, examples selected, plan made or
loaded: the part that grows with the corpus), to the first step's metrics line in RUN_DIR/metrics.jsonl (it is
written once step 1 has finished: the step includes compilation), wall seconds, and the train process's peak
RSS (wait4 rusage). The load average is
recorded with the figures: other work on the machine's cores slows everything down alike.
Results: bench/results/train_startup_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TOPICS = ["metformin", "insulin glargine", "HbA1c", "hypoglycaemia", "foot care", "retinopathy screening",
          "carbohydrate counting", "SGLT2 inhibitors", "GLP-1 receptor agonists", "blood pressure", "statins",
          "exercise", "sick-day rules", "gestational diabetes", "continuous glucose monitoring", "kidney function"]
PEOPLE = ["an adult with type 2 diabetes", "a teenager with type 1 diabetes", "an older adult on insulin",
          "a pregnant woman with diabetes", "a patient newly diagnosed", "a person with prediabetes"]
FACTS = ["Targets should be individualised to the person's age, other illnesses and risk of hypoglycaemia.",
         "Review the plan at least every three to six months, and sooner after any change of treatment.",
         "Check kidney function before starting and at least once a year afterwards.",
         "Teach the patient to recognise shakiness, sweating and confusion, and to take fast-acting glucose.",
         "Lifestyle measures such as a balanced diet and 150 minutes of activity a week remain the foundation.",
         "Doses are adjusted gradually, guided by self-monitored glucose and the HbA1c every three months.",
         "Annual screening finds complications early, when treatment works best.",
         "During acute illness some medicines are paused and glucose is checked more often."]


class SyntheticRecords:
    """A sequence of n synthetic QA records made on demand (write_shards iterates it, or slices it one shard at
    a time, so the whole set never exists as Python objects)."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return (self._record(i) for i in range(self.n))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._record(i) for i in range(*index.indices(self.n))]
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self._record(index)

    def _record(self, i: int):
        from diabetica_jax.data.records import Record

        rng = random.Random(self.seed * 1_000_003 + i)
        topic, person = rng.choice(TOPICS), rng.choice(PEOPLE)
        question = f"What should {person} know about {topic}? (case {i})"
        answer = f"For {person}, {topic} matters. " + " ".join(rng.sample(FACTS, rng.randint(2, 4)))
        return Record(id=f"synthetic-{i}", source="bench", kind="qa", language="en", provenance={"row": i},
                      messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}])


def write_set(directory: Path, n: int) -> float:
    from diabetica_jax.curate.write import write_shards

    start = time.perf_counter()
    write_shards(directory, SyntheticRecords(n), 16)
    return time.perf_counter() - start


def build_store(directory: Path) -> dict:
    from diabetica_jax.data.token_store import build_token_store
    from diabetica_jax.hf.tokenizer import embedded_tokenizer

    corpus = build_token_store(directory, embedded_tokenizer(), progress=False)
    seconds = corpus.meta["built_seconds"]  # when it was built (an existing store of a kept set is reused)
    return {"build_s": round(seconds, 1), "records": len(corpus), "tokens": corpus.meta["tokens"],
            "mean_tokens": round(corpus.meta["tokens"] / max(len(corpus), 1), 1),
            "records_per_s": round(len(corpus) / seconds)}


def run_train(data: Path, run_dir: Path, steps: int, seq: int, extra: list[str]) -> dict:
    """One `diabetica-jax train` subprocess: seconds to its data being ready (RUN_DIR/data_stats.json written by
    the feed: token store opened, examples selected, plan made or loaded), to the first metrics line, wall
    seconds, and peak RSS."""
    command = [sys.executable, "-m", "diabetica_jax.cli", "train", str(REPO / "configs/train/tiny.yaml"),
               "--run-dir", str(run_dir), "--no-progress", "data.source=curated", f"data.path={data}",
               f"data.seq_len={seq}", f"loop.steps={steps}", "loop.checkpoint_every=1000", "loop.loss_chunk=128",
               "loop.tensorboard=false", *extra]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    metrics = run_dir / "metrics.jsonl"
    run_dir.mkdir(parents=True, exist_ok=True)
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def read():  # timestamp every log line as it arrives
        for line in proc.stdout:
            lines.append((time.perf_counter() - start, line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    first = ready = None
    stats = run_dir / "data_stats.json"
    while True:  # wait4, not Popen.poll: the rusage of this child alone
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if ready is None and stats.is_file():
            ready = time.perf_counter() - start
        if first is None and metrics.is_file() and metrics.stat().st_size:
            first = time.perf_counter() - start
        time.sleep(0.02)
    wall = time.perf_counter() - start
    reader.join(timeout=10)
    (run_dir.parent / f"{run_dir.name}.log").write_text("".join(f"{t:8.2f} {line}\n" for t, line in lines))
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    if code:
        raise RuntimeError(f"train failed ({code}):\n" + "\n".join(line for _, line in lines[-40:]))
    return {"data_ready_s": round(ready, 2) if ready is not None else None,
            "first_step_s": round(first if first is not None else wall, 2), "wall_s": round(wall, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--packing", default="first_fit", choices=["first_fit", "best_fit", "none"])
    parser.add_argument("--keep", type=Path, help="write the sets under this folder and keep them")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_startup_cpu.json")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="train_startup_"))
    results = {"command": " ".join(sys.argv), "cpus": os.cpu_count(), "steps": args.steps, "seq_len": args.seq,
               "packing": args.packing, "sizes": []}
    try:
        for n in args.records:
            data = root / f"set-{n}"
            row = {"records": n, "load_before": os.getloadavg()}
            if not (data / "shards").is_dir():
                row["write_shards_s"] = round(write_set(data, n), 1)
            row.update(build_store(data))
            print(f"{n:>9,} records: shards {row.get('write_shards_s', 'kept')} s, token store {row['build_s']} s "
                  f"({row['records_per_s']:,} records/s, {row['mean_tokens']} tokens/record)", flush=True)
            extra = [f"data.packing={args.packing}"]
            for start in ("first", "restart"):
                run_dir = root / f"run-{n}-{start}"
                shutil.rmtree(run_dir, ignore_errors=True)
                row[start] = run_train(data, run_dir, args.steps, args.seq, extra)
                print(f"          {start:>7}: data ready {row[start]['data_ready_s']} s, first step "
                      f"{row[start]['first_step_s']} s, wall {row[start]['wall_s']} s, peak RSS "
                      f"{row[start]['peak_rss_mb']} MB", flush=True)
            row["load_after"] = os.getloadavg()
            results["sizes"].append(row)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
