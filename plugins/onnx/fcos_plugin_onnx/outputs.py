"""Feeding and reading a QDQ ONNX artifact by its manifest, for any runtime that runs the graph
(ONNX Runtime here, OpenVINO in fcos-plugin-openvino): the input the graph wants for normalised
images, and its integer output codes back as float head outputs. Torch and numpy are imported
when called."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fcos_core.errors import FcosUserError


def check_single_input_source(input_source: Sequence[str]) -> None:
    """``compile_cfg.input_source`` names the one input of the FCOS deploy model."""
    if len(input_source) != 1:
        raise FcosUserError(
            f"compile_cfg.input_source: {list(input_source)} lists "
            f"{len(input_source)} sources; the FCOS deploy model has "
            "one input",
            hint="use input_source: [ddr] or [pyramid]",
        )


def artifact_feed(meta: Mapping[str, Any], images: Any) -> tuple[Any, Any]:
    """``(float32 numpy images, the graph's input)`` for normalised images ``[B, 3, H, W]``:
    a pyramid (uint8) artifact gets the frame back, ``x * 128 + 128`` exactly."""
    import numpy as np

    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    arr = arr.astype(np.float32, copy=False)
    if meta["input"]["dtype"] == "uint8":
        return arr, np.clip(np.rint(arr * 128.0 + 128.0), 0, 255).astype(np.uint8)
    return arr, arr


def head_outputs(meta: Mapping[str, Any], outputs: Sequence[Any]) -> list[Any]:
    """The artifact's outputs as float tensors for :func:`fcos_core.compile.backend.
    decode_detections`: integer codes dequantized with the manifest's scales and zero points;
    a per-channel ``max_logit`` without a scale, and any output past the 3 or 4 per stride the
    decoder reads, left out."""
    import numpy as np
    import torch

    floats = []
    for spec, value in zip(meta["outputs"], outputs):
        if spec["kind"] == "max_logit" and not spec.get("scale"):
            continue  # a max over per-channel scales: the decoder works without it
        if value.dtype.kind in "iu":
            scale = np.asarray(spec["scale"], np.float64)
            scale = scale.reshape(1, -1, 1, 1) if scale.size > 1 else scale
            value = (value.astype(np.float64) - int(spec.get("zero_point", 0))) * scale
        floats.append(torch.from_numpy(np.asarray(value, dtype=np.float32)))
    s = len(meta["detection"]["strides"])
    return floats if len(floats) == 4 * s else floats[: 3 * s]
