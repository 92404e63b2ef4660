"""The ``compile`` stage: the quantized deploy model handed to the compile backend of ``march``.

Which model is compiled:

* when the config has an ``int_infer_trainer``: its ``model`` through its
  ``model_convert_pipeline`` -- exactly the quantized model of the int_infer stage, with the QAT
  checkpoint loaded where that pipeline's ``LoadCheckpoint`` says;
* otherwise ``deploy_model`` through ``deploy_model_convert_pipeline`` (a compile check; its
  weights are trained only if that pipeline loads a checkpoint, and the log says so).

The backend is ``cfg.compile_backend.load()()``; the ``compile_cfg`` options are resolved once
into its options object (``backend.resolve_options``: an instance of the backend's attrs
schema; ``out_dir`` from the options or ``<ckpt_dir>/compile``), and it is called as
``backend.compile(model, example_inputs, options, out_dir)`` with random example inputs of the
``deploy_inputs`` shapes. A duck-typed backend without ``resolve_options`` gets the validated
``compile_cfg`` mapping (without ``march`` and fcos core's keys).

After compiling, the artifact is checked through the backend contract alone
(:mod:`fcos_core.compile.deploy_table`): its runtime against the integer model on validation
images (agreement in quantization steps; beyond one step on more than 0.1 % of the codes fails
the stage unless ``compile_cfg.allow_disagreement``), batch-1 latency, and COCO mAP through
``backend.detect`` next to the integer model's -- one table, printed, in summary.json and in
``<run_dir>/deploy_table.csv``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fcos_core.errors import FcosUserError
from fcos_core.registry import KNOWN_PROVIDERS

#: when this process started running stages (the pipeline imports this module first): a
#: summary.json written since is this invocation's, evaluated on this invocation's data
_STARTED = time.time()


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
        raise FcosUserError(
            "the config names no compile target", hint="set 'march' (and compile_cfg) in the config"
        )
    dist = KNOWN_PROVIDERS.get(("compile_backends", str(march)))
    raise FcosUserError(
        f"no compile backend is registered for march {march!r}",
        hint=(
            f"pip install {dist}"
            if dist
            else "install the plugin that provides this march (see `fcos plugins`)"
        ),
    )


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
            raise FcosUserError(
                "the compile stage needs an int_infer_trainer or a deploy_model block",
                hint="add deploy_model (and deploy_model_convert_pipeline) to the config",
            )
        model = build(cfg.values["deploy_model"])
        pipeline = build(cfg.values.get("deploy_model_convert_pipeline"))
        source = "deploy_model and deploy_model_convert_pipeline"
        if not _has_load_checkpoint(pipeline):
            ctx.logger.warning(
                "compiling deploy_model without trained weights: neither an "
                "int_infer_trainer nor a LoadCheckpoint in "
                "deploy_model_convert_pipeline",
                stage="compile",
            )
    if pipeline is not None:
        model = pipeline(model, convert_ctx)
    from fcos_core.engine.modes import set_mode

    return set_mode(model, False), source


def run_compile_stage(cfg: Any, ctx: Any) -> dict[str, Any] | None:
    """Compile, then check the artifact (:mod:`fcos_core.compile.deploy_table`): agreement with
    the integer model, latency, and mAP through the artifact's runtime next to the integer
    model's, printed as one table, stored in ``ctx.summary_extra["deploy_table"]`` (the stage's
    summary.json record) and as ``deploy_table.csv`` in the run folder.

    Returns ``{"out_dir", "result", "source", "metrics", "deploy_table"}``, or None when the
    config has no ``compile_cfg`` (the stage is then skipped). The artifact's per-class
    results, when its metric has them, are in ``ctx.summary_extra["per_class"]``. An artifact
    that disagrees with the integer model beyond one step on more than 0.1 % of its output
    codes fails the stage (:class:`FcosUserError`) unless ``compile_cfg.allow_disagreement``."""
    import torch

    from fcos_core.compile.deploy_table import check_options

    if cfg.compile_backend is None and cfg.data.get("compile_cfg") is None and _march(cfg) is None:
        return None
    entry = backend_entry(cfg)
    backend = entry.load()()
    check = check_options(cfg.data.get("compile_cfg"))
    model, source = deploy_model(cfg, ctx)
    g = torch.Generator().manual_seed(0)
    example_inputs = {
        k: torch.randn(tuple(shape), generator=g) for k, shape in ctx.example_inputs.items()
    }
    options, out_dir = resolve_backend_options(
        backend, cfg.compile_options, Path(ctx.ckpt_dir) / "compile"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx.logger.info(
        "compiling", march=entry.name, backend=entry.provider, model=source, out_dir=str(out_dir)
    )
    result = backend.compile(model, example_inputs, options, out_dir)
    program = _load_artifact(backend, result)

    agreement = latency = model_latency = None
    inputs = ""
    if program is not None and len(ctx.example_inputs) == 1:
        agreement, latency, model_latency, inputs = _check_artifact(
            cfg, ctx, backend, program, model, options, check
        )
        _enforce_agreement(
            ctx,
            entry.name,
            agreement,
            inputs,
            result,
            check,
            lambda: _table(
                cfg,
                ctx,
                entry.name,
                source,
                model,
                result,
                None,
                agreement,
                latency,
                model_latency,
                inputs,
                score_int=False,
            ),
        )
    elif program is None:
        ctx.logger.info(
            "compile: the backend cannot load and run its artifact here; no "
            "agreement or latency check"
        )

    metrics = evaluate_artifact(cfg, ctx, backend, result, program)
    table = _table(
        cfg,
        ctx,
        entry.name,
        source,
        model,
        result,
        metrics,
        agreement,
        latency,
        model_latency,
        inputs,
        score_int=True,
    )
    return {
        "out_dir": str(out_dir),
        "result": result,
        "source": source,
        "metrics": metrics,
        "deploy_table": table,
    }


def resolve_backend_options(
    backend: Any, compile_options: Mapping[str, Any] | None, default_out_dir: Path
) -> tuple[Any, Path]:
    """``(options, out_dir)`` for one compile: the backend's options object
    (:meth:`~fcos_core.compile.backend.CompileBackend.resolve_options`, ``out_dir`` falling back
    to ``default_out_dir``), or -- for a duck-typed backend without ``resolve_options`` -- the
    validated ``compile_cfg`` mapping as it is."""
    raw = dict(compile_options or {})
    resolve = getattr(backend, "resolve_options", None)
    if not callable(resolve):
        return raw, Path(raw.get("out_dir") or default_out_dir)
    options = resolve(raw, default_out_dir)
    where = _option(options, "out_dir")
    return options, Path(where) if where else default_out_dir


def _option(options: Any, name: str, default: Any = None) -> Any:
    """One backend option from an options object (or a duck-typed backend's mapping)."""
    if isinstance(options, Mapping):
        return options.get(name, default)
    return getattr(options, name, default)


def _check_artifact(
    cfg: Any,
    ctx: Any,
    backend: Any,
    program: Any,
    model: Any,
    options: Any,
    check: dict[str, Any],
) -> tuple[dict[str, Any], Any, Any, str]:
    """Agreement of ``program`` with the integer ``model`` on validation images (else the
    example input), and both one's batch-1 latency: ``(agreement, artifact latency, integer
    model latency, what the inputs were)``."""
    import torch

    from fcos_core.build import build
    from fcos_core.compile.backend import example_image_tensor
    from fcos_core.compile.deploy_table import (
        comparison_images,
        feed_pair,
        measure_agreement,
        measure_runtime,
        thread_budget,
    )

    name = next(iter(ctx.example_inputs))
    example = example_image_tensor({name: ctx.example_inputs[name]})
    pyramid = list(_option(options, "input_source") or ["ddr"]) == ["pyramid"]
    loader_nodes, _ = artifact_eval_nodes(cfg)
    loaders = [build(n) for n in loader_nodes[:1]] if check["check_images"] else []
    images, inputs = comparison_images(loaders, example, max(1, check["check_images"]))
    agreement = measure_agreement(backend, program, model, images, name, pyramid)
    feed, model_in = feed_pair(images[0], pyramid)
    runs, warmup = check["timing_runs"], check["timing_warmup"]
    latency = measure_runtime(
        lambda: backend.run(program, {name: feed}), runs, warmup, thread_budget(program)
    )
    with torch.no_grad():
        model_latency = measure_runtime(
            lambda: model(model_in), runs, warmup, torch.get_num_threads()
        )
    ctx.logger.info(
        "artifact vs integer model",
        inputs=inputs,
        within_0=round(agreement.get("within_0", 1.0), 6),
        within_1=round(agreement.get("within_1", 1.0), 6),
        max_steps=agreement.get("max_steps"),
        worst_output=agreement.get("worst_output"),
    )
    return agreement, latency, model_latency, inputs


def _load_artifact(backend: Any, result: Any) -> Any:
    """The loaded artifact (``backend.load``), or None when the backend has no
    ``load``/``run`` or returned no artifact path."""
    artifact = getattr(result, "artifact", None)
    if (
        artifact is None
        or not callable(getattr(backend, "load", None))
        or not callable(getattr(backend, "run", None))
    ):
        return None
    return backend.load(artifact)


def _enforce_agreement(
    ctx: Any,
    march: str,
    agreement: dict[str, Any],
    inputs: str,
    result: Any,
    check: dict[str, Any],
    write_table: Any,
) -> None:
    """The rule of :func:`fcos_core.compile.agreement.disagreement` for every backend: a
    user error naming the outputs (the table is written first, for inspection), or a
    warning with ``allow_disagreement``."""
    from fcos_core.compile.agreement import disagreement

    problem = disagreement(agreement)
    if problem is None:
        return
    where = f"artifact {result.artifact}, compared on {inputs}"
    if not check["allow_disagreement"]:
        write_table()
        raise FcosUserError(
            f"compile (march {march}): the artifact's runtime disagrees with the fcos integer "
            f"model beyond one quantization step: {problem}; {where}",
            hint="the export or the runtime computes these outputs differently from the "
            "integer model (see docs/deployment.md, 'One deploy table', for the usual "
            "causes, e.g. march onnx: compile_cfg.requantization: integer); to keep the "
            "artifact anyway set compile_cfg.allow_disagreement: true or run `fcos "
            "compile CONFIG --allow-disagreement`",
        )
    ctx.logger.warning(
        f"the artifact's runtime disagrees with the fcos integer model beyond "
        f"one quantization step: {problem}; {where} (kept: "
        f"compile_cfg.allow_disagreement is true)",
        stage="compile",
    )


def _table(
    cfg: Any,
    ctx: Any,
    march: str,
    source: str,
    model: Any,
    result: Any,
    metrics: dict[str, float] | None,
    agreement: dict[str, Any] | None,
    latency: dict[str, Any] | None,
    model_latency: dict[str, Any] | None,
    inputs: str,
    score_int: bool,
) -> dict[str, Any]:
    """Build, print and store the deploy table (summary_extra + deploy_table.csv)."""
    from fcos_core.compile.deploy_table import format_table, reference_label, table_row, write_csv

    int_metrics, int_from = (
        integer_model_metrics(cfg, ctx, source, model) if score_int else (None, "not scored")
    )
    artifact = str(getattr(result, "artifact", "") or "")
    rows = [
        table_row(reference_label(march), int_metrics, None, model_latency, "", int_from),
        table_row(march, metrics, agreement, latency, artifact, inputs),
    ]
    text = format_table(rows)
    on = inputs or "no inputs: the backend cannot load and run its artifact here"
    print(
        f"deploy table (agreement in quantization steps vs the integer model, on {on}; "
        f"latency at batch 1):\n{text}",
        flush=True,
    )
    ctx.logger.info("deploy table", table="\n" + text)
    table: dict[str, Any] = {
        "rows": rows,
        "agreement": agreement,
        "latency": latency,
        "integer_model_latency": model_latency,
        "integer_model_metrics_from": int_from,
    }
    if ctx.run_dir is not None:
        table["csv"] = str(write_csv(Path(ctx.run_dir) / "deploy_table.csv", rows))
    ctx.summary_extra["deploy_table"] = table
    return table


def integer_model_metrics(
    cfg: Any, ctx: Any, source: str, model: Any
) -> tuple[dict[str, float] | None, str]:
    """The integer model's COCO numbers for the table and where they come from: the int_infer
    stage's (summary.json) when that stage ran in this invocation (same config, overrides and
    data: ``fcos run --stage all``) and the compiled model is exactly its model (its
    checkpoint holds the same tensors -- a model rebuilt for another ``march`` does not); else
    ``model`` (the compiled integer model, in torch) scored here on the artifact's evaluation
    data, its outputs dequantized with its own scales and decoded by its post-process, as an
    artifact's ``detect`` does (a compile with e.g. another input size gets its own number)."""
    from fcos_core.compile.deploy_table import integer_body
    from fcos_core.engine.summary import load_summary

    summary_path = Path(ctx.run_dir) / "summary.json" if ctx.run_dir is not None else None
    if (
        source.startswith("int_infer")
        and summary_path is not None
        and summary_path.is_file()
        and summary_path.stat().st_mtime >= _STARTED
    ):
        done = load_summary(Path(ctx.run_dir)).get("int_infer") or {}
        if (
            isinstance(done.get("metrics"), dict)
            and done["metrics"]
            and _holds_model(done.get("checkpoint"), model)
        ):
            return done["metrics"], "int_infer stage (summary.json)"
    loaders, metric_node = artifact_eval_nodes(cfg)
    int_model = integer_body(model)
    post = getattr(model, "post_process", None)
    if (
        not loaders
        or metric_node is None
        or int_model is None
        or not callable(getattr(post, "detect", None))
    ):
        return None, "not scored (no evaluation data, or not a quantized detector)"
    import torch

    from fcos_core.build import build
    from fcos_core.engine.progress import Progress, progress_enabled
    from fcos_core.quantization.int_ops import dequantize

    scales = int_model.output_scales()
    metrics = build(metric_node)
    metrics = metrics if isinstance(metrics, list) else [metrics]
    for m in metrics:
        m.reset()
    for loader in [build(n) for n in loaders]:
        bar = Progress(len(loader), "integer model eval", progress_enabled(ctx.rank))
        try:
            with torch.no_grad():
                for batch in loader:
                    img = batch["img"]
                    outs = int_model(img)
                    if not int_model.dequant_output:
                        outs = tuple(dequantize(q, s) for q, s in zip(outs, scales))
                    dets = post.detect(
                        list(outs),
                        (int(img.shape[-2]), int(img.shape[-1])),
                        bbox_upscaled=bool(getattr(model, "bbox_upscaled", False)),
                    )
                    for m in metrics:
                        m.update(batch, dets)
                    bar.update()
        finally:
            bar.close()
    out: dict[str, float] = {}
    for m in metrics:
        out.update(m.compute())
    return out, "the compiled integer model, scored by the compile stage"


def _holds_model(checkpoint: Any, model: Any) -> bool:
    """Whether the checkpoint file holds every tensor of ``model``'s state, equal."""
    import torch

    from fcos_core.engine.checkpoint_io import load_file

    if not checkpoint or not Path(str(checkpoint)).is_file():
        return False
    try:
        saved = load_file(str(checkpoint))
    except FcosUserError:
        return False
    saved = saved.get("state_dict", saved) if isinstance(saved, dict) else {}
    state = model.state_dict()
    return bool(state) and all(
        isinstance(saved.get(k), torch.Tensor)
        and saved[k].shape == v.shape
        and torch.equal(saved[k], v)
        for k, v in state.items()
    )


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


def score_artifact(
    backend: Any, program: Any, loaders: list[Any], metrics: list[Any], ctx: Any
) -> dict[str, float] | None:
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


def evaluate_artifact(
    cfg: Any, ctx: Any, backend: Any, result: Any, program: Any = None
) -> dict[str, float]:
    """COCO numbers of the compiled artifact itself, run by the backend's runtime on the data
    and metric of :func:`artifact_eval_nodes`. ``program``: the artifact already loaded
    (default: ``backend.load(result.artifact)``). Empty when the backend cannot decode
    detections or the config names no evaluation data."""
    from fcos_core.build import build

    loaders, metric_node = artifact_eval_nodes(cfg)
    if not loaders or metric_node is None:
        ctx.logger.info("compile: no evaluation data/metric in the config; artifact not scored")
        return {}
    if not callable(getattr(backend, "detect", None)) or not callable(
        getattr(backend, "load", None)
    ):
        ctx.logger.info("compile: the backend cannot run and decode its artifact; not scored")
        return {}
    if program is None:
        program = backend.load(result.artifact)
    metrics = build(metric_node)
    metrics = metrics if isinstance(metrics, list) else [metrics]
    out = score_artifact(backend, program, [build(n) for n in loaders], metrics, ctx)
    if out is None:
        ctx.logger.info("compile: the backend cannot decode detections; artifact not scored")
        return {}
    ctx.logger.info(
        "compiled artifact scored by its runtime",
        **{k: round(v, 4) for k, v in out.items() if k in ("mAP", "AP50")},
    )
    from fcos_core.engine import per_class

    per_class.report(ctx, ctx.logger, "compile", per_class.collect(metrics), "artifact")
    return out
