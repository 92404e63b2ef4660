"""Built-in ``fcos`` subcommands (torch-free: the command bodies import what they need)."""

from __future__ import annotations

import argparse

from fcos_core.cli import export_cmd, predict_cmd, quant_sensitivity_cmd, runs_cmd
from fcos_core.docs_gen import config_reference
from fcos_core.hooks import hookimpl
from fcos_core.scaffold import new_plugin


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="path to a YAML config, e.g. configs/fcos_b0.yaml")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="override config values, e.g. float_trainer.num_epochs=2",
    )


def _check_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument(
        "--model",
        action="store_true",
        help="also build deploy_model and ask the compile backend named by 'march' "
        "whether it can compile it (HAT's model checker; imports torch)",
    )


def _run_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument(
        "--stage",
        default=None,
        help="float | calibration | qat | int_infer | compile | all "
        "(default: $FCOS_STAGE, else all)",
    )
    p.add_argument("--run-dir", default=None, help="run folder (default: runs/<task_name>)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="train the stages again, replacing their existing checkpoints (without "
        "--resume or --overwrite, existing checkpoints stop the run)",
    )
    p.add_argument(
        "--nproc-per-node",
        type=int,
        default=None,
        help="train with N processes on this machine (torchrun's launcher)",
    )
    p.add_argument(
        "--thp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="put CPU tensors of 2 MB and more on transparent huge pages (default: "
        "on, measured faster; else $FCOS_THP=1|0, or your own "
        "THP_MEM_ALLOC_ENABLE). Only this run's processes use it; it is not "
        "exported to the programs they start",
    )


def _plugins_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true", help="include fcos-core's built-in plugins")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="one line per component with its factory (module:attr)",
    )


def _build_kernels_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-v", "--verbose", action="store_true", help="show the compiler's commands and output"
    )


def _config_cmd_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = sub.add_parser(
        "show",
        help="print a config (with --resolved: after overrides and "
        "references, each value followed by a comment saying "
        "where it came from)",
    )
    _config_args(show)
    show.add_argument(
        "--resolved",
        action="store_true",
        help="resolve overrides and references; a '# line N', '# override ...' or "
        "'# KEY, line N' (reached through a ${...} reference) comment after "
        "each value says where it came from",
    )


@hookimpl
def register_commands(register):
    register(
        "run",
        factory="fcos_core.cli.commands:run_command",
        add_arguments=_run_args,
        doc="run the stage pipeline of a config (float, calibration, qat, int_infer, compile)",
    )
    register(
        "check",
        factory="fcos_core.cli.commands:check_command",
        add_arguments=_check_args,
        doc="validate a config (all problems at once) without running anything; "
        "--model: can deploy_model compile for the config's march?",
    )
    register(
        "plugins",
        factory="fcos_core.cli.commands:plugins_command",
        add_arguments=_plugins_args,
        doc="list installed plugins and what each registers",
    )
    register(
        "config",
        factory="fcos_core.cli.commands:config_command",
        add_arguments=_config_cmd_args,
        doc="show a config, resolved",
    )
    register(
        "docs",
        factory="fcos_core.docs_gen.config_reference:docs_command",
        add_arguments=config_reference.add_arguments,
        doc="generate the config reference (docs/config-reference.md) from the schemas",
    )
    register(
        "new-plugin",
        factory="fcos_core.scaffold.new_plugin:new_plugin_command",
        add_arguments=new_plugin.add_arguments,
        doc="create a working plugin distribution (pyproject, one transform, tests)",
    )
    register(
        "export",
        factory="fcos_core.cli.export_cmd:export_command",
        add_arguments=export_cmd.add_arguments,
        doc="export the float model as TorchScript, torch.export or ONNX (verified by "
        "reloading); --list-formats",
    )
    register(
        "predict",
        factory="fcos_core.cli.predict_cmd:predict_command",
        add_arguments=predict_cmd.add_arguments,
        doc="detect objects in images, folders, globs, an LMDB or a video with any "
        "stage's model (batched); --out: predictions.json, --save-vis: drawings",
    )
    register(
        "runs",
        factory="fcos_core.cli.runs_cmd:runs_command",
        add_arguments=runs_cmd.add_arguments,
        doc="compare run folders' summary.json stage tables side by side (mAP or "
        "--metrics, time, early stopping)",
    )
    register(
        "build-kernels",
        factory="fcos_core.cli.build_kernels_cmd:build_kernels_command",
        add_arguments=_build_kernels_args,
        doc="build the C++ CPU training kernels now (for images built ahead of time; "
        "needs the fcos-core[cpu-kernels] extra and a C++ compiler); prints the "
        "cache folder and the build time",
    )
    register(
        "quant-sensitivity",
        factory="fcos_core.cli.quant_sensitivity_cmd:quant_sensitivity_command",
        add_arguments=quant_sensitivity_cmd.add_arguments,
        doc="rank layers by the mAP lost when only that layer is quantized and recovered "
        "when only that layer is int16 (one calibration); CSV, JSON, PNG and "
        "suggested layer_precision rules",
    )
