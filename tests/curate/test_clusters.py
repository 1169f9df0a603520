"""Curation on clusters: datatrove's Slurm executor against sbatch/squeue/scancel/srun stand-ins that run the array
on this machine (tests/slurm_standin), and its Ray executor on a real local Ray; both must give the local engine's
kept and rejected records. Executor options come from the config and the command line, checked before anything
is submitted; a task that ends without a result, or hangs, stops the driver with one line naming the unit; a rerun
runs only the units without a result; the task logs stay in OUT/engine_logs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_curate_stream import _config, _outcome

from diabetica_jax.cli import main
from diabetica_jax.configuration import ConfigFileError
from diabetica_jax.curate import datatrove_engine, pipeline
from diabetica_jax.curate.config import load_curate_config
from diabetica_jax.demo.synthetic_qa import write_corpus

pytest.importorskip("datatrove", reason="the cluster executors need: pip install 'diabetica-jax[engine]'")

STANDINS = Path(__file__).parents[1] / "slurm_standin"
SLURM = ["engine.name=datatrove", "engine.executor=slurm", "engine.executor_options.partition=cpu",
         "engine.executor_options.time='00:10:00'", "engine.unit_mb=1", "engine.workers=2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """~1.5 MB of synthetic QA with planted duplicates and broken lines: two 1 MB units."""
    path = tmp_path_factory.mktemp("corpus") / "qa.jsonl"
    write_corpus(path, 3000, seed=5)
    return path


@pytest.fixture(scope="module")
def local_outcome(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    pipeline.curate(_config([corpus], "engine.workers=1"), out, progress=False)
    return _outcome(out)


@pytest.fixture
def slurm(tmp_path, monkeypatch) -> Path:
    """The stand-ins first on PATH; their state folder (one folder per submitted job, a state file per task)."""
    state = tmp_path / "fake-slurm"
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    monkeypatch.setattr(datatrove_engine, "SQUEUE_EVERY_S", 0.2)
    return state


def _tasks_run(state: Path) -> list[int]:
    """How many array tasks each submitted job had."""
    return [len(list(job.glob("*.state"))) for job in sorted(state.iterdir())]


def _error_line(capsys) -> str:
    """The command's error: one line, the last on stderr (after the progress bar)."""
    line = capsys.readouterr().err.rstrip("\n").split("\n")[-1]
    assert line.startswith("diabetica-jax curate: error: "), line
    return line


# ---- options ------------------------------------------------------------------------------------------------

def test_executor_options_come_from_the_command_line_and_yaml(tmp_path):
    cfg = load_curate_config(None, [*SLURM, "engine.executor_options.sbatch_args={account: diab}",
                                    "engine.executor_options.cpus_per_task=4"])
    assert cfg.engine.executor_options == {"partition": "cpu", "time": "00:10:00", "sbatch_args": {"account": "diab"},
                                           "cpus_per_task": 4}
    config = tmp_path / "curate.yaml"
    config.write_text("demo: true\nengine: {name: datatrove, executor: ray, executor_options: {cpus_per_task: 2}}\n")
    assert load_curate_config(str(config)).engine.executor_options == {"cpus_per_task": 2}


@pytest.mark.parametrize("overrides, expected", [
    (["engine.executor=slurm"], "engine.executor: slurm runs through datatrove: set engine.name=datatrove"),
    (["engine.executor_options.partition=cpu"], "engine.executor_options: only read with engine.name=datatrove"),
    (SLURM[:3], "engine.executor_options: datatrove's slurm executor needs time"),
    ([*SLURM[:3], "engine.executor_options.time=2:00:00"],
     "engine.executor_options.time: expected str, got 7200 (quote it"),
    ([*SLURM, "engine.executor_options.partiton=gpu"], "engine.executor_options.partiton: not an option of datatrove's"),
    ([*SLURM, "engine.executor_options.tasks=4"], "engine.executor_options.tasks: is set by the engine section"),
    ([*SLURM, "engine.executor_options.cpus_per_task=many"], "engine.executor_options.cpus_per_task: expected int"),
    ([*SLURM, "engine.timeout_s=0"], "engine.timeout_s: must be a positive number of seconds"),
])
@pytest.mark.bad_input
def test_bad_executor_options_are_refused_before_submission(overrides, expected, slurm):
    with pytest.raises(ConfigFileError) as error:
        load_curate_config(None, overrides, ["x.jsonl"])
    assert expected in str(error.value)
    assert not slurm.exists()  # nothing was submitted


