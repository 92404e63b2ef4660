"""Turn validated :class:`~fcos_core.config.validate.Node` trees into objects.

Nested blocks are built before their parent (bottom-up); ``lazy`` fields get a
:class:`~fcos_core.schema.LazyComponent` instead. Each use of a block builds a fresh object.
A factory that rejects its arguments (``ValueError``/``TypeError`` raised at construction) is
reported as a config error at the block's path, not as a traceback.
"""

from __future__ import annotations

from typing import Any

from fcos_core.config.loader import format_path
from fcos_core.config.validate import NamedRef, Node
from fcos_core.errors import ConfigError, FcosUserError, Problem
from fcos_core.schema import LazyComponent


def build(value: Any, **extra: Any) -> Any:
    """Build a Node (with ``extra`` keyword arguments), a list of Nodes, or a plain value."""
    if isinstance(value, Node):
        return _build_node(value, extra)
    if isinstance(value, NamedRef):
        return value.entry.load()
    if isinstance(value, list):
        return [build(v) for v in value]
    return value


def _build_node(node: Node, extra: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for name, value in node.kwargs.items():
        field = node.fields.get(name)
        if field is not None and field.lazy:
            if isinstance(value, list):
                kwargs[name] = [_lazy(v) for v in value]
            else:
                kwargs[name] = _lazy(value) if isinstance(value, Node) else value
        else:
            kwargs[name] = build(value)
    # defaults of omitted fields come from the schema, so the factory sees every argument
    for name, field in node.fields.items():
        if name not in kwargs and not field.required:
            kwargs[name] = field.default
    kwargs.update(extra)
    factory = node.entry.load()
    try:
        return factory(**kwargs)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, FcosUserError):
            raise
        where = format_path(node.path)
        raise ConfigError(
            [
                Problem(
                    where,
                    f"{node.entry.kind} {node.entry.name!r} rejected its arguments: {exc}",
                    node.line,
                    node.file,
                )
            ]
        ) from exc


def _lazy(node: Any) -> Any:
    if not isinstance(node, Node):
        return node
    return LazyComponent(
        lambda **extra: _build_node(node, extra), node.entry.name, format_path(node.path)
    )
