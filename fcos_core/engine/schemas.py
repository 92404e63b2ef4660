"""Argument schemas of the engine's components (trainers, callbacks, optimizers, converters).

Torch-free: ``fcos check`` validates a config against these without importing torch. Each
class documents one component; its fields are the factory's keyword arguments.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from fcos_core.schema import arg, component, component_list, named

# --- trainers -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class TrainerArgs:
    """Single-process training loop (``num_epochs: 0`` only converts, runs callbacks, saves)."""

    model: Any = component("models", help="the model to train (returns a dict of losses)")
    model_convert_pipeline: Any = component(
        "converters", None, help="conversions applied before training (e.g. LoadCheckpoint)"
    )
    data_loader: Any = component("data_loaders", None, help="training data (null: no training)")
    optimizer: Any = component(
        "optimizers", None, lazy=True, help="optimizer; built with the model's parameters"
    )
    batch_processor: Any = component(
        "batch_processors", None, help="forward/backward/step of one batch"
    )
    num_epochs: int = arg(help="number of epochs; 0 skips training")
    max_steps_per_epoch: int | None = arg(
        None,
        help="stop each epoch after this many steps (null: the whole data loader); "
        "e.g. a short QAT fine-tune",
    )
    max_nonfinite_steps: int = arg(
        10,
        help="a step whose gradient is NaN/inf is skipped (weights and EMA unchanged, "
        "counted in metrics.csv and summary.json); stop with an error after this "
        "many such steps in a row",
    )
    min_total_steps: int | None = arg(
        None,
        help="train at least this many steps: num_epochs is raised when its epochs (capped "
        "by max_steps_per_epoch) are fewer, e.g. a QAT fine-tune on a small data set",
    )
    lr_base_batch_size: int | None = arg(
        None,
        help="linear lr scaling (mmdet's auto_scale_lr): the optimizer's lr is the lr at "
        "this total batch size and is multiplied by (batch size x processes) / this; "
        "null: the lr is used as written",
    )
    device: str | None = arg(None, help="torch device; null: cuda when present, else cpu")
    callbacks: list[Any] = component_list("callbacks", help="callbacks, run in this order")
    train_metrics: Any = component("metrics", None, help="metrics of the training loop (LossShow)")
    val_metrics: Any = component("metrics", None, help="metrics the Validation callback computes")


@attrs.frozen(kw_only=True)
class DistributedTrainerArgs(TrainerArgs):
    """Data-parallel training (torch DDP; gloo on CPU, nccl on GPU), launched by torchrun."""

    sync_bn: bool = arg(False, help="synchronise BatchNorm statistics across processes")
    find_unused_parameters: bool = arg(False, help="DDP's find_unused_parameters")


@attrs.frozen(kw_only=True)
class CalibratorArgs:
    """Runs a calibration model over ``num_steps`` batches without gradients."""

    model: Any = component("models", help="the model to calibrate")
    model_convert_pipeline: Any = component(
        "converters", None, help="e.g. LoadCheckpoint(float) then Float2Calibration"
    )
    data_loader: Any = component("data_loaders", help="calibration data (no sampler needed)")
    batch_processor: Any = component(
        "batch_processors", None, help="forward of one batch (need_grad_update: false)"
    )
    num_steps: int = arg(help="number of calibration batches")
    device: str | None = arg(None, help="torch device; null: cuda when present, else cpu")
    callbacks: list[Any] = component_list("callbacks", help="callbacks, run in this order")
    val_metrics: Any = component("metrics", None, help="metrics the Validation callback computes")
    log_interval: int = arg(1, help="log every this many steps (0: never)")
    bias_correction_images: int = arg(
        0,
        help="correct the conv biases so the quantized means equal the float ones, measured "
        "on this many calibration images (0: off; docs/quantization.md, 'Bias correction')",
    )


@attrs.frozen(kw_only=True)
class PredictorArgs:
    """Evaluates a model over one or more data loaders and computes metrics."""

    model: Any = component("models", help="the model to evaluate")
    model_convert_pipeline: Any = component(
        "converters", None, help="conversions before evaluation (e.g. LoadCheckpoint)"
    )
    data_loader: list[Any] = component_list("data_loaders", help="data loaders, evaluated in turn")
    batch_processor: Any = component("batch_processors", None, help="forward of one batch")
    device: str | None = arg(None, help="torch device; null: cuda when present, else cpu")
    metrics: Any = component("metrics", None, help="metric to compute (e.g. COCODetectionMetric)")
    callbacks: list[Any] = component_list("callbacks", help="callbacks (e.g. MetricUpdater)")
    log_interval: int = arg(50, help="log progress every this many batches (0: never)")


# --- batch processing, functions, metrics ------------------------------------------------------


@attrs.frozen(kw_only=True)
class MultiBatchProcessorArgs:
    """Forward (and with need_grad_update: backward and optimizer step) of one or more batches."""

    need_grad_update: bool = arg(True, help="compute gradients and step the optimizer")
    loss_collector: Any = named(
        "functions", None, help="outputs -> list of loss tensors (default: collect_losses)"
    )
    grad_clip_max_norm: float | None = arg(None, help="clip the gradient norm to this value")
    amp: bool = arg(False, help="automatic mixed precision (autocast) for the forward pass")
    amp_dtype: Literal["float16", "bfloat16"] = arg(
        "float16", help="autocast dtype; float16 on CUDA uses a gradient scaler"
    )


@attrs.frozen(kw_only=True)
class LossShowArgs:
    """Running averages of each loss term of the training loop."""


# --- callbacks -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StatsMonitorArgs:
    """Logs step time, throughput, ETA, learning rate and the loss terms periodically."""

    log_freq: int = arg(1, help="log every this many steps")


@attrs.frozen(kw_only=True)
class TensorBoardArgs:
    """Writes loss terms, learning rate, validation metrics and detection images for
    TensorBoard (needs the optional tensorboard package)."""

    log_dir: str | None = arg(None, help="event folder (null: <run folder>/tensorboard)")
    log_freq: int = arg(10, help="write the loss terms and learning rate every this many steps")
    num_images: int = arg(4, help="training images drawn with detections per epoch (0: none)")
    score_threshold: float = arg(0.3, help="draw detections scoring at least this")
    mean: float = arg(128.0, help="the Normalize mean the images went through")
    std: float = arg(128.0, help="the Normalize std the images went through")
    to_yuv: bool = arg(True, help="the images are YUV (ToTensor(to_yuv=True)); shown as RGB")


@attrs.frozen(kw_only=True)
class CheckpointArgs:
    """Saves ``<prefix>checkpoint-last.pth.tar`` and ``-best.pth.tar`` atomically."""

    save_dir: str = arg(help="folder of the checkpoints (usually the config's ckpt_dir)")
    name_prefix: str | None = arg(None, help="file name prefix; null: '<stage>-'")
    save_interval: int = arg(1, help="save every this many epochs")
    save_interval_steps: int | None = arg(
        None, help="also save 'last' every this many steps (exact mid-epoch resume)"
    )
    strict_match: bool = arg(False, help="on --resume, the model must match the checkpoint exactly")
    mode: Literal["max", "min"] = arg("max", help="whether a larger or a smaller metric is better")
    monitor_metric_key: str | None = arg(
        None, help="validation metric that picks 'best' (null: the last save is the best)"
    )
    save_last: bool = arg(True, help="write the 'last' checkpoint")
    keep_best: bool = arg(True, help="write the 'best' checkpoint")


@attrs.frozen(kw_only=True)
class ValidationArgs:
    """Evaluates the model (its EMA when present) during and at the end of training."""

    data_loader: Any = component("data_loaders", help="validation data")
    batch_processor: Any = component("batch_processors", None, help="forward of one batch")
    callbacks: list[Any] = component_list("callbacks", help="callbacks of the validation loop")
    val_model: Any = component(
        "models", None, help="a separate model to validate (null: the training model)"
    )
    init_with_train_model: bool = arg(
        False, help="copy the training weights into val_model before each validation"
    )
    val_interval: int = arg(1, help="validate every this many epochs")
    val_on_train_end: bool = arg(True, help="validate when training ends")
    log_interval: int = arg(0, help="log progress every this many batches (0: never)")
    val_on_train_begin: bool = arg(
        False,
        help="also validate the starting weights before the "
        "first step (not on --resume); with a Checkpoint "
        "on the metric, a fine-tune that never beats "
        "them keeps them as best",
    )


@attrs.frozen(kw_only=True)
class ExponentialMovingAverageArgs:
    """Keeps an exponential moving average of the weights; validation and checkpoints use it."""

    decay: float = arg(0.9998, help="final decay of the average")
    ramp_steps: float = arg(2000.0, help="decay = decay * (1 - exp(-updates / ramp_steps))")


@attrs.frozen(kw_only=True)
class CosLrUpdaterArgs:
    """Linear warm-up, then cosine decay of every parameter group's learning rate."""

    warmup_len: int = arg(0, help="length of the warm-up, in units of warmup_by")
    warmup_by: Literal["epoch", "step"] = arg("epoch", help="unit of warmup_len")
    warmup_start_ratio: float = arg(0.1, help="warm-up starts at this fraction of the lr")
    min_warmup_steps: int = arg(
        0,
        help="floor on the warm-up length in steps; when warmup_len is shorter, the warm-up "
        "ramps linearly per step over this many steps (on a small data set one epoch "
        "is only a few steps)",
    )
    min_lr_ratio: float = arg(0.0, help="final lr as a fraction of each group's initial lr")
    step_log_interval: int = arg(1, help="log the lr every this many steps (0: never)")


