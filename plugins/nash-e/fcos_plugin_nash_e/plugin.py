"""Registers the ``nash_e`` compile backend and the ``compile`` / ``infer`` commands.

Torch-free: the backend and the command bodies are referenced by import strings.
"""

from __future__ import annotations

import argparse

from fcos_core import hookimpl

from fcos_plugin_nash_e.schema import NashECompileOptions


@hookimpl
def register_compile_backends(register):
    register("nash_e", factory="fcos_plugin_nash_e.backend:NashEBackend",
             schema=NashECompileOptions, aliases=["NASH_E"])


def _compile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="path to a YAML config with a compile_cfg block")
    p.add_argument("overrides", nargs="*", metavar="key.path=value",
                   help="override config values, e.g. compile_cfg.opt=O2")
    p.add_argument("--run-dir", default=None, help="run folder (default: runs/<task_name>)")


def _infer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="a compiled model file (compile_cfg.hbm)")
    p.add_argument("images", nargs="+", help="image files (JPEG/PNG)")
    p.add_argument("--save-vis", default=None, metavar="DIR",
                   help="draw the detections on the images and save them in DIR as "
                        "<stem>_det.png (<stem>_det-2.png, ... when taken: never overwrites)")
    p.add_argument("--json", action="store_true", help="print detections as JSON")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="override the score threshold stored in the artifact")


@hookimpl
def register_commands(register):
    register("compile", factory="fcos_plugin_nash_e.commands:compile_command",
             add_arguments=_compile_args,
             doc="compile a config's quantized deploy model (the pipeline's compile stage)")
    register("infer", factory="fcos_plugin_nash_e.commands:infer_command",
             add_arguments=_infer_args,
             doc="run a compiled model on images with the CPU runtime and print detections")
