"""``compile_cfg`` options of the ``onnx`` backend (torch-free: validated at start-up)."""

from __future__ import annotations

from typing import Literal

import attrs

from fcos_core.schema import arg

InputSource = Literal["ddr", "pyramid"]


@attrs.frozen(kw_only=True)
class OnnxCompileOptions:
    """Export the quantized deploy model as a QDQ ONNX model and time it with ONNX Runtime."""

    out_dir: str = arg(help="folder of the ONNX file and its report")
    onnx_file: str = arg("model.onnx", help="ONNX file name (relative to out_dir) or path")
    name: str = arg("model", help="model name stored in the ONNX metadata and the report")
    opset: int = arg(21, help="ONNX opset (>= 18; int16 tensors need >= 21)")
    providers: list[str] = arg(
        ["CPUExecutionProvider"], help="ONNX Runtime execution providers, in priority order"
    )
    latency_runs: int = arg(50, help="timed batch-1 runs for the latency report (0: skip)")
    warmup_runs: int = arg(5, help="untimed runs before the timed ones")
    threads: int | None = arg(
        None, help="ORT intra-op threads; null: OMP_NUM_THREADS, else the usable CPU cores"
    )
    activation_dtype: Literal["uint8", "int8"] = arg(
        "uint8",
        help="storage of int8 activations: uint8 with zero point 128 (identical codes; "
        "what ORT's x86 integer convs take) or int8 with zero point 0",
    )
    requantization: Literal["integer", "float"] = arg(
        "integer",
        help="'integer': convs as ConvInteger + int64 multiplier/shift arithmetic, "
        "bit-exact with the fcos integer model on every CPU; 'float': the "
        "standard QDQ pattern ORT fuses into QLinearConv (faster; requantizes "
        "with a float32 ratio, ties to even: single-step differences that a "
        "deep model can amplify, more of them at larger input sizes)",
    )
    input_source: list[InputSource] = arg(
        ["ddr"],
        help="per model input: 'ddr' (the normalised float image) or 'pyramid' (raw "
        "uint8 YUV444 planes [B, 3, H, W], normalised inside the model)",
    )
    agreement_check: bool = arg(
        True,
        help="compare ORT's integer codes with the fcos quantized model on the example "
        "inputs and report the fraction within 1 and 2 quantization steps (the "
        "compile stage's check on validation images, and its 0.1 % rule with "
        "compile_cfg.allow_disagreement, hold for every backend: fcos core)",
    )