# ---- Slurm, through the stand-ins ------------------------------------------------------------------------------

@pytest.mark.slow
def test_slurm_array_gives_the_local_records_and_keeps_its_logs(corpus, local_outcome, slurm, tmp_path):
    out = tmp_path / "out"
    pipeline.curate(_config([corpus], *SLURM), out, progress=False)
    assert _outcome(out) == local_outcome
    assert _tasks_run(slurm)[0] == 2  # the scan: one array task per unit (then the dedup and write phases)
    logs = list((out / "engine_logs" / "scan" / "slurm_logs").glob("*.out"))
    assert len(logs) == 2 and all(log.stat().st_size for log in logs)
    assert not (out / "work").exists()


@pytest.mark.slow
@pytest.mark.fault
def test_a_lost_task_names_its_unit_and_a_rerun_runs_only_it(corpus, local_outcome, slurm, tmp_path, capsys,
                                                            monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_LOSE", "1")  # array task 1 ends without running, as after `scancel 1000_1`
    argv = ["curate", "--input", str(corpus), "--out", str(tmp_path / "out"), *SLURM]
    assert main(argv) == 1
    line = _error_line(capsys)
    assert "slurm job 1000 ended" in line and "1 of 2 units have no result: 1 (Unit(1: " in line
    assert "rerun the same command" in line
    monkeypatch.delenv("FAKE_SLURM_LOSE")
    assert main(argv) == 0
    assert _tasks_run(slurm)[:2] == [2, 1]  # the rerun's scan array ran only the unit without a result
    assert _outcome(tmp_path / "out") == local_outcome


@pytest.mark.fault
def test_a_hung_task_is_stopped_by_the_timeout(corpus, slurm, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_HANG", "0")  # array task 0 never ends
    argv = ["curate", "--input", str(corpus), "--out", str(tmp_path / "out"), *SLURM,
            "engine.timeout_s=6"]
    assert main(argv) == 1
    line = _error_line(capsys)
    assert "no unit finished for 6 s (engine.timeout)" in line and "units have no result: 0 (Unit(0: " in line
    (job,) = sorted(slurm.iterdir())
    assert (job / "0.state").read_text() == "cancelled"  # scancel'd, not left running


@pytest.mark.slow
def test_settings_changed_between_runs_start_afresh(corpus, slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_LOSE", "1")
    out = tmp_path / "out"
    with pytest.raises(datatrove_engine.UnitsLost):
        pipeline.curate(_config([corpus], *SLURM), out, progress=False)
    monkeypatch.delenv("FAKE_SLURM_LOSE")
    pipeline.curate(_config([corpus], *SLURM, "quality.min_chars=12"), out, progress=False)
    assert _tasks_run(slurm)[:2] == [2, 2]  # another scan setting: the finished unit is not reused


# ---- Ray ----------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ray_local_cluster_gives_the_local_records(corpus, local_outcome, tmp_path):
    ray = pytest.importorskip("ray", reason="the Ray executor needs: pip install 'datatrove[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "out"
        pipeline.curate(_config([corpus], "engine.name=datatrove", "engine.executor=ray", "engine.unit_mb=1",
                                "engine.workers=2"), out, progress=False)
    finally:
        ray.shutdown()
    assert _outcome(out) == local_outcome
    assert (out / "engine_logs" / "scan" / "logs").is_dir()
