"""fcos: train, quantize and deploy FCOS object detectors, extended through plugins.

Importing this package does not import torch.
"""

from fcos_core.hooks import hookimpl, hookspec

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl", "hookspec"]
