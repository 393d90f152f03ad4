"""`cli.py` for torchrun tests, with rank 1 failing with a UserError at its second step."""

import os
import sys

from yocto_fn import cli
from yocto_fn.errors import UserError
from yocto_fn.run import runstate

if os.environ.get("RANK") == "1":
    real_batch = runstate.RunState.batch

    def batch(self):
        if self.progress.iter == 1:
            raise UserError("rank 1 gave up on purpose")
        return real_batch(self)

    runstate.RunState.batch = batch

sys.exit(cli.main(sys.argv[1:]))
