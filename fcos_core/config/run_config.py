"""The top level of an fcos config file (the keys of HAT's config, as YAML)."""

from __future__ import annotations

from typing import Any

import attrs

from fcos_core.schema import arg, component

#: pipeline order; ``fcos run --stage all`` runs these in turn
STAGES: tuple[str, ...] = ("float", "calibration", "qat", "int_infer", "compile")


@attrs.frozen(kw_only=True)
class RunConfig:
    """An fcos run: the model, the data, one trainer per stage, predictors and compile settings."""

    task_name: str = arg(help="name of the task; the default run folder is runs/<task_name>")
    ckpt_dir: str = arg(help="where checkpoints, traced models and the compile output go")
    vars: dict[str, Any] = arg({}, help="free-form values and blocks to reuse through ${vars.x}")
    seed: int | None = arg(None, help="random seed (null: not seeded)")
    deterministic: bool = arg(False, help="use deterministic algorithms (exact resume)")
    log_rank_zero_only: bool = arg(True, help="in distributed runs, only rank 0 logs")
    cudnn_benchmark: bool = arg(True, help="set torch.backends.cudnn.benchmark on CUDA")
    num_threads: int | None = arg(None, help="torch intra-op threads (null: torch default)")
    dist_timeout_s: float = arg(
        1800.0,
        help="distributed runs: seconds a process waits in a collective for a silent "
        "peer before it stops with an error (a peer that exits is noticed at once)",
    )
    channels_last: bool = arg(
        True, help="channels-last memory format for the model (1.3-1.5x faster convolutions on CPU)"
    )
    march: str | None = arg(None, help="deployment target: the compile backend to use")
    model: Any = component("models", None, help="the training model (with targets and losses)")
    deploy_model: Any = component("models", None, help="the model that is quantized and compiled")
    deploy_inputs: dict[str, list[int]] = arg(
        {"img": [1, 3, 512, 512]}, help="input name -> shape used to trace/compile deploy_model"
    )
    deploy_model_convert_pipeline: Any = component(
        "converters", None, help="float -> quantized conversion used to check the deploy model"
    )
    data_loader: Any = component("data_loaders", None, help="training data")
    val_data_loader: Any = component("data_loaders", None, help="validation data")
    float_trainer: Any = component("trainers", None, help="stage 'float': float training")
    calibration_trainer: Any = component("trainers", None, help="stage 'calibration'")
    qat_trainer: Any = component("trainers", None, help="stage 'qat': quantization-aware training")
    int_infer_trainer: Any = component("trainers", None, help="stage 'int_infer': quantized model")
    float_predictor: Any = component("trainers", None, help="evaluates the float checkpoint")
    calibration_predictor: Any = component("trainers", None, help="evaluates calibration")
    qat_predictor: Any = component("trainers", None, help="evaluates the QAT checkpoint")
    int_infer_predictor: Any = component("trainers", None, help="evaluates the quantized model")
    compile_cfg: dict[str, Any] | None = arg(
        None, help="compile settings; 'march' picks the compile backend, the rest are its options"
    )
