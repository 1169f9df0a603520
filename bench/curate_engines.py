"""Which engine runs curation's per-unit scan: local runners of Beam, Ray, datatrove vs a plain pool.

    python bench/curate_engines.py [--records 100000 --units 48 --workers 2 --engines all]
    /tmp/engine-venv/bin/python bench/curate_engines.py      # a venv that has the engines installed

Workload: --records synthetic diabetes QA JSONL lines (~117 tokens each) in one file, cut into
--units byte ranges on line boundaries. The per-unit function stands in for `scan_unit`: read the
range, parse JSON, normalise the text (NFKC, case, whitespace), an exact-dup hash, a 128-permutation
MinHash over hashed 5-word shingles (numpy), a 13-gram check against a small "benchmark" set, and
spill the unit's rows to a JSONL file in the work directory; it returns a summary (uint64 hashes,
uint32 signatures, a small list), as the real scan will.

Each engine runs in a fresh Python process, twice per round (--rounds, interleaved; medians reported): once over `workers` empty units (start-up: import,
engine start, teardown) and once over the whole workload. Reported: start-up seconds, wall seconds,
records/s over the whole run (start-up included) and over the run minus start-up, CPU seconds of the
process tree (user + sys, sampled: nearly load-independent, unlike wall time), peak RSS of the
process tree (driver + workers + engine daemons, sampled every 50 ms; shared pages counted once per
process, so an upper bound), whether results come back in unit order natively ("files" when the
engine returns nothing and the driver reads per-unit files in order), and the load average around
the run (other jobs share the cores). Engines that are not installed are skipped with the reason.
Results: bench/results/curate_engines_cpu.json (--update reruns only --engines and keeps the other rows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

ENGINES = {
    "serial": "in-process loop (no parallelism; reference)",
    "pool-spawn": "multiprocessing.Pool(spawn).imap(chunksize=1)",
    "pool-forkserver": "multiprocessing.Pool(forkserver).imap(chunksize=1)",
    "map_units-local": "diabetica_jax engines.map_units(engine='local')",
    "datatrove-local": "datatrove LocalPipelineExecutor, results via pickle files",
    "map_units-datatrove": "diabetica_jax engines.map_units(engine='datatrove')",
    "ray-tasks": "Ray core: local ray.init, @ray.remote tasks, ray.get in order",
    "ray-data": "Ray Data: from_items(units).map(fn), preserve_order",
    "beam-direct-mp": "Beam DirectRunner, direct_running_mode=multi_processing, results via files",
    "beam-direct-mt": "Beam DirectRunner, direct_running_mode=multi_threading, results via files",
    "beam-prism": "Beam PrismRunner (Go binary, downloaded on first use)",
}
REQUIRES = {"datatrove-local": "datatrove", "map_units-datatrove": "datatrove", "ray-tasks": "ray",
            "ray-data": "ray", "beam-direct-mp": "apache_beam", "beam-direct-mt": "apache_beam",
            "beam-prism": "apache_beam"}
PIP = {"datatrove": "datatrove", "ray": "ray[data]", "apache_beam": "apache-beam"}
ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- workload

WORDS = ("diabetes insulin glucose HbA1c metformin glycaemic hypoglycaemia retinopathy neuropathy nephropathy "
         "carbohydrate pancreas beta cells resistance type gestational ketoacidosis sulfonylurea GLP-1 SGLT2 "
         "inhibitor dose blood sugar fasting postprandial monitoring lifestyle diet exercise weight obesity "
         "patient clinician recommend target mmol/L mg/dL risk cardiovascular kidney eye foot ulcer screening "
         "the a of and to in is for with on that by as at be or are this which may should can not how what "
         "when why does mean after before daily twice injection pump sensor continuous").split()
NPERM, SHINGLE, NGRAM = 128, 5, 13
PRIME = np.uint64((1 << 61) - 1)
_rng = np.random.default_rng(0)
PERM_A = _rng.integers(1, 1 << 31, NPERM, dtype=np.uint64)
PERM_B = _rng.integers(0, 1 << 31, NPERM, dtype=np.uint64)
SPACES = re.compile(r"\s+")


def write_workload(path: Path, records: int, units: int) -> list[tuple]:
    rng = np.random.default_rng(1)
    vocab = np.array(WORDS)
    with open(path, "w") as handle:
        for index in range(records):
            question = " ".join(vocab[rng.integers(0, len(vocab), 20)]).capitalize() + "?"
            answer = " ".join(vocab[rng.integers(0, len(vocab), 68)]).capitalize() + "."
            handle.write(json.dumps({"id": f"syn-{index}", "source": "synthetic", "question": question,
                                     "answer": answer}) + "\n")
    size = path.stat().st_size
    bounds = [0]
    with open(path, "rb") as handle:
        for cut in range(1, units):
            handle.seek(size * cut // units)
            handle.readline()
            bounds.append(max(handle.tell(), bounds[-1]))
    bounds.append(size)
    return [(index, str(path), bounds[index], bounds[index + 1]) for index in range(units)]


def benchmark_ngrams(path: Path, every: int = 997) -> set[int]:
    """13-gram hashes of a few records: stands in for the benchmark contamination index."""
    grams: set[int] = set()
    with open(path) as handle:
        for index, line in enumerate(handle):
            if index % every == 0:
                words = normalise(json.loads(line)["answer"]).split()
                grams.update(zlib.crc32(" ".join(words[i:i + NGRAM]).encode()) for i in range(len(words) - NGRAM + 1))
    return grams


def normalise(text: str) -> str:
    return SPACES.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def minhash(words: list[str]) -> np.ndarray:
    shingles = [" ".join(words[i:i + SHINGLE]) for i in range(max(1, len(words) - SHINGLE + 1))]
    hashes = np.fromiter((zlib.crc32(s.encode()) for s in shingles), dtype=np.uint64, count=len(shingles))
    return ((PERM_A[:, None] * hashes[None, :] + PERM_B[:, None]) % PRIME).min(axis=1).astype(np.uint32)


def quality(words: list[str]) -> bool:
    """Gopher-style repetition and symbol checks: duplicated 2/3/4-gram character fractions, mean word length."""
    chars = sum(len(word) for word in words) or 1
    for n, limit in ((2, 0.5), (3, 0.45), (4, 0.4)):
        counts = Counter(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
        if sum(len(gram) * count for gram, count in counts.items() if count > 1) / chars > limit:
            return False
    return 2 <= chars / max(len(words), 1) <= 12 and sum(not word.isalpha() for word in words) / len(words) < 0.5


class ScanUnit:
    """The stand-in scan: picklable, top-level; `work_dir` is where spill files go."""

    def __init__(self, work_dir: str, bench_grams: set[int]):
        self.work_dir = work_dir
        self.bench_grams = bench_grams

    def __call__(self, unit: tuple) -> dict:
        index, path, start, end = unit
        with open(path, "rb") as handle:
            handle.seek(start)
            lines = handle.read(end - start).splitlines()
        exact = np.empty(len(lines), dtype=np.uint64)
        sigs = np.empty((len(lines), NPERM), dtype=np.uint32)
        hits: list[int] = []
        spill = Path(self.work_dir) / "spill" / f"{index:06d}.jsonl"
        spill.parent.mkdir(parents=True, exist_ok=True)
        with open(spill, "w") as out:
            for row, line in enumerate(lines):
                record = json.loads(line)
                text = normalise(record["question"] + "\n" + record["answer"])
                if len(text) < 20:
                    continue
                exact[row] = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
                words = text.split()
                if not quality(words):
                    hits.append(-row - 1)  # rejected by the quality filter (kept in the summary as a negative)
                sigs[row] = minhash(words)
                if any(zlib.crc32(" ".join(words[i:i + NGRAM]).encode()) in self.bench_grams
                       for i in range(0, len(words) - NGRAM + 1, 4)):
                    hits.append(row)
                out.write(json.dumps({"id": record["id"], "text": text}) + "\n")
        return {"unit": index, "records": len(lines), "exact": exact, "sig": sigs, "bench_hits": hits}


def noop_unit(unit: tuple) -> dict:
    return {"unit": unit[0], "records": 0}


# ---------------------------------------------------------------- engines (each returns results, native order)


def run_serial(fn, units, workers, work_dir):
    return [fn(unit) for unit in units], True


def _pool(fn, units, workers, method):
    import multiprocessing

    with multiprocessing.get_context(method).Pool(workers) as pool:
        return list(pool.imap(fn, units, chunksize=1)), True


def run_map_units(fn, units, workers, work_dir, engine):
    sys.path.insert(0, str(ROOT))
    from diabetica_jax.curate.engines import map_units

    return map_units(fn, units, engine=engine, workers=workers, work_dir=work_dir, progress=False), (
        True if engine == "local" else "files")


class _FileResult:
    """Engines that return nothing: write each unit's result to <out>/<index>.pkl."""

    def __init__(self, fn, out: str):
        self.fn, self.out = fn, out

    def __call__(self, unit):
        result = self.fn(unit)
        path = Path(self.out) / f"{unit[0]:06d}.pkl"
        path.write_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        return unit[0]


