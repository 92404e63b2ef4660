"""fcos-plugin-tensorrt: the ``tensorrt`` compile backend (explicit int8 quantization)."""

__version__ = "0.1.0"
