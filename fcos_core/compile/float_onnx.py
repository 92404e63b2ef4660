"""The float deploy model as ONNX: the one exporter behind ``fcos export --format onnx`` and
the onnx plugin (comparisons with float ONNX Runtime, runtimes that quantize themselves).

torch's dynamo exporter (``torch.onnx.export(dynamo=True)``, which needs ``onnxscript``) at
:data:`FLOAT_ONNX_OPSET` -- the onnx compile backend's default opset, so a project's float and
quantized ONNX files share one -- with the batch dimension dynamic and the weights inside the
file. Importing this module needs neither torch nor onnx.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fcos_core.errors import FcosUserError

#: ONNX opset of every float export
FLOAT_ONNX_OPSET = 21


def export_float_onnx(
    model: Any, example_inputs: Mapping[str, Any], path: str | Path, opset: int = FLOAT_ONNX_OPSET
) -> Path:
    """Write the float ``model`` (run in eval mode) as one ONNX file and return its path.

    Args:
        model: a float deploy model ``img [B, 3, H, W] -> tensor or tuple of tensors`` (e.g.
            FCOS with a ``for_compile`` post-process). A quantized model is refused: the onnx
            compile backend exports it.
        example_inputs: ``{"img": tensor or shape [B, 3, H, W]}``; the batch dimension is
            exported dynamic (the file runs at any batch size), H and W are fixed.
        path: the ``.onnx`` file to write (weights inside: ``external_data=False``).
        opset: ONNX opset of the export.
    """
    import torch

    from fcos_core.quantization.find_integer import find_integer_model

    try:
        import onnxscript  # noqa: F401 - torch.onnx's dynamo exporter needs it
    except ImportError:
        raise FcosUserError(
            "ONNX export needs onnxscript",
            hint="pip install onnx onnxscript onnxruntime (or fcos-plugin-onnx)",
        ) from None
    if find_integer_model(model) is not None:
        raise FcosUserError(
            "export_float_onnx got a quantized model",
            hint="export quantized models with the onnx compile backend (compile_cfg.march: onnx)",
        )
    if len(example_inputs) != 1:
        raise ValueError(f"example_inputs: expected one input, got {sorted(example_inputs)}")
    name, value = next(iter(example_inputs.items()))
    if isinstance(value, (list, tuple)):
        value = torch.zeros(tuple(int(v) for v in value))
    x = torch.as_tensor(value).float()
    if x.dim() != 4:
        raise ValueError(f"example_inputs[{name!r}]: expected [B, C, H, W], got {tuple(x.shape)}")
    if x.shape[0] < 2:  # torch.export specialises a batch of 1; export at 2, dynamic
        x = x.expand(2, *x.shape[1:]).contiguous()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            torch.onnx.export(
                model,
                (x,),
                str(out),
                input_names=[name],
                dynamo=True,
                opset_version=int(opset),
                external_data=False,
                verbose=False,
                dynamic_shapes=({0: torch.export.Dim.AUTO},),
            )
    finally:
        model.train(was_training)
    return out
