"""``LoadCheckpoint``: a converter that loads weights and says exactly what did not match.

Accepts a checkpoint written by the ``Checkpoint`` callback (its ``state_dict``, the EMA
weights when training used EMA) or a plain state dict. Keys are compared by name:

* *missing* (in the model, not in the file): an error unless ``allow_miss`` or not ``strict``;
* *unexpected* (in the file, not in the model): an error unless ``ignore_extra`` or not
  ``strict``;
* a shape mismatch is always an error.

The error lists the keys (the first 20) and, when the file was written by a model of another
quantization form (``qstate``), says which conversion to put before ``LoadCheckpoint``. A
missing file names the stage that writes it (``float-checkpoint-best.pth.tar`` comes from
stage ``float``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from fcos_core.engine.checkpoint_io import load_file
from fcos_core.errors import FcosUserError
from fcos_core.quantization_state import get_qstate

_STAGE_FILE = re.compile(r"^(?P<stage>[A-Za-z0-9_]+)-checkpoint-(last|best)\.pth\.tar$")
_LIST = 20


def _names(keys: list[str]) -> str:
    head = ", ".join(keys[:_LIST])
    return head + (f", ... ({len(keys) - _LIST} more)" if len(keys) > _LIST else "")


def producer_hint(path: Path) -> str:
    m = _STAGE_FILE.match(path.name)
    if m:
        stage = m.group("stage")
        return (
            f"this file is written by stage '{stage}': run `fcos run CONFIG --stage "
            f"{stage}` first (or --stage all), and check that its Checkpoint callback "
            f"saves to {path.parent}"
        )
    return "check checkpoint_path (a .pth.tar from a Checkpoint callback, or a state dict)"


class LoadCheckpoint:
    """Loads ``checkpoint_path`` into the model (see the module docstring)."""

    def __init__(
        self,
        checkpoint_path: str,
        strict: bool = True,
        ignore_extra: bool = False,
        allow_miss: bool = False,
        verbose: bool = False,
    ) -> None:
        if not checkpoint_path:
            raise ValueError("checkpoint_path is empty")
        self.checkpoint_path = Path(checkpoint_path)
        self.strict = strict
        self.ignore_extra = ignore_extra
        self.allow_miss = allow_miss
        self.verbose = verbose
        #: the last load's report: {"missing": [...], "unexpected": [...], "loaded": n}
        self.report: dict[str, Any] = {}

    def _read(self) -> tuple[dict[str, Any], str | None]:
        path = self.checkpoint_path
        if not path.is_file():
            raise FcosUserError(
                f"LoadCheckpoint: checkpoint {str(path)!r} does not exist", hint=producer_hint(path)
            )
        obj = load_file(path)
        qstate = None
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            qstate = obj.get("qstate")
            obj = obj["state_dict"]
        if (
            not isinstance(obj, dict)
            or not obj
            or not all(isinstance(k, str) for k in obj)
            or not any(isinstance(v, torch.Tensor) for v in obj.values())
        ):
            raise FcosUserError(
                f"LoadCheckpoint: {str(path)!r} holds no state dict (a mapping "
                "of names to tensors)",
                hint=producer_hint(path),
            )
        return obj, qstate

    def __call__(self, model: Any, ctx: Any = None) -> Any:
        state, file_qstate = self._read()
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mismatched = [
            f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
            for k in own
            if k in state
            and isinstance(state[k], torch.Tensor)
            and isinstance(own[k], torch.Tensor)
            and state[k].shape != own[k].shape
        ]
        self.report = {
            "missing": missing,
            "unexpected": unexpected,
            "mismatched": mismatched,
            "loaded": len(own) - len(missing),
        }
        allow_missing = self.allow_miss or not self.strict
        allow_unexpected = self.ignore_extra or not self.strict
        problems = []
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatch(es): {_names(mismatched)}")
        if missing and not allow_missing:
            problems.append(
                f"{len(missing)} missing key(s) (in the model, not in the file): {_names(missing)}"
            )
        if unexpected and not allow_unexpected:
            problems.append(
                f"{len(unexpected)} unexpected key(s) (in the file, not in the "
                f"model): {_names(unexpected)}"
            )
        if problems:
            model_qstate = get_qstate(model)
            hint = "set allow_miss / ignore_extra (or strict: false) if the difference is intended"
            if file_qstate and file_qstate != model_qstate:
                hint = (
                    f"the file was saved from a {file_qstate} model but the model is "
                    f"{model_qstate}: put the conversion to {file_qstate} before "
                    f"LoadCheckpoint in the converters list; or " + hint
                )
            raise FcosUserError(
                f"LoadCheckpoint {str(self.checkpoint_path)!r}: " + "; ".join(problems), hint=hint
            )
        model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        log = getattr(ctx, "logger", None)
        if log is not None:
            extra: dict[str, Any] = {"missing": len(missing), "unexpected": len(unexpected)}
            if self.verbose or len(missing) + len(unexpected) <= 10:
                extra.update(missing_keys=missing, unexpected_keys=unexpected)
            log.info(
                "loaded checkpoint",
                path=str(self.checkpoint_path),
                tensors=len(own) - len(missing),
                **extra,
            )
        return model
