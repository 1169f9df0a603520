"""Test setup: 8 emulated CPU devices (set before jax is imported anywhere) and tiny HF checkpoints."""

import os
import sys
from collections import Counter
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

# transformers binds its log handler to sys.stderr when first imported. The package imports it lazily, so the
# first import could happen inside a test that captures stderr, leaving the handler on a stream pytest closes
# afterwards ("--- Logging error ---" in a later test's stderr): import it here, at collection.
import transformers  # noqa: E402, F401
from benchmark_files import DIABETICA  # noqa: E402
from fault_ledger import (  # noqa: E402, F401
    ledger,
    pytest_configure,
    pytest_runtest_logreport,
    pytest_runtest_makereport,
    pytest_terminal_summary,
)
from hf_models import VARIANTS, make_hf_checkpoint  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """The pipeline's whole-chain runs first (the longest file), then files by how many slow tests they hold, so
    `-n 2 --dist loadfile` hands the long files out early instead of leaving one worker with a long file at the end;
    the order inside a file is kept. Tests marked `shared` read the
    benchmark files; without them they skip and say how to point at them."""
    slow = Counter(item.path for item in items if "slow" in item.keywords)
    items.sort(key=lambda item: (item.path.parent.name != "pipeline", -slow[item.path]))  # stable sort
    if (DIABETICA / "protocol.json").is_file():
        return
    skip = pytest.mark.skip(reason=f"Diabetica benchmark files not found at {DIABETICA}; set DIABETICA_BENCHMARKS="
                                   "/path/to/benchmarks/diabetica (the folder holding protocol.json) to run this test")
    for item in items:
        if "shared" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One tiny random transformers checkpoint per supported variant, saved as safetensors."""
    root = tmp_path_factory.mktemp("hf")
    return {name: make_hf_checkpoint(name, root / name, seed=i) for i, name in enumerate(VARIANTS)}


@pytest.fixture
def tokens():
    import numpy as np

    return np.random.RandomState(0).randint(0, 512, size=(2, 12))
