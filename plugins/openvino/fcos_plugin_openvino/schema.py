"""``compile_cfg`` options of the ``openvino`` backend (torch-free: validated at start-up)."""

from __future__ import annotations

from typing import Literal

import attrs

from fcos_core.schema import arg

InputSource = Literal["ddr", "pyramid"]


@attrs.frozen(kw_only=True)
class OpenVinoCompileOptions:
    """The onnx plugin's integer export as an OpenVINO IR model, run and timed on the CPU."""

    out_dir: str = arg(help="folder of the artifact (manifest, IR .xml/.bin) and its report")
    artifact_file: str = arg(
        "model.openvino.json",
        help="the artifact's manifest (relative to out_dir, or a path); "
        "the IR files sit next to it as <stem>.xml and <stem>.bin",
    )
    name: str = arg("model", help="model name stored in the manifest and the report")
    opset: int = arg(21, help="ONNX opset of the export OpenVINO reads (int16 tensors need 21)")
    requantization: Literal["integer", "float"] = arg(
        "integer",
        help="'integer': the onnx plugin's integer export with its int64 "
        "requantization lowered to int32 digit arithmetic (OpenVINO's CPU "
        "plugin has no int64): bit-exact with the fcos integer model; 'float': "
        "the standard QDQ graph OpenVINO turns into its own int8 kernels "
        "(faster; requantizes in float: codes may differ by a step, not bit-exact)",
    )
    threads: int | None = arg(
        None, help="OpenVINO inference threads; null: OMP_NUM_THREADS, else the usable CPU cores"
    )
    latency_runs: int = arg(50, help="timed batch-1 runs for the latency report (0: skip)")
    warmup_runs: int = arg(5, help="untimed runs before the timed ones")
    input_source: list[InputSource] = arg(
        ["ddr"],
        help="per model input: 'ddr' (the normalised float image) or 'pyramid' (raw "
        "uint8 YUV444 planes [B, 3, H, W], normalised inside the model)",
    )
    agreement_check: bool = arg(
        True,
        help="compare OpenVINO's integer codes with the fcos quantized model on the "
        "example inputs and report the fraction within 0, 1 and 2 steps (the "
        "compile stage's check on validation images and its 0.1 % rule, with "
        "compile_cfg.allow_disagreement, hold for every backend: fcos core)",
    )
