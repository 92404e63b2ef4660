"""``fcos analyze-data CONFIG``: the training set's boxes against the model's strides.

Importing this module is cheap (argparse only): ``fcos --help`` builds the parser from
:func:`add_arguments`; :func:`analyze_data_command` imports numpy, lmdb and matplotlib when it
runs. The figures are computed by :mod:`fcos_plugin_coco.data_stats`.

Outputs (``--out``, default ``runs/<task_name>/analyze-data/``): ``data_report.json`` (every
figure) and ``data_report.png`` (size histograms against the strides, points per stride,
objects per class). A file of those names that the command did not write itself is never
replaced (exit 2): the JSON carries ``"generator": "fcos analyze-data"`` and the PNG the same
``Software`` text chunk.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any

from fcos_core.errors import FcosUserError

GENERATOR = "fcos analyze-data"
JSON_NAME = "data_report.json"
PNG_NAME = "data_report.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config",
        help="YAML config: its float_trainer's data_loader.dataset (Coco "
        "LMDB or CocoFolder json), train transforms and model strides",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="override config values, e.g. vars.input_size=256",
    )
    p.add_argument(
        "--out",
        default=None,
        help="folder for data_report.json and data_report.png (default: "
        "runs/<task_name>/analyze-data); files it did not write are never "
        "replaced",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--data",
        default=None,
        metavar="LMDB",
        help="analyze this LMDB (from `fcos pack-coco`) instead of the config's training data",
    )
    src.add_argument(
        "--ann",
        default=None,
        metavar="JSON",
        help="analyze this COCO instances json instead of the config's training "
        "data (no image is read)",
    )
    p.add_argument(
        "--max-json-mb",
        type=float,
        default=2048.0,
        help="refuse annotation files larger than this (MiB)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


# --- the config ------------------------------------------------------------------------------


def _is_node(value: Any) -> bool:
    return hasattr(value, "entry") and hasattr(value, "kwargs")


def _train_dataset(cfg: Any) -> Any:
    trainer = cfg.node("float_trainer")
    if trainer is None:
        raise FcosUserError(
            f"{cfg.file} has no float_trainer block, whose data_loader is what analyze-data reads",
            hint="add float_trainer, or pass --data LMDB / --ann JSON",
        )
    loader = trainer.kwargs.get("data_loader")
    if isinstance(loader, list):
        raise FcosUserError(
            f"{cfg.file}: float_trainer.data_loader is a list of {len(loader)} "
            "loaders; analyze-data reads one",
            hint="pass the one to analyze with --data LMDB or --ann JSON",
        )
    dataset = loader.kwargs.get("dataset") if _is_node(loader) else None
    return trainer, dataset


def _strides(cfg: Any, trainer: Any) -> tuple[list[int], float | None]:
    model = trainer.kwargs.get("model")
    if not _is_node(model):
        raise FcosUserError(
            f"{cfg.file}: float_trainer has no model block to take the strides from",
            hint="add float_trainer.model (e.g. type: FCOS)",
        )
    targets = model.kwargs.get("targets")
    if _is_node(targets) and targets.kwargs.get("strides"):
        return (
            [int(s) for s in targets.kwargs["strides"]],
            targets.kwargs.get("center_sampling_radius"),
        )
    head = model.kwargs.get("head")
    if _is_node(head) and head.kwargs.get("out_strides"):
        return [int(s) for s in head.kwargs["out_strides"]], None
    raise FcosUserError(
        f"{cfg.file}: the float model has neither targets.strides nor head.out_strides",
        hint="analyze-data needs the model's strides",
    )


def _ensure_demo(path: str, what: str) -> None:
    """As the datasets do with demo_if_missing: generate the demo into the parent folder."""
    from fcos_plugin_coco.demo.generate import ensure_demo

    root = os.path.dirname(os.path.abspath(path))
    ensure_demo(root)
    if not os.path.exists(path):
        raise FcosUserError(
            f"{what} {path} is still missing after generating the demo data into {root}",
            hint="point it at a file of that folder",
        )


def _read(args: argparse.Namespace, cfg: Any, dataset: Any) -> Any:
    from fcos_plugin_coco import data_stats

    max_bytes = int(args.max_json_mb * 2**20)
    if args.data:
        return data_stats.read_lmdb(args.data)
    if args.ann:
        return data_stats.read_json(args.ann, max_bytes)
    if dataset is None:
        raise FcosUserError(
            f"{cfg.file}: float_trainer.data_loader has no dataset block",
            hint="add one, or pass --data LMDB / --ann JSON",
        )
    kind, kw = dataset.entry.name, dataset.kwargs
    if kind == "Coco":
        path = os.fspath(kw["data_path"])
        if not os.path.exists(path) and kw.get("demo_if_missing"):
            _ensure_demo(path, "data_path")
        return data_stats.read_lmdb(path)
    if kind == "CocoFolder":
        path = os.fspath(kw["ann_file"])
        if not os.path.exists(path) and kw.get("demo_if_missing"):
            _ensure_demo(path, "ann_file")
        return data_stats.read_json(path, max_bytes)
    raise FcosUserError(
        f"{cfg.file}: the training dataset is {kind}; analyze-data reads Coco "
        "(an LMDB) and CocoFolder (a COCO json)",
        hint="pass the annotations with --data LMDB or --ann JSON",
    )


# --- outputs ---------------------------------------------------------------------------------


def _ours(path: str) -> bool:
    """Whether an existing ``path`` was written by this command."""
    try:
        if path.endswith(".json"):
            if os.path.getsize(path) > 64 * 2**20:
                return False
            with open(path, encoding="utf-8") as f:
                return json.load(f).get("generator") == GENERATOR
        from PIL import Image

        with Image.open(path) as im:
            return im.info.get("Software") == GENERATOR
    except Exception:  # noqa: BLE001 - unreadable or not an image: not one the demo wrote
        return False


def _check_out(out: str) -> list[str]:
    if os.path.exists(out) and not os.path.isdir(out):
        raise FcosUserError(
            f"--out {out} is a file, not a folder",
            hint="pass a folder for data_report.json and data_report.png",
        )
    targets = [os.path.join(out, JSON_NAME), os.path.join(out, PNG_NAME)]
    foreign = [t for t in targets if os.path.lexists(t) and not (os.path.isfile(t) and _ours(t))]
    if foreign:
        raise FcosUserError(
            f"{', '.join(foreign)} exist(s) and were not written by "
            f"`{GENERATOR}`; refusing to replace them",
            hint="pass another --out folder, or move those files away",
        )
    return targets


def _atomic_write(path: str, write: Any) -> None:
    import tempfile

    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".analyze-data-", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the report from other users
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _plot(fig_data: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    hist = fig_data["histogram"]
    edges = np.asarray(hist["edges_px"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), dpi=100)
    ax = axes[0]
    for key, label in (("longer_side", "longer side"), ("sqrt_area", "sqrt(area)")):
        ax.stairs(hist[key], edges, label=label, linewidth=1.5)
    for s in fig_data["strides"]:
        ax.axvline(s, color="grey", linestyle="--", linewidth=0.8)
        ax.text(s, ax.get_ylim()[1] * 0.97, f"s{s}", fontsize=7, ha="center", va="top")
    ax.axvline(
        2 * fig_data["strides"][0],
        color="red",
        linestyle=":",
        linewidth=1,
        label=f"2 x stride {fig_data['strides'][0]}",
    )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("box size after the resize (px)")
    ax.set_ylabel("objects")
    ax.set_title("box sizes vs strides")
    ax.legend(fontsize="small")
    ax = axes[1]
    strides = [str(p["stride"]) for p in fig_data["per_stride"]]
    x = np.arange(len(strides))
    ax.bar(
        x - 0.2,
        [p["objects_with_at_least_1_point"] for p in fig_data["per_stride"]],
        0.4,
        label=">= 1 point inside",
    )
    ax.bar(
        x + 0.2,
        [p["objects_with_at_least_4_points"] for p in fig_data["per_stride"]],
        0.4,
        label=">= 4 points inside",
    )
    ax.axhline(
        fig_data["objects"], color="grey", linestyle="--", linewidth=0.8, label="all objects"
    )
    ax.set_xticks(x, strides)
    ax.set_xlabel("stride")
    ax.set_title("objects with grid points inside, per stride")
    ax.legend(fontsize="small")
    ax = axes[2]
    classes = sorted(fig_data["objects_per_class"].items(), key=lambda kv: -kv[1])[:40]
    ax.barh([c for c, _ in classes][::-1], [n for _, n in classes][::-1])
    ax.tick_params(axis="y", labelsize=6 if len(classes) > 20 else 8)
    ax.set_title(
        "objects per class" + (" (40 largest)" if len(fig_data["objects_per_class"]) > 40 else "")
    )
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": GENERATOR})
    plt.close(fig)


def render(f: dict[str, Any]) -> str:
    """The figures as a short text report."""

    def pct(n: int) -> str:
        return f"{n} ({100 * n / f['objects']:.1f}%)" if f["objects"] else str(n)

    size = (
        f"{f['input_size'][0]}x{f['input_size'][1]}"
        if f["input_size"]
        else "varies: {}x{} to {}x{}".format(*f["input_size_range"][0], *f["input_size_range"][1])
        if f["input_size_range"]
        else "-"
    )
    per = f["objects_per_image"]
    lines = [
        f"data: {f['source']}",
        (
            f"images {f['images']}, objects {f['objects']} (+{f['crowd_boxes']} crowd regions), "
            f"images without objects {f['images_without_objects']}"
        ),
    ]
    if per:
        lines.append(
            f"objects per image: min {per['min']}, median {per['median']:g}, max {per['max']}"
        )
    sc = f["resize"]["scale_x"]
    lines += [
        f"network input: {size}; {f['resize']['rule']}",
        (
            f"scale applied: median {sc.get('p50', 1):.4g} (min {sc.get('p0', 1):.4g}, "
            f"max {sc.get('p100', 1):.4g})"
        ),
    ]
    if f["transforms_not_modelled"]:
        lines.append(f"not modelled: {', '.join(f['transforms_not_modelled'])}")
    for key, label in (("longer_side_px", "longer side"), ("sqrt_area_px", "sqrt(area)")):
        s = f[key]
        if s.get("count"):
            lines.append(
                f"{label} (px): p5 {s['p5']:.1f}, p25 {s['p25']:.1f}, median "
                f"{s['p50']:.1f}, p75 {s['p75']:.1f}, p95 {s['p95']:.1f}, max "
                f"{s['p100']:.1f}"
            )
    lines.append(
        f"tiny ({f['tiny_definition']}): {pct(f['tiny_objects'])}; huge "
        f"({f['huge_definition']}): {pct(f['huge_objects'])}"
    )
    radius = f["center_sampling_radius"]
    lines.append(
        "grid points strictly inside each object"
        + (f" (within {radius:g} strides of its centre)" if radius else "")
        + ":"
    )
    lines.append(f"  {'stride':>6}  {'>= 1 point':>16}  {'>= 4 points':>16}")
    for p in f["per_stride"]:
        lines.append(
            f"  {p['stride']:>6}  {pct(p['objects_with_at_least_1_point']):>16}  "
            f"{pct(p['objects_with_at_least_4_points']):>16}"
        )
    lines.append(
        f"no point at the finest stride: "
        f"{pct(f['objects_without_point_at_finest_stride'])}; at no stride (each "
        f"falls back to its nearest finest-stride point): "
        f"{pct(f['objects_without_point_at_any_stride'])}"
    )
    classes = ", ".join(f"{k} {v}" for k, v in f["objects_per_class"].items())
    lines.append(f"objects per class: {classes}")
    return "\n".join(lines)


# --- the command -----------------------------------------------------------------------------


def analyze_data_command(args: argparse.Namespace, host: Any) -> int:
    import time

    from fcos_core.config import load_config
    from fcos_core.logging_setup import configure_logging, get_logger
    from fcos_plugin_coco import data_stats

    if not args.max_json_mb > 0:
        raise FcosUserError("--max-json-mb must be > 0")
    start = time.perf_counter()
    cfg = load_config(args.config, host, args.overrides)
    out = args.out or os.path.join("runs", str(cfg.data.get("task_name", "fcos")), "analyze-data")
    json_path, png_path = _check_out(out)
    trainer, dataset = _train_dataset(cfg)
    strides, radius = _strides(cfg, trainer)
    transforms = (
        [(t.entry.name, t.kwargs) for t in dataset.kwargs.get("transforms") or [] if _is_node(t)]
        if dataset is not None
        else []
    )
    img = (cfg.data.get("deploy_inputs") or {}).get("img")
    fallback = (int(img[-2]), int(img[-1])) if isinstance(img, list) and len(img) == 4 else None
    geo = data_stats.geometry_from_transforms(transforms, strides, radius, fallback)
    ann = _read(args, cfg, dataset)
    figures = {
        "generator": GENERATOR,
        "config": os.path.abspath(cfg.file),
        **data_stats.analyze(ann, geo),
    }
    figures["seconds"] = round(time.perf_counter() - start, 3)

    try:
        os.makedirs(out, exist_ok=True)
        _check_out(out)  # again: someone may have put files there meanwhile
        _atomic_write(json_path, lambda p: _write_json(p, figures))
        _atomic_write(png_path, lambda p: _plot(figures, p))
    except OSError as exc:
        raise FcosUserError(
            f"cannot write into {out}: {exc.strerror or exc}", hint="pass a writable --out folder"
        ) from exc
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(render(figures))
        print(f"wrote {json_path} and {png_path} ({figures['seconds']:.1f} s)")
    sys.stdout.flush()
    configure_logging(None)
    log = get_logger("fcos.analyze-data")
    for message in figures["warnings"]:
        log.warning("data check", message=message)
    return 0


def _write_json(path: str, figures: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(figures, f, indent=2)
        f.write("\n")
