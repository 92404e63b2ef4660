"""Starting an EfficientNet from weights on disk, including torchvision's ImageNet weights.

Torchvision key -> fcos key (``s`` = stage 0..6, ``b`` = block in the stage, ``L`` = 8, the
index of torchvision's last ``features`` entry)::

    features.0.0.*                      -> stem.conv.*
    features.0.1.*                      -> stem.bn.*
    features.{s+1}.{b}.block.{e}.0/1.*  -> stages.{s}.{b}.expand.conv/bn.*      (expanding blocks)
    features.{s+1}.{b}.block.{d}.0/1.*  -> stages.{s}.{b}.depthwise.conv/bn.*
    features.{s+1}.{b}.block.{q}.fc1/2.*-> stages.{s}.{b}.se.fc1/fc2.*          (use_se_block)
    features.{s+1}.{b}.block.{p}.0/1.*  -> stages.{s}.{b}.project.conv/bn.*
    features.L.0/1.*                    -> head.conv/bn.*                        (include_top)
    classifier.1.*                      -> classifier.*                          (include_top)

where ``e, d, q, p = 0, 1, 2, 3`` for blocks with an expansion conv and ``d, q, p = 0, 1, 2``
for the first stage's blocks (expand ratio 1). Torchvision always has SE; loading its weights
into a ``use_se_block: false`` model reports the SE keys as unexpected (they are skipped), and a
model without the top reports the head/classifier keys the same way. BatchNorm ``eps`` is not
in a state dict: torchvision's b0-b4 use 1e-5 (torch's default), b5-b7 use
``bn_kwargs: {eps: 0.001, momentum: 0.01}``.

Files are read with ``torch.load(weights_only=True)``: no code in a weights file ever runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from fcos_core.errors import FcosUserError

#: prefixes a detector checkpoint puts in front of the backbone's keys
_WRAPPER_PREFIXES = ("module.", "backbone.", "model.backbone.")
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict")


@attrs.frozen
class LoadReport:
    """What loading a state dict did, key by key (model key names unless noted)."""

    path: str
    source_format: str  # "torchvision" | "fcos"
    matched: list[str]
    missing: list[str]  # in the model, not in the file: keep their initialisation
    unexpected: list[str]  # in the file (its own names), nothing to load them into
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # key, file, model

    def summary(self) -> str:
        def head(keys: list[str]) -> str:
            shown = ", ".join(keys[:5])
            return shown + (f", ... (+{len(keys) - 5})" if len(keys) > 5 else "")

        parts = [f"{self.source_format} format: {len(self.matched)} tensors loaded"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing (kept initialised): {head(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (skipped): {head(self.unexpected)}")
        if self.shape_mismatch:
            shown = [f"{k} {tuple(f)} vs {tuple(m)}" for k, f, m in self.shape_mismatch]
            parts.append(f"{len(shown)} with other shapes (skipped): {head(shown)}")
        return "; ".join(parts)


def torchvision_key_map(model: nn.Module) -> dict[str, str]:
    """Torchvision module prefix -> our module prefix, for every module that either side may
    have (SE and top included even when ``model`` lacks them, so their keys are recognised)."""
    mapping = {"features.0.0": "stem.conv", "features.0.1": "stem.bn"}
    for s, stage in enumerate(model.stages):  # type: ignore[attr-defined]
        for b, block in enumerate(stage):
            tv = f"features.{s + 1}.{b}.block"
            ours = f"stages.{s}.{b}"
            # torchvision omits the expansion conv exactly when we do (same channel rule)
            roles = ["depthwise", "se", "project"]
            if not isinstance(block.expand, nn.Identity):
                roles.insert(0, "expand")
            for idx, role in enumerate(roles):
                if role == "se":
                    mapping[f"{tv}.{idx}.fc1"] = f"{ours}.se.fc1"
                    mapping[f"{tv}.{idx}.fc2"] = f"{ours}.se.fc2"
                else:
                    mapping[f"{tv}.{idx}.0"] = f"{ours}.{role}.conv"
                    mapping[f"{tv}.{idx}.1"] = f"{ours}.{role}.bn"
    last = len(model.stages) + 1  # type: ignore[attr-defined]
    mapping[f"features.{last}.0"] = "head.conv"
    mapping[f"features.{last}.1"] = "head.bn"
    mapping["classifier.1"] = "classifier"
    return mapping


def convert_torchvision_state_dict(
    model: nn.Module, state_dict: Mapping[str, Tensor]
) -> dict[str, str]:
    """Our key for every key of a torchvision ``efficientnet_bN`` state dict.

    Keys with no counterpart map to themselves (and then show up as unexpected).
    """
    mapping = torchvision_key_map(model)
    out: dict[str, str] = {}
    for key in state_dict:
        prefix, _, leaf = key.rpartition(".")
        new_prefix = mapping.get(prefix)
        out[key] = f"{new_prefix}.{leaf}" if new_prefix is not None else key
    return out


def _read_state_dict(path: str) -> dict[str, Tensor]:
    if not os.path.exists(path):
        raise FcosUserError(
            f"pretrained weights file {path!r} does not exist",
            hint="give the path of a .pth file with an EfficientNet state dict, "
            "or set pretrained: null",
        )
    if os.path.isdir(path):
        raise FcosUserError(
            f"pretrained weights path {path!r} is a directory", hint="give the path of a .pth file"
        )
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors, truncated files, forbidden globals
        raise FcosUserError(
            f"cannot read pretrained weights {path!r}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}",
            hint="save the weights with torch.save(model.state_dict(), path)",
        ) from None
    if isinstance(obj, Mapping):
        for key in _CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise FcosUserError(
            f"pretrained weights {path!r} hold no state dict of tensors",
            hint="save the weights with torch.save(model.state_dict(), path)",
        )
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def _strip_wrappers(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop a wrapper prefix (DDP ``module.``, a detector's ``backbone.``) shared by all keys
    that have it, keeping keys without it (a detector's neck/head) so they show as unexpected."""
    for prefix in _WRAPPER_PREFIXES:
        if any(k.startswith(prefix) for k in state_dict):
            state_dict = {
                k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state_dict.items()
            }
    return state_dict


