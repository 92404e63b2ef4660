"""``fcos quant-sensitivity CONFIG``: rank layers by the metric lost when only that layer is
quantized, and by the metric recovered when only that layer is int16; suggest int16 rules.

The calibration stage's blocks are reused as they are: ``calibration_trainer``'s model, its
``model_convert_pipeline`` (``LoadCheckpoint`` of the float weights, then
``Float2Calibration`` with the configured observer), its data loader and ``num_steps``, and
the validation data and ``val_metrics`` its ``Validation`` callback scores with. Calibration
runs once (two graphs observe the same batches, see
:mod:`fcos_core.quantization.sensitivity`); then each measurement evaluates the cached
validation batches (``--max-images``) with fake-quants switched per layer.

Writes ``quant_sensitivity.csv``, ``.json``, ``.png`` and ``quant_sensitivity_rules.yaml``
into the run folder (``runs/<task_name>`` or ``--run-dir``); existing files there are never
replaced without ``--overwrite``. Torch is imported when the command runs, not at start-up.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from fcos_core.errors import FcosUserError

OUTPUTS = (
    "quant_sensitivity.csv",
    "quant_sensitivity.json",
    "quant_sensitivity.png",
    "quant_sensitivity_rules.yaml",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="path to a YAML config with a calibration_trainer block")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="override config values, e.g. vars.data_root=...",
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=64,
        help="validation images per measurement (whole batches; default 64)",
    )
    p.add_argument(
        "--calib-steps",
        type=int,
        default=None,
        help="calibration batches (default: calibration_trainer.num_steps)",
    )
    p.add_argument(
        "--depth",
        type=int,
        default=None,
        help="group layers by the first N parts of their module names (fewer "
        "measurements on a big model); default: every layer",
    )
    p.add_argument(
        "--max-loss",
        type=float,
        default=0.5,
        help="the suggestion adds int16 layers until the predicted loss is at most "
        "this many metric points (x100; default 0.5)",
    )
    p.add_argument(
        "--max-layers",
        type=int,
        default=10,
        help="at most this many int16 layers (groups) in the suggestion",
    )
    p.add_argument("--metric", default="mAP", help="metric key to rank by (default mAP)")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="float weights (default: the calibration pipeline's LoadCheckpoint)",
    )
    p.add_argument("--run-dir", default=None, help="output folder (default runs/<task_name>)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace quant_sensitivity.* files already in the run folder",
    )
    p.add_argument("--top", type=int, default=20, help="rows of the printed tables")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _validation_nodes(cfg: Any, trainer: Any) -> tuple[list[Any], list[Any]]:
    loaders: list[Any] = []
    for cb in _as_list(trainer.kwargs.get("callbacks")):
        if getattr(getattr(cb, "entry", None), "name", None) == "Validation":
            loaders = _as_list(cb.kwargs.get("data_loader"))
    if not loaders and cfg.node("val_data_loader") is not None:
        loaders = [cfg.values["val_data_loader"]]
    return loaders, _as_list(trainer.kwargs.get("val_metrics"))


def _take(batch: Any, k: int) -> Any:
    """The first ``k`` images of a collated batch (tensors and lists sliced on dim 0)."""
    if isinstance(batch, dict):
        return {key: _take(v, k) for key, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(batch[:k])
    if hasattr(batch, "shape") and len(batch.shape) > 0:
        return batch[:k]
    return batch


def _check_outputs(folder: Path, overwrite: bool) -> None:
    taken = [n for n in OUTPUTS if (folder / n).exists()]
    if taken and not overwrite:
        raise FcosUserError(
            f"{folder} already holds {', '.join(taken)}; fcos never replaces "
            "files it did not just create",
            hint="pass --overwrite, or --run-dir with a new folder",
        )


def quant_sensitivity_command(args: argparse.Namespace, host: Any) -> int:
    import torch

    from fcos_core.build import build
    from fcos_core.config import load_config
    from fcos_core.engine import stage_eval
    from fcos_core.engine.batch_processor import MultiBatchProcessor
    from fcos_core.engine.convert_pipeline import ModelConvertPipeline
    from fcos_core.engine.modes import set_mode
    from fcos_core.engine.predictor import compute_metrics
    from fcos_core.engine.progress import Progress
    from fcos_core.engine.runtime import apply_runtime_settings, seed_everything
    from fcos_core.logging_setup import configure_logging, get_logger
    from fcos_core.quantization.converters import Float2Calibration, freeze_observers
    from fcos_core.quantization.precision import parse_layer_precision
    from fcos_core.quantization.sensitivity import ALL_INT16, analyse, evaluations_needed

    start = time.perf_counter()
    for name, value, low in (
        ("--max-images", args.max_images, 1),
        ("--top", args.top, 1),
        ("--max-layers", args.max_layers, 0),
    ):
        if value < low:
            raise FcosUserError(f"{name} must be >= {low}, got {value}", hint=f"{name} {low}")
    if args.calib_steps is not None and args.calib_steps < 1:
        raise FcosUserError("--calib-steps must be >= 1", hint="--calib-steps 30")
    cfg = load_config(args.config, host, args.overrides)
    data = cfg.data
    trainer = cfg.node("calibration_trainer")
    if trainer is None or trainer.kwargs.get("model_convert_pipeline") is None:
        raise FcosUserError(
            f"{args.config}: no calibration_trainer with a "
            "model_convert_pipeline; quant-sensitivity reuses the calibration "
            "stage",
            hint="see configs/fcos_b0_demo.yaml, calibration_trainer",
        )
    folder = (
        Path(args.run_dir) if args.run_dir else Path("runs") / str(data.get("task_name", "fcos"))
    )
    _check_outputs(folder, args.overwrite)
    configure_logging(None)
    log = get_logger("fcos.quant_sensitivity")
    ctx = stage_eval.stage_context(cfg, "calibration", None, log)
    pipeline = build(trainer.kwargs["model_convert_pipeline"])
    converters = list(getattr(pipeline, "converters", []))
    calib = [i for i, c in enumerate(converters) if isinstance(c, Float2Calibration)]
    if len(calib) != 1:
        raise FcosUserError(
            "calibration_trainer.model_convert_pipeline must have exactly one "
            f"Float2Calibration (found {len(calib)})",
            hint="the calibration stage of configs/fcos_b0_demo.yaml",
        )
    loads = [c for c in converters[: calib[0]] if type(c).__name__ == "LoadCheckpoint"]
    if args.checkpoint is not None:
        if not loads:
            raise FcosUserError(
                "--checkpoint: the calibration pipeline loads no checkpoint",
                hint="add a LoadCheckpoint before Float2Calibration",
            )
        loads[-1].checkpoint_path = Path(args.checkpoint)
    for load in loads:
        if not Path(load.checkpoint_path).is_file():
            raise FcosUserError(
                f"float checkpoint {load.checkpoint_path} does not exist",
                hint="train the float stage first (fcos run CONFIG --stage "
                "float), or pass --checkpoint",
            )
    conv = converters[calib[0]]
    if conv.layer_precision:
        log.warning(
            "the config's layer_precision rules are not applied: the analysis starts "
            "from the target's default dtypes",
            rules=len(conv.layer_precision),
        )
    base_conv = copy.copy(conv)
    base_conv.integer_exact, base_conv.layer_precision = "off", ()
    wide_conv = copy.copy(base_conv)
    wide_conv.layer_precision = parse_layer_precision(list(ALL_INT16))
    qat_mode = getattr(pipeline, "qat_mode", None)
    loader_nodes, metric_nodes = _validation_nodes(cfg, trainer)
    if not loader_nodes or not metric_nodes:
        raise FcosUserError(
            "calibration_trainer has no validation data or no val_metrics",
            hint="add a Validation callback and val_metrics (as the demo)",
        )
    calib_loader = build(trainer.kwargs.get("data_loader"))
    if calib_loader is None:
        raise FcosUserError(
            "calibration_trainer.data_loader is not set",
            hint="the calibration data loader of configs/fcos_b0_demo.yaml",
        )
    val_loaders = [build(n) for n in loader_nodes]
    metrics = [build(n) for n in metric_nodes]
    bp = build(trainer.kwargs.get("batch_processor")) or MultiBatchProcessor(need_grad_update=False)
    steps = args.calib_steps or int(trainer.kwargs.get("num_steps") or 30)

    apply_runtime_settings(data)
    if data.get("seed") is not None:
        seed_everything(int(data["seed"]))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cctx = ctx.convert_context(str(device))
    models = []
    for c in (base_conv, wide_conv):
        model = build(trainer.kwargs["model"])
        model = ModelConvertPipeline(
            qat_mode=qat_mode, converters=[*converters[: calib[0]], c, *converters[calib[0] + 1 :]]
        )(model, cctx)
        model.to(device)
        set_mode(model, False)
        models.append(model)
    base, wide = models

    # -- one calibration: both graphs observe the same batches ----------------------------
    if hasattr(calib_loader, "set_seed"):
        calib_loader.set_seed(ctx.seed if ctx.seed is not None else 0)
    bar = Progress(steps, "calibration (int8 + int16 twin)", True)
    done, epoch = 0, 0
    with torch.no_grad():
        while done < steps:
            if hasattr(calib_loader, "set_epoch"):
                calib_loader.set_epoch(epoch)
            before = done
            for batch in calib_loader:
                bp(base, batch, device)
                bp(wide, batch, device)
                done += 1
                bar.update()
                if done >= steps:
                    break
            if done == before:
                raise FcosUserError(
                    "the calibration data loader gave no batches",
                    hint="check calibration_trainer.data_loader",
                )
            epoch += 1
    bar.close()
    freeze_observers(base)
    freeze_observers(wide)

    # -- the validation subset, loaded once -------------------------------------------------
    cached: list[Any] = []
    n_images = 0
    for loader in val_loaders:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(0)
        for batch in loader:
            size = len(batch["img"]) if isinstance(batch, dict) and "img" in batch else 1
            keep = min(size, args.max_images - n_images)
            cached.append(_take(batch, keep) if keep < size else batch)
            n_images += keep
            if n_images >= args.max_images:
                break
        if n_images >= args.max_images:
            break
    if not cached:
        raise FcosUserError(
            "the validation data loader gave no batches",
            hint="check the validation data of calibration_trainer",
        )

    def evaluate(model: Any) -> float:
        for m in metrics:
            m.reset()
        for batch in cached:
            outs = bp(model, batch, device)
            for m in metrics:
                m.update(batch, outs)
        values = compute_metrics(metrics)
        if args.metric not in values:
            raise FcosUserError(
                f"--metric {args.metric}: the metrics report "
                f"{', '.join(sorted(values)) or 'nothing'}",
                hint="pick one of those",
            )
        return values[args.metric]

    total = evaluations_needed(base, args.depth)
    bar = Progress(total, f"quant-sensitivity ({n_images} images)", True)
    res = analyse(
        base,
        wide,
        evaluate,
        args.metric,
        args.depth,
        args.max_loss / 100.0,
        args.max_layers,
        progress=lambda _label: bar.update(),
    )
    bar.close()
    seconds = time.perf_counter() - start
    report = res.to_json()
    report.update(
        {
            "config": str(args.config),
            "images": n_images,
            "calibration_steps": steps,
            "depth": args.depth,
            "max_loss_points": args.max_loss,
            "seconds": round(seconds, 1),
        }
    )
    write_outputs(folder, report, res)
    print(format_tables(res, args.top, n_images, steps, seconds))
    print(f"\nwritten: {', '.join(str(folder / n) for n in OUTPUTS)}")
    sys.stdout.flush()
    return 0


def _points(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:+.2f}"


def format_tables(res: Any, top: int, images: int, steps: int, seconds: float) -> str:
    """The ranked tables (metric points = metric x 100) and the suggested rules."""
    from fcos_core.quantization.precision import rules_yaml

    m = res.metric_name
    lines = [
        (
            f"{m}: float {100 * res.float_value:.2f}, all int8 {100 * res.int8_value:.2f} "
            f"(loss {100 * (res.float_value - res.int8_value):.2f} points; {images} images, "
            f"{steps} calibration batches, {seconds:.0f} s)"
        ),
        "",
        f"lost when only this layer is quantized ({m} points):",
        f"{'rank':>4}  {'layer':<48} {'loss':>7} {'int16 gain':>10} {'dtype':>6}",
    ]
    for i, r in enumerate(res.by_loss()[:top], 1):
        lines.append(
            f"{i:>4}  {_clip(r.name):<48} {_points(r.loss):>7} {_points(r.gain):>10} {r.dtype:>6}"
        )
    lines += [
        "",
        f"recovered when only this layer is int16 (the rest int8, {m} points):",
        f"{'rank':>4}  {'layer':<48} {'gain':>7}",
    ]
    for i, r in enumerate(res.by_gain()[:top], 1):
        lines.append(f"{i:>4}  {_clip(r.name):<48} {_points(r.gain):>7}")
    lines.append("")
    if res.suggested:
        measured = (
            ""
            if res.suggested_value is None
            else f", measured together: {100 * res.suggested_value:.2f}"
        )
        lines.append(
            f"suggested int16 layers (predicted loss {100 * res.predicted_loss:.2f} "
            f"points{measured}); put this list in vars and reference it from "
            "Float2Calibration and Float2QAT:"
        )
        lines.append(rules_yaml(res.suggested_layers()).rstrip("\n"))
    else:
        lines.append(
            "no int16 layer suggested: the int8 loss is already within --max-loss, "
            "or no layer recovers anything"
        )
    return "\n".join(lines)


def _clip(name: str, width: int = 48) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3) :]


def write_outputs(folder: Path, report: dict[str, Any], res: Any) -> None:
    """CSV, JSON, PNG bar chart and the rules YAML (atomic writes)."""
    from fcos_core.atomic_write import write_atomically
    from fcos_core.quantization.precision import rules_yaml

    folder.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "layer", "loss", "int16_gain", "dtype", "members"])
    for i, r in enumerate(res.by_loss(), 1):
        w.writerow([i, r.name, f"{r.loss:.6f}", f"{r.gain:.6f}", r.dtype, " ".join(r.members)])
    text = buf.getvalue().encode("utf-8")
    write_atomically(folder / OUTPUTS[0], lambda f: f.write(text))
    js = (json.dumps(report, indent=1, default=float) + "\n").encode("utf-8")
    write_atomically(folder / OUTPUTS[1], lambda f: f.write(js))
    png = plot(res)
    write_atomically(folder / OUTPUTS[2], lambda f: f.write(png))
    rules = (
        "# fcos quant-sensitivity: suggested int16 layers\n" + rules_yaml(res.suggested_layers())
    ).encode("utf-8")
    write_atomically(folder / OUTPUTS[3], lambda f: f.write(rules))


def plot(res: Any, top: int = 25) -> bytes:
    """Two horizontal bar charts (loss when alone quantized, gain when alone int16) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = res.by_loss()[:top]
    gain = res.by_gain()[:top]
    rows = max(len(loss), len(gain), 1)
    fig, axes = plt.subplots(1, 2, figsize=(13, 1.2 + 0.28 * rows))
    for ax, items, key, title in (
        (axes[0], loss, "loss", ("lost when only this layer is quantized")),
        (axes[1], gain, "gain", ("recovered when only this layer is int16")),
    ):
        names = [_clip(r.name, 40) for r in items][::-1]
        values = [100 * getattr(r, key) for r in items][::-1]
        ax.barh(range(len(values)), values, color="tab:red" if key == "loss" else "tab:green")
        ax.set_yticks(range(len(values)), names, fontsize=7)
        ax.set_xlabel(f"{res.metric_name} points")
        ax.set_title(title, fontsize=9)
        ax.axvline(0, color="black", linewidth=0.5)
    fig.suptitle(
        f"{res.metric_name}: float {100 * res.float_value:.2f}, int8 {100 * res.int8_value:.2f}",
        fontsize=10,
    )
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out.getvalue()
