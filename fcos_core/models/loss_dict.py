"""``LossDict``: a training model's loss dict that also carries numbers to log, not to optimise.

A training model returns a dict of named scalar losses; the batch processor's
``loss_collector`` sums every tensor in it and back-propagates the sum. Some numbers belong next
to the losses in the log without being optimised -- e.g. the floor of the centerness loss
(:meth:`fcos_core.models.fcos.FCOS.compute_losses`). A ``LossDict`` is a plain ``dict`` of the
losses (so ``sum(losses.values())``, ``set(losses)`` and every collector behave exactly as for
a dict) with one extra attribute, ``monitor``: ``{name: 0-d tensor}``, detached values that

* the batch processor records in ``loop.state.last_losses`` next to the loss terms (so
  ``StatsMonitor`` logs them as ``loss_<name>`` and plots them in ``loss.png``), and
* ``LossShow`` averages per epoch (``train_<name>`` in ``metrics.csv``),

but that are never part of the total ``loss`` and never back-propagated.

Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class LossDict(dict):
    """A dict of named scalar losses plus ``monitor``: named values logged, never summed."""

    def __init__(
        self, losses: Mapping[str, Any] | None = None, monitor: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(losses or {})
        self.monitor: dict[str, Any] = dict(monitor or {})

    def __repr__(self) -> str:
        return f"LossDict({dict.__repr__(self)}, monitor={self.monitor!r})"


def monitor_values(outputs: Any) -> dict[str, Any]:
    """The ``monitor`` values of a model's training output (empty for a plain dict)."""
    if isinstance(outputs, dict):
        return dict(getattr(outputs, "monitor", None) or {})
    return {}
