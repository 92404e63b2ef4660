"""NASH-E-like compile backend for fcos: checker, integer program, artifact, numpy runtime.

Torch-free at import: torch is imported only by the checker and the lowering.
"""

__version__ = "0.1.0"
