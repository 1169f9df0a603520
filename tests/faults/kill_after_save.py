"""`python kill_after_save.py STEP ARGS...`: `diabetica-jax ARGS...`, killed with SIGKILL as soon as the checkpoint
save of STEP has started (with asynchronous checkpoints its files are being written in the background), as a
preemption without notice would. For tests/faults/test_training_faults.py."""

import os
import signal
import sys

from diabetica_jax.cli import main
from diabetica_jax.train.checkpoint import Checkpoints

KILL_AT = int(sys.argv.pop(1))
_save = Checkpoints.save


def save_then_die(self, step, *args, **kwargs):
    _save(self, step, *args, **kwargs)
    if step == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


Checkpoints.save = save_then_die
sys.exit(main(sys.argv[1:]))
