"""Passes on the exported float graph before it is prepared: BN folding, dropout removal,
and the checks that keep random ops out.

BN folding (``qat_mode: fuse_bn``) is done here and not by torchao's ``_fuse_conv_bn_``
because that pass, for a conv weight used by several convs (the FCOS head shares its tower
convs across strides and keeps one BatchNorm per stride), removes the second BatchNorm without
folding it. Here every conv+BN pair gets its own folded weight: an unshared weight is folded in
place (its state-dict key does not change), a shared one gets a new parameter
``<weight>__fold<k>`` per using conv, ``k`` counting its convs in graph order.
"""

from __future__ import annotations

import torch
from torch import fx

_aten = torch.ops.aten

_BN_TARGETS = {
    _aten.batch_norm.default: 7,  # eps argument index
    _aten._native_batch_norm_legit_no_training.default: 6,
}
_DROPOUT_TARGETS = {
    _aten.dropout.default,
    _aten.feature_dropout.default,
    _aten.alpha_dropout.default,
}
_RANDOM_OPS = {
    "rand",
    "rand_like",
    "randn",
    "randn_like",
    "bernoulli",
    "bernoulli_",
    "uniform_",
    "normal_",
    "randint",
    "randint_like",
    "native_dropout",
}


def _get_attr_value(gm: fx.GraphModule, node: fx.Node | None) -> torch.Tensor | None:
    if node is None:
        return None
    if node.op != "get_attr":
        raise ValueError(f"expected a parameter (get_attr) at node {node.name}, got {node.op}")
    obj: object = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    assert isinstance(obj, torch.Tensor)
    return obj


def _set_param(gm: fx.GraphModule, target: str, value: torch.Tensor) -> None:
    owner_name, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_name) if owner_name else gm
    if name in owner._parameters or hasattr(owner, name):
        delattr(owner, name)
    owner.register_parameter(name, torch.nn.Parameter(value.detach().clone()))


def check_no_random_ops(gm: fx.GraphModule) -> None:
    """Refuse graphs with random ops (drop-path/dropout active at export time)."""
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(getattr(node.target, "_overloadpacket", None), "__name__", "")
        if name in _RANDOM_OPS:
            raise ValueError(
                f"the exported model contains the random op {name} (node {node.name}); "
                "drop-path / stochastic depth must be 0 (drop_path_rate: 0.0) and the model in "
                "eval mode for quantization"
            )


def remove_dropout(gm: fx.GraphModule) -> None:
    """Eval-mode dropout is the identity; remove it so it does not split fusable patterns."""
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in _DROPOUT_TARGETS:
            train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", False)
            if train:
                raise ValueError(
                    f"dropout node {node.name} is in training mode; export the model in eval mode"
                )
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()


def fold_conv_bn(gm: fx.GraphModule) -> int:
    """Fold every eval-mode BatchNorm that directly follows a conv2d into that conv.

    Returns the number of folded pairs. A BatchNorm that does not follow a conv (or whose conv
    output has other users) is left in place; the quantizer then refuses it.
    """
    graph = gm.graph
    folded = 0
    weight_users: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_function" and node.target == _aten.conv2d.default:
            w = node.args[1]
            if isinstance(w, fx.Node) and w.op == "get_attr":
                weight_users[str(w.target)] = weight_users.get(str(w.target), 0) + 1
    fold_index: dict[str, int] = {}
    attr_users: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "get_attr":
            attr_users[str(node.target)] = attr_users.get(str(node.target), 0) + len(node.users)

    for bn in list(graph.nodes):
        if bn.op != "call_function" or bn.target not in _BN_TARGETS:
            continue
        conv = bn.args[0]
        if not (
            isinstance(conv, fx.Node)
            and conv.op == "call_function"
            and conv.target == _aten.conv2d.default
            and len(conv.users) == 1
        ):
            continue
        if bn.target == _aten.batch_norm.default and bn.args[5]:
            raise ValueError(f"BatchNorm node {bn.name} is in training mode; export in eval mode")
        w_node = conv.args[1]
        b_node = conv.args[2] if len(conv.args) > 2 else None
        w = _get_attr_value(gm, w_node)
        b = _get_attr_value(gm, b_node)
        gamma, beta, mean, var = (_get_attr_value(gm, bn.args[i]) for i in (1, 2, 3, 4))
        eps = float(bn.args[_BN_TARGETS[bn.target]])
        assert w is not None and mean is not None and var is not None
        with torch.no_grad():
            inv_std = torch.rsqrt(var.double() + eps)
            g = gamma.double() if gamma is not None else torch.ones_like(inv_std)
            factor = g * inv_std
            new_w = (w.double() * factor.reshape(-1, 1, 1, 1)).to(w.dtype)
            b0 = b.double() if b is not None else torch.zeros_like(inv_std)
            shift = beta.double() if beta is not None else torch.zeros_like(inv_std)
            new_b = ((b0 - mean.double()) * factor + shift).to(w.dtype)

        w_target = str(w_node.target)
        sibling_bias = w_target.rpartition(".")[0] + ".bias" if "." in w_target else "bias"
        if weight_users.get(w_target, 0) == 1:
            new_w_target = w_target
            if b_node is not None and attr_users.get(str(b_node.target), 0) == 1:
                new_b_target = str(b_node.target)
            elif sibling_bias not in attr_users:
                new_b_target = sibling_bias
            else:
                new_b_target = f"{w_target}__bias"
        else:
            k = fold_index.get(w_target, 0)
            fold_index[w_target] = k + 1
            new_w_target = f"{w_target}__fold{k}"
            new_b_target = f"{sibling_bias}__fold{k}"
        _set_param(gm, new_w_target, new_w)
        _set_param(gm, new_b_target, new_b)

        with graph.inserting_before(conv):
            w_get = graph.get_attr(new_w_target) if new_w_target != w_target else w_node
            b_get = (
                graph.get_attr(new_b_target)
                if b_node is None or new_b_target != str(b_node.target)
                else b_node
            )
        args = list(conv.args)
        while len(args) < 3:
            args.append(None)
        args[1], args[2] = w_get, b_get
        conv.args = tuple(args)
        bn.replace_all_uses_with(conv)
        graph.erase_node(bn)
        folded += 1

    graph.eliminate_dead_code()
    _drop_unused_attrs(gm)
    graph.lint()
    gm.recompile()
    return folded


def _drop_unused_attrs(gm: fx.GraphModule) -> None:
    """Delete get_attr nodes without users and the parameters/buffers only they read (folded
    BatchNorm statistics, a shared weight replaced by its folded copies)."""
    used: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.users:
            used.add(str(node.target))
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name not in used:
            owner_name, _, attr = name.rpartition(".")
            owner = gm.get_submodule(owner_name) if owner_name else gm
            delattr(owner, attr)
