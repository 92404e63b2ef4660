"""The training engine: trainers, callbacks, checkpoints, data loading and the stage pipeline.

Importing this package does not import torch; the submodules that run things do. Schemas of
every engine component live in the torch-free :mod:`fcos_core.engine.schemas` and
:mod:`fcos_core.engine.data_schemas`.
"""
