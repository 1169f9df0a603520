"""Curation throughput on a synthetic diabetes QA corpus: records/s and peak memory, per phase.

    python bench/curate_throughput.py --records 100000 1000000 [--workers 2] [--engine local|datatrove]

For each size it writes the corpus (diabetica_jax/demo/synthetic_qa.py, cached under --cache), runs the real
`diabetica-jax curate --input FILE --out DIR` as a subprocess and samples the resident memory of
that process and its workers every 0.2 s. It prints, and writes to --json:

    records/s collect->decontaminate   records collected / (scan + resolve seconds, from the data card)
    records/s end to end               records / wall seconds of the whole command (imports, shards,
                                       token statistics and the `datasets` copy included)
    peak RSS                           of the driver, and of the driver plus its workers at once
    found                              what curation dropped per stage, beside what the corpus planted
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

import psutil

from diabetica_jax.demo.synthetic_qa import write_corpus


def _watch(process: psutil.Process, peaks: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            driver = process.memory_info().rss
            total = driver + sum(c.memory_info().rss for c in process.children(recursive=True))
        except psutil.Error:
            break
        peaks["driver"] = max(peaks["driver"], driver)
        peaks["total"] = max(peaks["total"], total)
        stop.wait(0.2)


def run_curate(corpus: Path, out: Path, overrides: list[str]) -> dict:
    command = [sys.executable, "-m", "diabetica_jax.cli", "curate", "--input", str(corpus), "--out", str(out),
               "output.shards=8", *overrides]
    peaks, stop = {"driver": 0, "total": 0}, threading.Event()
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watcher = threading.Thread(target=_watch, args=(psutil.Process(child.pid), peaks, stop), daemon=True)
    watcher.start()
    output, _ = child.communicate()
    wall = time.perf_counter() - start
    stop.set()
    watcher.join()
    if child.returncode:
        raise SystemExit(f"curate failed ({child.returncode}):\n{output[-3000:]}")
    card = json.loads((out / "data_card.json").read_text())
    return {"wall_s": round(wall, 1), "seconds": card["seconds"], "collected": card["collected"], "kept": card["kept"],
            "rejected_by_stage": card["rejected_by_stage"], "peak_rss_driver_gb": round(peaks["driver"] / 2**30, 2),
            "peak_rss_total_gb": round(peaks["total"] / 2**30, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, nargs="+", default=[100_000])
    parser.add_argument("--workers", type=int, default=0, help="engine.workers (0: one per core)")
    parser.add_argument("--engine", default="local", choices=("local", "datatrove"))
    parser.add_argument("--cache", default="/tmp/diabetica-bench", help="where corpora and outputs go")
    parser.add_argument("--json", default="bench/results/curate_throughput_cpu.json")
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    results = []
    for n in args.records:
        corpus = cache / f"qa-{n}.jsonl"
        planted_file = corpus.with_suffix(".planted.json")
        if not planted_file.exists():
            planted_file.write_text(json.dumps(write_corpus(corpus, n)))
        planted = json.loads(planted_file.read_text())
        result = run_curate(corpus, cache / f"out-{n}", [f"engine.workers={args.workers}", f"engine.name={args.engine}"])
        filtering = result["seconds"]["scan"] + result["seconds"]["resolve"]
        result.update(records=n, engine=args.engine, workers=args.workers or os.cpu_count(), planted=planted,
                      records_per_s_filters=round(result["collected"] / filtering),
                      records_per_s_end_to_end=round(result["collected"] / result["wall_s"]),
                      load_average=[round(x, 2) for x in os.getloadavg()], cpus=os.cpu_count())
        results.append(result)
        print(f"{n:>9,} records  collect->decontaminate {result['records_per_s_filters']:>6,} records/s  "
              f"end to end {result['records_per_s_end_to_end']:>6,} records/s ({result['wall_s']} s: "
              f"{result['seconds']})  peak RSS driver {result['peak_rss_driver_gb']} GB, with workers "
              f"{result['peak_rss_total_gb']} GB  load {result['load_average']}", flush=True)
        print(f"           dropped {result['rejected_by_stage']}; planted {planted}", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
