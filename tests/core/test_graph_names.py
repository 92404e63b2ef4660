"""fcos_core.graph_names: op and module names of exported-graph nodes (no torch needed)."""

from __future__ import annotations

from types import SimpleNamespace

from fcos_core.graph_names import layer_name, module_path, op_name


def _node(target, stack=None, name="conv2d_3"):
    return SimpleNamespace(
        target=target, meta={"nn_module_stack": stack} if stack else {}, name=name
    )


def test_op_name_strips_overload_and_inplace_underscore():
    packet = SimpleNamespace(__name__="relu_")
    assert op_name(_node(SimpleNamespace(_overloadpacket=packet))) == "relu"
    packet = SimpleNamespace(__name__="_native_batch_norm_legit")
    assert op_name(_node(SimpleNamespace(_overloadpacket=packet))) == "_native_batch_norm_legit"

    def fake_quantize_bias():  # a plain function target keeps its name
        pass

    assert op_name(_node(fake_quantize_bias)) == "fake_quantize_bias"


def test_module_path_and_layer_name():
    stack = {"a": ("L['self'].backbone", object), "b": ("L['self'].backbone.stem.conv", object)}
    node = _node(None, stack)
    assert module_path(node) == "backbone.stem.conv" == layer_name(node)
    flat = _node(None, {"a": ("L__self___neck_fuse", object)})
    assert module_path(flat) == "neck_fuse"
    bare = _node(None)
    assert module_path(bare) == "" and layer_name(bare) == "conv2d_3"
    top = _node(None, {"a": ("L['self'].", object)})
    assert module_path(top) == "" and layer_name(top) == "<model>"
