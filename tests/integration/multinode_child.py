"""``python -m multinode_child ARGS``: fcos's command line, for the several-machine tests.

The tests start it under two ``torchrun`` launchers (two "nodes"). It runs ``fcos`` unchanged
and, after each trainer finishes, saves that process's final weights to
``$FCOS_TEST_WEIGHTS_DIR/<stage>-rank<R>.pt`` -- checkpoints are written by global rank 0 only,
so this is how the test sees the weights the other node ended with.
"""

from __future__ import annotations

import os
import sys

from fcos_core.cli import main as cli
from fcos_core.engine import trainer as trainer_module

_run = trainer_module.Trainer.run


def _run_and_save_weights(self, ctx):
    import torch

    results = _run(self, ctx)
    folder = os.environ.get("FCOS_TEST_WEIGHTS_DIR")
    if folder:
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        torch.save(state, os.path.join(folder, f"{ctx.stage}-rank{ctx.rank}.pt"))
    return results


trainer_module.Trainer.run = _run_and_save_weights

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
