"""Registers the ``onnx`` compile backend and the ``onnx-compare`` command.

Torch-free: the backend and the command body are referenced by import strings.
"""

from __future__ import annotations

import argparse

from fcos_core import hookimpl
from fcos_plugin_onnx.schema import OnnxCompileOptions


@hookimpl
def register_compile_backends(register):
    register(
        "onnx",
        factory="fcos_plugin_onnx.backend:OnnxBackend",
        schema=OnnxCompileOptions,
        aliases=["ONNX"],
    )


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config",
        help="a pipeline config with int_infer_predictor and a QAT "
        "checkpoint already trained (run the pipeline first)",
    )
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="override config values")
    p.add_argument(
        "--max-batches", type=int, default=None, help="evaluate only the first N validation batches"
    )
    p.add_argument("--threads", type=int, default=None, help="ORT intra-op threads")
    p.add_argument(
        "--out-dir",
        default=None,
        help="where to write the ONNX model (default: a temporary folder)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")


@hookimpl
def register_commands(register):
    register(
        "onnx-compare",
        factory="fcos_plugin_onnx.compare:compare_command",
        add_arguments=_compare_args,
        doc="score ONNX Runtime's QDQ model against the int_infer model on the val set",
    )
