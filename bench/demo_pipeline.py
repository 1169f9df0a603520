"""The README's first command, measured: wall time, CPU time (user and system), peak RSS and page faults of
`diabetica-jax run configs/recipes/demo.yaml` in a fresh run directory, then the run's per-stage times.

    python bench/demo_pipeline.py [--run-dir runs/demo-bench] [OVERRIDE ...]

Measure on idle cores: another process on the machine changes every figure but the page faults.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "demo-bench"), help="emptied first")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.loop.steps=10")
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "-m", "diabetica_jax.cli", "run", str(REPO / "configs" / "recipes" / "demo.yaml"),
               "--run-dir", str(run_dir), "--no-progress", *args.overrides]
    start = time.perf_counter()
    done = subprocess.run(command)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\nexit {done.returncode}; wall {wall:.0f} s; user {usage.ru_utime:.0f} s; system {usage.ru_stime:.0f} s; "
          f"peak RSS {usage.ru_maxrss / 2**20:.2f} GiB; minor page faults {usage.ru_minflt / 1e6:.1f} M")
    for stage in sorted(run_dir.glob("*/.stage.json")):
        seconds = json.loads(stage.read_text()).get("seconds")
        print(f"  {stage.parent.name:16s} {seconds:.0f} s" if seconds is not None else f"  {stage.parent.name}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
