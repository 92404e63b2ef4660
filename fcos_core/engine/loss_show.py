"""``LossShow``: running averages of each loss term (the training loop's metric)."""

from __future__ import annotations

from typing import Any

import torch

from fcos_core.engine.batch_processor import loss_terms
from fcos_core.models.loss_dict import monitor_values


class LossShow:
    """Averages every loss term of the model's output dict since the last ``reset``.

    ``compute()`` returns ``{term: mean}`` plus ``loss``, the mean of the terms' sum, plus the
    mean of each logged-only value (:class:`~fcos_core.models.loss_dict.LossDict` ``monitor``,
    e.g. ``centerness_floor``), which is not part of ``loss``. Sums stay on the device between
    updates, so updating costs no host synchronisation.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._monitor: dict[str, torch.Tensor] = {}
        self._count = 0

    def reset(self) -> None:
        self._sums = {}
        self._monitor = {}
        self._count = 0

    def update(self, batch: Any, outputs: Any) -> None:
        many = isinstance(outputs, list) and all(isinstance(o, dict) for o in outputs)
        for out in outputs if many else [outputs]:
            terms = loss_terms(out)
            if not terms:
                continue
            for name, value in terms.items():
                v = value.detach().float().sum()
                self._sums[name] = self._sums[name] + v if name in self._sums else v
            for name, value in monitor_values(out).items():
                if not isinstance(value, torch.Tensor) or name in terms or name == "loss":
                    continue
                v = value.detach().float().sum()
                self._monitor[name] = self._monitor[name] + v if name in self._monitor else v
            self._count += 1

    def compute(self) -> dict[str, float]:
        if not self._count:
            return {}
        names = list(self._sums)
        extra = list(self._monitor)
        values = (
            torch.stack([self._sums[n] for n in names] + [self._monitor[n] for n in extra])
            .div(self._count)
            .tolist()
        )
        out = dict(zip(names, values[: len(names)]))
        out["loss"] = sum(values[: len(names)])
        out.update(zip(extra, values[len(names) :]))
        return out
