"""`python -m diabetica_jax.cli ...`, the same as the `diabetica-jax` command (used by launchers and tests)."""

import sys

from diabetica_jax.cli import main

sys.exit(main())
