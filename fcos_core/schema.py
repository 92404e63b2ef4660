"""Component argument schemas: attrs classes that describe a component's keyword arguments.

A component owns its schema; registering the component extends what a config may say. Schemas
live in torch-free modules so that ``fcos check`` validates a config without importing torch::

    @attrs.frozen(kw_only=True)
    class GIoULossArgs:
        \"\"\"Generalised IoU loss on xyxy boxes.\"\"\"

        loss_name: str = arg("reg", help="key of this loss in the loss dict")
        loss_weight: float = arg(1.0, help="multiplier applied to the loss")
        reduction: Literal["none", "mean", "sum"] = arg("mean", help="torch-style reduction")

Field kinds:

* :func:`arg` -- a plain value, checked against the field's type annotation.
* :func:`component` -- a nested ``{type: NAME, ...}`` block looked up in a registry kind and
  built before the parent; ``lazy=True`` passes a :class:`LazyComponent` the parent builds with
  extra arguments (a sampler needs the dataset).
* :func:`component_list` -- a list of such blocks (transforms, callbacks, converters).
* :func:`named` -- a registered function chosen by name (``collate_fn: collate_2d``).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

import attrs

#: default of a required argument
REQUIRED = attrs.NOTHING

_HELP = "fcos_help"
_KIND = "fcos_kind"  # registry kind of a nested component
_SHAPE = "fcos_shape"  # "one" | "list" | "named"
_LAZY = "fcos_lazy"


def _default(default: Any) -> dict[str, Any]:
    if default is REQUIRED:
        return {}
    if isinstance(default, (list, dict, set)):
        # a mutable default must not be shared between instances
        return {"factory": lambda d=default: type(d)(d)}
    return {"default": default}


def arg(default: Any = REQUIRED, *, help: str) -> Any:
    """A plain argument with a one-line ``help``; omit ``default`` to make it required."""
    return attrs.field(metadata={_HELP: help}, **_default(default))


def component(kind: str, default: Any = REQUIRED, *, help: str, lazy: bool = False) -> Any:
    """A nested component block of registry ``kind`` (e.g. ``"backbones"``)."""
    return attrs.field(
        metadata={_HELP: help, _KIND: kind, _SHAPE: "one", _LAZY: lazy}, **_default(default)
    )


def component_list(kind: str, default: Any = (), *, help: str, lazy: bool = False) -> Any:
    """A list of component blocks of registry ``kind``; an empty list by default."""
    if isinstance(default, tuple):
        default = list(default)
    return attrs.field(
        metadata={_HELP: help, _KIND: kind, _SHAPE: "list", _LAZY: lazy}, **_default(default)
    )


def named(kind: str, default: Any = REQUIRED, *, help: str) -> Any:
    """A function registered in ``kind`` and chosen by its name (a string in the config)."""
    return attrs.field(metadata={_HELP: help, _KIND: kind, _SHAPE: "named"}, **_default(default))


@attrs.frozen
class FieldInfo:
    """What the validator and the docs need to know about one schema field."""

    name: str
    type: Any
    required: bool
    default: Any
    help: str
    kind: str | None
    shape: str | None
    lazy: bool


#: the class of ``attrs.Factory(...)`` defaults (the stubs type ``attrs.Factory`` as a function)
_FACTORY: Any = type(attrs.Factory(list))


def fields_of(schema: type) -> dict[str, FieldInfo]:
    """The fields of an attrs schema class, with resolved type annotations."""
    hints = typing.get_type_hints(schema)
    out: dict[str, FieldInfo] = {}
    for f in attrs.fields(schema):
        required = f.default is attrs.NOTHING
        default: Any = None
        if not required:
            default = f.default.factory() if isinstance(f.default, _FACTORY) else f.default
        out[f.name] = FieldInfo(
            name=f.name,
            type=hints.get(f.name, Any),
            required=required,
            default=default,
            help=f.metadata.get(_HELP, ""),
            kind=f.metadata.get(_KIND),
            shape=f.metadata.get(_SHAPE),
            lazy=bool(f.metadata.get(_LAZY, False)),
        )
    return out


def schema_doc(schema: type | None) -> str:
    """First line of a schema's docstring ('' when it has none)."""
    doc = (schema.__doc__ or "").strip() if schema is not None else ""
    return doc.splitlines()[0].strip() if doc else ""