def _read_files(out: Path, n: int) -> list:
    return [pickle.loads((out / f"{index:06d}.pkl").read_bytes()) for index in range(n)]


class _DatatroveStep:
    def __init__(self, fn, units, out):
        self.writer, self.units = _FileResult(fn, out), units

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        self.writer(self.units[rank])
        return iter(())


def run_datatrove(fn, units, workers, work_dir):
    from datatrove.executor import LocalPipelineExecutor

    out = Path(work_dir) / "dt-results"
    out.mkdir(parents=True, exist_ok=True)
    LocalPipelineExecutor([_DatatroveStep(fn, units, str(out))], tasks=len(units), workers=workers,
                          logging_dir=str(Path(work_dir) / "dt-logs"), skip_completed=False).run()
    return _read_files(out, len(units)), "files"


def run_ray_tasks(fn, units, workers, work_dir):
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        remote = ray.remote(num_cpus=1)(lambda unit: fn(unit))
        refs = [remote.remote(unit) for unit in units]
        return [ray.get(ref) for ref in refs], True
    finally:
        ray.shutdown()


def run_ray_data(fn, units, workers, work_dir):
    import ray
    import ray.data

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        rows = [{"index": unit[0], "path": unit[1], "start": unit[2], "end": unit[3]} for unit in units]

        def apply(row):
            result = fn((row["index"], row["path"], row["start"], row["end"]))
            return {"index": row["index"], "payload": pickle.dumps(result)}

        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map(apply, concurrency=workers)
        results = [(row["index"], pickle.loads(row["payload"])) for row in dataset.iter_rows()]
        return [result for _, result in results], [index for index, _ in results] == list(range(len(units)))
    finally:
        ray.shutdown()


