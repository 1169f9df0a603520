"""The package's dependency direction: curate -> data -> train -> evaluate -> export flows one way.

Every import counts, also those inside functions (they hide dependencies but not from this walk).
Packages sit in layers; a module may import its own package and lower layers only, and modules
never import each other in a circle.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "diabetica_jax"

# Lowest first. Packages in one layer are siblings: neither may import the other.
LAYERS = [
    {"errors"},  # the two kinds of error the CLI reports in one line
    {"configuration"},  # config plumbing
    {"run_lock"},  # one process at a time in a run or output directory
    {"data", "parallel"},  # records, tables, shards, loss masks, the token store, the Grain loader; meshes and rules
    {"demo"},  # embedded demo corpus and benchmark files, written as the data library's records
    {"model"},  # the Flax model family
    {"hf"},  # Hugging Face checkpoints and tokenizers <-> the model
    {"generate"},  # KV-cache engine
    {"llm"},  # chat backends (OpenAI-compatible, local engine) behind a cache
    {"curate"},  # curation: scan, dedup, teacher stages, shards and the data card
    {"evaluation"},  # benchmarks: items, prompts, answer rules, the runner
    {"train"},  # training; GRPO scores its rollouts with the benchmarks' own prompts and answer rules
    {"pipeline", "serve"},  # the whole chain; the OpenAI-compatible server and web page
    {"cli"},  # the command line
]
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every diabetica_jax name this file (module `module`) imports, at any depth of the code:
    `from a.b import c` gives both a.b and a.b.c (c may be a module)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("diabetica_jax")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                parts = package.split(".")
                target = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("diabetica_jax"):
                found |= {target} | {f"{target}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p, _module_name(p)) for p in PACKAGE.rglob("*.py")}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_is_placed_in_a_layer():
    packages = {_top(m) for m in _graph()} - {"__init__"}
    assert packages <= set(LAYER_OF), f"place these in LAYERS: {sorted(packages - set(LAYER_OF))}"


def test_imports_only_go_down_the_layers():
    upward = []
    for module, imports in _graph().items():
        here = _top(module)
        for target in imports:
            there = _top(target)
            if there == here or there == "__init__" or here == "__init__":
                continue
            if LAYER_OF[there] >= LAYER_OF[here]:
                upward.append(f"{module} imports {target}")
    assert not upward, "imports against the flow:\n" + "\n".join(sorted(upward))


def test_named_rules():
    graph = _graph()
    importers = lambda pkg: {m for m, imports in graph.items() for t in imports if _top(t) == pkg and _top(m) != pkg}
    assert importers("cli") == set()
    assert {_top(m) for m in importers("pipeline")} <= {"cli"}
    model_imports = {_top(t) for m, imports in graph.items() if _top(m) == "model" for t in imports}
    assert not model_imports & {"data", "train"}
    # the data library (records, shards, the loader) stands on configuration alone
    data_imports = {_top(t) for m, imports in graph.items() if _top(m) == "data" for t in imports}
    assert data_imports <= {"data", "configuration", "errors"}, data_imports


def test_no_import_cycles():
    graph = _graph()
    modules = set(graph)

    def resolve(target: str) -> str | None:
        # `from diabetica_jax.x import name` names module x (or x.name when that is a module)
        return target if target in modules else None

    edges = {m: {t for t in (resolve(i) for i in imports) if t and t != m} for m, imports in graph.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of the code's logic
    for m in edges:
        edges[m] = {t for t in edges[m] if not (m.startswith(t + ".") and graph.get(t) is not None)}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_walk_sees_imports_inside_functions_and_relative_ones(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from diabetica_jax.train import loop\n    import diabetica_jax.cli\n"
                      "    from ..evaluation import runner\n")
    found = _imports(source, "diabetica_jax.data.probe")
    assert {"diabetica_jax.train.loop", "diabetica_jax.cli", "diabetica_jax.evaluation.runner"} <= found


def test_every_error_the_cli_reports_in_one_line_has_one_of_two_bases():
    """The CLI names two classes (exit 2 for UserError, 1 for RunFailure); each package's own errors derive
    from them, so a new error class cannot be forgotten in a hand-written list."""
    from diabetica_jax.configuration import ConfigFileError, InputError
    from diabetica_jax.curate.engines import UnitsLost
    from diabetica_jax.errors import MissingInput, RunFailure, UserError
    from diabetica_jax.evaluation.data import EvalDataError
    from diabetica_jax.evaluation.rubric import RubricError
    from diabetica_jax.hf import HFCheckpointError
    from diabetica_jax.model import ConfigError
    from diabetica_jax.run_lock import DirectoryInUse
    from diabetica_jax.train.checkpoint import CheckpointError, CheckpointSaveError, DamagedCheckpoint

    for kind in (ConfigFileError, InputError, MissingInput, EvalDataError, RubricError, HFCheckpointError,
                 ConfigError, DirectoryInUse, CheckpointError, DamagedCheckpoint):
        assert issubclass(kind, UserError), kind
    assert issubclass(MissingInput, FileNotFoundError) and issubclass(InputError, ValueError)  # callers' catches
    for kind in (UnitsLost, CheckpointSaveError):
        assert issubclass(kind, RunFailure), kind
    cli = (PACKAGE / "cli" / "__init__.py").read_text(encoding="utf-8")
    caught = {name for name in ("HFCheckpointError", "CheckpointError", "ConfigError", "EvalDataError",
                                "InputError", "UnitsLost", "CheckpointSaveError") if name in cli}
    assert not caught, f"the CLI lists {caught}: derive them from UserError or RunFailure instead"


TESTS = Path(__file__).resolve().parent
# Folders under tests/ that hold no package's tests: fault injection across packages, and test fixtures.
TEST_FOLDERS_NOT_PACKAGES = {"faults", "templates", "slurm_standin", "bench"}  # bench: scripts, no package
REPO_WIDE_TESTS = {"test_architecture.py", "test_docs_links.py", "test_readme_commands.py"}


def test_tests_mirror_the_package_folders():
    """tests/<name>/ holds the tests of diabetica_jax/<name>/; only repo-wide checks sit at the top."""
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    assert folders - TEST_FOLDERS_NOT_PACKAGES <= packages, "a test folder with no package of that name"
    assert {p.name for p in TESTS.glob("test_*.py")} == REPO_WIDE_TESTS, "a package's test file at the top of tests/"
    names = [p.name for p in TESTS.rglob("test_*.py")]
    assert len(names) == len(set(names)), "test file names repeat across folders (pytest imports them by name)"


def test_every_code_folder_is_a_regular_package():
    """setuptools' packages.find skips a folder without __init__.py: a wheel would ship without it (train/ had none)."""
    missing = [str(d.relative_to(PACKAGE.parent)) for d in PACKAGE.rglob("*")
               if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py")) and not (d / "__init__.py").is_file()]
    assert not missing, f"folders of modules without __init__.py: {missing}"
