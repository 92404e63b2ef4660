"""Quantization: calibration, QAT and the integer deploy model (see docs/quantization.md).

This package's ``__init__`` and :mod:`~fcos_core.quantization.rules` /
:mod:`~fcos_core.quantization.schemas` are torch-free; the other modules import torch.
"""
