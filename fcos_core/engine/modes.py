"""Switching models between train and eval mode, exported (PT2E) graph modules included.

A graph module from ``torch.export`` (what PT2E quantization produces for ``model.body``)
refuses ``.train()`` / ``.eval()``; torchao's ``allow_exported_model_train_eval`` makes those
calls switch the few ops that differ (dropout, batch norm) instead. :func:`set_mode` applies it
to such submodules the first time a plain ``model.train(mode)`` refuses.
"""

from __future__ import annotations

from typing import Any

import torch


def _allow_exported(model: Any) -> int:
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    count = 0
    for module in model.modules():
        if isinstance(module, torch.fx.GraphModule) and not getattr(
            module, "_fcos_train_eval_allowed", False
        ):
            allow_exported_model_train_eval(module)
            object.__setattr__(module, "_fcos_train_eval_allowed", True)
            count += 1
    return count


def set_mode(model: Any, training: bool) -> Any:
    """``model.train(training)``, also for models containing exported graph modules."""
    try:
        return model.train(training)
    except NotImplementedError:
        if not _allow_exported(model):
            raise
        return model.train(training)
