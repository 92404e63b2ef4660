"""``TensorRTBackend``: the ``tensorrt`` compile backend (see :mod:`fcos_core.compile.backend`).

check   -> fcos-plugin-onnx's checks (the engine is built from its QDQ export) plus TensorRT's
           own limit: explicit quantization takes int8 Q/DQ pairs only, so no int16 or int32
           value may reach the graph (the FCOS head needs ``int8_output: true``);
compile -> fcos-plugin-onnx's :func:`~fcos_plugin_onnx.qdq_export.build_qdq_model` (symmetric
           int8, float outputs; int32 bias codes folded to float by :mod:`.onnx_prep`) ->
           :func:`.runtime.build_engine` (TensorRT's ONNX parser and
           builder, dynamic batch) -> :func:`.engine_file.write_engine_file` (one file with the
           metadata), then the engine is run on the example inputs: its outputs against the fcos
           quantized model in quantization steps, and its batch-1 latency on the GPU;
load / run / detect -> :class:`.runtime.EngineRunner`; ``detect`` decodes with fcos's
           ``FCOSMultiStrideFilter``, so the compile stage scores the engine on the validation
           data like the other backends' artifacts.

TensorRT is imported only when an engine is built or run; without it (or without a GPU) the
backend still registers, ``fcos check`` works, and compiling stops with an install hint.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from fcos_core.compile.backend import (
    CheckIssue,
    CompileBackend,
    CompileResult,
    check_timing_options,
    decode_detections,
    example_image_tensor,
    post_process_params,
)
from fcos_core.errors import FcosUserError
from fcos_plugin_tensorrt import __version__
from fcos_plugin_tensorrt.schema import TensorRTCompileOptions

#: integer dtypes TensorRT's explicit quantization accepts in a Q/DQ pair
TRT_QDQ_DTYPES = ("int8",)
_INT8_HINT = (
    "TensorRT's explicit quantization takes int8 Q/DQ only: set int8_output: true "
    "and int16_output: false on the FCOS head of both model and deploy_model (in the "
    "shipped configs vars.head and deploy_model.head, which copies it when the file "
    "is read) and run QAT and int_infer again"
)


def engine_path(opts: TensorRTCompileOptions) -> Path:
    path = Path(opts.engine_file)
    return path if path.is_absolute() else Path(opts.out_dir) / path


def int8_only_issues(records: Sequence[Any]) -> list[CheckIssue]:
    """One issue per value of the integer program TensorRT's Q/DQ cannot hold."""
    return [
        CheckIssue(
            layer=r.op.name, op=r.op.kind, reason=f"produces an {r.op.dtype} value; {_INT8_HINT}"
        )
        for r in records
        if r.op.kind != "quantize" and r.op.dtype not in TRT_QDQ_DTYPES
    ]


@attrs.define
class TensorRTProgram:
    """A loaded engine: the runner (execution context) and the fcos metadata."""

    runner: Any
    meta: dict[str, Any]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.meta["outputs"]]


