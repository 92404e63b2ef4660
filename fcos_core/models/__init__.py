"""The FCOS detector: body (backbone, neck, head), target assignment, losses and decoding.

This package's ``__init__`` stays torch-free because :mod:`fcos_core.models.schemas` (imported by
the registration module at start-up) lives in it. Import the torch modules directly, e.g.
``from fcos_core.models.fcos import FCOS``.
"""
