"""``compile_cfg`` options of the ``tensorrt`` backend (torch-free: validated at start-up)."""

from __future__ import annotations

import attrs

from fcos_core.schema import arg


@attrs.frozen(kw_only=True)
class TensorRTCompileOptions:
    """Explicit int8 TensorRT engine from the QDQ ONNX export, scored and timed on the GPU."""

    out_dir: str = arg(help="folder of the engine, its source ONNX model and the report")
    engine_file: str = arg("model.fcos-trt", help="engine file name (relative to out_dir) or path")
    name: str = arg("model", help="model name stored in the engine file and the report")
    opset: int = arg(21, help="ONNX opset of the QDQ export the engine is built from")
    max_batch: int = arg(8, help="largest batch the engine accepts (its batch is dynamic)")
    opt_batch: int = arg(1, help="the batch TensorRT tunes its kernels for")
    workspace_mib: int = arg(1024, help="TensorRT builder workspace limit in MiB")
    fp16: bool = arg(
        True,
        help="let TensorRT run the layers outside the Q/DQ pairs in fp16 "
        "(only for networks that are not strongly typed)",
    )
    device: int = arg(0, help="CUDA device index to build and run on")
    latency_runs: int = arg(200, help="timed batch-1 runs for the latency report (0: skip)")
    warmup_runs: int = arg(20, help="untimed runs before the timed ones")
    agreement_check: bool = arg(
        True,
        help="compare the engine's outputs with the fcos quantized model on the example "
        "inputs, in quantization steps",
    )
    timing_cache: str | None = arg(
        None, help="a TensorRT timing cache file to read and update (faster rebuilds); null: none"
    )