class TensorRTBackend(CompileBackend[TensorRTCompileOptions]):
    """An explicitly quantized int8 TensorRT engine built from the QDQ ONNX export."""

    name = "tensorrt"
    options_schema = TensorRTCompileOptions

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)  # defaults for compile() and check()

    def option_defaults(self) -> Mapping[str, Any]:
        return self.options

    def check_options(self, options: TensorRTCompileOptions) -> None:
        if not 1 <= int(options.opt_batch) <= int(options.max_batch):
            raise FcosUserError(
                f"compile_cfg: opt_batch {options.opt_batch} must be between 1 and "
                f"max_batch {options.max_batch}",
                hint="e.g. opt_batch: 1, max_batch: 8",
            )
        check_timing_options(options)
        if int(options.workspace_mib) < 1:
            raise FcosUserError("compile_cfg.workspace_mib must be >= 1", hint="e.g. 1024")

    def quantization_rules(self) -> Any:
        """The ONNX backend's rules (every op has a QDQ form): symmetric per-channel int8
        weights, int8 activations, input scale 1/128, ReLU fused into its producer."""
        from fcos_plugin_onnx.backend import OnnxBackend

        return OnnxBackend().quantization_rules()

    # -- check ---------------------------------------------------------------------------

    def check(self, model: Any, example_inputs: Mapping[str, Any]) -> Sequence[CheckIssue]:
        from fcos_core.quantization.find_integer import find_integer_model
        from fcos_plugin_onnx.backend import OnnxBackend

        opset = int(self.options.get("opset", 21))
        issues = list(OnnxBackend(opset=opset).check(model, example_inputs))
        found = find_integer_model(model)
        if found is not None:
            from fcos_core.quantization.integer_model import integer_program

            return issues + int8_only_issues(integer_program(found[0]))
        head = getattr(model, "head", None)
        if head is not None and not getattr(head, "int8_output", True):
            wide = "int16" if getattr(head, "int16_output", False) else "int32"
            issues.append(
                CheckIssue(
                    layer="head",
                    op=type(head).__name__,
                    reason=f"its outputs would be {wide}; {_INT8_HINT}",
                )
            )
        return issues

    # -- compile -------------------------------------------------------------------------

    def artifact_path(self, options: TensorRTCompileOptions, out_dir: Path) -> Path | None:
        return engine_path(options)

    def compile(
        self,
        model: Any,
        example_inputs: Mapping[str, Any],
        options: TensorRTCompileOptions,
        out_dir: Path,
    ) -> CompileResult:
        import torch

        from fcos_core.atomic_write import write_atomically
        from fcos_core.quantization.find_integer import require_integer_model
        from fcos_core.quantization.integer_model import integer_program
        from fcos_plugin_onnx.agreement import code_agreement
        from fcos_plugin_onnx.qdq_export import ExportError, build_qdq_model
        from fcos_plugin_onnx.session import measure_latency
        from fcos_plugin_tensorrt.engine_file import write_engine_file
        from fcos_plugin_tensorrt.onnx_prep import fold_int32_dequantize
        from fcos_plugin_tensorrt.runtime import (
            EngineRunner,
            build_engine,
            gpu_name,
            require_tensorrt,
        )

        t0 = time.perf_counter()
        opts = options
        require_tensorrt()  # before any work: says what to install
        int_model, post = require_integer_model(model)
        records = integer_program(int_model)
        wide = int8_only_issues(records)
        if wide:
            raise FcosUserError(
                f"compile_cfg (march tensorrt): {len(wide)} value(s) are not int8, e.g. "
                + "; ".join(i.render() for i in wide[:3]),
                hint=_INT8_HINT,
            )
        x = example_image_tensor(example_inputs)
        det = post_process_params(model)
        try:
            exported = build_qdq_model(
                records,
                int_model.outputs,
                input_shape=tuple(x.shape),
                dequant_output=True,
                opset=int(opts.opset),
                strides=det["strides"] if det else None,
                max_logit=post is not None,
                pyramid_input=False,
                uint8_activations=False,
                graph_name=str(opts.name),
            )
        except ExportError as exc:
            raise FcosUserError(
                f"compile_cfg (march tensorrt): cannot export the quantized "
                f"model to QDQ ONNX: {exc}",
                hint="see `fcos check CONFIG --model`",
            ) from None
        out = Path(str(opts.out_dir))
        out.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(opts.name)) or "model"
        fold_int32_dequantize(exported.model)  # int32 bias codes -> float32 constants
        onnx_bytes = exported.model.SerializeToString()
        onnx_path = write_atomically(out / f"{safe}.qdq.onnx", lambda f: f.write(onnx_bytes))
        device = int(opts.device)
        engine, build_info = build_engine(
            onnx_bytes,
            exported.input_name,
            tuple(x.shape[1:]),
            max_batch=int(opts.max_batch),
            opt_batch=int(opts.opt_batch),
            workspace_mib=int(opts.workspace_mib),
            fp16=bool(opts.fp16),
            timing_cache=opts.timing_cache,
        )
        outputs = [
            {
                "name": s.name,
                "value": s.value,
                "dtype": "float32",
                "scale": list(s.scale),
                "kind": s.kind,
                "zero_point": 0,
            }
            for s in exported.outputs
        ]
        meta = {
            "producer": f"fcos-plugin-tensorrt {__version__}",
            "name": str(opts.name),
            "input": {
                "name": exported.input_name,
                "dtype": "float32",
                "shape": list(exported.input_shape),
                "normalisation": "by the caller",
            },
            "outputs": outputs,
            "detection": det,
            "gpu": gpu_name(device),
            "build": build_info,
            "source_onnx": str(onnx_path),
        }
        path = write_engine_file(engine_path(opts), engine, meta)
        runner = EngineRunner(engine, [o["name"] for o in outputs], device)

        agreement = None
        if opts.agreement_check:
            with torch.no_grad():
                ref = model(x)
            ref = ref if isinstance(ref, (tuple, list)) else (ref,)
            got = [t.cpu() for t in runner(x)]
            agreement = code_agreement(ref, got, outputs)
        latency = None
        if int(opts.latency_runs) > 0:
            one = x[:1].to(runner.device)
            latency = {
                "batch": 1,
                "device": meta["gpu"],
                **measure_latency(
                    lambda: runner(one), int(opts.latency_runs), int(opts.warmup_runs)
                ),
            }
        nodes: dict[str, int] = {}
        for node in exported.model.graph.node:
            nodes[node.op_type] = nodes.get(node.op_type, 0) + 1
        report = {
            "march": "tensorrt",
            "artifact": str(path),
            "artifact_bytes": path.stat().st_size,
            "engine_bytes": len(engine),
            "source_onnx": str(onnx_path),
            "onnx_nodes_by_op": dict(sorted(nodes.items())),
            "opset": int(opts.opset),
            "input": meta["input"],
            "outputs": [{"name": o["name"], "kind": o["kind"]} for o in outputs],
            "build": build_info,
            "gpu": meta["gpu"],
            "latency": latency,
            "agreement": agreement,
            "compile_seconds": time.perf_counter() - t0,
        }
        text = json.dumps(report, indent=1, sort_keys=True).encode()
        report_path = write_atomically(
            out / f"{safe}_tensorrt_report.json", lambda f: f.write(text)
        )
        return CompileResult(artifact=path, report=report, files=(report_path, onnx_path))

    # -- execute -------------------------------------------------------------------------

    def load(self, artifact: Path) -> TensorRTProgram:
        from fcos_plugin_tensorrt.engine_file import read_engine_file
        from fcos_plugin_tensorrt.runtime import EngineRunner

        engine, meta = read_engine_file(artifact)
        runner = EngineRunner(
            engine, [o["name"] for o in meta["outputs"]], int(self.options.get("device", 0))
        )
        return TensorRTProgram(runner=runner, meta=meta)

    def run(self, program: Any, inputs: Mapping[str, Any]) -> tuple[Any, ...]:
        if not isinstance(program, TensorRTProgram):
            raise TypeError(f"run() takes what load() returned, got {type(program).__name__}")
        if len(inputs) != 1:
            raise ValueError(f"inputs: the engine has one input, got {sorted(inputs)}")
        return tuple(t.cpu().numpy() for t in program.runner(next(iter(inputs.values()))))

    def detect(self, program: Any, images: Any) -> list[dict[str, Any]] | None:
        """Detections for normalised images ``[B, 3, H, W]``, decoded like the model's."""
        if not isinstance(program, TensorRTProgram):
            raise TypeError(f"detect() takes what load() returned, got {type(program).__name__}")
        det = program.meta.get("detection")
        if not det:
            return None
        outs = [t.float().cpu() for t in program.runner(images)]
        return decode_detections(outs, det, (int(images.shape[2]), int(images.shape[3])))
