"""A toy plugin for core tests: small schemas covering every field form, no torch."""

from __future__ import annotations

from typing import Literal

import attrs

from fcos_core import hookimpl
from fcos_core.schema import arg, component, component_list, named


@attrs.frozen(kw_only=True)
class ToyNetArgs:
    """A toy backbone."""

    depth: int = arg(help="number of blocks")
    channels: list[int] = arg([8, 16], help="channels per block")
    activation: Literal["relu", "swish"] = arg("relu", help="activation")
    scale: float = arg(1.0, help="width multiplier")
    strides: dict[int, int] = arg({}, help="stride -> channels")
    size: tuple[int, int] = arg((32, 32), help="input size")


@attrs.frozen(kw_only=True)
class ToyNeckArgs:
    """A toy neck."""

    out_channels: int = arg(16, help="output channels")
    fail: bool = arg(False, help="raise ValueError at construction")


@attrs.frozen(kw_only=True)
class ToyModelArgs:
    """A toy model."""

    backbone: object = component("backbones", help="backbone")
    neck: object = component("necks", None, help="neck")
    transforms: list = component_list("transforms", help="transforms")
    collate: object = named("collates", None, help="collate function")
    name: str | None = arg(None, help="a name")


@attrs.frozen(kw_only=True)
class ToyTransformArgs:
    """A toy transform."""

    p: float = arg(0.5, help="probability")


@attrs.frozen(kw_only=True)
class ToyTrainerArgs:
    """A toy trainer."""

    model: object = component("models", help="the model")
    num_epochs: int = arg(1, help="epochs")


def toy_collate(batch):
    return batch


def make(**kwargs):
    return dict(kwargs)


def make_neck(**kwargs):
    if kwargs["fail"]:
        raise ValueError("out_channels must be even")
    return dict(kwargs)


@hookimpl
def register_backbones(register):
    register("toynet", factory=make, schema=ToyNetArgs)


@hookimpl
def register_necks(register):
    register("toyneck", factory=make_neck, schema=ToyNeckArgs)


@hookimpl
def register_models(register):
    register("ToyModel", factory=make, schema=ToyModelArgs)


@hookimpl
def register_transforms(register):
    register("ToyFlip", factory=make, schema=ToyTransformArgs)


@hookimpl
def register_collates(register):
    register("toy_collate", factory=toy_collate)


@hookimpl
def register_trainers(register):
    register("ToyTrainer", factory=make, schema=ToyTrainerArgs)
