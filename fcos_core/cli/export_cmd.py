"""``fcos export``: the float deploy model as TorchScript, a torch.export program or ONNX.

Each artifact is loaded back and run on the example input; the command fails unless its
outputs match the eager model (max abs difference <= 1e-4). The artifact is written to a
temporary file with a unique name in the destination folder, verified, fsynced and only then
renamed into place: a failed verification or an error leaves no file behind. An existing output
file is never replaced without ``--overwrite``, and a missing checkpoint is an error unless
``--allow-untrained``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fcos_core.compile.float_onnx import FLOAT_ONNX_OPSET
from fcos_core.errors import FcosUserError

#: format -> (file suffix, what it is)
FORMATS: dict[str, tuple[str, str]] = {
    "torchscript": (".pt", "TorchScript (torch.jit.trace); load with torch.jit.load"),
    "export": (".pt2", "torch.export ExportedProgram; load with torch.export.load"),
    "onnx": (
        ".onnx",
        (
            f"ONNX opset {FLOAT_ONNX_OPSET}, dynamic batch "
            "(fcos_core.compile.float_onnx); run with onnxruntime"
        ),
    ),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--format", choices=sorted(FORMATS), default="export", help="artifact format")
    p.add_argument("--out", default=None, help="output file (default: <ckpt_dir>/<block>.<ext>)")
    p.add_argument(
        "--block",
        default="deploy_model",
        choices=["deploy_model", "model"],
        help="which model block to export (its float form)",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="weights (default: <ckpt_dir>/float-checkpoint-best.pth.tar; one of "
        "them must exist unless --allow-untrained)",
    )
    p.add_argument(
        "--allow-untrained",
        action="store_true",
        help="export random weights when no checkpoint exists (to test the export)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output file (without it, an existing file stops the export)",
    )
    p.add_argument("--list-formats", action="store_true", help="list the formats and exit")


def _torchscript(model: Any, x: Any, path: Path) -> Callable[[Any], Any]:
    import torch

    torch.jit.save(torch.jit.trace(model, x, check_trace=False), str(path))
    loaded = torch.jit.load(str(path))
    return lambda inp: loaded(inp)


def _export(model: Any, x: Any, path: Path) -> Callable[[Any], Any]:
    import torch

    torch.export.save(torch.export.export(model, (x,)), str(path))
    loaded = torch.export.load(str(path)).module()
    return lambda inp: loaded(inp)


def _onnx(model: Any, x: Any, path: Path) -> Callable[[Any], Any]:
    import torch

    from fcos_core.compile.float_onnx import export_float_onnx

    try:
        import onnxruntime as ort
    except ImportError:
        raise FcosUserError(
            "checking an ONNX export needs onnxruntime",
            hint="pip install onnx onnxscript onnxruntime (or fcos-plugin-onnx)",
        ) from None
    export_float_onnx(model, {"img": x}, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda inp: tuple(torch.from_numpy(o) for o in sess.run(None, {name: inp.numpy()}))


#: format -> writer ``(model, example batch, path) -> run(batch) -> outputs`` (the written
#: file loaded back)
WRITERS: dict[str, Callable[[Any, Any, Path], Callable[[Any], Any]]] = {
    "torchscript": _torchscript,
    "export": _export,
    "onnx": _onnx,
}


def export_command(args: argparse.Namespace, host: Any) -> int:
    if args.list_formats:
        for name, (suffix, what) in FORMATS.items():
            print(f"{name:<12} {suffix:<6} {what}")
        return 0
    if not args.config:
        raise FcosUserError("fcos export needs a CONFIG", hint="fcos export CONFIG --format onnx")
    import torch

    from fcos_core.cli.model_io import build_model
    from fcos_core.config import load_config

    cfg = load_config(args.config, host, args.overrides)
    suffix = FORMATS[args.format][0]
    out = Path(args.out) if args.out else Path(cfg.data["ckpt_dir"]) / f"{args.block}{suffix}"
    _check_out(out, args.overwrite)
    model = build_model(
        cfg,
        args.block,
        args.checkpoint,
        "float-checkpoint-best.pth.tar",
        allow_untrained=args.allow_untrained,
    )
    shape = tuple((cfg.data.get("deploy_inputs") or {}).get("img", (1, 3, 512, 512)))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FcosUserError(
            f"--out {out}: cannot create the folder {out.parent} ({exc.strerror or exc})",
            hint="choose a writable --out",
        ) from None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=f".tmp{suffix}", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.no_grad():
            expected = model(x)
            run = WRITERS[args.format](model, x, tmp)
            got = run(x)
        expected = expected if isinstance(expected, (list, tuple)) else (expected,)
        got = got if isinstance(got, (list, tuple)) else (got,)
        if len(got) != len(expected):
            raise FcosUserError(
                f"{out}: the {args.format} artifact returns {len(got)} outputs, "
                f"the model {len(expected)}; nothing was written",
                hint="report this as a bug",
            )
        diff = max(float((a - b).abs().max()) for a, b in zip(expected, got))
        if diff > 1e-4:
            raise FcosUserError(
                f"{out}: the {args.format} artifact differs from the model by "
                f"{diff}; nothing was written",
                hint="try another --format, and report this as a bug",
            )
        _fsync(tmp)
        _move_into_place(tmp, out, args.overwrite)
    finally:
        tmp.unlink(missing_ok=True)
    print(
        f"wrote {out} ({args.format}; {len(got)} outputs; max |difference| to the model {diff:.2e})"
    )
    return 0


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse (before any work) an output path that is a folder, or an existing file without
    ``--overwrite``."""
    if out.is_dir():
        raise FcosUserError(f"--out {out} is a folder", hint="pass a file path for the artifact")
    if os.path.lexists(out) and not overwrite:
        raise FcosUserError(
            f"{out} already exists; nothing was written",
            hint="pass --overwrite to replace it, or choose another --out",
        )


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the verified ``tmp`` to ``out``; without ``overwrite`` a file that appeared at
    ``out`` meanwhile is kept (a hard link never replaces)."""
    if overwrite:
        os.replace(tmp, out)
    else:
        try:
            os.link(tmp, out)
        except FileExistsError:
            raise FcosUserError(
                f"{out} appeared while exporting; nothing was written",
                hint="pass --overwrite to replace it, or choose another --out",
            ) from None
        except OSError:  # no hard links on this filesystem
            if os.path.lexists(out):
                raise FcosUserError(
                    f"{out} appeared while exporting; nothing was written",
                    hint="pass --overwrite to replace it, or choose another --out",
                ) from None
            os.replace(tmp, out)
    try:  # make the rename durable
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