class LazyComponent:
    """A validated component block that its parent builds later with extra arguments."""

    def __init__(self, build: Callable[..., Any], name: str, path: str) -> None:
        self._build = build
        self.name = name
        self.path = path

    def build(self, **extra: Any) -> Any:
        return self._build(**extra)

    def __repr__(self) -> str:
        return f"LazyComponent({self.name!r} at {self.path})"


# --- type checking ------------------------------------------------------------------------


def describe_type(tp: Any) -> str:
    """A short human name for a type annotation (``list[int]``, ``'relu' | 'swish'``)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return "any value"
    if tp is type(None):
        return "null"
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(describe_type(a) for a in args)
    if origin in (list, tuple, dict, set):
        inner = ", ".join("..." if a is Ellipsis else describe_type(a) for a in args)
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    return getattr(tp, "__name__", str(tp))


def check_type(value: Any, tp: Any) -> str | None:
    """None when ``value`` (as YAML gives it) fits annotation ``tp``; else why not.

    YAML has no tuples, so a list is accepted for a tuple annotation (and converted by
    :func:`coerce`); an int is accepted for a float.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return None
    if tp is type(None):
        return None if value is None else f"expected null, got {_vname(value)}"
    if origin is typing.Literal:
        if value in args and all(type(value) is type(a) or a is None for a in args if a == value):
            return None
        return f"expected one of {', '.join(repr(a) for a in args)}, got {value!r}"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        reasons = [check_type(value, a) for a in args]
        if any(r is None for r in reasons):
            return None
        return f"expected {describe_type(tp)}, got {_vname(value)}"
    if tp is bool:
        return None if isinstance(value, bool) else f"expected true/false, got {_vname(value)}"
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"expected an integer, got {_vname(value)}"
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"expected a number, got {_vname(value)}"
    if tp is str:
        return None if isinstance(value, str) else f"expected a string, got {_vname(value)}"
    if origin is list or tp is list or origin is set:
        if not isinstance(value, list):
            return f"expected a list, got {_vname(value)}"
        if args:
            for i, item in enumerate(value):
                why = check_type(item, args[0])
                if why:
                    return f"item {i}: {why}"
        return None
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            return f"expected a list, got {_vname(value)}"
        if args and args[-1] is Ellipsis:
            for i, item in enumerate(value):
                why = check_type(item, args[0])
                if why:
                    return f"item {i}: {why}"
            return None
        if args:
            if len(value) != len(args):
                return f"expected {len(args)} items ({describe_type(tp)}), got {len(value)}"
            for i, (item, a) in enumerate(zip(value, args)):
                why = check_type(item, a)
                if why:
                    return f"item {i}: {why}"
        return None
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            return f"expected a mapping, got {_vname(value)}"
        if args:
            for k, v in value.items():
                why = check_type(k, args[0]) or check_type(v, args[1])
                if why:
                    return f"key {k!r}: {why}"
        return None
    if isinstance(tp, type):
        return None if isinstance(value, tp) else f"expected {tp.__name__}, got {_vname(value)}"
    return None


def coerce(value: Any, tp: Any) -> Any:
    """Turn a checked YAML value into what the annotation says (lists into tuples)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        return None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for a in args:
            if check_type(value, a) is None:
                return coerce(value, a)
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is tuple and isinstance(value, (list, tuple)):
        if args and args[-1] is Ellipsis:
            return tuple(coerce(v, args[0]) for v in value)
        if args:
            return tuple(coerce(v, a) for v, a in zip(value, args))
        return tuple(value)
    if origin is list and args and isinstance(value, list):
        return [coerce(v, args[0]) for v in value]
    if origin is dict and args and isinstance(value, dict):
        return {coerce(k, args[0]): coerce(v, args[1]) for k, v in value.items()}
    return value


def _vname(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
        type(None): "null",
    }
    name = names.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{name} ({text})" if not isinstance(value, (list, dict)) else name
