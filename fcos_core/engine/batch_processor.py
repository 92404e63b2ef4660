"""``MultiBatchProcessor``: what a loop does with one batch.

Training (``need_grad_update: true``): zero the gradients; for each batch (a dict, or a list of
dicts from several loaders) run the model, collect the loss tensors, check every loss term is
finite, backward; clip the gradient norm when asked; step the optimizer once. The finiteness
check happens before ``backward``, so a NaN never reaches the parameters (BatchNorm running
statistics, updated by the forward pass itself, may be; the trainer then stops without saving).

A finite loss can still give a NaN or infinite gradient. After ``backward`` the total gradient
norm (the one clipping computes, else ``torch.nn.utils.get_total_norm``) is checked; when it is
not finite the optimizer step is skipped, the gradients are zeroed and ``last_step_skipped`` is
set -- the trainer then counts the step, does not fire ``on_step_end`` (no EMA update, no step
checkpoint) and stops after ``max_nonfinite_steps`` such steps in a row. With AMP's gradient
scaler (float16 on CUDA) the scaler skips those steps itself and they are not counted.

Evaluation (``need_grad_update: false``): the forward pass under ``torch.no_grad``.

``loop.state.last_losses`` gets each loss term, their sum ``loss``, and the output's logged-only
values (:class:`~fcos_core.models.loss_dict.LossDict` ``monitor``, e.g. ``centerness_floor``),
which are not in ``loss`` and not back-propagated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from fcos_core.engine.device import to_device
from fcos_core.engine.errors import NonFiniteLossError
from fcos_core.engine.functions import collect_losses
from fcos_core.models.loss_dict import monitor_values


def loss_terms(outputs: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Named scalar views of the loss tensors in a model's output dict."""
    terms: dict[str, torch.Tensor] = {}
    if isinstance(outputs, dict):
        for k, v in outputs.items():
            name = f"{prefix}{k}"
            if isinstance(v, torch.Tensor):
                terms[name] = v
            elif isinstance(v, (dict, list, tuple)):
                terms.update(loss_terms(v, f"{name}."))
    elif isinstance(outputs, (list, tuple)):
        for i, v in enumerate(outputs):
            terms.update(loss_terms(v, f"{prefix}{i}."))
    return terms


class MultiBatchProcessor:
    """Forward, loss check, backward and optimizer step of one step's batch(es).

    Args:
        need_grad_update: train (backward + optimizer step) or only evaluate.
        loss_collector: ``outputs -> list of loss tensors`` (default: every tensor in the dict).
        grad_clip_max_norm: clip the total gradient norm to this value (None: no clipping).
        amp: run the forward pass under ``torch.autocast``.
        amp_dtype: ``float16`` (with a gradient scaler on CUDA) or ``bfloat16``.
    """

    def __init__(
        self,
        need_grad_update: bool = True,
        loss_collector: Callable[[Any], list[Any]] | None = None,
        grad_clip_max_norm: float | None = None,
        amp: bool = False,
        amp_dtype: str = "float16",
    ) -> None:
        if grad_clip_max_norm is not None and not grad_clip_max_norm > 0:
            raise ValueError(f"grad_clip_max_norm must be > 0, got {grad_clip_max_norm}")
        if amp_dtype not in ("float16", "bfloat16"):
            raise ValueError(f"amp_dtype must be float16 or bfloat16, got {amp_dtype!r}")
        self.need_grad_update = need_grad_update
        self.loss_collector = loss_collector or collect_losses
        self.grad_clip_max_norm = grad_clip_max_norm
        self.amp = amp
        self.amp_dtype = getattr(torch, amp_dtype)
        self._scaler: Any = None
        self._scaler_state: dict[str, Any] | None = None
        #: the last training step's gradient was NaN/inf, so its optimizer step was skipped
        self.last_step_skipped = False
        self.last_grad_norm: float | None = None

    # -- helpers ----------------------------------------------------------------------------

    def _autocast(self, device: torch.device) -> Any:
        if not self.amp:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.amp_dtype)

    def _get_scaler(self, device: torch.device) -> Any:
        if not (self.amp and self.amp_dtype == torch.float16 and device.type == "cuda"):
            return None
        if self._scaler is None:
            self._scaler = torch.amp.GradScaler("cuda")
            if self._scaler_state:
                self._scaler.load_state_dict(self._scaler_state)
        return self._scaler

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self._scaler.state_dict()} if self._scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._scaler_state = state.get("scaler") or None
        if self._scaler is not None and self._scaler_state:
            self._scaler.load_state_dict(self._scaler_state)

    def _check_and_record(self, outputs: Any, loop: Any) -> None:
        terms = loss_terms(outputs)
        if not terms:
            return
        # logged-only values (LossDict.monitor, e.g. centerness_floor): recorded next to the
        # terms, but neither checked nor part of the total
        monitor = {
            k: v
            for k, v in monitor_values(outputs).items()
            if isinstance(v, torch.Tensor) and k not in terms and k != "loss"
        }
        # one device->host copy for all terms (a single synchronisation per step)
        values = torch.stack(
            [t.detach().float().sum() for t in [*terms.values(), *monitor.values()]]
        ).tolist()
        named = dict(zip(terms, values[: len(terms)]))
        extra = dict(zip(monitor, values[len(terms) :]))
        for name, value in named.items():
            if not math.isfinite(value):
                st = getattr(loop, "state", None)
                raise NonFiniteLossError(
                    getattr(loop, "stage", "?"),
                    getattr(st, "epoch", 0),
                    getattr(st, "global_step", -1) + 1,
                    name,
                    value,
                )
        if loop is not None and getattr(loop, "state", None) is not None:
            st = loop.state
            st.last_losses = {**named, "loss": sum(named.values()), **extra}

    # -- the step ---------------------------------------------------------------------------

    def __call__(
        self, model: Any, batch: Any, device: torch.device, optimizer: Any = None, loop: Any = None
    ) -> Any:
        many = (
            isinstance(batch, (list, tuple))
            and bool(batch)
            and all(isinstance(b, dict) for b in batch)
        )
        batches = list(batch) if many else [batch]
        batches = [to_device(b, device) for b in batches]
        if not self.need_grad_update:
            with torch.no_grad(), self._autocast(device):
                outs = [model(b) for b in batches]
            return outs if many else outs[0]
        if optimizer is None:
            raise RuntimeError(
                "MultiBatchProcessor with need_grad_update needs an optimizer; "
                "give the trainer an optimizer block"
            )
        scaler = self._get_scaler(device)
        optimizer.zero_grad(set_to_none=True)
        self.last_step_skipped = False
        outs = []
        for b in batches:
            with self._autocast(device):
                out = model(b)
            losses = self.loss_collector(out)
            if not losses:
                raise RuntimeError(
                    "the loss collector found no loss tensors in the model's "
                    "output; in train mode the model must return a dict of losses"
                )
            self._check_and_record(out, loop)
            total = sum(loss.sum() if loss.dim() else loss for loss in losses)
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            outs.append(out)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = None
        if self.grad_clip_max_norm is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip_max_norm)
        elif scaler is None and params:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        # the gradient scaler skips steps with inf/NaN gradients itself (and lowers its scale)
        if scaler is None and norm is not None and not bool(torch.isfinite(norm)):
            optimizer.zero_grad(set_to_none=True)
            self.last_step_skipped = True
            self.last_grad_norm = float(norm)
            return outs if many else outs[0]
        if loop is not None and getattr(loop, "state", None) is not None:
            loop.state.consistent = False  # weights change from here until the step's end
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return outs if many else outs[0]
