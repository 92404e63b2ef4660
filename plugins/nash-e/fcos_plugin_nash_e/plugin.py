"""Registers the ``nash_e`` compile backend and the ``compile`` / ``infer`` commands.

Torch-free: the backend and the command bodies are referenced by import strings.
"""

from __future__ import annotations

import argparse

from fcos_core import hookimpl
from fcos_plugin_nash_e.schema import NashECompileOptions


@hookimpl
def register_compile_backends(register):
    register(
        "nash_e",
        factory="fcos_plugin_nash_e.backend:NashEBackend",
        schema=NashECompileOptions,
        aliases=["NASH_E"],
    )


def _compile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="path to a YAML config with a compile_cfg block")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="override config values, e.g. compile_cfg.opt=O2",
    )
    p.add_argument("--run-dir", default=None, help="run folder (default: runs/<task_name>)")
    p.add_argument(
        "--allow-disagreement",
        action="store_true",
        help="keep an artifact whose runtime disagrees with the integer model beyond "
        "one quantization step on more than 0.1 %% of the output codes, with a "
        "warning instead of an error (compile_cfg.allow_disagreement: true)",
    )


def _infer_args(p: argparse.ArgumentParser) -> None:
    from fcos_core.cli.detect_frontend import add_source_arguments

    p.add_argument("artifact", help="a compiled model file (compile_cfg.hbm)")
    add_source_arguments(p, positional=True, score_default=None)


@hookimpl
def register_commands(register):
    register(
        "compile",
        factory="fcos_plugin_nash_e.commands:compile_command",
        add_arguments=_compile_args,
        doc="compile a config's quantized deploy model (the pipeline's compile stage)",
    )
    register(
        "infer",
        factory="fcos_plugin_nash_e.commands:infer_command",
        add_arguments=_infer_args,
        doc="run a compiled model with the CPU runtime on images, folders, globs, an LMDB or a "
        "video (the fcos predict front end); print, write and draw the detections",
    )
