"""Load on `diabetica-jax serve`: N concurrent streaming clients against the same requests sent one at a time.

Starts the server in this process on 127.0.0.1 (a free port), sends a bounded set of chat requests (every
client stops after its share or at --time-limit), and prints requests/s, completion tokens/s, p50/p95 latency
and time to first token, for the sequential run and the concurrent one, and their throughput ratio. It checks
that no request was lost or answered twice (each request id answered once, and the server's own count of
admitted and finished requests matches what was sent) and reports the process's resident memory before and
after, to show it stays bounded.

--sampling adds concurrent runs whose requests all sample (see SAMPLING for what each sends), next to the greedy
one; --burst runs greedy, then a burst of sampled requests, then greedy again, to show that a burst leaves
greedy's latency as it was (the greedy runs use a quarter of the clients, so most slots sit idle after the
burst: those slots once kept the burst's settings and made every later step sample). On the tiny random model the next-token distribution is near-uniform, so a top_p
nucleus holds most of the vocabulary: those rows take the sampler's whole-vocabulary filter, not the candidates
a trained model's peaked distribution fits in.

    python bench/serve_load.py --clients 16 --requests 64            # tiny random model, CPU
    python bench/serve_load.py --clients 8 --no-sequential --sampling temperature1 top_k50 top_p0.9 --burst top_p0.9
    python bench/serve_load.py --model /path/to/Qwen2-1.5B-Instruct --clients 32 --slots 32 --json out.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import platform
import sys
import time
from pathlib import Path

import httpx
import jax
import numpy as np

from diabetica_jax.serve import ServedModel, ServeLimits
from diabetica_jax.serve.app import create_app
from diabetica_jax.serve.server import BackgroundServer


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# what a client sends for each --sampling choice (fields the request leaves out: the model's defaults)
SAMPLING = {
    "greedy": {"temperature": 0},
    "temperature1": {"temperature": 1.0, "top_p": 1.0},  # OpenAI's defaults: the whole vocabulary
    "top_k50": {"temperature": 0.7, "top_k": 50, "top_p": 1.0},
    "top_p0.9": {"temperature": 0.7, "top_p": 0.9},
}


def one_request(http: httpx.Client, url: str, model: str, index: int, max_tokens: int,
                sampling: str = "greedy") -> dict:
    """Stream one chat request; its latency, time to first token and completion tokens."""
    body = {"model": model, "stream": True, "max_tokens": max_tokens, **SAMPLING[sampling], "seed": index,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"Question {index}: how does exercise change insulin "
                                                     f"sensitivity in a patient aged {30 + index % 50}?"}]}
    start = time.perf_counter()
    first, ids, tokens = None, set(), 0
    with http.stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            ids.add(event["id"])
            if event["choices"] and event["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - start
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    end = time.perf_counter() - start
    assert len(ids) == 1, f"request {index}: chunks from {len(ids)} different completions"
    return {"index": index, "id": ids.pop(), "latency": end, "ttft": first if first is not None else end,
            "tokens": tokens}


def run_load(url: str, model: str, indices: list[int], clients: int, max_tokens: int, time_limit: float,
             sampling: str = "greedy") -> dict:
    deadline = time.monotonic() + time_limit
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    with httpx.Client(timeout=300, limits=limits) as http:
        def worker(share: list[int]) -> list[dict]:
            return [one_request(http, url, model, i, max_tokens, sampling) for i in share
                    if time.monotonic() < deadline]

        shares = [indices[c::clients] for c in range(clients)]
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            results = [r for rs in pool.map(worker, shares) for r in rs]
        wall = time.perf_counter() - start
    latency = np.array([r["latency"] for r in results])
    ttft = np.array([r["ttft"] for r in results])
    tokens = sum(r["tokens"] for r in results)
    return {
        "sampling": sampling, "clients": clients, "requests": len(results), "wall_s": round(wall, 3),
        "requests_per_s": round(len(results) / wall, 3), "tokens_per_s": round(tokens / wall, 1),
        "completion_tokens": tokens,
        "latency_p50_s": round(float(np.percentile(latency, 50)), 3),
        "latency_p95_s": round(float(np.percentile(latency, 95)), 3),
        "ttft_p50_s": round(float(np.percentile(ttft, 50)), 3), "ttft_p95_s": round(float(np.percentile(ttft, 95)), 3),
        "answered": sorted(r["index"] for r in results), "ids": [r["id"] for r in results],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="", help="checkpoint or run directory (default: the tiny random preset)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--slots", type=int, help="decode slots (default: --clients)")
    p.add_argument("--requests", type=int, default=64, help="requests per run (the same set in both runs)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--time-limit", type=float, default=300.0, help="seconds per run; clients stop starting requests")
    p.add_argument("--sampling", nargs="+", default=[], choices=[m for m in SAMPLING if m != "greedy"],
                   help="concurrent runs with every request sampled this way, after the greedy one")
    p.add_argument("--burst", choices=[m for m in SAMPLING if m != "greedy"],
                   help="then greedy, a burst of this sampling, and greedy again (the burst's effect on greedy)")
    p.add_argument("--no-sequential", action="store_true", help="skip the one-client run")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()

    memory = {"start_mib": round(rss_mib(), 1)}
    limits = ServeLimits(slots=args.slots or args.clients, max_prompt_tokens=128, max_new_tokens=args.max_tokens,
                         max_waiting=max(64, args.clients))
    served = ServedModel.load(args.model, preset=args.preset, limits=limits, warmup=True)
    memory["loaded_mib"] = round(rss_mib(), 1)
    indices = list(range(args.requests))
    runs: dict[str, dict] = {}  # by name, in the order they ran
    with BackgroundServer(create_app(served)) as server:
        one_request(httpx.Client(timeout=300), server.url, served.name, -1, 2)  # connection and page caches warm
        before = served.batcher.load

        def run(name: str, clients: int, sampling: str = "greedy") -> None:
            runs[name] = run_load(server.url, served.name, indices, clients, args.max_tokens, args.time_limit,
                                  sampling)

        if not args.no_sequential:
            run("sequential", 1)
            memory["after_sequential_mib"] = round(rss_mib(), 1)
        run("concurrent", args.clients)
        for mode in args.sampling:
            run(f"concurrent {mode}", args.clients, mode)
        if args.burst:
            few = max(1, args.clients // 4)
            run("greedy before burst", few)
            run(f"burst {args.burst}", args.clients, args.burst)
            run("greedy after burst", few)
        memory["after_concurrent_mib"] = round(rss_mib(), 1)
        after = served.batcher.load
    served.close()

    sent = sum(r["requests"] for r in runs.values())
    checks = {
        "each_request_answered_once": all(r["answered"] == sorted(set(r["answered"])) and len(set(r["ids"])) ==
                                          r["requests"] for r in runs.values()),
        "server_admitted_what_was_sent": after["admitted"] - before["admitted"] == sent,
        "server_finished_what_was_sent": sum(after["finished"].values()) - sum(before["finished"].values()) == sent,
        "all_requests_ran": all(r["requests"] == args.requests for r in runs.values()),
    }
    for r in runs.values():
        r.pop("answered"), r.pop("ids")
    greedy = runs["concurrent"]["tokens_per_s"]
    figures = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "device": str(jax.devices()[0]),
        "platform": platform.platform(), "jax": jax.__version__, "model": served.name, "slots": limits.slots,
        "max_tokens": args.max_tokens, **runs, "memory": memory, "checks": checks,
        "peak_active_slots": served.batcher.peak_active, "compilations": served.batcher.compilations,
        # greedy tokens/s over each run's at the same concurrency (1: as fast as greedy)
        "greedy_over": {name: round(greedy / r["tokens_per_s"], 2) for name, r in runs.items()
                        if r["clients"] == args.clients},
    }
    if args.burst:
        pre, post = runs["greedy before burst"], runs["greedy after burst"]
        figures["greedy_after_over_before_burst"] = {
            "latency_p50": round(post["latency_p50_s"] / pre["latency_p50_s"], 2),
            "tokens_per_s": round(post["tokens_per_s"] / pre["tokens_per_s"], 2)}
    if "sequential" in runs:
        figures["throughput_ratio"] = round(greedy / runs["sequential"]["tokens_per_s"], 2)
    print(f"# {figures['command']} on {figures['device']} ({served.name}, {limits.slots} slots)")
    print(f"{'run':<26}{'clients':>8}{'req':>6}{'req/s':>9}{'tok/s':>9}{'p50 s':>8}{'p95 s':>8}"
          f"{'ttft50':>8}{'ttft95':>8}{'greedy/x':>10}")
    for name, r in runs.items():
        versus = f"{figures['greedy_over'][name]:>10.2f}" if name in figures["greedy_over"] else ""
        print(f"{name:<26}{r['clients']:>8}{r['requests']:>6}{r['requests_per_s']:>9.2f}"
              f"{r['tokens_per_s']:>9.1f}{r['latency_p50_s']:>8.3f}{r['latency_p95_s']:>8.3f}"
              f"{r['ttft_p50_s']:>8.3f}{r['ttft_p95_s']:>8.3f}{versus}")
    if "throughput_ratio" in figures:
        print(f"concurrent / sequential tokens/s: {figures['throughput_ratio']:.2f}x")
    if args.burst:
        ratios = figures["greedy_after_over_before_burst"]
        print(f"greedy after / before the burst: latency p50 {ratios['latency_p50']:.2f}x, "
              f"tokens/s {ratios['tokens_per_s']:.2f}x")
    print(f"peak slots in use {served.batcher.peak_active}; programs compiled {served.batcher.compilations}")
    print(f"memory (RSS MiB): {memory}")
    print("checks: " + ", ".join(f"{k}={'ok' if v else 'FAILED'}" for k, v in checks.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
