"""``distributed_data_parallel_trainer``: the training loop over torch DDP.

Start it with ``fcos run CONFIG --nproc-per-node N`` (which runs torchrun's launcher) or with
``torchrun`` itself -- e.g. on two machines::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29400 --rdzv-id myrun -m fcos_core run CONFIG

Each process trains on its share of every batch (``DistributedSampler``), gradients are
averaged by DDP, and with ``sync_bn`` BatchNorm statistics cover the global batch (torch's
SyncBatchNorm on CUDA, :class:`~fcos_core.engine.sync_bn.CpuSyncBatchNorm` on CPU). Only rank 0
logs (by default), validates and writes checkpoints; the others wait for it. Resuming needs the
checkpoint folder on storage every machine can read.

Started without a process group (plain ``fcos run``), it trains in a single process, like
``Trainer``, and says so.
"""

from __future__ import annotations

from typing import Any

from torch.nn.parallel import DistributedDataParallel

from fcos_core.engine import distributed
from fcos_core.engine.sync_bn import convert_sync_batchnorm
from fcos_core.engine.trainer import Trainer


class DistributedDataParallelTrainer(Trainer):
    """Data-parallel training; see the module docstring.

    Args:
        sync_bn: synchronise BatchNorm statistics across processes.
        find_unused_parameters: DDP's option for models with branches unused in a step.
        (other arguments: see :class:`~fcos_core.engine.trainer.Trainer`)
    """

    def __init__(
        self, *args: Any, sync_bn: bool = False, find_unused_parameters: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.sync_bn = sync_bn
        self.find_unused_parameters = find_unused_parameters

    def wrap_model(self) -> None:
        if not distributed.is_distributed():
            self.logger.info(
                "distributed_data_parallel_trainer without a process group: "
                "training in a single process (start with --nproc-per-node N or "
                "torchrun for data-parallel training)",
                stage=self.stage,
            )
            return
        if self.num_epochs == 0:
            return  # nothing to synchronise
        if self.sync_bn:
            self.model = convert_sync_batchnorm(self.model, self.device)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.train_model = DistributedDataParallel(
            self.model, device_ids=device_ids, find_unused_parameters=self.find_unused_parameters
        )
        self.logger.info(
            "DDP",
            stage=self.stage,
            world_size=distributed.get_world_size(),
            backend=str(__import__("torch").distributed.get_backend()),
            sync_bn=self.sync_bn,
        )
