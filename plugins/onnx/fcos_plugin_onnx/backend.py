"""``OnnxBackend``: the ``onnx`` compile backend (see :mod:`fcos_core.compile.backend`).

check   -> :mod:`.checker` (float deploy models) or the exporter's program check (quantized);
compile -> :mod:`.qdq_export` (integer program -> QDQ graph) + :mod:`.artifact` (one .onnx
           file with fcos metadata) + :mod:`.session` (ORT latency at batch 1) +
           :mod:`fcos_core.compile.agreement` (integer codes of ORT vs the fcos quantized
           model, in the report; the compile stage holds every backend to the 0.1 % rule);
load / run -> :class:`.artifact.OnnxProgram` (an ONNX Runtime session; numpy in and out).

Only public fcos interfaces are used: the quantized deploy model's body is an
``IntegerModel`` read through ``integer_program``; the rules come from
``fcos_core.quantization.rules``.
"""

from __future__ import annotations

import collections
import json
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fcos_core.compile.agreement import disagreement
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
from fcos_core.quantization.find_integer import find_integer_model, require_integer_model
from fcos_plugin_onnx import __version__
from fcos_plugin_onnx.artifact import FORMAT_VERSION, OnnxProgram, read_artifact, write_artifact
from fcos_plugin_onnx.outputs import artifact_feed, check_single_input_source, head_outputs
from fcos_plugin_onnx.schema import OnnxCompileOptions


def detection_meta(model: Any) -> dict[str, Any] | None:
    """FCOS decoding parameters of the model's post-process (None without one)."""
    return post_process_params(model)


def _pyramid_pair(x: Any) -> tuple[Any, Any]:
    """(raw uint8 planes for ORT, the normalised float image the torch model sees)."""
    import torch

    raw = torch.clamp(torch.round(x * 128.0 + 128.0), 0, 255).to(torch.uint8)
    return raw, (raw.float() - 128.0) / 128.0


