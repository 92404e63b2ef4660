"""What every loop (trainer, calibrator, predictor) shares: state, events, checkpoint dicts.

Checkpoint layout (``torch.load(weights_only=True)``-safe: tensors, numbers, strings, lists,
dicts; see :mod:`.checkpoint_io`)::

    format_version   1
    stage            the stage that wrote it
    qstate           float | calibration | qat | quantized (the model's form)
    state_dict       the weights to evaluate and to hand to the next stage (the EMA when used)
    train_state_dict the raw training weights (only when they differ from state_dict: EMA)
    optimizer        optimizer.state_dict() (None without an optimizer)
    batch_processor  e.g. the AMP gradient scaler
    callbacks        "<index>:<class>" -> that callback's state (LR updater, EMA, best metric...)
    epoch            the epoch to continue in (0-based)
    batch_in_epoch   batches of that epoch already done (the sampler position)
    global_step      optimizer steps done in this stage
    finished         the stage completed
    data_seed        the seed of the data order and augmentation
    rng              python/numpy/torch(/cuda) generator states
    metric           the monitored validation metric at this point (None without one)
    metrics          the last validation results (name -> float)
    world_size       processes of the run that wrote it
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch

from fcos_core.engine.callbacks.base import LoopView, callback_key, run_order
from fcos_core.engine.checkpoint_io import FORMAT_VERSION, load_file, rng_state, set_rng_state
from fcos_core.engine.device import resolve_device
from fcos_core.errors import FcosUserError
from fcos_core.quantization_state import get_qstate

_RESUME_HINT = (
    "--resume continues a run with the config that wrote its checkpoints: restore "
    "the model (and optimizer) settings of that run; to train the changed model, "
    "start a new run without --resume (another ckpt_dir / --run-dir, or --overwrite "
    "to replace these checkpoints)"
)


def _first(names: list[str], n: int = 10) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


@attrs.define
class LoopState:
    """Where a loop is; callbacks read it, checkpoints save it."""

    num_epochs: int = 0
    steps_per_epoch: int = 0
    epoch: int = 0  # current epoch, 0-based
    batch_in_epoch: int = 0  # batches of the current epoch done
    global_step: int = 0  # steps done in this loop
    last_losses: dict[str, float] = attrs.field(factory=dict)
    last_batch_size: int = 0
    lr: float | None = None
    val_results: dict[str, float] = attrs.field(factory=dict)
    val_count: int = 0  # validations run so far (lets Checkpoint see a new one)
    finished: bool = False
    stop_reason: str | None = None  # a callback ended training early (EarlyStopping)
    consistent: bool = True  # False while an optimizer step is half-applied
    rng_snapshot: Any = None  # generator states after the last finished step

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.steps_per_epoch


class Loop:
    """Base of trainers and evaluation loops: holds the model, fires callback events."""

    is_training: bool = False

    def __init__(
        self,
        model: Any,
        model_convert_pipeline: Any = None,
        callbacks: Any = (),
        device: str | None = None,
    ) -> None:
        if model is None:
            raise ValueError("model is required: give a model block (e.g. type: FCOS)")
        if device is not None:
            try:
                torch.device(device)
            except RuntimeError:
                raise ValueError(
                    f"device {device!r} is not a torch device; use cpu, cuda, cuda:N or null (auto)"
                ) from None
        self.model = model
        self.train_model = model
        self.model_convert_pipeline = model_convert_pipeline
        self.callbacks = list(callbacks or [])
        self._order = run_order(self.callbacks)
        self.requested_device = device
        self.ema_model: Any = None
        self.optimizer: Any = None
        self.batch_processor: Any = None
        self.data_loader: Any = None
        self.metrics: list[Any] = []
        self.val_metrics: list[Any] = []
        self.state = LoopState()
        self.ctx: Any = None
        self.results: dict[str, float] = {}

    # -- context ----------------------------------------------------------------------------

    @property
    def stage(self) -> str:
        return self.ctx.stage if self.ctx is not None else "?"

    @property
    def logger(self) -> Any:
        from fcos_core.logging_setup import get_logger

        return self.ctx.logger if self.ctx is not None else get_logger("fcos.engine")

    @property
    def eval_model(self) -> Any:
        """The weights to evaluate and save: the EMA copy when an EMA callback keeps one."""
        return self.ema_model if self.ema_model is not None else self.model

    def fire(self, event: str, *args: Any) -> None:
        for cb in self._order:
            getattr(cb, event)(self, *args)

    def prepare_model(self, ctx: Any) -> None:
        """Resolve the device, apply the converters, move the model there."""
        self.ctx = ctx
        requested = ctx.device if ctx.device is not None else self.requested_device
        try:
            self.device = resolve_device(requested, ctx.local_rank)
        except ValueError as exc:
            raise FcosUserError(str(exc), hint="set the trainer's device") from None
        model = self.model
        if self.model_convert_pipeline is not None:
            model = self.model_convert_pipeline(model, ctx.convert_context(str(self.device)))
        self.model = model.to(self.device)
        if get_qstate(self.model) != "float":
            # calibration, QAT, the integer model: exact float32 (no TF32) on CUDA
            from fcos_core.quantization.exact_float import require_exact_float32

            require_exact_float32(f"{self.stage} ({get_qstate(self.model)} model)")
        if getattr(ctx, "channels_last", False):
            # conv outputs follow the weights' format, so converting the model is enough
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_model = self.model

    @staticmethod
    def as_list(metrics: Any) -> list[Any]:
        if metrics is None:
            return []
        return list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint_dict(
        self, *, epoch_done: bool = False, interrupted: bool = False, metric: float | None = None
    ) -> dict[str, Any]:
        """The checkpoint of the current position (see the module docstring)."""
        st = self.state
        epoch, batch = st.epoch, st.batch_in_epoch
        if epoch_done and not st.finished:  # end-of-epoch work is done: continue at the next
            epoch, batch = epoch + 1, 0
        if st.finished:
            epoch, batch = st.num_epochs, 0
        ckpt: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "stage": self.stage,
            "qstate": get_qstate(self.model),
            "state_dict": self.eval_model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "batch_processor": (
                self.batch_processor.state_dict()
                if hasattr(self.batch_processor, "state_dict")
                else {}
            ),
            "callbacks": {
                callback_key(i, cb): cb.state_dict() for i, cb in enumerate(self.callbacks)
            },
            "epoch": int(epoch),
            "batch_in_epoch": int(batch),
            "global_step": int(st.global_step),
            "finished": bool(st.finished),
            "data_seed": int(getattr(self.data_loader, "seed", 0) or 0),
            "rng": rng_state(st.rng_snapshot if interrupted and st.rng_snapshot else None),
            "metric": None if metric is None else float(metric),
            "metrics": {k: float(v) for k, v in st.val_results.items()},
            "world_size": int(self.ctx.world_size if self.ctx is not None else 1),
        }
        if self.ema_model is not None:
            ckpt["train_state_dict"] = self.model.state_dict()
        return ckpt

    def default_last_path(self) -> Path:
        for cb in self.callbacks:
            if hasattr(cb, "last_path"):
                return cb.last_path(self)
        return Path(self.ctx.ckpt_dir) / f"{self.stage}-checkpoint-last.pth.tar"

    def strict_resume(self) -> bool:
        return any(getattr(cb, "strict_match", False) for cb in self.callbacks)

    def peek_resume(self) -> dict[str, Any] | None:
        """The ``last`` checkpoint to resume from (None when there is none or no --resume)."""
        if self.ctx is None or not self.ctx.resume:
            return None
        path = self.default_last_path()
        if not path.is_file():
            self.logger.info(
                "resume: no checkpoint yet, starting this stage from the beginning",
                stage=self.stage,
                looked_for=str(path),
            )
            return None
        ckpt = load_file(path)
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "epoch" not in ckpt:
            raise FcosUserError(
                f"{path} is not a checkpoint written by fcos's Checkpoint "
                "callback; it cannot be resumed from",
                hint="move it away, or run without --resume",
            )
        ckpt["_path"] = str(path)
        self._check_resume_fits(ckpt, path)
        return ckpt

    def _check_resume_fits(self, ckpt: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint whose tensors do not fit the model (exit 2 naming them), instead
        of load_state_dict's RuntimeError: --resume needs the model config that wrote it."""
        own = self.model.state_dict()
        strict = self.strict_resume()
        problems: list[str] = []
        for label in ("train_state_dict", "state_dict"):
            weights = ckpt.get(label)
            if not isinstance(weights, dict):
                continue
            mismatched = [
                f"{k} (checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)})"
                for k, v in weights.items()
                if isinstance(v, torch.Tensor)
                and isinstance(own.get(k), torch.Tensor)
                and v.shape != own[k].shape
            ]
            if mismatched:
                problems.append(
                    f"{len(mismatched)} tensor(s) of other shapes: {_first(mismatched)}"
                )
            if strict:  # the Checkpoint callback's strict_match: names must match too
                missing = [k for k in own if k not in weights]
                unexpected = [k for k in weights if k not in own]
                if missing:
                    problems.append(
                        f"{len(missing)} tensor(s) of the model not in the "
                        f"checkpoint: {_first(missing)}"
                    )
                if unexpected:
                    problems.append(
                        f"{len(unexpected)} tensor(s) of the checkpoint not in the "
                        f"model: {_first(unexpected)}"
                    )
            if problems:
                break
        if problems:
            raise FcosUserError(
                f"--resume of stage '{self.stage}': {path} does not fit the model, which has "
                "changed since the checkpoint was written: " + "; ".join(problems),
                hint=_RESUME_HINT,
            )

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Put the model, optimizer, callbacks, position and generators back (on resume)."""
        weights = ckpt.get("train_state_dict") or ckpt["state_dict"]
        missing, unexpected = self.model.load_state_dict(weights, strict=self.strict_resume())
        if missing or unexpected:
            self.logger.warning(
                "resume: the model and the checkpoint differ",
                missing=list(missing)[:10],
                unexpected=list(unexpected)[:10],
            )
        if self.optimizer is not None and ckpt.get("optimizer"):
            try:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError) as exc:  # other parameter groups or counts
                raise FcosUserError(
                    f"--resume of stage '{self.stage}': the optimizer state in "
                    f"{ckpt.get('_path')} does not fit this stage's optimizer ({exc}); the "
                    "model or the optimizer's params groups changed since it was written",
                    hint=_RESUME_HINT,
                ) from None
        if hasattr(self.batch_processor, "load_state_dict") and ckpt.get("batch_processor"):
            self.batch_processor.load_state_dict(ckpt["batch_processor"])
        saved = ckpt.get("callbacks") or {}
        for i, cb in enumerate(self.callbacks):
            key = callback_key(i, cb)
            if key not in saved:
                # the callback list changed since the save (one added or removed before this
                # one): a callback whose class is there exactly once is still unambiguous
                same = [k for k in saved if k.split(":", 1)[-1] == type(cb).__name__]
                mine = [c for c in self.callbacks if type(c) is type(cb)]
                if len(same) == 1 and len(mine) == 1:
                    self.logger.warning(
                        "resume: the callback moved in the list; restored by its class",
                        callback=key,
                        saved_as=same[0],
                    )
                    key = same[0]
            if key in saved:
                cb.load_state_dict(saved[key])
            elif cb.state_dict():
                self.logger.warning("resume: no saved state for this callback", callback=key)
        st = self.state
        st.epoch = int(ckpt["epoch"])
        st.batch_in_epoch = int(ckpt["batch_in_epoch"])
        st.global_step = int(ckpt["global_step"])
        st.val_results = dict(ckpt.get("metrics") or {})
        world = self.ctx.world_size if self.ctx is not None else 1
        if int(ckpt.get("world_size", 1)) != world and st.batch_in_epoch:
            self.logger.warning(
                "resume: the checkpoint was written with another number of "
                "processes; restarting its epoch from the first batch",
                saved=ckpt.get("world_size"),
                now=world,
            )
            st.global_step -= st.batch_in_epoch
            st.batch_in_epoch = 0
        if self.data_loader is not None and hasattr(self.data_loader, "set_seed"):
            self.data_loader.set_seed(int(ckpt.get("data_seed", 0)))
        if ckpt.get("rng"):
            set_rng_state(ckpt["rng"])
        if self.ctx is not None and self.ctx.recorder is not None:
            self.ctx.recorder.drop_after(self.stage, st.global_step)
        self.logger.info(
            "resumed",
            stage=self.stage,
            checkpoint=ckpt.get("_path"),
            epoch=st.epoch + 1,
            batch_in_epoch=st.batch_in_epoch,
            global_step=st.global_step,
        )


if TYPE_CHECKING:
    # mypy checks here that every loop is what callbacks are typed against
    _LOOP_IS_A_LOOP_VIEW: type[LoopView] = Loop
