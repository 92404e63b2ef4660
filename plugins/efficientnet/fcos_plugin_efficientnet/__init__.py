"""fcos-plugin-efficientnet: the EfficientNet backbone family for fcos.

Importing this package does not import torch; the model lives in
:mod:`fcos_plugin_efficientnet.model` and is imported when a config builds it.
"""

__version__ = "0.1.0"