def load_state_dict_report(
    model: nn.Module, state_dict: Mapping[str, Tensor], path: str = "<memory>"
) -> LoadReport:
    """Load what fits from a torchvision-format or fcos-format state dict into ``model``."""
    sd = _strip_wrappers(dict(state_dict))
    is_torchvision = any(k.startswith("features.") for k in sd)
    names = convert_torchvision_state_dict(model, sd) if is_torchvision else {k: k for k in sd}
    own = model.state_dict()
    loadable: dict[str, Tensor] = {}
    unexpected: list[str] = []
    mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for file_key, value in sd.items():
        key = names[file_key]
        if key not in own:
            unexpected.append(file_key)
        elif key in loadable:
            # two file keys for one tensor (e.g. with and without a wrapper prefix)
            unexpected.append(file_key)
        elif own[key].shape != value.shape:
            mismatch.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            loadable[key] = value
    model.load_state_dict(loadable, strict=False)
    missing = [k for k in own if k not in loadable]
    return LoadReport(
        path=path,
        source_format="torchvision" if is_torchvision else "fcos",
        matched=sorted(loadable),
        missing=missing,
        unexpected=sorted(unexpected),
        shape_mismatch=mismatch,
    )


def load_pretrained(model: nn.Module, path: str) -> LoadReport:
    """Read ``path`` (``torch.load(weights_only=True)``) and load it into ``model``.

    Raises :class:`FcosUserError` when the file is missing or unreadable, or when not a single
    tensor fits (the file is for another network).
    """
    path = os.fspath(path)
    report = load_state_dict_report(model, _read_state_dict(path), path)
    if not report.matched:
        raise FcosUserError(
            f"pretrained weights {path!r} match no parameter of the model "
            f"({len(report.unexpected)} unexpected keys, e.g. {report.unexpected[:3]}; "
            f"{len(report.shape_mismatch)} with other shapes)",
            hint="use weights of the same EfficientNet variant (model_type), from torchvision "
            "or saved from this backbone",
        )
    return report
