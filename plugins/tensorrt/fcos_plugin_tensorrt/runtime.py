"""Building and running TensorRT engines (needs the ``tensorrt`` package and a CUDA GPU).

The engine is built from the QDQ ONNX export (explicit quantization: every int8 tensor sits
between a QuantizeLinear/DequantizeLinear pair with its scale, so TensorRT does not calibrate
anything; it fuses the pairs into int8 kernels). Where the installed TensorRT can make a
strongly typed network (TensorRT >= 9), the types come from the ONNX graph; otherwise the INT8
flag (and FP16 for the float layers, when asked) is set. Inputs and outputs live in torch CUDA
tensors, so no other CUDA binding is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fcos_core.errors import FcosUserError

INSTALL_HINT = (
    "install it on a machine with an NVIDIA GPU: pip install "
    "'fcos-plugin-tensorrt[tensorrt]' (the tensorrt wheel matching your CUDA)"
)


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot run here (None when it can): no package or no CUDA GPU."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"the tensorrt package is not installed ({exc})"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is available (TensorRT runs on NVIDIA GPUs only)"
    return None


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or a :class:`FcosUserError` saying what is missing."""
    why = tensorrt_missing()
    if why is not None:
        raise FcosUserError(f"compile_cfg.march tensorrt: {why}", hint=INSTALL_HINT)
    import tensorrt as trt

    return trt


def _logger(trt: Any) -> Any:
    return trt.Logger(trt.Logger.WARNING)


def gpu_name(device: int) -> str:
    import torch

    return torch.cuda.get_device_name(device)


def build_engine(
    onnx_model: bytes,
    input_name: str,
    chw: Sequence[int],
    *,
    max_batch: int,
    opt_batch: int,
    workspace_mib: int,
    fp16: bool,
    timing_cache: str | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Serialized engine of an ONNX model with a dynamic batch; and how it was built."""
    trt = require_tensorrt()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    kinds = trt.NetworkDefinitionCreationFlag
    strongly_typed = hasattr(kinds, "STRONGLY_TYPED")
    if strongly_typed:
        flags |= 1 << int(kinds.STRONGLY_TYPED)
    elif hasattr(kinds, "EXPLICIT_BATCH"):
        flags |= 1 << int(kinds.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_model):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise FcosUserError(
            f"TensorRT cannot parse the QDQ ONNX export: {errors[:1500]}",
            hint="`fcos check CONFIG --model` lists the layers; TensorRT's "
            "explicit quantization takes int8 Q/DQ only (set the head's "
            "int16_output: false)",
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if not strongly_typed:
        config.set_flag(trt.BuilderFlag.INT8)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
    cache = None
    if timing_cache:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    c, h, w = (int(v) for v in chw)
    profile.set_shape(
        input_name, (1, c, h, w), (int(opt_batch), c, h, w), (int(max_batch), c, h, w)
    )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise FcosUserError(
            "TensorRT could not build an engine from the QDQ ONNX export (its log above says why)",
            hint="raise compile_cfg.workspace_mib, or check the layers with "
            "`fcos check CONFIG --model`",
        )
    if cache is not None:
        Path(timing_cache).write_bytes(bytes(cache.serialize()))
    info = {
        "tensorrt": trt.__version__,
        "strongly_typed": strongly_typed,
        "fp16_flag": bool(fp16 and not strongly_typed),
        "max_batch": int(max_batch),
        "opt_batch": int(opt_batch),
    }
    return bytes(serialized), info


_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
    "BF16": "bfloat16",
}


class EngineRunner:
    """A deserialized engine and its execution context, fed with torch CUDA tensors."""

    def __init__(self, engine: bytes, output_names: Sequence[str], device: int = 0) -> None:
        import torch

        trt = require_tensorrt()
        self.device = torch.device("cuda", int(device))
        torch.cuda.set_device(self.device)
        self._runtime = trt.Runtime(_logger(trt))
        self.engine = self._runtime.deserialize_cuda_engine(engine)
        if self.engine is None:
            raise FcosUserError(
                "TensorRT cannot load this engine: it was built by another "
                "TensorRT version or for another GPU",
                hint="compile again on this machine",
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        missing = [n for n in output_names if n not in names]
        if len(self.inputs) != 1 or missing:
            raise FcosUserError(
                f"the engine's tensors {names} do not match its metadata "
                f"(outputs {list(output_names)})",
                hint="compile again",
            )
        self.outputs = list(output_names)

    def _torch_dtype(self, name: str) -> Any:
        import torch

        key = str(self.engine.get_tensor_dtype(name)).rsplit(".", 1)[-1]
        return getattr(torch, _DTYPES.get(key, "float32"))

    def __call__(self, x: Any) -> list[Any]:
        """Run on ``x`` ([B, C, H, W]); returns the outputs as CUDA tensors, in order."""
        import torch

        x = torch.as_tensor(x).to(self.device, torch.float32).contiguous()
        name = self.inputs[0]
        self.context.set_input_shape(name, tuple(x.shape))
        self.context.set_tensor_address(name, x.data_ptr())
        outs = []
        for out in self.outputs:
            shape = tuple(int(v) for v in self.context.get_tensor_shape(out))
            t = torch.empty(shape, dtype=self._torch_dtype(out), device=self.device)
            self.context.set_tensor_address(out, t.data_ptr())
            outs.append(t)
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see its log)")
        stream.synchronize()
        return outs
