"""fcos-core's built-in model components, registered through the public hooks.

Torch-free: factories are import strings, schemas come from :mod:`fcos_core.models.schemas`.
"""

from __future__ import annotations

import argparse

from fcos_core.hooks import hookimpl
from fcos_core.models import schemas

_M = "fcos_core.models"


@hookimpl
def register_models(register):
    register("FCOS", factory=f"{_M}.fcos:FCOS", schema=schemas.FCOSArgs)


@hookimpl
def register_heads(register):
    register("FCOSHead", factory=f"{_M}.head:FCOSHead", schema=schemas.FCOSHeadArgs)


@hookimpl
def register_targets(register):
    register(
        "DynamicFcosTarget",
        factory=f"{_M}.dynamic_target:DynamicFcosTarget",
        schema=schemas.DynamicFcosTargetArgs,
    )


@hookimpl
def register_losses(register):
    register("FocalLoss", factory=f"{_M}.losses.focal:FocalLoss", schema=schemas.FocalLossArgs)
    register("GIoULoss", factory=f"{_M}.losses.giou:GIoULoss", schema=schemas.GIoULossArgs)
    register(
        "CrossEntropyLoss",
        factory=f"{_M}.losses.cross_entropy:CrossEntropyLoss",
        schema=schemas.CrossEntropyLossArgs,
    )


@hookimpl
def register_post_processes(register):
    register(
        "FCOSMultiStrideFilter",
        factory=f"{_M}.post_process:FCOSMultiStrideFilter",
        schema=schemas.FCOSMultiStrideFilterArgs,
    )


def _ops_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="path to a YAML config with a model and/or deploy_model block")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="override config values, e.g. model.head.feat_channels=32",
    )
    p.add_argument(
        "--input-shape",
        default="1,3,512,512",
        metavar="N,C,H,W",
        help="input tensor shape (default 1,3,512,512)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


@hookimpl
def register_commands(register):
    register(
        "ops",
        factory=f"{_M}.ops_count:ops_command",
        add_arguments=_ops_args,
        doc="count parameters and multiply-adds of the model and deploy_model "
        "(whole and per backbone/neck/head)",
    )
