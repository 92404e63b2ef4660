"""The ``compile`` stage: the quantized deploy model handed to the compile backend of ``march``.

Which model is compiled:

* when the config has an ``int_infer_trainer``: its ``model`` through its
  ``model_convert_pipeline`` -- exactly the quantized model of the int_infer stage, with the QAT
  checkpoint loaded where that pipeline's ``LoadCheckpoint`` says;
* otherwise ``deploy_model`` through ``deploy_model_convert_pipeline`` (a compile check; its
  weights are trained only if that pipeline loads a checkpoint, and the log says so).

The backend is ``cfg.compile_backend.load()()``; it is called as
``backend.compile(model, example_inputs, options, out_dir)`` with random example inputs of the
``deploy_inputs`` shapes, the ``compile_cfg`` options (without ``march``), and ``out_dir`` from
the options or ``<ckpt_dir>/compile``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fcos_core.errors import FcosUserError
from fcos_core.registry import KNOWN_PROVIDERS


def _march(cfg: Any) -> str | None:
    compile_cfg = cfg.data.get("compile_cfg") or {}
    return compile_cfg.get("march") or cfg.data.get("march")


def backend_entry(cfg: Any) -> Any:
    """The registry entry of the compile backend the config's ``march`` names; a clear error
    (naming the package to install) when there is none."""
    if cfg.compile_backend is not None:
        return cfg.compile_backend
    march = _march(cfg)
    if march is None:
        raise FcosUserError("the config names no compile target",
                            hint="set 'march' (and compile_cfg) in the config")
    dist = KNOWN_PROVIDERS.get(("compile_backends", str(march)))
    raise FcosUserError(
        f"no compile backend is registered for march {march!r}",
        hint=(f"pip install {dist}" if dist else
              "install the plugin that provides this march (see `fcos plugins`)"))


def _has_load_checkpoint(pipeline: Any) -> bool:
    return any(type(c).__name__ == "LoadCheckpoint" for c in getattr(pipeline, "converters", []))


def deploy_model(cfg: Any, ctx: Any) -> tuple[Any, str]:
    """The quantized model to compile and a phrase saying where it came from."""
    from fcos_core.build import build

    convert_ctx = ctx.convert_context("cpu")
    node = cfg.node("int_infer_trainer")
    if node is not None and node.kwargs.get("model") is not None:
        model = build(node.kwargs["model"])
        pipeline = build(node.kwargs.get("model_convert_pipeline"))
        source = "int_infer_trainer model and model_convert_pipeline"
    else:
        if cfg.node("deploy_model") is None:
            raise FcosUserError("the compile stage needs an int_infer_trainer or a deploy_model "
                                "block", hint="add deploy_model (and "
                                              "deploy_model_convert_pipeline) to the config")
        model = build(cfg.values["deploy_model"])
        pipeline = build(cfg.values.get("deploy_model_convert_pipeline"))
        source = "deploy_model and deploy_model_convert_pipeline"
        if not _has_load_checkpoint(pipeline):
            ctx.logger.warning("compiling deploy_model without trained weights: neither an "
                               "int_infer_trainer nor a LoadCheckpoint in "
                               "deploy_model_convert_pipeline", stage="compile")
    if pipeline is not None:
        model = pipeline(model, convert_ctx)
    from fcos_core.engine.modes import set_mode

    return set_mode(model, False), source


def run_compile_stage(cfg: Any, ctx: Any) -> dict[str, Any] | None:
    """Compile; returns ``{"out_dir", "result", "source", "metrics"}``, or None when the
    config has no ``compile_cfg`` (the stage is then skipped). The artifact's per-class
    results, when its metric has them, are in ``ctx.summary_extra["per_class"]``."""
    import torch

    if cfg.compile_backend is None and cfg.data.get("compile_cfg") is None \
            and _march(cfg) is None:
        return None
    entry = backend_entry(cfg)
    backend = entry.load()()
    model, source = deploy_model(cfg, ctx)
    g = torch.Generator().manual_seed(0)
    example_inputs = {k: torch.randn(tuple(shape), generator=g)
                      for k, shape in ctx.example_inputs.items()}
    options = dict(cfg.compile_options or {})
    out_dir = Path(options.get("out_dir") or Path(ctx.ckpt_dir) / "compile")
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx.logger.info("compiling", march=entry.name, backend=entry.provider, model=source,
                    out_dir=str(out_dir))
    result = backend.compile(model, example_inputs, options, out_dir)
    metrics = evaluate_artifact(cfg, ctx, backend, result)
    return {"out_dir": str(out_dir), "result": result, "source": source, "metrics": metrics}


def artifact_eval_nodes(cfg: Any) -> tuple[list[Any], Any]:
    """The data loader blocks and the metric block the compiled artifact is scored with: those
    of ``int_infer_predictor``, else ``val_data_loader`` + the first trainer's ``val_metrics``
    (qat, then float). Empty / None when the config names none."""
    node = cfg.node("int_infer_predictor")
    loaders: list[Any] = []
    metric_node = None
    if node is not None:
        loaders = node.kwargs.get("data_loader") or []
        loaders = loaders if isinstance(loaders, list) else [loaders]
        metric_node = node.kwargs.get("metrics")
    if not loaders and cfg.node("val_data_loader") is not None:
        loaders = [cfg.values["val_data_loader"]]
    if metric_node is None:
        for key in ("qat_trainer", "float_trainer"):
            trainer = cfg.node(key)
            if trainer is not None and trainer.kwargs.get("val_metrics") is not None:
                metric_node = trainer.kwargs["val_metrics"]
                break
    return loaders, metric_node


def score_artifact(backend: Any, program: Any, loaders: list[Any], metrics: list[Any],
                   ctx: Any) -> dict[str, float] | None:
    """Run the loaded artifact ``program`` on every batch of ``loaders`` with the backend's
    runtime and feed ``metrics``; their merged results, or None when the backend cannot
    decode detections."""
    from fcos_core.engine.progress import Progress, progress_enabled

    for m in metrics:
        m.reset()
    for loader in loaders:
        bar = Progress(len(loader), "compile eval", progress_enabled(ctx.rank))
        try:
            for batch in loader:
                dets = backend.detect(program, batch["img"])
                if dets is None:
                    return None
                for m in metrics:
                    m.update(batch, dets)
                bar.update()
        finally:
            bar.close()
    out: dict[str, float] = {}
    for m in metrics:
        out.update(m.compute())
    return out


def evaluate_artifact(cfg: Any, ctx: Any, backend: Any, result: Any) -> dict[str, float]:
    """COCO numbers of the compiled artifact itself, run by the backend's runtime on the data
    and metric of :func:`artifact_eval_nodes`. Empty when the backend cannot decode
    detections or the config names no evaluation data."""
    from fcos_core.build import build

    loaders, metric_node = artifact_eval_nodes(cfg)
    if not loaders or metric_node is None:
        ctx.logger.info("compile: no evaluation data/metric in the config; artifact not scored")
        return {}
    if not callable(getattr(backend, "detect", None)) or not callable(
            getattr(backend, "load", None)):
        ctx.logger.info("compile: the backend cannot run and decode its artifact; not scored")
        return {}
    program = backend.load(result.artifact)
    metrics = build(metric_node)
    metrics = metrics if isinstance(metrics, list) else [metrics]
    out = score_artifact(backend, program, [build(n) for n in loaders], metrics, ctx)
    if out is None:
        ctx.logger.info("compile: the backend cannot decode detections; artifact not scored")
        return {}
    ctx.logger.info("compiled artifact scored by its runtime", **{
        k: round(v, 4) for k, v in out.items() if k in ("mAP", "AP50")})
    from fcos_core.engine import per_class

    per_class.report(ctx, ctx.logger, "compile", per_class.collect(metrics), "artifact")
    return out
