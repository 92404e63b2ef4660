"""``fcos ops``: parameters and multiply-accumulates (MACs) of a config's models.

MACs are counted with forward hooks on ``nn.Conv2d`` and ``nn.Linear`` (HAT's calops counts the
same layers): a conv adds ``out.numel() * in_channels / groups * kh * kw``, a linear layer
``out.numel() * in_features``. Normalisation, activations, pooling, resizing, element-wise adds
and the post-process are not counted (they are a few percent of the total). A conv that runs
several times (the head's towers are shared across strides) is counted at every call. Parameters
are counted once each, even when shared.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fcos_core.errors import FcosUserError

MODEL_KEYS = ("model", "deploy_model")


def count_params(module: nn.Module) -> int:
    """Number of distinct parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def count_macs(
    model: nn.Module, example: torch.Tensor, groups: Mapping[str, nn.Module]
) -> tuple[int, dict[str, int]]:
    """Run ``model(example)`` once and count conv/linear MACs.

    Args:
        model: the module to run (eval mode, no grad).
        example: its input, e.g. ``[1, 3, 512, 512]``.
        groups: name -> submodule; MACs of layers inside each are also reported per group.

    Returns:
        ``(total, {group: macs})``.
    """
    owner: dict[int, str] = {}
    for name, group in groups.items():
        for m in group.modules():
            owner.setdefault(id(m), name)
    per = dict.fromkeys(groups, 0)
    total = [0]

    def hook(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            macs = out.numel() * (mod.in_channels // mod.groups) * kh * kw
        else:
            macs = out.numel() * mod.in_features
        total[0] += macs
        if id(mod) in owner:
            per[owner[id(mod)]] += macs

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total[0], per


def model_report(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """``{"type", "params", "macs", "modules": {name: {"params", "macs"}}}`` for one model.

    Top-level modules are the detector's ``backbone``, ``neck`` and ``head`` when it has them.
    """
    groups: dict[str, nn.Module] = {}
    for name in ("backbone", "neck", "head"):
        sub = getattr(model, name, None)
        if isinstance(sub, nn.Module):
            groups[name] = sub
    if not groups:
        groups = dict(model.named_children())
    total, per = count_macs(model, torch.zeros(input_shape), groups)
    return {
        "type": type(model).__name__,
        "params": count_params(model),
        "macs": total,
        "modules": {n: {"params": count_params(m), "macs": per[n]} for n, m in groups.items()},
    }


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,512,512"`` -> ``(1, 3, 512, 512)`` (4 positive integers)."""
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise FcosUserError(
            f"--input-shape {text!r} is not 4 positive integers",
            hint="write it as N,C,H,W, e.g. --input-shape 1,3,512,512",
        )
    return shape


def _fmt(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3f}{unit}"
    return str(n)


def format_table(reports: Mapping[str, Mapping[str, Any]], shape: tuple[int, ...]) -> str:
    """Human-readable table of :func:`model_report` results."""
    lines = [
        (f"input shape {'x'.join(map(str, shape))}; MACs of Conv2d/Linear layers (forward hooks)")
    ]
    lines.append(f"{'module':<28}{'params':>14}{'MACs':>14}")
    for key, rep in reports.items():
        lines.append(
            f"{key + ' (' + rep['type'] + ')':<28}{_fmt(rep['params']):>14}{_fmt(rep['macs']):>14}"
        )
        for name, sub in rep["modules"].items():
            lines.append(f"{'  ' + name:<28}{_fmt(sub['params']):>14}{_fmt(sub['macs']):>14}")
    return "\n".join(lines)


def ops_command(args: argparse.Namespace, host: Any) -> int:
    """Body of ``fcos ops CONFIG [--input-shape N,C,H,W] [--json]``."""
    from fcos_core.build import build
    from fcos_core.config import load_config

    shape = parse_shape(args.input_shape)
    cfg = load_config(args.config, host, args.overrides)
    reports: dict[str, Any] = {}
    for key in MODEL_KEYS:
        node = cfg.values.get(key)
        if node is not None:
            reports[key] = model_report(build(node), shape)
    if not reports:
        raise FcosUserError(
            f"{args.config} has neither 'model' nor 'deploy_model'",
            hint="add a model block (type: FCOS, ...)",
        )
    if args.json:
        print(json.dumps({"input_shape": list(shape), "models": reports}, indent=2))
    else:
        print(format_table(reports, shape))
    return 0
