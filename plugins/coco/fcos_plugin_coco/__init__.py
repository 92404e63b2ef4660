"""fcos-plugin-coco: the COCO data pipeline for fcos.

Registration lives in :mod:`fcos_plugin_coco.plugin` (torch-free); the heavy modules are
imported by factory string only when a stage builds a component.
"""

__version__ = "0.1.0"
