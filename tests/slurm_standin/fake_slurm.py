#!/usr/bin/env python3
"""Stand-ins for Slurm's sbatch, squeue, scancel, srun and scontrol that run a job array on this machine.

Put this folder first on PATH (the five names are links to this file). Enough of Slurm for datatrove's
SlurmPipelineExecutor: `sbatch [--export=ALL,K=V] [--dependency=afterany:ID] SCRIPT` reads the script's
`#SBATCH --array=0-N%W` and `--output` lines, prints `Submitted batch job ID` and runs the array in a
detached process, at most W tasks at once, each `bash SCRIPT` with SLURM_ARRAY_TASK_ID set; `squeue
--noheader --format=%i --jobs IDS` lists the tasks not yet ended as `ID_TASK`; `scancel ID[_TASK]` ends
them; `srun [options] COMMAND` runs COMMAND; `scontrol show hostnames LIST` prints the hosts of a node list
(one node here: datatrove 0.10.1 asks for them at the start of every task).

State lives in $FAKE_SLURM_DIR: `ID/TASK.state` (pending, running, done, cancelled) and `ID/TASK.exit`.
$FAKE_SLURM_LOSE=1,3 makes those array tasks end as a `scancel` would, without running their command
(a lost task, as seen when part of an array was cancelled); $FAKE_SLURM_HANG=0 makes those tasks hang
(`sleep` for an hour) until cancelled.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("FAKE_SLURM_DIR", "/tmp/fake-slurm"))


def _state(job: str, task: int) -> Path:
    return STATE / job / f"{task}.state"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def sbatch(args: list[str]) -> int:
    script = Path(args[-1])
    text = script.read_text()
    env = dict(os.environ)
    depends = None
    for arg in args[:-1]:
        if arg.startswith("--export="):
            for item in arg.removeprefix("--export=").split(",")[1:]:
                key, _, value = item.partition("=")
                env[key] = value
        elif arg.startswith("--dependency="):
            depends = [d.split(":")[1] for d in arg.removeprefix("--dependency=").split(",") if ":" in d]
    array = re.search(r"^#SBATCH --array=(\d+)-(\d+)(?:%(\d+))?", text, re.M)
    first, last, width = (int(array.group(1)), int(array.group(2)), int(array.group(3) or 1)) if array else (0, 0, 1)
    output = re.search(r"^#SBATCH --output=(\S+)", text, re.M)
    STATE.mkdir(parents=True, exist_ok=True)
    job = str(1000 + len([p for p in STATE.iterdir() if p.is_dir()]))
    (STATE / job).mkdir()
    copy = STATE / job / "script.sh"
    copy.write_text(text)  # sbatch keeps the script: datatrove deletes its temporary file once submitted
    for task in range(first, last + 1):
        _state(job, task).write_text("pending")
    runner = [sys.executable, os.path.abspath(__file__), "--run", job, str(first), str(last), str(width),
              output.group(1) if output else os.devnull, ",".join(depends or [])]
    subprocess.Popen(runner, env=env, cwd=os.getcwd(), start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"Submitted batch job {job}")
    return 0


def run_array(job: str, first: int, last: int, width: int, output: str, depends: str) -> int:
    for other in filter(None, depends.split(",")):
        while any(_read(p) in ("pending", "running") for p in (STATE / other).glob("*.state")):
            time.sleep(0.1)
    lose = {int(t) for t in os.environ.get("FAKE_SLURM_LOSE", "").split(",") if t}
    hang = {int(t) for t in os.environ.get("FAKE_SLURM_HANG", "").split(",") if t}
    running: dict[int, subprocess.Popen] = {}
    pending = list(range(first, last + 1))
    while pending or running:
        for task, proc in list(running.items()):
            if proc.poll() is None and _read(_state(job, task)) == "cancelled":
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if proc.poll() is not None:
                (STATE / job / f"{task}.exit").write_text(str(proc.returncode))
                if _read(_state(job, task)) == "running":
                    _state(job, task).write_text("done")
                del running[task]
        while pending and len(running) < width:
            task = pending.pop(0)
            if _read(_state(job, task)) == "cancelled":
                continue
            if task in lose:
                _state(job, task).write_text("cancelled")
                continue
            _state(job, task).write_text("running")
            log = output.replace("%A", job).replace("%a", str(task)).replace("%j", job)
            env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_JOB_ID": job, "SLURM_JOB_ID": job,
                   "SLURM_NODELIST": "localhost", "SLURM_JOB_NODELIST": "localhost"}
            with open(log, "a") as handle:
                command = ["sleep", "3600"] if task in hang else ["bash", str(STATE / job / "script.sh")]
                running[task] = subprocess.Popen(command, env=env, stdout=handle,
                                                 stderr=subprocess.STDOUT, start_new_session=True)
        time.sleep(0.05)
    return 0


def squeue(args: list[str]) -> int:
    jobs = next((a.removeprefix("--jobs=") for a in args if a.startswith("--jobs=")), None)
    if jobs is None and "--jobs" in args:
        jobs = args[args.index("--jobs") + 1]
    wanted = set(jobs.split(",")) if jobs else {p.name for p in STATE.iterdir()} if STATE.exists() else set()
    for job in sorted(wanted):
        for path in sorted((STATE / job).glob("*.state"), key=lambda p: int(p.stem)):
            if _read(path) in ("pending", "running"):
                print(f"{job}_{path.stem}")
    return 0


def scancel(args: list[str]) -> int:
    for target in (a for a in args if not a.startswith("-")):
        job, _, task = target.partition("_")
        paths = [_state(job, int(task))] if task else list((STATE / job).glob("*.state"))
        for path in paths:
            if _read(path) in ("pending", "running"):
                path.write_text("cancelled")
    return 0  # the array's runner kills a running task once its state says cancelled


def srun(args: list[str]) -> int:
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in ("-n", "-N") else 1
    os.execvp(args[i], args[i:])


def scontrol(args: list[str]) -> int:
    if args[:2] == ["show", "hostnames"]:
        print("\n".join(args[2].split(",")) if len(args) > 2 else os.environ.get("SLURM_NODELIST", "localhost"))
        return 0
    print(f"scontrol stand-in: {' '.join(args)} is not supported", file=sys.stderr)
    return 1


def main() -> int:
    name = Path(sys.argv[0]).name
    if len(sys.argv) > 1 and sys.argv[1] == "--run":
        job, first, last, width, output, depends = sys.argv[2:8]
        return run_array(job, int(first), int(last), int(width), output, depends)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return {"sbatch": sbatch, "squeue": squeue, "scancel": scancel, "srun": srun,
            "scontrol": scontrol}[name](sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