@attrs.frozen(kw_only=True)
class StepDecayLrUpdaterArgs:
    """Multiplies the learning rate by lr_decay_factor at the given epochs."""

    lr_decay_id: list[int] = arg(help="epochs (0-based) at which the lr decays")
    lr_decay_factor: float = arg(0.1, help="factor applied at each decay epoch")
    step_log_interval: int = arg(1, help="log the lr every this many steps (0: never)")


@attrs.frozen(kw_only=True)
class SaveTracedArgs:
    """Saves a traced/exported model that loads back and gives the same outputs."""

    save_dir: str = arg(help="output folder (usually the config's ckpt_dir)")
    trace_inputs: dict[str, list[int]] = arg(help="input name -> shape of the example input")
    name_prefix: str | None = arg(None, help="file name prefix; null: '<stage>-'")
    method: Literal["auto", "jit", "export"] = arg(
        "auto", help="torch.jit.trace, torch.export, or jit with export as the fallback"
    )
    atol: float = arg(1e-5, help="tolerance of the reload check")


@attrs.frozen(kw_only=True)
class MetricUpdaterArgs:
    """Feeds each batch's outputs to the loop's metrics and logs them."""

    metric_update_func: Any = named("functions", help="(metrics, batch, outputs) -> None")
    step_log_freq: int = arg(1, help="log the metrics every this many steps (0: never)")
    epoch_log_freq: int = arg(1, help="log the metrics every this many epochs (0: never)")
    log_prefix: str = arg("", help="text in front of the logged metrics")