def run_beam(fn, units, workers, work_dir, mode):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    out = Path(work_dir) / "beam-results"
    out.mkdir(parents=True, exist_ok=True)
    if mode == "prism":
        args = ["--runner=PrismRunner"]
    else:
        args = ["--runner=DirectRunner", f"--direct_num_workers={workers}", f"--direct_running_mode={mode}"]
    writer = _FileResult(fn, str(out))
    with beam.Pipeline(options=PipelineOptions(args)) as pipeline:
        _ = pipeline | beam.Create(units, reshuffle=False) | beam.Reshuffle() | beam.Map(writer)
    return _read_files(out, len(units)), "files"


RUNNERS = {
    "serial": run_serial,
    "pool-spawn": lambda fn, units, workers, work_dir: _pool(fn, units, workers, "spawn"),
    "pool-forkserver": lambda fn, units, workers, work_dir: _pool(fn, units, workers, "forkserver"),
    "map_units-local": lambda fn, units, workers, work_dir: run_map_units(fn, units, workers, work_dir, "local"),
    "datatrove-local": run_datatrove,
    "map_units-datatrove": lambda fn, units, workers, work_dir: run_map_units(fn, units, workers, work_dir,
                                                                              "datatrove"),
    "ray-tasks": run_ray_tasks,
    "ray-data": run_ray_data,
    "beam-direct-mp": lambda fn, units, workers, work_dir: run_beam(fn, units, workers, work_dir,
                                                                    "multi_processing"),
    "beam-direct-mt": lambda fn, units, workers, work_dir: run_beam(fn, units, workers, work_dir,
                                                                    "multi_threading"),
    "beam-prism": lambda fn, units, workers, work_dir: run_beam(fn, units, workers, work_dir, "prism"),
}

# ---------------------------------------------------------------- one engine, one mode, in this process


class TreeMonitor:
    """Peak summed RSS and total CPU seconds of this process and all its descendants, sampled in a thread.

    CPU: the last user+sys seen for every process of the tree (a process's final <50 ms may be missed).
    Sampling, not getrusage(RUSAGE_CHILDREN): forkserver and engine daemons do not reap their workers
    through this process, so rusage would miss them.
    """

    def __init__(self, every_s: float = 0.05):
        import psutil

        self.psutil, self.every_s, self.peak, self.peak_procs = psutil, every_s, 0, 0
        self.cpu: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = self.psutil.Process()
        total, count = 0, 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                with proc.oneshot():
                    total += proc.memory_info().rss
                    times = proc.cpu_times()
                    self.cpu[(proc.pid, proc.create_time())] = times.user + times.system
                count += 1
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
                pass
        if total > self.peak:
            self.peak, self.peak_procs = total, count

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._cpu_start = sum(self.psutil.Process().cpu_times()[:2])
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        me = self.psutil.Process()
        self.cpu[(me.pid, me.create_time())] -= self._cpu_start  # this process: only what the run used

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu.values())


