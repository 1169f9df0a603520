"""Curation on a real one-node Slurm cluster: the same kept ids as the local engine, a lost task found, a resume.

    apt-get install slurm-wlm munge           # Debian; as root (slurmd runs the tasks as the submitting user)
    python bench/curate_slurm.py [--records 30000 --unit-mb 1 --workers 2 --out bench/results/curate_slurm_cpu.json]

Brings up munged, slurmctld and slurmd on this machine with a configuration of its own (SLURM_CONF in a temporary
folder, one node with this machine's cores, partition `cpu`) unless `sinfo` already answers, then:

1. curates --records synthetic QA records with the local engine, then with `engine.name=datatrove
   engine.executor=slurm` (one array task per unit); prints both wall times and the sha1 of the kept ids;
2. runs it again and `scancel`s half of the array as soon as it is running: the driver's one-line error and how
   long after the cancel it came;
3. reruns the same command: how many array tasks the resume submitted, and the sha1 again.

Results go to --out as JSON. The daemons it started are stopped at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _slurm_conf(folder: Path) -> Path:
    host = socket.gethostname()
    state, spool = folder / "state", folder / "spool"
    state.mkdir()
    spool.mkdir()
    conf = folder / "slurm.conf"
    conf.write_text(f"""ClusterName=bench
SlurmctldHost={host}
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
StateSaveLocation={state}
SlurmdSpoolDir={spool}
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MaxArraySize=100001
MinJobAge=30
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
NodeName={host} CPUs={os.cpu_count()} RealMemory=8000 State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def bring_up(folder: Path) -> list[str]:
    """Start munged, slurmctld and slurmd unless a cluster answers; the daemons started, to stop later."""
    if subprocess.run(["sinfo"], capture_output=True).returncode == 0:
        return []
    for tool in ("munged", "slurmctld", "slurmd"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} not found: apt-get install slurm-wlm munge")
    os.environ["SLURM_CONF"] = str(_slurm_conf(folder))
    started = []
    if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["/usr/sbin/munged"], check=True)
        started.append("munged")
    subprocess.run(["/usr/sbin/slurmctld"], check=True)
    subprocess.run(["/usr/sbin/slurmd"], check=True)
    started += ["slurmctld", "slurmd"]
    for _ in range(60):
        if "idle" in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout:
            return started
        time.sleep(1)
    sys.exit("slurm did not come up; see the logs in " + str(folder))


def curate(corpus: Path, out: Path, extra: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "diabetica_jax.cli", "curate", "--input", str(corpus), "--out", str(out), *extra]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO)


def kept_sha1(out: Path) -> tuple[str, int]:
    from diabetica_jax.data.shards import shard_records

    ids = [r.id for r in shard_records(out)]
    return hashlib.sha1("\n".join(ids).encode()).hexdigest(), len(ids)


def _array_tasks(job: str) -> list[str]:
    listed = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", job], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=30000)
    parser.add_argument("--unit-mb", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "curate_slurm_cpu.json"))
    args = parser.parse_args()
    from diabetica_jax.demo.synthetic_qa import write_corpus

    result: dict = {"records": args.records, "unit_mb": args.unit_mb, "workers": args.workers,
                    "cpu_cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = bring_up(tmp / "slurm") if (tmp / "slurm").mkdir() is None else []
        try:
            result["slurm"] = subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()
            corpus = tmp / "qa.jsonl"
            write_corpus(corpus, args.records, seed=7)
            slurm = ["engine.name=datatrove", "engine.executor=slurm", f"engine.unit_mb={args.unit_mb}",
                     f"engine.workers={args.workers}", "engine.executor_options.partition=cpu",
                     "engine.executor_options.time='00:30:00'", f"engine.work_dir={tmp / 'shared'}"]
            clock = time.perf_counter()
            done = curate(corpus, tmp / "local", [f"engine.unit_mb={args.unit_mb}"])
            assert done.returncode == 0, done.stderr
            result["local"] = {"seconds": round(time.perf_counter() - clock, 1), "kept_sha1": kept_sha1(tmp / "local")}
            clock = time.perf_counter()
            done = curate(corpus, tmp / "slurm-out", slurm)
            assert done.returncode == 0, done.stderr
            result["slurm_run"] = {"seconds": round(time.perf_counter() - clock, 1),
                                   "kept_sha1": kept_sha1(tmp / "slurm-out"),
                                   "logs_kept": len(list((tmp / "slurm-out" / "engine_logs").rglob("*.out")))}
            result["lost"] = lost_task_then_resume(corpus, tmp / "lost-out", slurm)
            result["lost"]["kept_sha1"] = kept_sha1(tmp / "lost-out")
        finally:
            subprocess.run(["scancel", "--user", os.environ.get("USER", "root")], capture_output=True)
            for daemon in reversed(started):
                subprocess.run(["pkill", "-x", daemon], capture_output=True)
    same = result["local"]["kept_sha1"] == result["slurm_run"]["kept_sha1"] == result["lost"]["kept_sha1"]
    result["same_kept_ids"] = same
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if same else 1


def lost_task_then_resume(corpus: Path, out: Path, slurm: list[str]) -> dict:
    """Cancel half of the array once it runs; the driver's error and its delay; then the rerun."""
    command = [sys.executable, "-m", "diabetica_jax.cli", "curate", "--input", str(corpus), "--out", str(out), *slurm]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    job, tasks = None, []
    while driver.poll() is None and not tasks:
        jobs = subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True).stdout.split()
        if jobs:
            job = jobs[0]
            tasks = _array_tasks(job)
        time.sleep(0.2)
    total = len(tasks)
    cancelled = [f"{job}_{i}" for i in range(total // 2, total)]
    subprocess.run(["scancel", *cancelled], check=True)
    cancel_time = time.perf_counter()
    _, err = driver.communicate()
    found_after = time.perf_counter() - cancel_time
    error = [line for line in err.splitlines() if "error:" in line][-1:]
    clock = time.perf_counter()
    rerun = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert rerun.returncode == 0, rerun.stderr
    return {"array_tasks": total, "cancelled": len(cancelled), "driver_exit_code": driver.returncode,
            "error_line": error[0] if error else None, "seconds_to_error_after_cancel": round(found_after, 1),
            "rerun_seconds": round(time.perf_counter() - clock, 1)}


if __name__ == "__main__":
    sys.exit(main())
