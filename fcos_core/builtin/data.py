"""fcos-core's built-in data components, registered through the public hooks.

Torch-free: factories are import strings; schemas live in :mod:`fcos_core.engine.data_schemas`.
"""

from __future__ import annotations

from fcos_core.engine import data_schemas as s
from fcos_core.hooks import hookimpl


@hookimpl
def register_data_loaders(register):
    register(
        "DataLoader", factory="fcos_core.engine.data_loader:DataLoader", schema=s.DataLoaderArgs
    )


@hookimpl
def register_samplers(register):
    register(
        "DistributedSampler",
        factory="fcos_core.engine.samplers:DistributedSampler",
        schema=s.DistributedSamplerArgs,
    )
    register(
        "RandomSampler",
        factory="fcos_core.engine.samplers:RandomSampler",
        schema=s.RandomSamplerArgs,
    )
    register(
        "SequentialSampler",
        factory="fcos_core.engine.samplers:SequentialSampler",
        schema=s.SequentialSamplerArgs,
    )
