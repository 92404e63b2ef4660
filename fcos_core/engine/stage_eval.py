"""The evaluation of one stage's model, as ``fcos run`` scores it, for ``fcos val``.

* ``float``, ``qat``, ``int_infer`` (any stage with a ``<stage>_predictor`` block): that
  predictor, exactly as the pipeline builds and runs it after the stage.
* A stage without a predictor (``calibration`` in the seed's configs): the stage trainer's
  ``model`` through its ``model_convert_pipeline``, then the stage's own checkpoint
  (``<ckpt_dir>/<stage>-checkpoint-best.pth.tar``) loaded into it -- the model its
  ``Validation`` callback scored -- evaluated on that callback's data loader (else
  ``val_data_loader``) with the trainer's ``val_metrics``. A calibration model gets its
  observers frozen, as the calibrator leaves it.
* ``compile``: the compiled artifact run by the backend's runtime (``backend.load`` /
  ``backend.detect``) on the data and metric the compile stage scores it with
  (:func:`fcos_core.engine.compile_stage.evaluate_artifact`).

``checkpoint`` replaces the weights: the path of the *last* ``LoadCheckpoint`` of the
predictor's ``model_convert_pipeline`` (for ``int_infer``: the QAT weights it converts), the
stage checkpoint of a stage without a predictor, or the artifact file for ``compile``.
``make_loader`` / ``make_metric`` build the data loader and metric blocks (default: as
configured); ``fcos val --data`` uses them to evaluate other data with the same transforms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from fcos_core.build import build
from fcos_core.errors import FcosUserError

EVAL_STAGES = ("float", "calibration", "qat", "int_infer", "compile")

Builder = Callable[[Any], Any]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


@attrs.define
class StageEvaluation:
    """What :func:`prepare` chose: run it with :meth:`run`; ``metrics`` are the metric
    objects (their state holds the evaluated predictions afterwards)."""

    stage: str
    source: str  # which blocks of the config, in words
    weights: str | None  # the checkpoint (or artifact) file loaded
    metrics: list[Any]
    loaders: list[Any]
    predictor: Any = None  # a Predictor (model stages)
    backend: Any = None  # the compile backend (compile)
    program: Any = None  # the loaded artifact (compile)

    def check_files(self) -> None:
        """Every checkpoint the evaluation will load exists (a clear error naming the stage
        that writes a missing one), checked before anything is written or run."""
        if self.predictor is None:
            return
        from fcos_core.engine.load_checkpoint import producer_hint

        for conv in _load_checkpoints(self.predictor.model_convert_pipeline):
            path = Path(conv.checkpoint_path)
            if not path.is_file():
                raise FcosUserError(
                    f"stage {self.stage}: checkpoint {str(path)!r} does not exist",
                    hint=producer_hint(path) + "; or pass --checkpoint PATH",
                )

    def run(self, ctx: Any) -> dict[str, float]:
        """Evaluate; returns the merged metric results."""
        if self.predictor is not None:
            return dict(self.predictor.run(ctx))
        from fcos_core.engine.compile_stage import score_artifact

        out = score_artifact(self.backend, self.program, self.loaders, self.metrics, ctx)
        if out is None:
            raise FcosUserError(
                "the compile backend could not decode detections from the artifact",
                hint="compile with a backend whose runtime implements detect()",
            )
        return out


def _load_checkpoints(pipeline: Any) -> list[Any]:
    return [c for c in getattr(pipeline, "converters", []) if type(c).__name__ == "LoadCheckpoint"]


class _FreezeCalibration:
    """Converter: fix a calibration model's ranges and switch fake-quant on, as the calibrator
    does after its last step (a no-op for other model forms)."""

    def __call__(self, model: Any, ctx: Any = None) -> Any:
        from fcos_core.quantization_state import get_qstate

        if get_qstate(model) == "calibration":
            from fcos_core.quantization.converters import freeze_observers

            freeze_observers(model)
        return model


def prepare(
    cfg: Any,
    stage: str,
    ctx: Any,
    checkpoint: str | None = None,
    make_loader: Builder = build,
    make_metric: Builder = build,
) -> StageEvaluation:
    """The evaluation of ``stage`` (see the module docstring); nothing is run yet (a
    compiled artifact is loaded). ``ctx`` is the :func:`stage_context` it will run with."""
    if stage not in EVAL_STAGES:
        raise FcosUserError(f"unknown stage {stage!r}", hint=f"use one of {', '.join(EVAL_STAGES)}")
    if stage == "compile":
        return _prepare_compile(cfg, checkpoint, make_loader, make_metric)
    node = cfg.node(f"{stage}_predictor")
    if node is not None:
        return _prepare_predictor(cfg, stage, node, checkpoint, make_loader, make_metric)
    return _prepare_from_trainer(cfg, stage, checkpoint, make_loader, make_metric)


def _prepare_predictor(
    cfg: Any,
    stage: str,
    node: Any,
    checkpoint: str | None,
    make_loader: Builder,
    make_metric: Builder,
) -> StageEvaluation:
    loaders = [make_loader(n) for n in _as_list(node.kwargs.get("data_loader"))]
    metrics = [make_metric(n) for n in _as_list(node.kwargs.get("metrics"))]
    # the predictor block itself, with the loaders and metrics built above (built objects
    # pass through build() unchanged)
    predictor = build(
        attrs.evolve(node, kwargs={**node.kwargs, "data_loader": loaders, "metrics": metrics})
    )
    loads = _load_checkpoints(predictor.model_convert_pipeline)
    if checkpoint is not None:
        if not loads:
            raise FcosUserError(
                f"--checkpoint: {stage}_predictor loads no checkpoint (no "
                "LoadCheckpoint in its model_convert_pipeline), so there is "
                "nothing to replace",
                hint="leave --checkpoint out, or add a "
                "LoadCheckpoint to the predictor's model_convert_pipeline",
            )
        loads[-1].checkpoint_path = Path(checkpoint)
    weights = str(loads[-1].checkpoint_path) if loads else None
    return StageEvaluation(
        stage=stage,
        source=f"{stage}_predictor",
        weights=weights,
        metrics=metrics,
        loaders=loaders,
        predictor=predictor,
    )


def _validation_node(trainer: Any) -> Any:
    for cb in _as_list(trainer.kwargs.get("callbacks")):
        if getattr(getattr(cb, "entry", None), "name", None) == "Validation":
            return cb
    return None


def _prepare_from_trainer(
    cfg: Any, stage: str, checkpoint: str | None, make_loader: Builder, make_metric: Builder
) -> StageEvaluation:
    from fcos_core.engine.convert_pipeline import ModelConvertPipeline
    from fcos_core.engine.load_checkpoint import LoadCheckpoint
    from fcos_core.engine.predictor import Predictor

    trainer = cfg.node(f"{stage}_trainer")
    if trainer is None or trainer.kwargs.get("model") is None:
        raise FcosUserError(
            f"the config has neither a {stage}_predictor nor a {stage}_trainer "
            f"with a model, so there is no model of stage {stage!r} to score",
            hint=f"add a {stage}_predictor block (see configs/fcos_b0_demo.yaml)",
        )
    val = _validation_node(trainer)
    loader_nodes = _as_list(val.kwargs.get("data_loader")) if val is not None else []
    if not loader_nodes and cfg.node("val_data_loader") is not None:
        loader_nodes = [cfg.values["val_data_loader"]]
    metric_nodes = _as_list(trainer.kwargs.get("val_metrics"))
    if not loader_nodes or not metric_nodes:
        raise FcosUserError(
            f"{stage}_trainer has no validation data or no val_metrics to "
            f"score stage {stage!r} with",
            hint=f"add a {stage}_predictor block, "
            "or a Validation callback and val_metrics to the trainer",
        )
    weights = (
        Path(checkpoint)
        if checkpoint
        else Path(cfg.data["ckpt_dir"]) / f"{stage}-checkpoint-best.pth.tar"
    )
    pipeline = build(trainer.kwargs.get("model_convert_pipeline"))
    converters = [
        *getattr(pipeline, "converters", []),
        LoadCheckpoint(str(weights)),
        _FreezeCalibration(),
    ]
    convert = ModelConvertPipeline(
        qat_mode=getattr(pipeline, "qat_mode", None), converters=converters
    )
    loaders = [make_loader(n) for n in loader_nodes]
    metrics = [make_metric(n) for n in metric_nodes]
    bp = val.kwargs.get("batch_processor") if val is not None else None
    callbacks = build(val.kwargs.get("callbacks")) if val is not None else []
    predictor = Predictor(
        model=build(trainer.kwargs["model"]),
        data_loader=loaders,
        model_convert_pipeline=convert,
        batch_processor=build(bp),
        device=trainer.kwargs.get("device"),
        metrics=metrics,
        callbacks=callbacks or [],
        log_interval=0,
    )
    return StageEvaluation(
        stage=stage,
        source=f"{stage}_trainer model and model_convert_pipeline + the stage's checkpoint",
        weights=str(weights),
        metrics=metrics,
        loaders=loaders,
        predictor=predictor,
    )


def _prepare_compile(
    cfg: Any, artifact: str | None, make_loader: Builder, make_metric: Builder
) -> StageEvaluation:
    from fcos_core.engine.compile_stage import artifact_eval_nodes, backend_entry

    entry = backend_entry(cfg)
    backend = entry.load()()
    loader_nodes, metric_node = artifact_eval_nodes(cfg)
    if not loader_nodes or metric_node is None:
        raise FcosUserError(
            "the config names no data or metric to score the compiled artifact with",
            hint="add int_infer_predictor (or val_data_loader and a trainer's val_metrics)",
        )
    if not callable(getattr(backend, "detect", None)) or not callable(
        getattr(backend, "load", None)
    ):
        raise FcosUserError(
            f"the compile backend {entry.name!r} cannot run its artifact and "
            "decode detections (no load/detect)",
            hint="score the int_infer stage instead",
        )
    path = Path(artifact) if artifact else default_artifact(cfg, backend)
    if path is None:
        raise FcosUserError(
            f"the compile backend {entry.name!r} does not say where its artifact is",
            hint="pass the artifact file with --checkpoint",
        )
    if not path.is_file():
        raise FcosUserError(
            f"compiled artifact {str(path)!r} does not exist",
            hint="run the compile stage first (`fcos run CONFIG --stage "
            "compile`), or pass the artifact file with --checkpoint",
        )
    program = backend.load(path)
    loaders = [make_loader(n) for n in loader_nodes]
    metrics = [make_metric(n) for n in _as_list(metric_node)]
    return StageEvaluation(
        stage="compile",
        source=f"artifact run by the {entry.name} runtime",
        weights=str(path),
        metrics=metrics,
        loaders=loaders,
        backend=backend,
        program=program,
    )


def default_artifact(cfg: Any, backend: Any) -> Path | None:
    """Where the compile stage of ``cfg`` writes its artifact (the backend's
    ``artifact_path``), or None when the backend does not say."""
    from fcos_core.engine.compile_stage import resolve_backend_options

    options, out_dir = resolve_backend_options(
        backend, cfg.compile_options, Path(cfg.data["ckpt_dir"]) / "compile"
    )
    where = getattr(backend, "artifact_path", None)
    path = where(options, out_dir) if callable(where) else None
    return Path(path) if path is not None else None


def stage_context(cfg: Any, stage: str, run_dir: Path | None, logger: Any) -> Any:
    """A :class:`RunContext` like the pipeline's for ``stage`` (seed, inputs, compile
    backend for the converters' rules); its recorder is off: ``fcos val`` writes no
    metrics.csv."""
    from fcos_core.engine.context import RunContext
    from fcos_core.engine.pipeline import make_backend
    from fcos_core.engine.recorder import MetricsRecorder

    data = cfg.data
    return RunContext(
        stage=stage,
        run_dir=run_dir,
        ckpt_dir=Path(data["ckpt_dir"]),
        logger=logger,
        seed=data.get("seed"),
        deterministic=bool(data.get("deterministic", False)),
        config=cfg,
        example_inputs=data.get("deploy_inputs") or {"img": [1, 3, 512, 512]},
        recorder=MetricsRecorder(None, enabled=False),
        backend=make_backend(cfg, logger),
        channels_last=bool(data.get("channels_last", True)),
    )


def parse_stage(stage: str) -> str:
    """``--stage`` of ``fcos val``: one stage name (a clear error otherwise)."""
    if stage in EVAL_STAGES:
        return stage
    import difflib

    near = difflib.get_close_matches(stage, EVAL_STAGES, n=1)
    raise FcosUserError(
        f"unknown stage {stage!r}; fcos val scores one of {', '.join(EVAL_STAGES)}",
        hint=f"did you mean {near[0]!r}?" if near else None,
    )


__all__: Sequence[str] = (
    "EVAL_STAGES",
    "StageEvaluation",
    "default_artifact",
    "parse_stage",
    "prepare",
    "stage_context",
)
