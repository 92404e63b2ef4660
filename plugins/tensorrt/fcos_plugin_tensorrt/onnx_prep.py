"""Small rewrites of the QDQ ONNX export before TensorRT reads it.

TensorRT's explicit quantization takes int8 QuantizeLinear/DequantizeLinear pairs. The export
also dequantizes the convolution biases, stored as int32 codes (``DequantizeLinear(int32 bias,
s_x * s_w)``), which TensorRT's DequantizeLinear does not take; those are constants, so they are
folded here into float32 initializers holding exactly what DequantizeLinear computes
(``float32(q - zero_point) * scale``, per tensor or along ``axis``). The graph computes the same
values; only the form of the bias changes.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def fold_int32_dequantize(model: Any) -> int:
    """Replace every DequantizeLinear of an int32 initializer by a float32 initializer, in
    place; returns how many were folded."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    folded = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        q = numpy_helper.to_array(inits[node.input[0]])
        if q.dtype != np.int32 or node.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        zp = np.zeros((), np.int64)
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in inits:
                continue
            zp = numpy_helper.to_array(inits[node.input[2]]).astype(np.int64)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1 and q.ndim > 0:
            shape = [1] * q.ndim
            shape[axis % q.ndim] = -1
            scale = scale.reshape(shape)
            zp = zp.reshape(shape) if zp.ndim == 1 else zp
        value = (q.astype(np.int64) - zp).astype(np.float32) * scale
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return len(folded)
