"""fcos-core's built-in engine components, registered through the public hooks.

Torch-free: factories are import strings; schemas live in :mod:`fcos_core.engine.schemas`.
"""

from __future__ import annotations

from fcos_core.engine import schemas as s
from fcos_core.engine.callbacks.early_stopping_schema import EarlyStoppingArgs
from fcos_core.engine.callbacks.time_limit_schema import TimeLimitArgs
from fcos_core.engine.callbacks.training_health_schema import TrainingHealthArgs
from fcos_core.hooks import hookimpl

_E = "fcos_core.engine"


@hookimpl
def register_trainers(register):
    register("Trainer", factory=f"{_E}.trainer:Trainer", schema=s.TrainerArgs)
    register(
        "distributed_data_parallel_trainer",
        factory=f"{_E}.ddp_trainer:DistributedDataParallelTrainer",
        schema=s.DistributedTrainerArgs,
    )
    register("Calibrator", factory=f"{_E}.calibrator:Calibrator", schema=s.CalibratorArgs)
    register("Predictor", factory=f"{_E}.predictor:Predictor", schema=s.PredictorArgs)


@hookimpl
def register_callbacks(register):
    cb = f"{_E}.callbacks"
    register("StatsMonitor", factory=f"{cb}.stats_monitor:StatsMonitor", schema=s.StatsMonitorArgs)
    register("TensorBoard", factory=f"{cb}.tensorboard:TensorBoard", schema=s.TensorBoardArgs)
    register("Checkpoint", factory=f"{cb}.checkpoint:Checkpoint", schema=s.CheckpointArgs)
    register("Validation", factory=f"{cb}.validation:Validation", schema=s.ValidationArgs)
    register(
        "ExponentialMovingAverage",
        factory=f"{cb}.ema:ExponentialMovingAverage",
        schema=s.ExponentialMovingAverageArgs,
    )
    register("CosLrUpdater", factory=f"{cb}.lr_updaters:CosLrUpdater", schema=s.CosLrUpdaterArgs)
    register(
        "StepDecayLrUpdater",
        factory=f"{cb}.lr_updaters:StepDecayLrUpdater",
        schema=s.StepDecayLrUpdaterArgs,
    )
    register("SaveTraced", factory=f"{cb}.save_traced:SaveTraced", schema=s.SaveTracedArgs)
    register(
        "MetricUpdater", factory=f"{cb}.metric_updater:MetricUpdater", schema=s.MetricUpdaterArgs
    )
    register(
        "TrainingHealth", factory=f"{cb}.training_health:TrainingHealth", schema=TrainingHealthArgs
    )
    register(
        "EarlyStopping", factory=f"{cb}.early_stopping:EarlyStopping", schema=EarlyStoppingArgs
    )
    register("TimeLimit", factory=f"{cb}.time_limit:TimeLimit", schema=TimeLimitArgs)


@hookimpl
def register_batch_processors(register):
    register(
        "MultiBatchProcessor",
        factory=f"{_E}.batch_processor:MultiBatchProcessor",
        schema=s.MultiBatchProcessorArgs,
    )


@hookimpl
def register_functions(register):
    register(
        "collect_losses",
        factory=f"{_E}.functions:collect_losses",
        doc="outputs dict -> list of its loss tensors (the default loss_collector)",
        aliases=("loss_collector",),
    )
    register(
        "update_loss",
        factory=f"{_E}.functions:update_loss",
        doc="feed a training step's loss dict to the metrics (LossShow)",
    )
    register(
        "update_metric",
        factory=f"{_E}.functions:update_metric",
        doc="feed an evaluation step's batch and detections to the metrics",
    )


@hookimpl
def register_metrics(register):
    register("LossShow", factory=f"{_E}.loss_show:LossShow", schema=s.LossShowArgs)


@hookimpl
def register_optimizers(register):
    register("SGD", factory=f"{_E}.optimizers:SGD", schema=s.SGDArgs)
    register("AdamW", factory=f"{_E}.optimizers:AdamW", schema=s.AdamWArgs)
    register("Adam", factory=f"{_E}.optimizers:Adam", schema=s.AdamArgs)


@hookimpl
def register_converters(register):
    register(
        "ModelConvertPipeline",
        factory=f"{_E}.convert_pipeline:ModelConvertPipeline",
        schema=s.ModelConvertPipelineArgs,
    )
    register(
        "LoadCheckpoint",
        factory=f"{_E}.load_checkpoint:LoadCheckpoint",
        schema=s.LoadCheckpointArgs,
    )
