"""Building tiny trainers directly in Python for the engine's unit tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from engine_standins import TinyDet, TinySet

from fcos_core.engine.context import RunContext
from fcos_core.engine.data_loader import DataLoader
from fcos_core.engine.optimizers import SGD
from fcos_core.engine.trainer import Trainer


def tiny_trainer(
    tmp: Path,
    *,
    callbacks: Any = (),
    num_epochs: int = 2,
    n: int = 8,
    batch_size: int = 4,
    lr: float = 0.05,
    dataset: Any = None,
    seed: int = 0,
    data_seed: int = 0,
    **kwargs: Any,
) -> Trainer:
    torch.manual_seed(seed)
    model = TinyDet(channels=4)
    loader = DataLoader(
        dataset or TinySet(n=n, size=16), batch_size=batch_size, shuffle=True, seed=data_seed
    )
    return Trainer(
        model=model,
        num_epochs=num_epochs,
        data_loader=loader,
        optimizer=lambda model: SGD(model, lr=lr, momentum=0.9),
        device="cpu",
        callbacks=list(callbacks),
        **kwargs,
    )


def ctx_for(tmp: Path, stage: str = "float", **kwargs: Any) -> RunContext:
    return RunContext(stage=stage, run_dir=tmp / "run", ckpt_dir=tmp / "ckpt", seed=0, **kwargs)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_trained_weights(got: Trainer, want: Trainer) -> None:
    """The model and its EMA copy of ``got`` equal ``want``'s, tensor for tensor."""
    for a, b in zip(
        (weights(got.model), weights(got.ema_model)), (weights(want.model), weights(want.ema_model))
    ):
        for k in b:
            assert torch.equal(a[k], b[k]), k