def child(args) -> None:
    units = [tuple(unit) for unit in json.loads(Path(args.units_json).read_text())]
    module = REQUIRES.get(args.engine)
    if module:
        __import__(module)  # raise ImportError early (the parent reports it as skipped)
    # Use the functions through the importable module `curate_engines` (PYTHONPATH holds bench/), not
    # `__main__`, so every engine pickles them by reference, as it would the project's scan_unit.
    import curate_engines as bench

    runner = bench.RUNNERS[args.engine]
    if args.mode == "startup":
        fn, units = bench.noop_unit, [(index, "", 0, 0) for index in range(args.workers)]
        total = 0
    else:
        grams = pickle.loads(Path(args.grams).read_bytes())
        fn, total = bench.ScanUnit(args.work_dir, grams), None
    start = time.perf_counter()
    with TreeMonitor() as rss:
        results, native_order = runner(fn, units, args.workers, args.work_dir)
    wall = time.perf_counter() - start
    got = [result["unit"] for result in results]
    report = {"wall_s": wall, "cpu_s": rss.cpu_s, "peak_rss_mb": rss.peak / 2**20, "peak_procs": rss.peak_procs,
              "native_order": native_order, "in_order": got == [unit[0] for unit in units],
              "records": total if total is not None else sum(result["records"] for result in results)}
    if args.mode == "full":
        report["checksum"] = int(sum(int(r["sig"][:, 0].astype(np.uint64).sum()) for r in results))
    Path(args.out).write_text(json.dumps(report))


# ---------------------------------------------------------------- driver


def run_child(engine: str, mode: str, paths: dict, workers: int, python: str, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"engine-{engine}-") as work:
        out = Path(work) / "report.json"
        command = [python, __file__, "--child", "--engine", engine, "--mode", mode, "--workers", str(workers),
                   "--units-json", paths["units"], "--grams", paths["grams"], "--work-dir", work, "--out", str(out)]
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        try:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                filter(None, [str(ROOT / "bench"), str(ROOT), os.environ.get("PYTHONPATH")])))
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        outer = time.perf_counter() - start
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()
            kind = "skipped" if any("ModuleNotFoundError" in line or "ImportError" in line for line in tail[-3:]) \
                else "error"
            return {kind: tail[-1][-400:] if tail else f"exit status {proc.returncode}"}
        report = json.loads(out.read_text())
        report.update(process_s=outer, load_before=load_before, load_after=os.getloadavg()[0])
        return report


