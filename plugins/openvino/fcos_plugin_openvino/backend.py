"""``OpenVinoBackend``: the ``openvino`` compile backend (see :mod:`fcos_core.compile.backend`).

check   -> fcos-plugin-onnx's checks (the model is built from its export) plus, for a quantized
           model, the export and the int32 lowering themselves (a conv whose accumulator could
           leave the lowering's range is named);
compile -> fcos-plugin-onnx's :func:`~fcos_plugin_onnx.qdq_export.build_qdq_model` (uint8
           storage, ``requantization: integer``) -> :mod:`.int32_requant` (the int64
           requantization as int32 digit arithmetic: OpenVINO's CPU plugin has no int64) ->
           OpenVINO's ONNX reader -> IR ``.xml``/``.bin`` + manifest (:mod:`.artifact`); then the
           saved artifact is loaded and run on the example inputs: its integer codes against the
           fcos quantized model, and its batch-1 latency;
load / run / detect -> :class:`.artifact.OpenVinoProgram`; ``detect`` decodes with fcos's
           ``FCOSMultiStrideFilter`` like the model's eval mode, so the compile stage scores
           the artifact by mAP.
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
from fcos_plugin_onnx.outputs import check_single_input_source
from fcos_plugin_openvino import __version__
from fcos_plugin_openvino.schema import OpenVinoCompileOptions


def artifact_file(opts: OpenVinoCompileOptions) -> Path:
    path = Path(opts.artifact_file)
    return path if path.is_absolute() else Path(opts.out_dir) / path


def _threads(value: Any) -> int:
    from fcos_core.compile.latency import default_threads

    return int(value) if value else default_threads()


def export_for_openvino(
    int_model: Any,
    records: Sequence[Any],
    input_shape: Sequence[int],
    *,
    strides: Sequence[int] | None,
    max_logit: bool,
    pyramid: bool,
    requantization: str,
    opset: int,
    name: str,
) -> tuple[Any, int]:
    """The onnx plugin's export of the integer program, with its int64 requantization lowered
    to int32 (``requantization == "integer"``); returns ``(ExportedGraph, chains lowered)``.
    Raises the exporter's ``ExportError`` or :class:`~.int32_requant.LoweringError`."""
    from fcos_plugin_onnx.qdq_export import build_qdq_model
    from fcos_plugin_openvino.int32_requant import lower_int64_requantization

    exported = build_qdq_model(
        records,
        int_model.outputs,
        input_shape=tuple(input_shape),
        dequant_output=bool(int_model.dequant_output),
        opset=opset,
        strides=strides,
        max_logit=max_logit,
        pyramid_input=pyramid,
        uint8_activations=True,
        requantization=requantization,
        graph_name=name,
    )
    lowered = lower_int64_requantization(exported.model) if requantization == "integer" else 0
    return exported, lowered


def _pyramid_pair(x: Any) -> tuple[Any, Any]:
    """(raw uint8 planes for the artifact, the normalised float image the torch model sees)."""
    import torch

    raw = torch.clamp(torch.round(x * 128.0 + 128.0), 0, 255).to(torch.uint8)
    return raw, (raw.float() - 128.0) / 128.0


