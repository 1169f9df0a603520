"""How the curation driver's memory grows with the corpus: peak RSS of the driver per phase, at several sizes.

    python bench/curate_scale.py --records 250000 1000000 4000000 [--workers 2] [--hf-dataset] [--code DIR]

For each size it writes the synthetic QA corpus (diabetica_jax/demo/synthetic_qa.py, cached under --cache, as
bench/curate_throughput.py does) and curates it in a fresh process that samples, every 0.1 s, its own resident
memory (the driver: on a cluster, the login node) and that of its children (the local engine's workers), and
marks which phase is running: scan, each task phase of pipeline._Tasks (dedup-bands, dedup-decide, finish,
shards), write (moving shards, joining rejects), tokens (the token store, built by the driver's pool),
hf_dataset, card (its plot) and other (the rest: setup, stage logs); a phase inside another (the task phases
in dedup, tokens in write) is its own for RSS, and its seconds are also in the outer one's. The `datasets` copy is off unless --hf-dataset (it is a second copy of the shards and took 43% of
a 1M-record run in bench/results/curate_throughput_cpu.json). Prints, and writes to --json, per size:
seconds and driver peak RSS per phase, the whole run's driver and driver+workers peaks, and what was dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(corpus: str, out: str, result: str, overrides: list[str]) -> None:
    """Curate `corpus` into `out` in this process, sampling memory per phase; the result JSON goes to `result`."""
    import psutil

    import diabetica_jax
    from diabetica_jax.curate import pipeline, resolve, write
    from diabetica_jax.curate.config import load_curate_config

    me, phase = psutil.Process(), ["other"]
    peaks: dict[str, dict] = {}
    overall = {"driver": 0, "total": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                driver = me.memory_info().rss
                total = driver + sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:
                continue
            p = peaks.setdefault(phase[0], {"driver": 0, "total": 0, "seconds": 0.0})
            p["driver"], p["total"] = max(p["driver"], driver), max(p["total"], total)
            overall["driver"], overall["total"] = max(overall["driver"], driver), max(overall["total"], total)
            stop.wait(0.1)

    def marked(name, fn):
        def wrapper(*args, **kwargs):
            previous, phase[0] = phase[0], name(args) if callable(name) else name
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                peaks.setdefault(phase[0], {"driver": 0, "total": 0, "seconds": 0.0})
                peaks[phase[0]]["seconds"] += time.perf_counter() - start
                phase[0] = previous
        return wrapper

    # what exists in this version of the pipeline (run the child on an older checkout through PYTHONPATH)
    for module, attribute, name in ((pipeline, "_scan", "scan"), (resolve, "exact_and_near", "dedup"),
                                    (pipeline, "write_parts", "write"), (write, "write_outputs", "write"),
                                    (write, "_token_lengths", "tokens"), (write, "write_hf_dataset", "hf_dataset"),
                                    (write, "_plot", "card")):
        if hasattr(module, attribute):
            setattr(module, attribute, marked(name, getattr(module, attribute)))
    if hasattr(pipeline, "_Tasks"):
        pipeline._Tasks.__call__ = marked(lambda args: args[3], pipeline._Tasks.__call__)
    cfg = load_curate_config(None, overrides, [corpus])
    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    card = pipeline.curate(cfg, out, progress=False)
    wall = time.perf_counter() - start
    stop.set()
    gib = 2 ** 30
    Path(result).write_text(json.dumps({
        "code": os.environ.get("CURATE_SCALE_LABEL", "this checkout"),
        "curate_s": round(wall, 1), "collected": card["collected"], "kept": card["kept"],
        "package": str(Path(diabetica_jax.__file__).parent), "rejected_by_stage": card["rejected_by_stage"], "card_seconds": card["seconds"],
        "peak_rss_driver_gib": round(overall["driver"] / gib, 3), "peak_rss_total_gib": round(overall["total"] / gib, 3),
        "phases": {name: {"seconds": round(p["seconds"], 1), "driver_gib": round(p["driver"] / gib, 3),
                          "total_gib": round(p["total"] / gib, 3)} for name, p in peaks.items()},
    }, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, nargs="+", default=[250_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=0, help="engine.workers (0: one per core)")
    parser.add_argument("--engine", default="local", choices=("local", "datatrove"))
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--hf-dataset", action="store_true", help="also write the `datasets` copy")
    parser.add_argument("--cache", default="/tmp/diabetica-bench", help="where corpora and outputs go")
    parser.add_argument("--json", default="bench/results/curate_scale_cpu.json")
    parser.add_argument("--code", default=str(ROOT), help="the diabetica_jax checkout to run (PYTHONPATH of the child): "
                        "an older one for a before/after comparison")
    parser.add_argument("--child", nargs=3, metavar=("CORPUS", "OUT", "RESULT"), help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.overrides)

    from diabetica_jax.demo.synthetic_qa import write_corpus

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    overrides = [f"engine.workers={args.workers}", f"engine.name={args.engine}", f"output.shards={args.shards}",
                 f"output.hf_dataset={'true' if args.hf_dataset else 'false'}"]
    results = []
    for n in args.records:
        corpus = cache / f"qa-{n}.jsonl"
        planted_file = corpus.with_suffix(".planted.json")
        if not planted_file.exists():
            planted_file.write_text(json.dumps(write_corpus(corpus, n)))
        result_file = cache / f"scale-{n}.json"
        start = time.perf_counter()
        env = dict(os.environ, PYTHONPATH=args.code, CURATE_SCALE_LABEL=args.code)
        subprocess.run([sys.executable, __file__, "--child", str(corpus), str(cache / f"out-scale-{n}"),
                        str(result_file), *overrides], check=True, cwd=args.code, env=env)
        result = json.loads(result_file.read_text())
        result.update(records=n, wall_s=round(time.perf_counter() - start, 1), engine=args.engine,
                      workers=args.workers or os.cpu_count(), hf_dataset=args.hf_dataset,
                      planted=json.loads(planted_file.read_text()), load_average=[round(x, 2) for x in os.getloadavg()],
                      cpus=os.cpu_count())
        results.append(result)
        phases = ", ".join(f"{k} {v['seconds']} s / {v['driver_gib']} GiB" for k, v in result["phases"].items())
        print(f"{n:>9,} records: driver peak {result['peak_rss_driver_gib']} GiB (with workers "
              f"{result['peak_rss_total_gib']} GiB), curate {result['curate_s']} s; {phases}", flush=True)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