def versions(python: str) -> dict:
    code = ("import json, importlib.metadata as m\nout = {}\n"
            "for name in ['apache-beam', 'ray', 'datatrove', 'numpy', 'pyarrow', 'protobuf', 'grpcio', 'pillow']:\n"
            "    try: out[name] = m.version(name)\n"
            "    except m.PackageNotFoundError: out[name] = None\nprint(json.dumps(out))")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--units", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--engines", default="all", help=f"comma list of {', '.join(ENGINES)}, or all")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs each engine")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians are reported")
    parser.add_argument("--update", action="store_true",
                        help="keep the other engines' rows already in --out, replace only those of --engines")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "curate_engines_cpu.json"))
    # child mode (internal)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--units-json", help=argparse.SUPPRESS)
    parser.add_argument("--grams", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    names = list(ENGINES) if args.engines == "all" else args.engines.split(",")
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        units = write_workload(tmp / "synthetic.jsonl", args.records, args.units)
        grams = benchmark_ngrams(tmp / "synthetic.jsonl")
        paths = {"units": str(tmp / "units.json"), "grams": str(tmp / "grams.pkl")}
        Path(paths["units"]).write_text(json.dumps(units))
        Path(paths["grams"]).write_bytes(pickle.dumps(grams))
        mb = (tmp / "synthetic.jsonl").stat().st_size / 2**20
        print(f"workload: {args.records} records, {mb:.0f} MiB, {args.units} units, {args.workers} workers "
              f"(generated in {time.perf_counter() - start:.1f} s); python {args.python}", flush=True)
        runs: dict[str, list[dict]] = {name: [] for name in names}
        failed: dict[str, dict] = {}
        for round_ in range(args.rounds):  # rounds interleave the engines, so load from other jobs spreads out
            for name in names:
                if name in failed:
                    continue
                startup = run_child(name, "startup", paths, args.workers, args.python, args.timeout)
                full = run_child(name, "full", paths, args.workers, args.python, args.timeout) \
                    if "wall_s" in startup else {}
                if "wall_s" not in startup or "wall_s" not in full:
                    bad = startup if "wall_s" not in startup else full
                    reason = bad.get("skipped") or bad.get("error")
                    if "skipped" in bad and REQUIRES.get(name):
                        bad = {"skipped": f"pip install {PIP[REQUIRES[name]]} ({reason})"}
                    failed[name] = bad
                    print(f"{name:20s} {'skipped' if 'skipped' in bad else 'ERROR'}: {reason}", flush=True)
                    continue
                run = {"startup_s": startup["wall_s"], "startup_cpu_s": startup["cpu_s"],
                       "startup_peak_rss_mb": startup["peak_rss_mb"], "startup_process_s": startup["process_s"],
                       **{key: full[key] for key in ("wall_s", "cpu_s", "peak_rss_mb", "peak_procs", "native_order",
                                                     "in_order", "records", "checksum", "load_before", "load_after")}}
                runs[name].append(run)
                print(f"[{round_ + 1}/{args.rounds}] {name:20s} start-up {run['startup_s']:5.1f} s  "
                      f"wall {run['wall_s']:6.1f} s  {run['records'] / run['wall_s']:7.0f} rec/s  "
                      f"cpu {run['cpu_s']:5.1f} s  peak RSS {run['peak_rss_mb']:6.0f} MiB ({run['peak_procs']} procs)  "
                      f"order {run['native_order']}/{run['in_order']}  "
                      f"load {run['load_before']:.2f}->{run['load_after']:.2f}", flush=True)
        rows = []
        for name in names:
            row = {"engine": name, "what": ENGINES[name]}
            if name in failed:
                row.update(failed[name])
                rows.append(row)
                continue
            median = lambda key, name=name: statistics.median(run[key] for run in runs[name])
            row.update({key: median(key) for key in ("startup_s", "startup_cpu_s", "wall_s", "cpu_s", "load_before",
                                                     "load_after")})
            row.update(peak_rss_mb=max(run["peak_rss_mb"] for run in runs[name]),
                       peak_procs=max(run["peak_procs"] for run in runs[name]),
                       native_order=runs[name][0]["native_order"],
                       in_order=all(run["in_order"] for run in runs[name]), records=runs[name][0]["records"],
                       checksum=runs[name][0]["checksum"], rounds=runs[name])
            row["records_per_s"] = row["records"] / row["wall_s"]
            row["records_per_s_after_startup"] = row["records"] / max(row["wall_s"] - row["startup_s"], 1e-9)
            row["cpu_ms_per_record"] = 1000 * row["cpu_s"] / row["records"]
            rows.append(row)

    out = Path(args.out)
    if args.update and out.exists():
        previous = json.loads(out.read_text())
        if (previous["records"], previous["units"], previous["workers"]) != (args.records, args.units, args.workers):
            raise SystemExit(f"--update: {out} was measured with another workload; rerun all engines")
        fresh = {row["engine"]: row for row in rows}
        for row in rows:
            row["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
        rows = [fresh.pop(row["engine"], row) for row in previous["rows"]] + list(fresh.values())
    checksums = {run["checksum"] for row in rows for run in row.get("rounds", [])}
    table = ["| engine | start-up s (CPU s) | wall s | records/s | records/s after start-up | CPU s (ms/record) | "
             "peak RSS MiB (procs) | in order (native / returned) | load avg before->after |", "|" + "---|" * 9]
    for row in rows:
        if "wall_s" in row:
            table.append(f"| {row['engine']} | {row['startup_s']:.2f} ({row['startup_cpu_s']:.1f}) | {row['wall_s']:.1f}"
                         f" | {row['records_per_s']:.0f} | {row['records_per_s_after_startup']:.0f}"
                         f" | {row['cpu_s']:.1f} ({row['cpu_ms_per_record']:.2f})"
                         f" | {row['peak_rss_mb']:.0f} ({row['peak_procs']})"
                         f" | {row['native_order']} / {row['in_order']} | {row['load_before']:.2f}->"
                         f"{row['load_after']:.2f} |")
        else:
            table.append(f"| {row['engine']} | {'skipped' if 'skipped' in row else 'error'}: "
                         f"{row.get('skipped') or row.get('error')} | | | | | | | |")
    print("\n".join(table))
    print(f"identical results across engines: {len(checksums) == 1}")
    result = {"bench": "curate_engines", "records": args.records, "units": args.units, "workers": args.workers,
              "cpu_count": os.cpu_count(), "python": platform.python_version(), "interpreter": args.python,
              "versions": versions(args.python), "identical_results": len(checksums) == 1, "rows": rows,
              "table_md": "\n".join(table)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
