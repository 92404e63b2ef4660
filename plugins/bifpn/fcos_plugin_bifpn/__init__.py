"""fcos-plugin-bifpn: the BiFPN neck for fcos.

Importing this package does not import torch; the model lives in :mod:`fcos_plugin_bifpn.model`
and is imported when a config builds it.
"""

__version__ = "0.1.0"
