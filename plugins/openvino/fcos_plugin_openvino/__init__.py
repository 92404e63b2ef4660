"""fcos compile backend ``openvino``: the quantized deploy model, exported by fcos-plugin-onnx,
as an OpenVINO IR model run and timed on the CPU.

Torch-free and OpenVINO-free at import: openvino, onnx and torch are imported only when a
backend method runs.
"""

__version__ = "0.1.0"
