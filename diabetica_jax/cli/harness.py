"""`diabetica-jax lm-eval ARGS...`: lm-evaluation-harness's own command line, with the `diabetica-jax` model
registered and the Diabetica task YAMLs on its task path.

lm-eval 0.4 finds models only in its own registry (no plugin entry points), so `lm_eval --model diabetica-jax`
works once this package's model class is imported; this command imports it and hands every argument to
lm-eval unchanged, adding `--include_path` (the shipped tasks: diabetica_mcq, diabetica_cloze) unless given."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    """lm-eval's exit: argparse's SystemExit for --help and usage errors, else 0."""
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        print("diabetica-jax lm-eval: error: lm-eval is not installed (pip install 'diabetica-jax[lm-eval]')",
              file=sys.stderr)
        return 2
    args = list(argv)
    if not ({"-h", "--help"} & set(args)) and args:  # help answers without loading JAX
        import diabetica_jax.train.run_dir  # noqa: F401 (registers the reader of training run directories)
        from diabetica_jax.evaluation.harness import TASKS_DIR  # importing it registers the model

        # every lm-eval subcommand (run, ls, validate, or none: run) reads --include_path
        if not any(a == "--include_path" or a.startswith("--include_path=") for a in args):
            args += ["--include_path", str(TASKS_DIR)]
    saved, sys.argv = sys.argv, ["lm-eval", *args]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0