class OnnxBackend(CompileBackend[OnnxCompileOptions]):
    """QDQ ONNX export of the quantized deploy model, run and timed with ONNX Runtime."""

    name = "onnx"
    options_schema = OnnxCompileOptions

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)  # defaults for compile() and check()

    def option_defaults(self) -> Mapping[str, Any]:
        return self.options

    def check_options(self, options: OnnxCompileOptions) -> None:
        if options.requantization == "integer" and options.activation_dtype != "uint8":
            raise FcosUserError(
                "compile_cfg.requantization: integer needs activation_dtype: "
                "uint8 (ConvInteger's exact uint8 kernel)",
                hint="set compile_cfg.activation_dtype: uint8, or requantization: float",
            )
        check_single_input_source(options.input_source)
        check_timing_options(options)

    def quantization_rules(self) -> Any:
        """fcos's default rules, spelled out: everything they produce has a QDQ form.

        int8 activations (stored as uint8 + 128 in the graph, the same codes), per-channel int8
        weights, fixed input scale 1/128, ReLU fused into the producing conv/add (exported as an
        integer Clip after the QuantizeLinear), adds with their own input scales (QDQ adds
        rescale each input), concat inputs on one shared scale (ORT's QLinearConcat).
        """
        from fcos_core.quantization.rules import QuantRules

        return QuantRules(
            activation_dtype="int8",
            weight_dtype="int8",
            input_dtype="int8",
            input_scale=1.0 / 128.0,
            fuse_relu=True,
            add_inputs_share_scale=False,
        )

    # -- check ---------------------------------------------------------------------------

    def check(self, model: Any, example_inputs: Mapping[str, Any]) -> Sequence[CheckIssue]:
        from fcos_plugin_onnx.checker import check_float_model, check_quantized

        opset = int(self.options.get("opset", 21))
        found = find_integer_model(model)
        if found is not None:
            from fcos_core.quantization.converters import quant_info
            from fcos_core.quantization.integer_model import integer_program

            names = (quant_info(found[0]) or {}).get("layer_names", {})
            return check_quantized(
                integer_program(found[0]),
                opset,
                str(self.options.get("requantization", "integer")),
                names,
            )
        return check_float_model(model, example_inputs, self.quantization_rules().supported_ops)

    # -- compile -------------------------------------------------------------------------

    def compile(
        self,
        model: Any,
        example_inputs: Mapping[str, Any],
        options: OnnxCompileOptions,
        out_dir: Path,
    ) -> CompileResult:
        import torch

        from fcos_core.compile.agreement import code_agreement
        from fcos_core.compile.latency import measure_latency
        from fcos_core.quantization.integer_model import integer_program
        from fcos_plugin_onnx.qdq_export import ExportError, build_qdq_model
        from fcos_plugin_onnx.session import make_session

        t0 = time.perf_counter()
        opts = options
        int_model, post = require_integer_model(model)
        records = integer_program(int_model)
        x = example_image_tensor(example_inputs)
        pyramid = opts.input_source == ["pyramid"]
        det = detection_meta(model)
        strides = det["strides"] if det else None
        try:
            exported = build_qdq_model(
                records,
                int_model.outputs,
                input_shape=tuple(x.shape),
                dequant_output=bool(int_model.dequant_output),
                opset=int(opts.opset),
                strides=strides,
                max_logit=post is not None,
                pyramid_input=pyramid,
                uint8_activations=opts.activation_dtype == "uint8",
                requantization=str(opts.requantization),
                graph_name=str(opts.name),
            )
        except ExportError as exc:
            raise FcosUserError(
                f"compile_cfg (march onnx): cannot export the quantized model: {exc}",
                hint="see `fcos check CONFIG --model` and the "
                "fcos-plugin-onnx README for the op set",
            ) from None
        out = Path(opts.out_dir)
        path = Path(opts.onnx_file)
        path = path if path.is_absolute() else out / path
        meta = {
            "format": FORMAT_VERSION,
            "producer": f"fcos-plugin-onnx {__version__}",
            "name": str(opts.name),
            "input": {
                "name": exported.input_name,
                "dtype": exported.input_dtype,
                "shape": list(exported.input_shape),
                "source": opts.input_source[0],
                # pyramid planes are normalised inside the graph; ddr input arrives
                # normalised by the data pipeline (Normalize transform)
                "normalisation": "(x - 128) / 128 in the graph" if pyramid else "by the caller",
            },
            "outputs": [_spec_dict(s) for s in exported.outputs],
            "dequant_output": bool(int_model.dequant_output),
            "activation_dtype": opts.activation_dtype,
            "requantization": opts.requantization,
            "detection": det,
        }
        write_artifact(path, exported.model, meta)

        with tempfile.TemporaryDirectory() as tmp:
            opt_path = str(Path(tmp) / "optimized.onnx")
            sess, threading = make_session(
                str(path), opts.providers, opts.threads, optimized_path=opt_path
            )
            optimized = _count_ops(opt_path)
        program = OnnxProgram(session=sess, meta=meta, threading=threading)

        feed, model_in = _pyramid_pair(x) if pyramid else (x, x)
        agreement = None
        if opts.agreement_check:
            with torch.no_grad():
                ref = model(model_in)
            ref = ref if isinstance(ref, (tuple, list)) else (ref,)
            agreement = code_agreement(ref, program.run({"img": feed}), meta["outputs"])

        latency = None
        if int(opts.latency_runs) > 0:
            one = program.feed({"img": feed[:1]})
            latency = measure_latency(
                lambda: sess.run(None, one), int(opts.latency_runs), int(opts.warmup_runs)
            )
            latency = {"batch": 1, **latency, **threading}

        nodes = collections.Counter(n.op_type for n in exported.model.graph.node)
        report = {
            "march": "onnx",
            "artifact": str(path),
            "artifact_bytes": path.stat().st_size,
            "opset": int(opts.opset),
            "input": meta["input"],
            "outputs": [{"name": s.name, "dtype": s.dtype} for s in exported.outputs],
            "nodes": sum(nodes.values()),
            "nodes_by_op": dict(sorted(nodes.items())),
            "ort_nodes_by_op": optimized,
            "ort_fused_int8_convs": optimized.get("QLinearConv", 0),
            "ort_integer_convs": optimized.get("ConvInteger", 0),
            "requantization": opts.requantization,
            "providers": threading["providers"],
            "latency": latency,
            "agreement": agreement,
            "compile_seconds": time.perf_counter() - t0,
        }
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(opts.name)) or "model"
        report_path = out / f"{safe}_onnx_report.json"
        report_path.parent.mkdir(parents=True, exist_ok=True)
        # informative only: the compile stage checks every backend's artifact against the
        # integer model on validation images and fails beyond one step on > 0.1 % of the codes
        # (fcos_core.compile.deploy_table; compile_cfg.allow_disagreement makes it a warning)
        report["agreement_ok"] = disagreement(agreement) is None if agreement is not None else None
        report_path.write_text(json.dumps(report, indent=1, sort_keys=True))
        return CompileResult(artifact=path, report=report, files=(report_path,))

    # -- execute -------------------------------------------------------------------------

    def load(self, artifact: Path) -> OnnxProgram:
        from fcos_plugin_onnx.session import make_session

        model, meta = read_artifact(artifact)
        sess, threading = make_session(
            model.SerializeToString(),
            self.options.get("providers") or ["CPUExecutionProvider"],
            self.options.get("threads"),
        )
        return OnnxProgram(session=sess, meta=meta, threading=threading)

    def run(self, program: Any, inputs: Mapping[str, Any]) -> tuple[Any, ...]:
        if not isinstance(program, OnnxProgram):
            raise TypeError(f"run() takes what load() returned, got {type(program).__name__}")
        return program.run(inputs)

    def artifact_path(self, options: OnnxCompileOptions, out_dir: Path) -> Path:
        """``compile_cfg.onnx_file`` (relative to out_dir, or a path), as :meth:`compile`
        writes it."""
        path = Path(options.onnx_file)
        return path if path.is_absolute() else Path(options.out_dir) / path

    def detect(self, program: Any, images: Any) -> list[dict[str, Any]] | None:
        """Detections of a loaded artifact for normalised images ``[B, 3, H, W]``: ORT runs
        the artifact (pyramid artifacts get the uint8 frame back, ``x * 128 + 128`` exactly),
        its codes are dequantized with the artifact's scales and decoded by fcos's
        ``FCOSMultiStrideFilter`` with the decoding parameters stored in the artifact."""
        if not isinstance(program, OnnxProgram):
            raise TypeError(f"detect() takes what load() returned, got {type(program).__name__}")
        det = program.meta.get("detection")
        if not det:
            return None
        arr, feed = artifact_feed(program.meta, images)
        floats = head_outputs(program.meta, program.run({"img": feed}))
        return decode_detections(floats, det, (int(arr.shape[2]), int(arr.shape[3])))


def _spec_dict(spec: Any) -> dict[str, Any]:
    return {
        "name": spec.name,
        "value": spec.value,
        "dtype": spec.dtype,
        "scale": list(spec.scale),
        "kind": spec.kind,
        "zero_point": spec.zero_point,
    }


def _count_ops(path: str) -> dict[str, int]:
    """Op types of ORT's optimized graph (fused kernels such as QLinearConv show here)."""
    import onnx

    if not Path(path).is_file():
        return {}
    graph = onnx.load_model(path, load_external_data=False).graph
    counts = collections.Counter(n.op_type for n in graph.node)
    return dict(sorted(counts.items()))
