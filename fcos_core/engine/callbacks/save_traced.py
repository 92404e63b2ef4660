"""``SaveTraced``: saves a deployable traced/exported model and proves it loads back.

At ``on_loop_end`` (rank 0) the loop's ``eval_model`` (the EMA copy when there is one) is put in
eval mode and called with random example inputs of the ``trace_inputs`` shapes (one input:
positionally; several: as keyword arguments). Then:

* ``method: jit`` -- ``torch.jit.trace`` -> ``<save_dir>/<prefix>traced.pt`` (load with
  ``torch.jit.load``);
* ``method: export`` -- ``torch.export.export`` -> ``<prefix>exported.pt2`` (load with
  ``torch.export.load(path).module()``); this is the form for quantized ``torch.fx``
  GraphModules that TorchScript cannot trace;
* ``method: auto`` -- export first (TorchScript is deprecated in torch 2.x), jit when export
  fails or the reloaded program disagrees.

The saved file is loaded back and run on the same inputs; outputs must match the live model
within ``atol``, otherwise the callback raises (a silently wrong deploy artifact is worse than
none).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from fcos_core.engine.callbacks.base import Callback, LoopView
from fcos_core.engine.modes import set_mode


def _flatten(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for k in sorted(value) for t in _flatten(value[k])]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flatten(v)]
    return []


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two nested outputs (inf if structures differ)."""
    fa, fb = _flatten(a), _flatten(b)
    if len(fa) != len(fb) or not fa:
        return float("inf")
    worst = 0.0
    for x, y in zip(fa, fb):
        if x.shape != y.shape:
            return float("inf")
        if x.numel():
            worst = max(worst, (x.float() - y.float()).abs().max().item())
    return worst


class SaveTraced(Callback):
    """See the module docstring."""

    def __init__(
        self,
        save_dir: str,
        trace_inputs: dict[str, Any],
        name_prefix: str | None = None,
        method: str = "auto",
        atol: float = 1e-5,
    ) -> None:
        if not trace_inputs:
            raise ValueError("trace_inputs needs at least one input name -> shape")
        for name, shape in trace_inputs.items():
            if not shape or any(int(d) < 1 for d in shape):
                raise ValueError(
                    f"trace_inputs[{name!r}] must be a shape of positive sizes, got {shape}"
                )
        if method not in ("auto", "jit", "export"):
            raise ValueError(f"method must be auto, jit or export, got {method!r}")
        self.save_dir = Path(save_dir)
        self.trace_inputs = {k: tuple(int(d) for d in v) for k, v in trace_inputs.items()}
        self.name_prefix = name_prefix
        self.method = method
        self.atol = atol
        self.saved: Path | None = None

    def example_inputs(self, device: Any) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        return {
            k: torch.randn(shape, generator=g).to(device) for k, shape in self.trace_inputs.items()
        }

    def on_loop_end(self, loop: LoopView) -> None:
        if loop.ctx is not None and loop.ctx.rank != 0:
            return
        prefix = self.name_prefix if self.name_prefix is not None else f"{loop.stage}-"
        self.saved = self.save(loop.eval_model, prefix, loop.device, loop.logger)

    def save(self, model: Any, prefix: str, device: Any, logger: Any = None) -> Path:
        """Trace/export ``model``, save it, reload and compare; returns the file."""
        set_mode(model, False)
        inputs = self.example_inputs(device)
        args = (next(iter(inputs.values())),) if len(inputs) == 1 else ()
        kwargs = {} if len(inputs) == 1 else inputs
        with torch.no_grad():
            reference = model(*args, **kwargs)
        self.save_dir.mkdir(parents=True, exist_ok=True)
        errors: list[str] = []
        tries = {"auto": ("export", "jit"), "jit": ("jit",), "export": ("export",)}[self.method]
        for how in tries:
            try:
                save = self._export if how == "export" else self._jit
                return save(model, args, kwargs, reference, prefix, logger)
            except Exception as exc:
                if len(tries) == 1:
                    raise
                errors.append(f"{how}: {type(exc).__name__}: {str(exc)[:300]}")
                if logger is not None:
                    logger.info("SaveTraced: falling back", failed=how, error=errors[-1])
        raise RuntimeError(
            "SaveTraced could not save a model that reloads with the same "
            "outputs: " + "; ".join(errors)
        )

    def _check(self, reference: Any, got: Any, path: Path, how: str, logger: Any) -> Path:
        diff = max_abs_diff(reference, got)
        if not diff <= self.atol:
            raise RuntimeError(
                f"{how}: the reloaded {path.name} differs from the model "
                f"(max abs diff {diff:.3g} > atol {self.atol})"
            )
        if logger is not None:
            logger.info("saved traced model", path=str(path), method=how, max_abs_diff=diff)
        return path

    def _jit(
        self, model: Any, args: tuple, kwargs: dict, reference: Any, prefix: str, logger: Any
    ) -> Path:
        path = self.save_dir / f"{prefix}traced.pt"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # jit's deprecation notices
            if kwargs:
                traced = torch.jit.trace(model, example_kwarg_inputs=kwargs, check_trace=False)
            else:
                traced = torch.jit.trace(model, args, check_trace=False)
            tmp = path.with_name(f".tmp-{path.name}")
            torch.jit.save(traced, str(tmp))
            tmp.replace(path)
            loaded = torch.jit.load(str(path), map_location=args[0].device if args else None)
            got = loaded(*args, **kwargs)
        return self._check(reference, got, path, "jit", logger)

    def _export(
        self, model: Any, args: tuple, kwargs: dict, reference: Any, prefix: str, logger: Any
    ) -> Path:
        path = self.save_dir / f"{prefix}exported.pt2"
        with torch.no_grad():
            program = torch.export.export(model, args, kwargs)
        tmp = path.with_name(f".tmp-{path.name}")
        torch.export.save(program, str(tmp))
        tmp.replace(path)
        loaded = torch.export.load(str(path)).module()
        with torch.no_grad():
            got = loaded(*args, **kwargs)
        return self._check(reference, got, path, "export", logger)