class OpenVinoBackend(CompileBackend[OpenVinoCompileOptions]):
    """The onnx plugin's integer export, lowered to int32, as OpenVINO IR run on the CPU."""

    name = "openvino"
    options_schema = OpenVinoCompileOptions

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)  # defaults for compile() and check()

    def option_defaults(self) -> Mapping[str, Any]:
        return self.options

    def check_options(self, options: OpenVinoCompileOptions) -> None:
        check_single_input_source(options.input_source)
        check_timing_options(options)
        if options.threads is not None and int(options.threads) < 1:
            raise FcosUserError(
                f"compile_cfg.threads must be >= 1 or null, got {options.threads}",
                hint="e.g. threads: 2, or null for OMP_NUM_THREADS / the cores",
            )

    def quantization_rules(self) -> Any:
        """The onnx backend's rules (fcos's defaults: every op has an export): int8
        activations, per-channel int8 weights, input scale 1/128, ReLU fused into its
        producer; so one quantized model serves onnx, openvino and nash_e alike."""
        from fcos_plugin_onnx.backend import OnnxBackend

        return OnnxBackend().quantization_rules()

    # -- check ---------------------------------------------------------------------------

    def check(self, model: Any, example_inputs: Mapping[str, Any]) -> Sequence[CheckIssue]:
        from fcos_core.quantization.find_integer import find_integer_model
        from fcos_plugin_onnx.backend import OnnxBackend

        opset = int(self.options.get("opset", 21))
        issues = list(OnnxBackend(opset=opset).check(model, example_inputs))
        found = find_integer_model(model)
        if found is None or issues:
            return issues
        from fcos_core.quantization.integer_model import integer_program
        from fcos_plugin_onnx.qdq_export import ExportError
        from fcos_plugin_openvino.int32_requant import LoweringError

        int_model, post = found
        det = post_process_params(model)
        try:
            export_for_openvino(
                int_model,
                integer_program(int_model),
                tuple(example_image_tensor(example_inputs).shape),
                strides=det["strides"] if det else None,
                max_logit=post is not None,
                pyramid=False,
                requantization=str(self.options.get("requantization", "integer")),
                opset=opset,
                name="check",
            )
        except (ExportError, LoweringError) as exc:
            issues.append(CheckIssue(layer="model", op="export", reason=str(exc)))
        return issues

    # -- compile -------------------------------------------------------------------------

    def artifact_path(self, options: OpenVinoCompileOptions, out_dir: Path) -> Path:
        """``compile_cfg.artifact_file`` (relative to out_dir, or a path), as :meth:`compile`
        writes it."""
        return artifact_file(options)

    def compile(
        self,
        model: Any,
        example_inputs: Mapping[str, Any],
        options: OpenVinoCompileOptions,
        out_dir: Path,
    ) -> CompileResult:
        import openvino as ov
        import torch

        from fcos_core.atomic_write import write_atomically
        from fcos_core.compile.agreement import code_agreement, disagreement
        from fcos_core.compile.latency import measure_latency
        from fcos_core.quantization.find_integer import require_integer_model
        from fcos_core.quantization.integer_model import integer_program
        from fcos_plugin_onnx.qdq_export import ExportError
        from fcos_plugin_openvino.artifact import core, load_program, write_artifact
        from fcos_plugin_openvino.int32_requant import LoweringError, wide_accumulators

        t0 = time.perf_counter()
        opts = options
        int_model, post = require_integer_model(model)
        records = integer_program(int_model)
        x = example_image_tensor(example_inputs)
        pyramid = opts.input_source == ["pyramid"]
        det = post_process_params(model)
        try:
            exported, lowered = export_for_openvino(
                int_model,
                records,
                tuple(x.shape),
                strides=det["strides"] if det else None,
                max_logit=post is not None,
                pyramid=pyramid,
                requantization=str(opts.requantization),
                opset=int(opts.opset),
                name=str(opts.name),
            )
        except (ExportError, LoweringError) as exc:
            raise FcosUserError(
                f"compile_cfg (march openvino): cannot export the quantized model: {exc}",
                hint="see `fcos check CONFIG --model` and the fcos-plugin-openvino README",
            ) from None
        with tempfile.TemporaryDirectory() as tmp:  # OpenVINO's ONNX reader takes a file
            onnx_path = Path(tmp) / "export.onnx"
            onnx_path.write_bytes(exported.model.SerializeToString())
            ov_model = core().read_model(str(onnx_path))
        path = artifact_file(opts)
        meta = {
            "producer": f"fcos-plugin-openvino {__version__}",
            "openvino": ov.get_version(),
            "name": str(opts.name),
            "input": {
                "name": exported.input_name,
                "dtype": exported.input_dtype,
                "shape": list(exported.input_shape),
                "source": opts.input_source[0],
                "normalisation": "(x - 128) / 128 in the graph" if pyramid else "by the caller",
            },
            "outputs": [
                {
                    "name": s.name,
                    "value": s.value,
                    "dtype": s.dtype,
                    "scale": list(s.scale),
                    "kind": s.kind,
                    "zero_point": s.zero_point,
                }
                for s in exported.outputs
            ],
            "dequant_output": bool(int_model.dequant_output),
            "requantization": opts.requantization,
            "detection": det,
        }
        write_artifact(path, ov_model, meta)
        program = load_program(path, _threads(opts.threads))

        feed, model_in = _pyramid_pair(x) if pyramid else (x, x)
        agreement = None
        if opts.agreement_check:
            with torch.no_grad():
                ref = model(model_in)
            ref = ref if isinstance(ref, (tuple, list)) else (ref,)
            agreement = code_agreement(ref, program.run({"img": feed}), program.meta["outputs"])
        latency = None
        if int(opts.latency_runs) > 0:
            one = program.feed({"img": feed[:1]})
            latency = {
                "batch": 1,
                **measure_latency(
                    lambda: program.request.infer(one),
                    int(opts.latency_runs),
                    int(opts.warmup_runs),
                ),
                **program.threading,
            }
        nodes = collections.Counter(n.op_type for n in exported.model.graph.node)
        # the layers OpenVINO's CPU plugin runs (after its fusions) and their precisions
        layers = [op.get_rt_info() for op in program.compiled.get_runtime_model().get_ordered_ops()]
        ops = collections.Counter(str(r["layerType"].astype(str)) for r in layers)
        conv_precisions = collections.Counter(
            str(r["runtimePrecision"].astype(str))
            for r in layers
            if str(r["layerType"].astype(str)) == "Convolution"
        )
        report = {
            "march": "openvino",
            "artifact": str(path),
            "artifact_bytes": sum(p.stat().st_size for p in (path, *_ir(path))),
            "openvino": meta["openvino"],
            "opset": int(opts.opset),
            "input": meta["input"],
            "outputs": [{"name": o["name"], "dtype": o["dtype"]} for o in meta["outputs"]],
            "requantization": opts.requantization,
            "requantizations_lowered_to_int32": lowered,
            # OpenVINO runs ConvInteger in float32: exact by construction below 2**24
            "convs_beyond_float32_exact_bound": wide_accumulators(exported.model),
            "onnx_nodes": sum(nodes.values()),
            "onnx_nodes_by_op": dict(sorted(nodes.items())),
            "runtime_layers_by_type": dict(sorted(ops.items())),
            "runtime_conv_precisions": dict(sorted(conv_precisions.items())),
            "latency": latency,
            "agreement": agreement,
            "compile_seconds": time.perf_counter() - t0,
        }
        # informative only: the compile stage checks every backend's artifact against the
        # integer model on validation images and fails beyond one step on > 0.1 % of the codes
        # (fcos_core.compile.deploy_table; compile_cfg.allow_disagreement makes it a warning)
        report["agreement_ok"] = disagreement(agreement) is None if agreement is not None else None
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(opts.name)) or "model"
        text = json.dumps(report, indent=1, sort_keys=True).encode()
        report_path = write_atomically(
            path.parent / f"{safe}_openvino_report.json", lambda f: f.write(text)
        )
        return CompileResult(artifact=path, report=report, files=(*_ir(path), report_path))

    # -- execute -------------------------------------------------------------------------

    def load(self, artifact: Path) -> Any:
        from fcos_plugin_openvino.artifact import load_program

        return load_program(artifact, _threads(self.options.get("threads")))

    def run(self, program: Any, inputs: Mapping[str, Any]) -> tuple[Any, ...]:
        from fcos_plugin_openvino.artifact import OpenVinoProgram

        if not isinstance(program, OpenVinoProgram):
            raise TypeError(f"run() takes what load() returned, got {type(program).__name__}")
        return program.run(inputs)

    def detect(self, program: Any, images: Any) -> list[dict[str, Any]] | None:
        """Detections of a loaded artifact for normalised images ``[B, 3, H, W]``: OpenVINO
        runs the artifact (pyramid artifacts get the uint8 frame, ``x * 128 + 128``), its codes
        are dequantized with the manifest's scales and decoded by fcos's
        ``FCOSMultiStrideFilter`` with the decoding parameters stored in the manifest."""
        from fcos_plugin_onnx.outputs import artifact_feed, head_outputs
        from fcos_plugin_openvino.artifact import OpenVinoProgram

        if not isinstance(program, OpenVinoProgram):
            raise TypeError(f"detect() takes what load() returned, got {type(program).__name__}")
        det = program.meta.get("detection")
        if not det:
            return None
        arr, feed = artifact_feed(program.meta, images)
        floats = head_outputs(program.meta, program.run({"img": feed}))
        return decode_detections(floats, det, (int(arr.shape[2]), int(arr.shape[3])))


def _ir(manifest: Path) -> tuple[Path, Path]:
    from fcos_plugin_openvino.artifact import ir_paths

    return ir_paths(manifest)
