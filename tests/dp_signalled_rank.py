"""`cli.py` for torchrun tests: the rank named by YOCTO_FN_TEST_SIGNAL_RANK sends itself
SIGTERM between its second and third steps, as a scheduler signalling one process would;
every rank reports on stderr the step its run stopped at."""

import os
import signal
import sys

from yocto_fn import cli
from yocto_fn.run.trainer import Trainer

RANK, SIGNALLED = os.environ["RANK"], os.environ["YOCTO_FN_TEST_SIGNAL_RANK"]
real_step, real_run = Trainer.train_step, Trainer.run


def train_step(self, it, end):
    out = real_step(self, it, end)
    if it == 1 and RANK == SIGNALLED:
        signal.raise_signal(signal.SIGTERM)
    return out


def run(self):
    result = real_run(self)
    print(f"rank {RANK} stopped ({result['stopped']}) at step {result['iter']}", file=sys.stderr)
    return result


Trainer.train_step, Trainer.run = train_step, run
sys.exit(cli.main(sys.argv[1:]))
