"""engines.map_units: the local pool and datatrove's local executor give the same ordered results."""

import os
import sys

import pytest

from diabetica_jax.curate.engines import UnitError, imap_units, map_units

UNITS = [("part", index) for index in range(10)]
EXPECTED = [{"unit": index, "square": index * index} for index in range(10)]


def square(unit):
    """Top-level, picklable: what a scan_unit looks like to the runner."""
    _, index = unit
    return {"unit": index, "square": index * index}


def square_with_pid(unit):
    return {**square(unit), "pid": os.getpid()}


def square_or_fail(unit):
    if unit[1] == 7:
        raise ValueError("bad record in part 7")
    return square(unit)


def test_workers_1_runs_in_process():
    results = map_units(square_with_pid, UNITS, workers=1, progress=False)
    assert [{k: v for k, v in r.items() if k != "pid"} for r in results] == EXPECTED
    assert {r["pid"] for r in results} == {os.getpid()}


def test_local_pool_streams_in_unit_order():
    results = list(imap_units(square_with_pid, UNITS, workers=2, progress=False))
    assert [{k: v for k, v in r.items() if k != "pid"} for r in results] == EXPECTED
    assert os.getpid() not in {r["pid"] for r in results}


@pytest.mark.parametrize("workers", [1, 2])
def test_local_error_names_the_unit(workers):
    with pytest.raises(UnitError) as caught:
        map_units(square_or_fail, UNITS, workers=workers, progress=False)
    assert caught.value.index == 7
    assert "unit 7 (('part', 7))" in str(caught.value)
    assert "ValueError: bad record in part 7" in str(caught.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown engine"):
        map_units(square, UNITS, engine="spark")
    with pytest.raises(ValueError, match="fork"):
        map_units(square, UNITS, workers=2, start_method="fork", progress=False)
    with pytest.raises(ValueError, match="work_dir"):
        map_units(square, UNITS, engine="datatrove")


def test_missing_datatrove_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datatrove", None)  # import datatrove -> ImportError
    with pytest.raises(ImportError, match="pip install"):
        map_units(square, UNITS, engine="datatrove", work_dir=tmp_path, progress=False)


def test_datatrove_local_matches_local_pool(tmp_path):
    pytest.importorskip("datatrove", reason="engine='datatrove' needs `pip install datatrove` "
                                            "(the project's `engine` extra)")
    local = map_units(square, UNITS, workers=2, progress=False)
    engine = map_units(square, UNITS, engine="datatrove", workers=2, work_dir=tmp_path, progress=False)
    assert engine == local == EXPECTED
    # resume: every result is on disk, so nothing runs again and the same results come back
    assert map_units(square_or_fail, UNITS, engine="datatrove", work_dir=tmp_path, resume=True,
                     progress=False) == EXPECTED


def test_datatrove_error_names_the_unit(tmp_path):
    pytest.importorskip("datatrove", reason="engine='datatrove' needs `pip install datatrove` "
                                            "(the project's `engine` extra)")
    with pytest.raises(UnitError) as caught:
        map_units(square_or_fail, UNITS, engine="datatrove", workers=2, work_dir=tmp_path, progress=False)
    assert caught.value.index == 7
    assert "unit 7 (('part', 7))" in str(caught.value)
    assert "ValueError: bad record in part 7" in str(caught.value)


def test_datatrove_does_not_fork_a_jax_process(tmp_path):
    """The parent may have started JAX (threads): datatrove's pool and manager must not fork it."""
    pytest.importorskip("datatrove", reason="engine='datatrove' needs `pip install datatrove` "
                                            "(the project's `engine` extra)")
    import warnings

    import jax.numpy as jnp

    assert float(jnp.ones(3).sum()) == 3.0  # starts the backend; JAX warns on any later os.fork()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert map_units(square, UNITS[:3], engine="datatrove", workers=2, work_dir=tmp_path,
                         progress=False) == EXPECTED[:3]
    assert not [w for w in caught if "fork" in str(w.message)]
