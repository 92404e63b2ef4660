"""Names of the nodes of an exported (``torch.export`` / fx) graph, as fcos reports them.

One place for the two rules every graph walker needs (the quantizer, the lowering, the
quantization report, the compile backends' checkers): the op name of a call (``aten.relu_``
-> ``relu``) and the qualified name of the ``nn.Module`` that produced a node, so errors and
reports name ``backbone.stages.3.0.depthwise.conv`` rather than ``conv2d_17``. Torch-free.
"""

from __future__ import annotations

from typing import Any

#: ATen op names (as :func:`op_name` gives them) of a convolution
CONV_OPS = frozenset({"conv2d", "convolution", "_convolution"})
#: ... of a BatchNorm (folded into the preceding conv by the quantization flow)
BN_OPS = frozenset(
    {
        "batch_norm",
        "_native_batch_norm_legit_no_training",
        "native_batch_norm",
        "_native_batch_norm_legit",
    }
)
#: ... of graph plumbing that moves no data (and eval-mode dropout, removed before quantization)
TRANSPARENT_OPS = frozenset(
    {
        "detach",
        "clone",
        "alias",
        "contiguous",
        "dropout",
        "feature_dropout",
        "alpha_dropout",
        "_assert_tensor_metadata",
        "lift_fresh_copy",
        "_to_copy",
        "sym_size",
        "sym_constrain_range_for_size",
        "_assert_async",
    }
)

# prefixes torch versions put before the module path in ``nn_module_stack``
_SELF_PREFIXES = ("L['self'].", "L__self___", "L__self__.")


def op_name(node: Any) -> str:
    """ATen op name without overload and in-place underscore (``add_.Tensor`` -> ``add``);
    for a plain function target its ``__name__``."""
    packet = getattr(node.target, "_overloadpacket", None)
    name = getattr(packet, "__name__", getattr(node.target, "__name__", str(node.target)))
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


def module_path(node: Any) -> str:
    """Qualified name of the innermost ``nn.Module`` that produced ``node``; '' when the graph
    does not record it (and for the top-level module itself)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    qual = str(list(stack.values())[-1][0])
    for prefix in _SELF_PREFIXES:
        if qual.startswith(prefix):
            qual = qual[len(prefix) :]
    return qual


def layer_name(node: Any) -> str:
    """:func:`module_path`, the node's own name when none is recorded, ``<model>`` for the
    top-level module (for messages that must name something)."""
    if not (node.meta.get("nn_module_stack") or {}):
        return str(node.name)
    return module_path(node) or "<model>"