# --- optimizers ------------------------------------------------------------------------------

_PARAMS_HELP = (
    "per-parameter-group options: a key selects the parameters whose name is the "
    "key or ends with '.<key>' (first matching key wins)"
)


@attrs.frozen(kw_only=True)
class SGDArgs:
    """Stochastic gradient descent (with momentum / Nesterov) and per-group options."""

    lr: float = arg(help="learning rate")
    momentum: float = arg(0.0, help="momentum factor")
    dampening: float = arg(0.0, help="dampening for momentum")
    nesterov: bool = arg(False, help="Nesterov momentum (needs momentum > 0, dampening 0)")
    weight_decay: float = arg(0.0, help="L2 penalty of parameters no 'params' key selects")
    params: dict[str, dict[str, Any]] = arg({}, help=_PARAMS_HELP)


@attrs.frozen(kw_only=True)
class AdamWArgs:
    """AdamW (decoupled weight decay) and per-group options."""

    lr: float = arg(1e-3, help="learning rate")
    betas: tuple[float, float] = arg((0.9, 0.999), help="running-average coefficients")
    eps: float = arg(1e-8, help="term added to the denominator")
    weight_decay: float = arg(0.01, help="decoupled weight decay")
    amsgrad: bool = arg(False, help="use the AMSGrad variant")
    params: dict[str, dict[str, Any]] = arg({}, help=_PARAMS_HELP)


@attrs.frozen(kw_only=True)
class AdamArgs:
    """Adam and per-group options."""

    lr: float = arg(1e-3, help="learning rate")
    betas: tuple[float, float] = arg((0.9, 0.999), help="running-average coefficients")
    eps: float = arg(1e-8, help="term added to the denominator")
    weight_decay: float = arg(0.0, help="L2 penalty")
    amsgrad: bool = arg(False, help="use the AMSGrad variant")
    params: dict[str, dict[str, Any]] = arg({}, help=_PARAMS_HELP)


# --- converters ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ModelConvertPipelineArgs:
    """Applies converters in order, checking the quantization order (float->qat->quantized)."""

    qat_mode: str | None = arg(None, help="how QAT treats BatchNorm (e.g. fuse_bn)")
    converters: list[Any] = component_list("converters", help="converters, applied in order")


@attrs.frozen(kw_only=True)
class LoadCheckpointArgs:
    """Loads weights from a checkpoint, reporting missing and unexpected keys by name."""

    checkpoint_path: str = arg(help="a .pth.tar written by a Checkpoint callback, or a state dict")
    strict: bool = arg(True, help="false: allow both missing and unexpected keys")
    ignore_extra: bool = arg(False, help="allow keys the model does not have")
    allow_miss: bool = arg(False, help="allow model keys the checkpoint does not have")
    verbose: bool = arg(False, help="log every missing/unexpected key, not only a summary")
