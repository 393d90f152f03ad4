"""`cli.py` for torchrun tests, with rank 1 failing with a UserError at its second step."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cli  # noqa: E402
from yocto_fn.errors import UserError  # noqa: E402
from yocto_fn.run import runstate  # noqa: E402

if os.environ.get("RANK") == "1":
    real_batch = runstate.RunState.batch

    def batch(self):
        if self.progress.iter == 1:
            raise UserError("rank 1 gave up on purpose")
        return real_batch(self)

    runstate.RunState.batch = batch

sys.exit(cli.main(sys.argv[1:]))
