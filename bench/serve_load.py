"""Load on `diabetica-jax serve`: N concurrent streaming clients against the same requests sent one at a time.

Starts the server in this process on 127.0.0.1 (a free port), sends a bounded set of chat requests (every
client stops after its share or at --time-limit), and prints requests/s, completion tokens/s, p50/p95 latency
and time to first token, for the sequential run and the concurrent one, and their throughput ratio. It checks
that no request was lost or answered twice (each request id answered once, and the server's own count of
admitted and finished requests matches what was sent) and reports the process's resident memory before and
after, to show it stays bounded.

    python bench/serve_load.py --clients 16 --requests 64            # tiny random model, CPU
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


def one_request(http: httpx.Client, url: str, model: str, index: int, max_tokens: int) -> dict:
    """Stream one chat request; its latency, time to first token and completion tokens."""
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
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


def run_load(url: str, model: str, indices: list[int], clients: int, max_tokens: int, time_limit: float) -> dict:
    deadline = time.monotonic() + time_limit
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    with httpx.Client(timeout=300, limits=limits) as http:
        def worker(share: list[int]) -> list[dict]:
            return [one_request(http, url, model, i, max_tokens) for i in share if time.monotonic() < deadline]

        shares = [indices[c::clients] for c in range(clients)]
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            results = [r for rs in pool.map(worker, shares) for r in rs]
        wall = time.perf_counter() - start
    latency = np.array([r["latency"] for r in results])
    ttft = np.array([r["ttft"] for r in results])
    tokens = sum(r["tokens"] for r in results)
    return {
        "clients": clients, "requests": len(results), "wall_s": round(wall, 3),
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
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()

    memory = {"start_mib": round(rss_mib(), 1)}
    limits = ServeLimits(slots=args.slots or args.clients, max_prompt_tokens=128, max_new_tokens=args.max_tokens,
                         max_waiting=max(64, args.clients))
    served = ServedModel.load(args.model, preset=args.preset, limits=limits, warmup=True)
    memory["loaded_mib"] = round(rss_mib(), 1)
    indices = list(range(args.requests))
    with BackgroundServer(create_app(served)) as server:
        one_request(httpx.Client(timeout=300), server.url, served.name, -1, 2)  # connection and page caches warm
        before = served.batcher.load
        sequential = run_load(server.url, served.name, indices, 1, args.max_tokens, args.time_limit)
        memory["after_sequential_mib"] = round(rss_mib(), 1)
        concurrent_ = run_load(server.url, served.name, indices, args.clients, args.max_tokens, args.time_limit)
        memory["after_concurrent_mib"] = round(rss_mib(), 1)
        after = served.batcher.load
    served.close()

    sent = sequential["requests"] + concurrent_["requests"]
    checks = {
        "each_request_answered_once": concurrent_["answered"] == sorted(set(concurrent_["answered"]))
        and len(set(concurrent_["ids"])) == concurrent_["requests"],
        "server_admitted_what_was_sent": after["admitted"] - before["admitted"] == sent,
        "server_finished_what_was_sent": sum(after["finished"].values()) - sum(before["finished"].values()) == sent,
        "all_requests_ran": concurrent_["requests"] == sequential["requests"] == args.requests,
    }
    ratio = concurrent_["tokens_per_s"] / sequential["tokens_per_s"]
    for run in (sequential, concurrent_):
        run.pop("answered"), run.pop("ids")
    figures = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "device": str(jax.devices()[0]),
        "platform": platform.platform(), "jax": jax.__version__, "model": served.name, "slots": limits.slots,
        "max_tokens": args.max_tokens, "sequential": sequential, "concurrent": concurrent_,
        "throughput_ratio": round(ratio, 2), "memory": memory, "checks": checks,
        "peak_active_slots": served.batcher.peak_active, "compilations": served.batcher.compilations,
    }
    print(f"# {figures['command']} on {figures['device']} ({served.name}, {limits.slots} slots)")
    print(f"{'run':<12}{'clients':>8}{'req':>6}{'req/s':>9}{'tok/s':>9}{'p50 s':>8}{'p95 s':>8}"
          f"{'ttft50':>8}{'ttft95':>8}")
    for name, run in (("sequential", sequential), ("concurrent", concurrent_)):
        print(f"{name:<12}{run['clients']:>8}{run['requests']:>6}{run['requests_per_s']:>9.2f}"
              f"{run['tokens_per_s']:>9.1f}{run['latency_p50_s']:>8.3f}{run['latency_p95_s']:>8.3f}"
              f"{run['ttft_p50_s']:>8.3f}{run['ttft_p95_s']:>8.3f}")
    print(f"concurrent / sequential tokens/s: {ratio:.2f}x; peak slots in use {served.batcher.peak_active}; "
          f"programs compiled {served.batcher.compilations}")
    print(f"memory (RSS MiB): {memory}")
    print("checks: " + ", ".join(f"{k}={'ok' if v else 'FAILED'}" for k, v in checks.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
