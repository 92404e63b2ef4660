"""fcos compile backend ``onnx``: the quantized deploy model as a QDQ ONNX model, run and timed
with ONNX Runtime.

Torch-free at import: onnx, onnxruntime and torch are imported only when a backend method runs.
"""

__version__ = "0.1.0"
